//! tern's CPU backend.
//!
//! Quantized matrix products quantize each activation row to int8 in blocks of 32 (a scale and the scaled sum
//! per block), then take integer dot products against the packed weights: AVX-512 VNNI or AVX2 chosen at run
//! time on x86-64, a portable scalar path everywhere else. With the `parallel` feature (off for single-threaded
//! wasm32 builds), work is split over output rows on the backend's team of threads, which spin between the
//! short sections of a decode step (`team`), or on rayon's threads when the team is taken.

#[cfg(not(target_endian = "little"))]
compile_error!("tern's packed layouts are little-endian words");

mod backend;
mod groups;
mod ops;
mod parallel;
mod simd;
#[cfg(feature = "parallel")]
mod team;
mod tensor;

pub use backend::CpuBackend;
pub use simd::SimdLevel;
pub use tensor::{CpuMatrix, CpuTensor};
