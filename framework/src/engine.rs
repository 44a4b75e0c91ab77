use std::path::PathBuf;

use tern_core::TensorType;
use tern_loader::{LoadProgress, ModelSource};
use tern_model::{ChatMessage, ChatTemplate, Llama, SamplingParams, Tokenizer};

use crate::{AnyBackend, BackendChoice, Error, Result, Session};

type ProgressFn = Box<dyn FnMut(LoadProgress)>;

/// Configures and loads an [`Engine`].
pub struct EngineBuilder {
    path: PathBuf,
    backend: BackendChoice,
    threads: usize,
    context: usize,
    cache_type: TensorType,
    sampling: SamplingParams,
    progress: Option<ProgressFn>,
}

impl std::fmt::Debug for EngineBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineBuilder")
            .field("path", &self.path)
            .field("backend", &self.backend)
            .field("threads", &self.threads)
            .field("context", &self.context)
            .field("cache_type", &self.cache_type)
            .field("sampling", &self.sampling)
            .finish_non_exhaustive()
    }
}

/// Default context per session, in tokens (capped by the model's own).
pub const DEFAULT_CONTEXT: usize = 2048;

impl EngineBuilder {
    /// The backend to run on (default: [`BackendChoice::Auto`], a hardware GPU if there is one, else the CPU).
    pub fn backend(mut self, choice: BackendChoice) -> Self {
        self.backend = choice;
        self
    }

    /// CPU threads (0, the default: one per core).
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Tokens of context per session (capped by the model's context length).
    pub fn context(mut self, tokens: usize) -> Self {
        self.context = tokens;
        self
    }

    /// How sessions' KV caches store K and V: F16 (the default) or F32.
    pub fn cache_type(mut self, ty: TensorType) -> Self {
        self.cache_type = ty;
        self
    }

    /// Sampling used when a request does not give its own.
    pub fn sampling(mut self, params: SamplingParams) -> Self {
        self.sampling = params;
        self
    }

    /// Called after every tensor while loading.
    pub fn on_progress(mut self, f: impl FnMut(LoadProgress) + 'static) -> Self {
        self.progress = Some(Box::new(f));
        self
    }

    /// Opens and loads the model.
    pub fn build(mut self) -> Result<Engine> {
        if self.context == 0 {
            return Err(Error::Option { name: "context", detail: "must be at least 1 token".into() });
        }
        self.sampling.validate()?;
        let source = ModelSource::open(&self.path)?;
        let tokenizer = Tokenizer::from_source(&source)?;
        let template = match source.metadata().get("tokenizer.chat_template") {
            Some(_) => {
                let tok = |id: Option<u32>| id.and_then(|i| tokenizer.token(i)).unwrap_or_default();
                Some(ChatTemplate::new(
                    source.metadata().str("tokenizer.chat_template")?,
                    &tok(tokenizer.bos),
                    &tok(tokenizer.eos),
                )?)
            }
            None => None,
        };
        let backend = AnyBackend::new(self.backend, self.threads)?;
        let mut progress = self.progress.take();
        let mut model = Llama::load(&source, backend, &mut |p| {
            if let Some(f) = progress.as_mut() {
                f(p)
            }
        })?;
        model.set_cache_type(self.cache_type)?;
        let context = self.context.min(model.config.context_length);
        Ok(Engine { model, tokenizer, template, sampling: self.sampling, context, path: self.path })
    }
}

/// A loaded model, ready to generate. Each [`Session`] holds one conversation's KV cache.
#[derive(Debug)]
pub struct Engine {
    pub(crate) model: Llama<AnyBackend>,
    pub(crate) tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    pub(crate) sampling: SamplingParams,
    pub(crate) context: usize,
    path: PathBuf,
}

impl Engine {
    /// A builder for the model at `path` (a GGUF file or a Hugging Face model directory).
    pub fn builder(path: impl Into<PathBuf>) -> EngineBuilder {
        EngineBuilder {
            path: path.into(),
            backend: BackendChoice::default(),
            threads: 0,
            context: DEFAULT_CONTEXT,
            cache_type: tern_model::DEFAULT_CACHE_TYPE,
            sampling: SamplingParams::default(),
            progress: None,
        }
    }

    /// A new conversation with an empty KV cache.
    pub fn session(&self) -> Result<Session<'_>> {
        Session::new(self)
    }

    /// Generates a completion of `prompt` and returns its text.
    pub fn generate(&self, prompt: &str, options: &crate::GenerateOptions) -> Result<String> {
        let mut session = self.session()?;
        let mut text = String::new();
        for token in session.generate(prompt, options)? {
            text.push_str(&token?.text);
        }
        Ok(text)
    }

    /// The prompt text for a conversation, from the model's chat template.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<String> {
        let template = self.template.as_ref().ok_or(Error::NoChatTemplate)?;
        Ok(template.render(messages, true)?)
    }

    /// The model.
    pub fn model(&self) -> &Llama<AnyBackend> {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Sampling used when a request gives none.
    pub fn default_sampling(&self) -> &SamplingParams {
        &self.sampling
    }

    /// Tokens of context per session.
    pub fn context(&self) -> usize {
        self.context
    }

    /// Where the model was loaded from.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}
