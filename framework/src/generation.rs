use std::collections::VecDeque;

use tern_core::Backend;
use tern_model::{KvCache, Sampler, SamplingParams, Scratch, StepInput, StopStrings, TextStream};

use crate::{AnyBackend, AnyReading, Engine, Error, Result};

/// Decode steps queued on the device ahead of the token the host waits for, when tokens are picked on the
/// device. With two, the host records a step while the device still runs two: a 7B step's recording and submit
/// take the H100 machine's host about 1.5 ms against the GPU's 2.2, and with only one step ahead the host's
/// slower steps left the GPU idle (7B T4 decode 429-445 t/s against a steady 449 with two; BENCHMARKS.md). The
/// cost: a generation that ends early has run up to two steps that are then dropped.
pub const STEPS_IN_FLIGHT: usize = 2;

/// What one generation request asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling; `None` uses the engine's default.
    pub sampling: Option<SamplingParams>,
    /// Generation ends before any of these strings; they are not part of the output.
    pub stop: Vec<String>,
}

impl GenerateOptions {
    /// Greedy decoding of at most `max_tokens` tokens.
    pub fn greedy(max_tokens: usize) -> Self {
        GenerateOptions {
            max_tokens,
            sampling: Some(SamplingParams { temperature: 0.0, ..SamplingParams::default() }),
            stop: Vec::new(),
        }
    }
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 256, sampling: None, stop: Vec::new() }
    }
}

/// One generated token and the text it completed (possibly empty while a character or a possible stop string
/// is still incomplete).
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    pub text: String,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-sequence or end-of-turn token.
    EndOfSequence,
    /// `max_tokens` were generated.
    Length,
    /// A stop string appeared.
    StopString,
    /// The session's context is full.
    ContextFull,
}

/// One conversation: its tokens and KV cache. A new prompt that starts with what the session already holds
/// (the next turn of a chat) reuses the cache and only runs the new tokens.
#[derive(Debug)]
pub struct Session<'e> {
    engine: &'e Engine,
    cache: KvCache<AnyBackend>,
    scratch: Scratch<AnyBackend>,
    tokens: Vec<u32>,
}

impl<'e> Session<'e> {
    pub(crate) fn new(engine: &'e Engine) -> Result<Self> {
        let backend = engine.model.backend();
        Ok(Session {
            engine,
            cache: engine.model.new_cache(engine.context)?,
            scratch: Scratch::new(backend)?,
            tokens: Vec::new(),
        })
    }

    /// Tokens in the session (prompts and generated tokens so far).
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Starts generating a continuation of `prompt`, which is the whole text of the conversation so far.
    pub fn generate(&mut self, prompt: &str, options: &GenerateOptions) -> Result<Generation<'_, 'e>> {
        let ids = self.engine.tokenizer.encode(prompt)?;
        self.generate_ids(&ids, options)
    }

    /// Like [`Session::generate`], from token ids.
    pub fn generate_ids(&mut self, ids: &[u32], options: &GenerateOptions) -> Result<Generation<'_, 'e>> {
        if ids.is_empty() {
            return Err(Error::Option { name: "prompt", detail: "is empty (it must hold at least one token)".into() });
        }
        if ids.len() >= self.cache.capacity() {
            return Err(Error::Option {
                name: "prompt",
                detail: format!("{} tokens do not fit the context of {} tokens", ids.len(), self.cache.capacity()),
            });
        }
        let sampling = options.sampling.clone().unwrap_or_else(|| self.engine.sampling.clone());
        let sampler = Sampler::new(sampling)?;
        // Keep the cached prefix the new prompt shares; always rerun at least the last prompt token for logits.
        let common = self.tokens.iter().zip(ids).take_while(|(a, b)| a == b).count();
        let common = common.min(ids.len() - 1).min(self.cache.len());
        self.cache.truncate(common);
        self.tokens.truncate(common);
        let pending = ids[common..].to_vec();
        let on_device = self.engine.model.backend().queues_work() && sampler.fits_backend();
        Ok(Generation {
            session: self,
            on_device,
            in_flight: VecDeque::new(),
            sampler,
            pending,
            max_tokens: options.max_tokens,
            generated: 0,
            text: TextStream::new(),
            stops: StopStrings::new(&options.stop),
            finish: None,
        })
    }
}

/// A running generation: an iterator of [`Token`]s. The model runs lazily, one step per `next()`.
#[derive(Debug)]
pub struct Generation<'s, 'e> {
    session: &'s mut Session<'e>,
    /// Tokens are picked on the device, and up to [`STEPS_IN_FLIGHT`] steps are queued ahead of the token
    /// being read back.
    on_device: bool,
    /// The readings of the tokens the queued steps pick, oldest first; each step after the first runs the token
    /// the one before it picks.
    in_flight: VecDeque<AnyReading>,
    sampler: Sampler,
    /// Tokens accepted but not yet run through the model.
    pending: Vec<u32>,
    max_tokens: usize,
    generated: usize,
    text: TextStream,
    stops: StopStrings,
    finish: Option<FinishReason>,
}

