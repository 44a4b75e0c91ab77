//! tern's WebGPU backend: [`tern_core::Backend`] on `wgpu` (Vulkan, Metal and DX12 natively).
//!
//! - Device setup asks for everything the adapter allows and reports what it found ([`adapters`],
//!   [`AdapterReport`]); failures (no adapter, a buffer past the binding limit, a kernel the adapter rejects,
//!   a lost device) are [`tern_core::Error`]s that say what to do, never panics.
//! - Weights are uploaded once, in tern's structure-of-arrays layout; every op is a kernel from
//!   `tern-shaders`, compiled on first use and cached under its typed [`tern_shaders::Kernel`] key.
//! - Ops are recorded into one command encoder and submitted when a result is read, so a model's forward
//!   step is one submit.

mod backend;
mod choice;
mod device;
mod pool;
mod profile;
mod recorder;
mod tensor;

pub use backend::WebGpuBackend;
pub use choice::KernelChoice;
pub use device::{AdapterChoice, AdapterReport, adapters};
pub use profile::{KernelTime, Profile};
pub use recorder::GpuReading;
pub use tensor::{GpuMatrix, GpuTensor};
