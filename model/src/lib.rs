//! tern's model layer: architectures written once against [`tern_core::Backend`], and the text around them.
//!
//! - [`LlamaConfig`] and [`Llama`]: the Llama family (Llama 2/3, SmolLM2, TinyLlama, Mistral) from GGUF or
//!   Hugging Face files; batched prefill of a whole prompt and one-token decode over a [`KvCache`].
//! - [`Tokenizer`]: built with the `tokenizers` crate from GGUF metadata (GPT-2-style BPE) or `tokenizer.json`,
//!   with [`TextStream`] for incremental, UTF-8-safe detokenization.
//! - [`ChatTemplate`]: the model's Jinja chat template rendered with `minijinja`.
//! - [`Sampler`]: greedy, temperature, top-k, top-p, repetition penalty, seeded.
//! - [`StopStrings`]: holds back text that may be the start of a stop string.

mod config;
mod error;
mod kv_cache;
mod llama;
mod sampler;
mod stop;
mod synthetic;
mod template;
mod tokenizer;

pub use config::LlamaConfig;
pub use error::{Error, Result};
pub use kv_cache::KvCache;
pub use llama::{DEFAULT_CACHE_TYPE, Llama, Observer, Scratch, StepInput};
pub use sampler::{Sampler, SamplingParams};
pub use stop::StopStrings;
pub use template::{ChatMessage, ChatTemplate};
pub use tokenizer::{TextStream, Tokenizer};