impl Generation<'_, '_> {
    /// Why generation ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    fn end(&mut self, reason: FinishReason, id: u32) -> Result<Option<Token>> {
        self.finish = Some(reason);
        let tokenizer = &self.session.engine.tokenizer;
        let mut text = String::new();
        if reason != FinishReason::StopString {
            let (tail, stopped) = self.stops.push(&self.text.finish(tokenizer)?);
            text.push_str(&tail);
            if !stopped {
                text.push_str(&self.stops.finish());
            }
        }
        Ok(if text.is_empty() { None } else { Some(Token { id, text }) })
    }

    fn step(&mut self) -> Result<Option<Token>> {
        if self.finish.is_some() {
            return Ok(None);
        }
        if self.generated >= self.max_tokens {
            return self.end(FinishReason::Length, 0);
        }
        let s = &mut *self.session;
        if s.tokens.len() + self.pending.len() > s.cache.capacity() {
            return self.end(FinishReason::ContextFull, 0);
        }
        let id = if self.on_device { self.next_on_device()? } else { self.next_on_host()? };
        self.generated += 1;
        let s = &mut *self.session;
        let tokenizer = &s.engine.tokenizer;
        if tokenizer.stop_ids.contains(&id) {
            // Steps queued ahead have run the end token (and what followed it): take them out of the cache.
            self.in_flight.clear();
            s.cache.truncate(s.tokens.len());
            return self.end(FinishReason::EndOfSequence, id);
        }
        if !self.in_flight.is_empty() {
            s.tokens.push(id);
        } else {
            self.pending.push(id);
        }
        let piece = self.text.push(tokenizer, id)?;
        let (text, stopped) = self.stops.push(&piece);
        if stopped {
            self.finish = Some(FinishReason::StopString);
        }
        Ok(Some(Token { id, text }))
    }
}

impl Generation<'_, '_> {
    /// Runs the pending tokens and samples the next one on the host.
    fn next_on_host(&mut self) -> Result<u32> {
        let s = &mut *self.session;
        let model = &s.engine.model;
        let (pending, cache, scratch) = (&self.pending, &mut s.cache, &mut s.scratch);
        let logits = model.backend().install(|| model.forward(pending, cache, scratch, false))?;
        s.tokens.append(&mut self.pending);
        Ok(self.sampler.sample(&logits, &s.tokens))
    }

    /// The next token, sampled on the device. Before waiting for it, the steps that run it and the tokens after
    /// it are queued, [`STEPS_IN_FLIGHT`] ahead (but none for a token that will not be wanted), so the device
    /// works while the host streams the token out and records the next step.
    fn next_on_device(&mut self) -> Result<u32> {
        let s = &mut *self.session;
        let model = &s.engine.model;
        let be = model.backend();
        if self.in_flight.is_empty() {
            let sampling = self.sampler.next_draw();
            let (pending, cache, scratch) = (&self.pending, &mut s.cache, &mut s.scratch);
            self.in_flight.push_back(be.install(|| model.forward_sample(StepInput::Tokens(pending), cache, scratch, &sampling))?);
            s.tokens.append(&mut self.pending);
        }
        // A new step runs the token of the last reading: token `generated + in_flight.len()` of this generation,
        // wanted as input only if a token follows it.
        while self.in_flight.len() <= STEPS_IN_FLIGHT
            && self.generated + self.in_flight.len() < self.max_tokens
            && s.cache.len() < s.cache.capacity()
        {
            let sampling = self.sampler.next_draw();
            let (cache, scratch) = (&mut s.cache, &mut s.scratch);
            self.in_flight.push_back(be.install(|| model.forward_sample(StepInput::Sampled, cache, scratch, &sampling))?);
        }
        let Some(reading) = self.in_flight.pop_front() else {
            return Err(tern_core::Error::Device { detail: "no step was queued for the next token".into() }.into());
        };
        let values = be.read_finish(reading)?;
        values
            .first()
            .map(|v| v.to_bits())
            .ok_or_else(|| tern_core::Error::Device { detail: "a sampled token never came back".into() }.into())
    }
}

impl Iterator for Generation<'_, '_> {
    type Item = Result<Token>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.step() {
            Ok(Some(t)) => Some(Ok(t)),
            Ok(None) => None,
            Err(e) => {
                self.finish = Some(FinishReason::ContextFull);
                Some(Err(e))
            }
        }
    }
}

impl Drop for Generation<'_, '_> {
    fn drop(&mut self) {
        // A last token in `pending` was never run through the model (a step queued ahead has run it, and it is
        // already in the session's tokens). Keeping it in the tokens is still right: a next prompt reuses the
        // cache only up to `cache.len()` and reruns the rest.
        self.session.tokens.append(&mut self.pending);
    }
}
