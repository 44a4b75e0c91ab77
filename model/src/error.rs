/// Errors from building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(#[from] tern_loader::Error),
    #[error(transparent)]
    Backend(#[from] tern_core::Error),
    #[error("{path}: tensor {tensor:?}: {source}")]
    Weights { path: String, tensor: String, source: tern_quant::Error },
    #[error("{path}: {detail}")]
    Config { path: String, detail: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("invalid sampling parameter {name} = {value}: {expected}")]
    Sampling { name: &'static str, value: String, expected: &'static str },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
