use tern_core::TensorType;

/// Errors from packing and unpacking weights.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The byte count does not match the element count for this type.
    #[error("{ty} data for {elements} elements must be {expected} bytes, got {actual}")]
    Length { ty: TensorType, elements: usize, expected: usize, actual: usize },
    /// Block formats need whole blocks per row.
    #[error("{ty} rows must be a multiple of {block} elements, got a row of {cols}")]
    RowLength { ty: TensorType, cols: usize, block: usize },
    /// Input that a tern format cannot quantize (shape, importance, non-finite weights).
    #[error("tern format: {detail}")]
    TernShape { detail: String },
    /// The mixed-precision planner cannot meet what it was asked.
    #[error("mixed-precision plan: {detail}")]
    Plan { detail: String },
    /// The operation is not defined for this type.
    #[error("{op} is not supported for {ty}")]
    Unsupported { op: &'static str, ty: TensorType },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
