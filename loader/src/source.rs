use crate::{Error, GgufFile, HfModel, Metadata, Result, TensorInfo};

/// A model's files, whichever layout they came in, under GGUF's tensor names and metadata keys.
#[derive(Debug)]
pub enum ModelSource {
    Gguf(GgufFile),
    HuggingFace(HfModel),
}

/// One tensor's directory entry and its bytes.
#[derive(Debug, Clone, Copy)]
pub struct TensorData<'a> {
    pub info: &'a TensorInfo,
    pub bytes: &'a [u8],
}

/// How far loading has come, for progress bars.
#[derive(Debug, Clone)]
pub struct LoadProgress {
    /// The tensor just finished.
    pub tensor: String,
    /// Bytes of tensor data done so far.
    pub done_bytes: u64,
    /// Bytes of tensor data in all.
    pub total_bytes: u64,
}

impl ModelSource {
    /// Opens a GGUF file, or a Hugging Face model directory (or its `config.json`).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            return Ok(ModelSource::HuggingFace(HfModel::open(path)?));
        }
        if path.file_name().is_some_and(|n| n == "config.json") {
            let dir = path.parent().unwrap_or(std::path::Path::new("."));
            return Ok(ModelSource::HuggingFace(HfModel::open(dir)?));
        }
        if !path.exists() {
            return Err(Error::Io {
                path: path.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            });
        }
        Ok(ModelSource::Gguf(GgufFile::open(path)?))
    }

    /// Where the model came from, for messages.
    pub fn path(&self) -> &str {
        match self {
            ModelSource::Gguf(g) => &g.path,
            ModelSource::HuggingFace(h) => &h.path,
        }
    }

    /// The metadata, under GGUF's keys.
    pub fn metadata(&self) -> &Metadata {
        match self {
            ModelSource::Gguf(g) => &g.metadata,
            ModelSource::HuggingFace(h) => &h.metadata,
        }
    }

    /// The tensor directory.
    pub fn tensors(&self) -> &[TensorInfo] {
        match self {
            ModelSource::Gguf(g) => &g.tensors,
            ModelSource::HuggingFace(h) => &h.tensors,
        }
    }

    /// The tensor called `name`, or `None` when the model has none.
    pub fn get(&self, name: &str) -> Option<TensorData<'_>> {
        let i = self.tensors().iter().position(|t| t.name == name)?;
        let info = &self.tensors()[i];
        let bytes = match self {
            ModelSource::Gguf(g) => g.data(info),
            ModelSource::HuggingFace(h) => h.data(i),
        };
        Some(TensorData { info, bytes })
    }

    /// The tensor called `name`, or an error naming it.
    pub fn tensor(&self, name: &str) -> Result<TensorData<'_>> {
        self.get(name).ok_or_else(|| Error::MissingTensor { path: self.path().into(), tensor: name.into() })
    }

    /// The raw `tokenizer.json` of a Hugging Face model, or of a GGUF file that carries one under GGUF's
    /// `tokenizer.huggingface.json` key (as tern's quantized files made from Hugging Face models do); other
    /// GGUF files describe their tokenizer in `tokenizer.ggml.*` keys.
    pub fn tokenizer_json(&self) -> Option<&[u8]> {
        match self {
            ModelSource::Gguf(g) => match g.metadata.get("tokenizer.huggingface.json") {
                Some(crate::MetaValue::String(s)) => Some(s.as_bytes()),
                _ => None,
            },
            ModelSource::HuggingFace(h) => h.tokenizer_json.as_deref(),
        }
    }
}
