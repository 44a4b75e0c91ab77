/// Errors from reading model files. Every variant names the file (`path`) and what in it was wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not a GGUF file (magic bytes {found:02x?}, expected \"GGUF\")")]
    BadMagic { path: String, found: Vec<u8> },
    #[error("{path}: GGUF version {version} is not supported (tern reads versions 2 and 3)")]
    UnsupportedVersion { path: String, version: u32 },
    #[error("{path}: truncated: reading {what} at byte {offset} needs {needed} bytes but the file has {len}")]
    Truncated { path: String, what: String, offset: usize, needed: usize, len: usize },
    #[error("{path}: {what} is {value}, above the limit of {limit}")]
    Limit { path: String, what: String, value: u64, limit: u64 },
    #[error("{path}: metadata key {key:?} has unknown value type {ty}")]
    UnknownValueType { path: String, key: String, ty: u32 },
    #[error("{path}: {what} is not valid UTF-8")]
    BadString { path: String, what: String },
    #[error(
        "{path}: tensor {tensor:?} has tensor type {ty}, which tern does not know (it reads F32, F16, BF16, Q4_0, Q4_1, Q8_0)"
    )]
    UnknownTensorType { path: String, tensor: String, ty: u32 },
    #[error(
        "{path}: tensor {tensor:?} is stored in tern format {name:?}, which this version of tern does not know (it reads T2, T3, T4, T8, TR2, TR3, TR4)"
    )]
    UnknownTernType { path: String, tensor: String, name: String },
    #[error("{path}: tensor {tensor:?}: {detail}")]
    BadTensor { path: String, tensor: String, detail: String },
    #[error("{path}: tensor {tensor:?} data (offset {offset}, {size} bytes) lies past the end of the file ({len} bytes)")]
    TensorOutOfBounds { path: String, tensor: String, offset: u64, size: u64, len: u64 },
    #[error("{path}: metadata key {key:?} is missing")]
    MissingKey { path: String, key: String },
    #[error("{path}: metadata key {key:?} should be {expected}, found {found}")]
    KeyType { path: String, key: String, expected: &'static str, found: String },
    #[error("{path}: tensor {tensor:?} is missing")]
    MissingTensor { path: String, tensor: String },
    #[error("{path}: {detail}")]
    Format { path: String, detail: String },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
