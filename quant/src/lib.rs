//! tern's weight formats.
//!
//! Files store blocks as GGUF does: an array of structures (`{d, m, qs[16]}` for Q4_1, say). tern repacks them
//! once at load time into [`PackedMatrix`], a structure of arrays: quants, scales and mins each in their own
//! u32-aligned word array, so that a WGSL shader (which has no u8 or u16) reads whole words and a CPU kernel
//! streams each part linearly. [`dequantize_gguf`] and [`PackedMatrix::dequantize_row`] are the scalar
//! references every kernel is tested against.
//!
//! [`TernMatrix`] holds tern's own 2/3/4/8-bit formats ([`TernFormat`]), quantized by an importance-weighted
//! least-squares search; `docs/FORMATS.md` gives their layouts.

mod error;
mod feedback;
mod gguf_blocks;
mod packed;
pub mod plan;
mod quantize;
pub mod rotation;
mod tern_formats;
pub mod trellis;

pub use error::{Error, Result};
pub use feedback::FeedbackFactor;
pub use gguf_blocks::dequantize_gguf;
pub use packed::{PackedMatrix, dequantize_row};
pub use quantize::quantize_gguf;
pub use tern_core::TensorType;
pub use tern_core::TernFormat;
pub use tern_formats::{TernMatrix, TernRow};
