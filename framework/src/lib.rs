//! tern: quantized language models on any GPU through WebGPU, or a fast multi-threaded CPU, embedded in one crate.
//!
//! ```no_run
//! use tern::{Engine, GenerateOptions};
//! let engine = Engine::builder("models/SmolLM2-135M-Instruct.Q4_1.gguf").threads(2).build()?;
//! let mut session = engine.session()?;
//! for token in session.generate("The capital of France is", &GenerateOptions::greedy(16))? {
//!     print!("{}", token?.text);
//! }
//! # Ok::<(), tern::Error>(())
//! ```
//!
//! The crates underneath are re-exported for users who need one layer only.

mod backend;
mod engine;
mod error;
pub mod eval;
mod generation;
pub mod imatrix;
pub mod quantize;

pub use backend::{AnyBackend, AnyMatrix, AnyReading, AnyTensor, BackendChoice};
pub use engine::{Engine, EngineBuilder};
pub use error::{Error, Result};
pub use eval::{EvalOptions, EvalReport, Reference, evaluate};
pub use generation::{FinishReason, GenerateOptions, Generation, STEPS_IN_FLIGHT, Session, Token};
pub use imatrix::{ImportanceMatrix, SecondMoments};
pub use quantize::{Precision, QuantizeOptions, QuantizeReport, quantize};

pub use tern_backend_cpu as backend_cpu;
#[cfg(feature = "webgpu")]
pub use tern_backend_webgpu as backend_webgpu;
pub use tern_core as core;
pub use tern_loader as loader;
pub use tern_model as model;
pub use tern_quant as quant;

pub use tern_loader::LoadProgress;
pub use tern_model::{ChatMessage, SamplingParams};
