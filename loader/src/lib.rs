//! tern's model readers.
//!
//! [`GgufFile`] reads GGUF versions 2 and 3: every metadata value type, tensor infos, alignment, and zero-copy
//! tensor views over a memory map (native) or an owned byte buffer (browser). [`HfModel`] reads the Hugging Face
//! layout (`config.json`, `*.safetensors`, `tokenizer.json`) for f32/f16/bf16 weights and presents it with the
//! same tensor names and metadata keys as a GGUF file, so [`ModelSource`] is one thing to the model code.
//! [`GgufWriter`] writes GGUF version 3.
//!
//! Everything read from a file is checked: offsets and lengths with checked arithmetic, counts and string
//! lengths against limits, and every error names the file and the field or tensor that was wrong.

mod bytes;
mod error;
mod gguf;
mod hf;
mod metadata;
mod source;
mod writer;

pub use bytes::Bytes;
pub use error::{Error, Result};
pub use gguf::{GGUF_I8, GgufFile, MAX_DIMS, MAX_STRING_LEN, TensorInfo, tern_dims_key, tern_type_key};
pub use hf::HfModel;
pub use metadata::{MetaValue, Metadata};
pub use source::{LoadProgress, ModelSource, TensorData};
pub use writer::GgufWriter;
