//! The Hugging Face layout: `config.json`, one or more `*.safetensors`, `tokenizer.json`, and optionally
//! `tokenizer_config.json` (for the chat template). Presented under GGUF's tensor names and metadata keys.

use std::path::Path;

use serde_json::Value;
use tern_core::TensorType;

use crate::metadata::{MetaValue, Metadata};
use crate::{Bytes, Error, Result, TensorInfo};

/// A Hugging Face model directory, read.
#[derive(Debug)]
pub struct HfModel {
    pub path: String,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    /// Which of `files` each of `tensors` lives in.
    file_of: Vec<usize>,
    files: Vec<Bytes>,
    /// The raw `tokenizer.json`, when present.
    pub tokenizer_json: Option<Vec<u8>>,
}

/// GGUF's tensor name for a Hugging Face Llama tensor name.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let part = match part {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}"))
}

#[cfg(not(target_arch = "wasm32"))]
fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    serde_json::from_slice(&text)
        .map_err(|e| Error::Format { path: path.display().to_string(), detail: format!("invalid JSON: {e}") })
}

impl HfModel {
    /// Reads the model directory `dir`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let config_path = dir.join("config.json");
        let config = read_json(&config_path)?;
        let mut shards: Vec<_> = std::fs::read_dir(dir)
            .map_err(|source| Error::Io { path: dir.display().to_string(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        shards.sort();
        if shards.is_empty() {
            return Err(Error::Format {
                path: dir.display().to_string(),
                detail: "no *.safetensors files in the model directory".into(),
            });
        }
        let mut files = Vec::new();
        let mut names = Vec::new();
        for p in &shards {
            files.push(Bytes::map(p)?);
            names.push(p.display().to_string());
        }
        let tokenizer_json = std::fs::read(dir.join("tokenizer.json")).ok();
        let tokenizer_config = dir.join("tokenizer_config.json");
        let tokenizer_config = if tokenizer_config.exists() { Some(read_json(&tokenizer_config)?) } else { None };
        Self::from_parts(dir.display().to_string(), &config, tokenizer_config.as_ref(), names, files, tokenizer_json)
    }

    /// Builds the model from already-read parts: `config.json` and `tokenizer_config.json` values, and the
    /// safetensors files (`names` label them in errors).
    pub fn from_parts(
        path: String,
        config: &Value,
        tokenizer_config: Option<&Value>,
        names: Vec<String>,
        files: Vec<Bytes>,
        tokenizer_json: Option<Vec<u8>>,
    ) -> Result<Self> {
        let metadata = config_metadata(&path, config, tokenizer_config)?;
        let mut tensors = Vec::new();
        let mut file_of = Vec::new();
        for (i, (name, bytes)) in names.iter().zip(&files).enumerate() {
            let (header_len, meta) = safetensors::SafeTensors::read_metadata(bytes)
                .map_err(|e| Error::Format { path: name.clone(), detail: format!("invalid safetensors header: {e}") })?;
            let data_start = 8usize
                .checked_add(header_len)
                .ok_or_else(|| Error::Format { path: name.clone(), detail: "header length overflows".into() })?;
            for (hf_name, info) in meta.tensors() {
                let Some(gguf) = gguf_name(&hf_name) else {
                    continue;
                };
                let ty = match info.dtype {
                    safetensors::Dtype::F32 => TensorType::F32,
                    safetensors::Dtype::F16 => TensorType::F16,
                    safetensors::Dtype::BF16 => TensorType::Bf16,
                    other => {
                        return Err(Error::BadTensor {
                            path: name.clone(),
                            tensor: hf_name,
                            detail: format!("dtype {other:?} is not supported (tern reads F32, F16 and BF16 safetensors)"),
                        });
                    }
                };
                let (start, end) = info.data_offsets;
                let offset = data_start.checked_add(start);
                let size = end.checked_sub(start);
                let (Some(offset), Some(size)) = (offset, size) else {
                    return Err(Error::BadTensor {
                        path: name.clone(),
                        tensor: hf_name,
                        detail: format!("data offsets {start}..{end} are inverted"),
                    });
                };
                if offset.checked_add(size).is_none_or(|e| e > bytes.len()) {
                    return Err(Error::TensorOutOfBounds {
                        path: name.clone(),
                        tensor: hf_name,
                        offset: offset as u64,
                        size: size as u64,
                        len: bytes.len() as u64,
                    });
                }
                // safetensors lists the slowest dimension first; GGUF the fastest.
                let dims: Vec<usize> = info.shape.iter().rev().copied().collect();
                let bytes_needed = dims.iter().try_fold(ty.gguf_block_bytes().unwrap_or(0), |a, &d| a.checked_mul(d));
                if bytes_needed != Some(size) || dims.is_empty() || dims.len() > crate::MAX_DIMS as usize {
                    return Err(Error::BadTensor {
                        path: name.clone(),
                        tensor: hf_name,
                        detail: format!("shape {:?} does not match its {size} bytes", info.shape),
                    });
                }
                tensors.push(TensorInfo { name: gguf, ty, dims, offset, size });
                file_of.push(i);
            }
        }
        Ok(HfModel { path, metadata, tensors, file_of, files, tokenizer_json })
    }

    /// The bytes of tensor number `i` of `tensors`.
    pub fn data(&self, i: usize) -> &[u8] {
        let t = &self.tensors[i];
        self.files[self.file_of[i]].get(t.offset..t.offset + t.size).unwrap_or(&[])
    }
}

/// Translates `config.json` (and the chat template of `tokenizer_config.json`) into GGUF metadata keys.
fn config_metadata(path: &str, config: &Value, tokenizer_config: Option<&Value>) -> Result<Metadata> {
    let cfg_path = format!("{path}/config.json");
    let field = |key: &str| -> Result<u64> {
        config.get(key).and_then(Value::as_u64).ok_or_else(|| Error::MissingKey { path: cfg_path.clone(), key: key.into() })
    };
    let model_type = config.get("model_type").and_then(Value::as_str).unwrap_or("");
    if !matches!(model_type, "llama" | "mistral") {
        return Err(Error::Format {
            path: cfg_path,
            detail: format!("model_type {model_type:?} is not supported (tern reads llama and mistral)"),
        });
    }
    let mut m = Metadata::new(path);
    let u32v = |v: u64| MetaValue::U32(v.min(u32::MAX as u64) as u32);
    m.insert("general.architecture", MetaValue::String("llama".into()));
    m.insert("llama.block_count", u32v(field("num_hidden_layers")?));
    m.insert("llama.embedding_length", u32v(field("hidden_size")?));
    m.insert("llama.feed_forward_length", u32v(field("intermediate_size")?));
    let heads = field("num_attention_heads")?;
    m.insert("llama.attention.head_count", u32v(heads));
    m.insert("llama.attention.head_count_kv", u32v(field("num_key_value_heads").unwrap_or(heads)));
    m.insert("llama.context_length", u32v(field("max_position_embeddings").unwrap_or(2048)));
    m.insert("llama.vocab_size", u32v(field("vocab_size")?));
    let eps = config.get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6);
    m.insert("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(eps as f32));
    let theta = config.get("rope_theta").and_then(Value::as_f64).unwrap_or(10000.0);
    m.insert("llama.rope.freq_base", MetaValue::F32(theta as f32));
    // Hugging Face keeps Q/K in the rotate-half layout; GGUF converters permute them for adjacent pairs.
    m.insert("tern.rope.style", MetaValue::String("halves".into()));
    for (key, gguf) in [("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id")] {
        let id = match config.get(key) {
            Some(Value::Array(a)) => a.first().and_then(Value::as_u64),
            Some(v) => v.as_u64(),
            None => None,
        };
        if let Some(id) = id {
            m.insert(gguf, u32v(id));
        }
    }
    if let Some(t) = tokenizer_config.and_then(|t| t.get("chat_template")).and_then(Value::as_str) {
        m.insert("tokenizer.chat_template", MetaValue::String(t.into()));
    }
    Ok(m)
}
