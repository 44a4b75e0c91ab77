use crate::TensorType;

/// Errors shared by every backend: what an op was given and why it could not run it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Two operands of an op do not fit together.
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    /// The backend has no kernel for this tensor type in this op.
    #[error("{op}: tensor type {ty} is not supported by the {backend} backend")]
    Unsupported { op: &'static str, ty: TensorType, backend: &'static str },
    /// A packed matrix's parts do not have the lengths its shape and type require.
    #[error("packed {ty} matrix {rows}x{cols}: {detail}")]
    BadMatrix { ty: TensorType, rows: usize, cols: usize, detail: String },
    /// The device could not provide memory for a buffer.
    #[error("out of memory: {reason}")]
    OutOfMemory { reason: String },
    /// No device of the kind asked for could be had, or it could not be set up.
    #[error("no usable GPU: {detail}")]
    NoDevice { detail: String },
    /// The device reported a failure: a validation or internal error, or the device was lost.
    #[error("GPU device error: {detail}")]
    Device { detail: String },
    /// A tensor or weight part needs a larger buffer than the device allows in one binding.
    #[error(
        "{what} needs a buffer of {bytes} bytes, past this device's limit of {limit} bytes per storage binding; \
         use a smaller model or format, or the CPU backend (--backend cpu)"
    )]
    BufferLimit { what: String, bytes: u64, limit: u64 },
    /// A setting of an op is outside what the op takes.
    #[error("{op}: {name} = {value}: expected {expected}")]
    Setting { op: &'static str, name: &'static str, value: String, expected: String },
    /// A sequence went past the space its KV cache was sized for.
    #[error("context full: position {pos} is past the KV cache's {capacity} positions")]
    ContextFull { pos: usize, capacity: usize },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A shape error for `op`.
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }
}
