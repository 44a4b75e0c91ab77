//! Picking a token from logits: the rule every backend's `sample` follows, and its reference implementation.

/// How a backend picks the next token from a row of logits.
///
/// Candidates are the `top_k` largest logits, ordered by logit (descending, `f32::total_cmp`) and then by token
/// id (ascending), so that equal logits are taken in a fixed order. Their probabilities are
/// `exp((l - l_max) / temperature)`, normalized; the smallest prefix whose probabilities reach `top_p` is kept;
/// and `draw * (the kept probabilities' sum)` walks the kept candidates in order until it is used up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenSampling {
    /// `<= 0`: the largest logit (the lowest id among equals), and nothing else applies.
    pub temperature: f32,
    /// Candidates kept by rank (0: all).
    pub top_k: usize,
    /// Probability mass kept, in `(0, 1]`.
    pub top_p: f32,
    /// A uniform random draw in `[0, 1)`.
    pub draw: f32,
}

/// The most candidates a backend's `sample` takes (its `top_k`, when `temperature > 0`): a GPU sorts them in
/// one workgroup.
pub const MAX_SAMPLED_TOP_K: usize = 256;

impl TokenSampling {
    /// Greedy decoding: the largest logit.
    pub const GREEDY: TokenSampling = TokenSampling { temperature: 0.0, top_k: 1, top_p: 1.0, draw: 0.0 };

    /// Whether a backend's `sample` takes these settings: greedy, or `top_k` in `1..=MAX_SAMPLED_TOP_K`.
    pub fn fits_backend(&self) -> bool {
        self.temperature <= 0.0 || (1..=MAX_SAMPLED_TOP_K).contains(&self.top_k)
    }

    /// Checks the settings, naming the first one a backend's `sample` cannot take.
    pub fn check(&self) -> crate::Result<()> {
        let bad = |name, value: String, expected: String| Err(crate::Error::Setting { op: "sample", name, value, expected });
        if self.temperature.is_nan() {
            return bad("temperature", "NaN".into(), "a number".into());
        }
        if !self.fits_backend() {
            return bad("top_k", self.top_k.to_string(), format!("1 to {MAX_SAMPLED_TOP_K} when the temperature is above 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p.to_string(), "a number in (0, 1]".into());
        }
        if !(0.0..1.0).contains(&self.draw) {
            return bad("draw", self.draw.to_string(), "a number in [0, 1)".into());
        }
        Ok(())
    }
}

/// The candidates' order: larger logits first, then lower ids.
fn rank(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// The token [`TokenSampling`] picks from `logits` (0 for an empty row). `scratch` holds the candidates and is
/// reused between calls.
pub fn pick_token(logits: &[f32], s: &TokenSampling, scratch: &mut Vec<(u32, f32)>) -> u32 {
    if s.temperature <= 0.0 {
        let best = logits.iter().enumerate().map(|(i, &l)| (i as u32, l)).min_by(rank);
        return best.map_or(0, |(i, _)| i);
    }
    let kept = kept_candidates(logits, s, scratch);
    let total: f32 = kept.iter().map(|c| c.1).sum();
    let mut r = s.draw * total;
    for c in kept {
        r -= c.1;
        if r <= 0.0 {
            return c.0;
        }
    }
    kept.last().map_or(0, |c| c.0)
}

/// The candidates the draw of a sampled (`temperature > 0`) pick walks, in order, with their probabilities:
/// the `top_k` by rank, softmaxed at the temperature, cut to the `top_p` prefix.
pub fn kept_candidates<'a>(logits: &[f32], s: &TokenSampling, scratch: &'a mut Vec<(u32, f32)>) -> &'a [(u32, f32)] {
    scratch.clear();
    scratch.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
    let k = if s.top_k == 0 { scratch.len() } else { s.top_k.min(scratch.len()) };
    if k == 0 {
        return &[];
    }
    if k < scratch.len() {
        scratch.select_nth_unstable_by(k - 1, rank);
        scratch.truncate(k);
    }
    scratch.sort_unstable_by(rank);
    let max = scratch[0].1;
    let mut sum = 0f32;
    for c in scratch.iter_mut() {
        c.1 = ((c.1 - max) / s.temperature).exp();
        sum += c.1;
    }
    let mut cum = 0f32;
    let mut keep = k;
    for (i, c) in scratch.iter_mut().enumerate() {
        c.1 /= sum;
        cum += c.1;
        if cum >= s.top_p && keep == k {
            keep = i + 1;
        }
    }
    &scratch[..keep]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling(temperature: f32, top_k: usize, top_p: f32, draw: f32) -> TokenSampling {
        TokenSampling { temperature, top_k, top_p, draw }
    }

    #[test]
    fn greedy_takes_the_first_of_equal_maxima() {
        let mut scratch = Vec::new();
        assert_eq!(pick_token(&[1.0, 3.0, 3.0, -2.0], &TokenSampling::GREEDY, &mut scratch), 1);
        assert_eq!(pick_token(&[], &TokenSampling::GREEDY, &mut scratch), 0);
    }

    #[test]
    fn draws_walk_the_candidates_in_rank_order() {
        let mut scratch = Vec::new();
        // Two equal logits and a smaller one: probabilities about 0.42, 0.42, 0.16.
        let logits = [0.0, 1.0, 1.0];
        let pick = |draw| pick_token(&logits, &sampling(1.0, 3, 1.0, draw), &mut scratch.clone());
        assert_eq!([pick(0.1), pick(0.5), pick(0.95)], [1, 2, 0]);
        // top_k 1 is greedy whatever the draw; top_p 0.5 keeps the first two.
        assert_eq!(pick_token(&logits, &sampling(1.0, 1, 1.0, 0.99), &mut scratch), 1);
        assert_eq!(pick_token(&logits, &sampling(1.0, 3, 0.5, 0.99), &mut scratch), 2);
    }

    #[test]
    fn settings_a_backend_cannot_take_are_named() {
        assert!(sampling(0.0, 0, 1.0, 0.0).check().is_ok());
        let err = sampling(0.8, 0, 1.0, 0.0).check().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("top_k = 0"), "{err}");
        assert!(sampling(0.8, 40, 1.5, 0.0).check().is_err());
        assert!(sampling(0.8, 40, 0.9, 1.0).check().is_err());
    }
}
