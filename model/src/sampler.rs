//! Choosing the next token from logits.

use tern_core::{TokenSampling, pick_token};

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

    /// Whether a backend's `sample` can pick the tokens: not with a repetition penalty (it reads the history on
    /// the host) nor with more candidates than [`tern_core::MAX_SAMPLED_TOP_K`].
    pub fn fits_backend(&self) -> bool {
        self.params.repeat_penalty == 1.0 && self.token_sampling(0.0).fits_backend()
    }

    /// The next token's settings as a backend's `sample` takes them, with its random draw made now (the same
    /// draw [`Sampler::sample`] would make).
    pub fn next_draw(&mut self) -> TokenSampling {
        let draw = if self.params.temperature > 0.0 { self.next_f32() } else { 0.0 };
        self.token_sampling(draw)
    }

    fn token_sampling(&self, draw: f32) -> TokenSampling {
        let p = &self.params;
        TokenSampling { temperature: p.temperature, top_k: p.top_k, top_p: p.top_p, draw }
    }

    /// Picks the next token from `logits`, given the tokens so far (`history`, for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let p = &self.params;
        let recent = &history[history.len().saturating_sub(p.repeat_last_n)..];
        let mut penalized;
        let logits = if p.repeat_penalty != 1.0 {
            penalized = logits.to_vec();
            // Once per token, however often it appears.
            let mut seen = recent.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = penalized.get_mut(id as usize) {
                    *l = if *l > 0.0 { *l / p.repeat_penalty } else { *l * p.repeat_penalty };
                }
            }
            &penalized[..]
        } else {
            logits
        };
        let s = self.next_draw();
        pick_token(logits, &s, &mut self.candidates)
    }
}
