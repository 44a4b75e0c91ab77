//! The mixed-precision planner: given, for every tensor, the formats it may take with their exact sizes and
//! measured costs (the rise in KL-divergence when that tensor alone is quantized so), choose one format per
//! tensor that keeps the total within a bit budget at the least total cost.
//!
//! Costs of different tensors are treated as additive (true to first order for small perturbations). The
//! choice is a multiple-choice knapsack; tern solves it greedily on each tensor's lower convex hull of
//! (bits, cost), taking the upgrade that buys the most cost reduction per bit until the budget is spent,
//! which is optimal up to the last partly-fitting upgrade.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::{Error, Result};

/// One format a tensor may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice<F> {
    pub format: F,
    /// Exact size of the tensor in this format, in bits.
    pub bits: u64,
    /// What choosing it costs (a KL-divergence rise, in nats).
    pub cost: f64,
}

/// A tensor to plan: its choices (at least one).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanTensor<F> {
    pub name: String,
    pub choices: Vec<Choice<F>>,
}

/// An upgrade of tensor `tensor` from hull point `from` to `from + 1`, ordered by cost saved per bit.
#[derive(Debug, PartialEq)]
struct Upgrade {
    tensor: usize,
    from: usize,
    gain_per_bit: f64,
}

impl Eq for Upgrade {}

impl Ord for Upgrade {
    fn cmp(&self, other: &Self) -> Ordering {
        self.gain_per_bit.total_cmp(&other.gain_per_bit).then(other.tensor.cmp(&self.tensor))
    }
}

impl PartialOrd for Upgrade {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Indices into `choices`, ascending in bits, of the lower convex hull of (bits, cost): every choice that some
/// price per bit makes the best.
fn hull<F>(choices: &[Choice<F>]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..choices.len()).collect();
    order.sort_by(|&a, &b| choices[a].bits.cmp(&choices[b].bits).then(choices[a].cost.total_cmp(&choices[b].cost)));
    let mut h: Vec<usize> = Vec::new();
    for i in order {
        let c = &choices[i];
        // Larger and no better than the last kept point: never worth it.
        if h.last().is_some_and(|&l| choices[l].cost <= c.cost) {
            continue;
        }
        if h.last().is_some_and(|&l| choices[l].bits == c.bits) {
            h.pop();
        }
        while h.len() >= 2 {
            let (a, b) = (&choices[h[h.len() - 2]], &choices[h[h.len() - 1]]);
            // Drop b when the slope a->c is at least as steep a descent as a->b.
            let slope_ab = (b.cost - a.cost) / (b.bits - a.bits) as f64;
            let slope_ac = (c.cost - a.cost) / (c.bits - a.bits) as f64;
            if slope_ac <= slope_ab {
                h.pop();
            } else {
                break;
            }
        }
        h.push(i);
    }
    h
}

/// One choice index per tensor, its formats' bits summing to at most `budget_bits`, chosen to keep the summed
/// cost low. Fails when even the smallest choices do not fit, naming the smallest possible total.
pub fn plan<F: Copy>(tensors: &[PlanTensor<F>], budget_bits: u64) -> Result<Vec<usize>> {
    if let Some(t) = tensors.iter().find(|t| t.choices.is_empty()) {
        return Err(Error::Plan { detail: format!("tensor {:?} has no format to choose from", t.name) });
    }
    if let Some((t, c)) = tensors.iter().find_map(|t| t.choices.iter().find(|c| !c.cost.is_finite()).map(|c| (t, c))) {
        return Err(Error::Plan { detail: format!("tensor {:?} has a non-finite cost {}", t.name, c.cost) });
    }
    let hulls: Vec<Vec<usize>> = tensors.iter().map(|t| hull(&t.choices)).collect();
    let mut at = vec![0usize; tensors.len()];
    let smallest: u64 = tensors.iter().zip(&hulls).map(|(t, h)| t.choices[h[0]].bits).sum();
    if smallest > budget_bits {
        return Err(Error::Plan {
            detail: format!("the budget of {budget_bits} bits is below the smallest possible total of {smallest} bits"),
        });
    }
    let mut left = budget_bits - smallest;
    let upgrade = |t: usize, from: usize| -> Option<Upgrade> {
        let h = &hulls[t];
        let (a, b) = (&tensors[t].choices[*h.get(from)?], &tensors[t].choices[*h.get(from + 1)?]);
        Some(Upgrade { tensor: t, from, gain_per_bit: (a.cost - b.cost) / (b.bits - a.bits) as f64 })
    };
    let mut heap: BinaryHeap<Upgrade> = (0..tensors.len()).filter_map(|t| upgrade(t, 0)).collect();
    while let Some(u) = heap.pop() {
        let h = &hulls[u.tensor];
        let extra = tensors[u.tensor].choices[h[u.from + 1]].bits - tensors[u.tensor].choices[h[u.from]].bits;
        if extra > left {
            continue; // Does not fit; smaller upgrades elsewhere may.
        }
        left -= extra;
        at[u.tensor] = u.from + 1;
        heap.extend(upgrade(u.tensor, u.from + 1));
    }
    Ok(at.iter().zip(&hulls).map(|(&i, h)| h[i]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, choices: &[(u64, f64)]) -> PlanTensor<u64> {
        PlanTensor {
            name: name.into(),
            choices: choices.iter().map(|&(bits, cost)| Choice { format: bits, bits, cost }).collect(),
        }
    }

    #[test]
    fn spends_bits_where_they_buy_the_most() {
        // a gains 9 per 100 bits by upgrading, b gains 1: with room for one upgrade, a gets it.
        let ts = [t("a", &[(100, 10.0), (200, 1.0)]), t("b", &[(100, 2.0), (200, 1.0)])];
        assert_eq!(plan(&ts, 300).unwrap(), vec![1, 0]);
        assert_eq!(plan(&ts, 400).unwrap(), vec![1, 1]);
        assert_eq!(plan(&ts, 299).unwrap(), vec![0, 0]);
    }

    #[test]
    fn skips_dominated_and_non_convex_choices() {
        // (150, 9.0) lies above the line from (100, 10) to (200, 1): the hull skips it; (300, 5) is dominated.
        let ts = [t("a", &[(300, 5.0), (150, 9.0), (100, 10.0), (200, 1.0)])];
        assert_eq!(hull(&ts[0].choices), vec![2, 3]);
        assert_eq!(plan(&ts, 250).unwrap(), vec![3]);
    }

    #[test]
    fn too_small_a_budget_is_an_error() {
        let ts = [t("a", &[(100, 1.0), (200, 0.0)])];
        let err = plan(&ts, 99).unwrap_err().to_string();
        assert!(err.contains("smallest possible total of 100 bits"), "{err}");
    }

    #[test]
    fn never_exceeds_the_budget() {
        let ts: Vec<_> = (0..20u64)
            .map(|i| t(&format!("t{i}"), &[(64 + i, 5.0 + i as f64), (96 + 2 * i, 2.0), (160 + i, 0.5 / (1 + i) as f64)]))
            .collect();
        for budget in (1470..4000).step_by(37) {
            let chosen = plan(&ts, budget).unwrap();
            let bits: u64 = chosen.iter().zip(&ts).map(|(&c, t)| t.choices[c].bits).sum();
            assert!(bits <= budget, "{bits} > {budget}");
        }
    }
}
