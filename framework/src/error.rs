/// Everything that can go wrong in tern, by layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(#[from] tern_loader::Error),
    #[error(transparent)]
    Model(#[from] tern_model::Error),
    #[error(transparent)]
    Backend(#[from] tern_core::Error),
    #[error("invalid option {name}: {detail}")]
    Option { name: &'static str, detail: String },
    #[error("this model has no chat template; use plain generation")]
    NoChatTemplate,
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
