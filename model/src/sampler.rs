//! Choosing the next token from logits.

use crate::{Error, Result};

/// How to pick tokens. `temperature <= 0` is greedy (argmax).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probabilities add up to `top_p` (1: all).
    pub top_p: f32,
    /// Divides positive logits (multiplies negative ones) of tokens seen in the last `repeat_last_n` tokens.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.8, top_k: 40, top_p: 0.95, repeat_penalty: 1.0, repeat_last_n: 64, seed: 0 }
    }
}

impl SamplingParams {
    /// Checks every field, naming the first that is out of range.
    pub fn validate(&self) -> Result<()> {
        let bad = |name, value: String, expected| Err(Error::Sampling { name, value, expected });
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return bad("temperature", self.temperature.to_string(), "a finite number >= 0");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p.to_string(), "a number in (0, 1]");
        }
        if !self.repeat_penalty.is_finite() || self.repeat_penalty <= 0.0 {
            return bad("repeat_penalty", self.repeat_penalty.to_string(), "a finite number > 0");
        }
        Ok(())
    }
}

/// A seeded sampler. The random source is SplitMix64 (Steele, Lea and Flood, 2014): small, fast, and the same
/// sequence on every platform for a seed.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    state: u64,
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for `params` (validated).
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Sampler { state: params.seed, params, candidates: Vec::new() })
    }

    fn next_f32(&mut self) -> f32 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Picks the next token from `logits`, given the tokens so far (`history`, for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
        let penalized = |id: usize, l: f32| {
            if p.repeat_penalty != 1.0 && recent.contains(&(id as u32)) {
                if l > 0.0 { l / p.repeat_penalty } else { l * p.repeat_penalty }
            } else {
                l
            }
        };
        if p.temperature <= 0.0 {
            let mut best = (0u32, f32::NEG_INFINITY);
            for (i, &l) in logits.iter().enumerate() {
                let l = penalized(i, l);
                if l > best.1 {
                    best = (i as u32, l);
                }
            }
            return best.0;
        }
        self.candidates.clear();
        self.candidates.extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, penalized(i, l))));
        let by_logit = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1);
        let k = if p.top_k == 0 { self.candidates.len() } else { p.top_k.min(self.candidates.len()) };
        if k < self.candidates.len() {
            self.candidates.select_nth_unstable_by(k - 1, by_logit);
            self.candidates.truncate(k);
        }
        self.candidates.sort_unstable_by(by_logit);
        let Some(&(_, max)) = self.candidates.first() else { return 0 };
        let t = p.temperature;
        let mut sum = 0f32;
        for c in self.candidates.iter_mut() {
            c.1 = ((c.1 - max) / t).exp();
            sum += c.1;
        }
        let mut cum = 0f32;
        let n = self.candidates.len();
        let mut keep = n;
        for (i, c) in self.candidates.iter_mut().enumerate() {
            c.1 /= sum;
            cum += c.1;
            if cum >= p.top_p && keep == n {
                keep = i + 1;
            }
        }
        self.candidates.truncate(keep);
        let total: f32 = self.candidates.iter().map(|c| c.1).sum();
        let mut r = self.next_f32() * total;
        for c in &self.candidates {
            r -= c.1;
            if r <= 0.0 {
                return c.0;
            }
        }
        self.candidates.last().map_or(0, |c| c.0)
    }
}
