//! tern's shared vocabulary.
//!
//! Every other tern crate speaks in these terms: [`TensorType`] names how a tensor's elements are stored,
//! [`MatrixView`] is a borrowed packed weight matrix in tern's structure-of-arrays layout, and [`Backend`] is
//! the op contract that the CPU and GPU backends implement and the model code is written against.

mod backend;
mod error;
mod sampling;
mod types;

pub use backend::{AttentionParams, Backend, RopeParams, RopeStyle};
pub use error::{Error, Result};
pub use sampling::{MAX_SAMPLED_TOP_K, TokenSampling, kept_candidates, pick_token};
pub use types::{BLOCK_LEN, MatrixView, TERN_TYPE_BASE, TensorType, TernFormat};
