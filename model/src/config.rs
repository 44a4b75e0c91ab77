use tern_core::{RopeStyle, TensorType};
use tern_loader::Metadata;

use crate::{Error, Result};

/// The shape of a Llama-family model, read from GGUF metadata keys (`llama.*`, or the architecture's prefix).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub n_layers: usize,
    pub dim: usize,
    pub ffn_dim: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rot_dim: usize,
    pub vocab_size: usize,
    /// The context length the model was trained for, in tokens.
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub rope_style: RopeStyle,
}

const ARCHITECTURES: [&str; 3] = ["llama", "mistral", "qwen2"];

impl LlamaConfig {
    /// Reads the configuration from `m`, checking that it is a supported architecture and a consistent shape.
    pub fn from_metadata(m: &Metadata) -> Result<Self> {
        let bad = |detail: String| Error::Config { path: m.path.clone(), detail };
        let arch = m.str("general.architecture")?.to_string();
        if !ARCHITECTURES.contains(&arch.as_str()) {
            return Err(bad(format!("architecture {arch:?} is not supported (tern runs {})", ARCHITECTURES.join(", "))));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let n_heads = m.usize(&key("attention.head_count"))?;
        let dim = m.usize(&key("embedding_length"))?;
        let n_kv_heads = match m.get(&key("attention.head_count_kv")) {
            Some(_) => m.usize(&key("attention.head_count_kv"))?,
            None => n_heads,
        };
        if n_heads == 0 || n_kv_heads == 0 || dim % n_heads != 0 || n_heads % n_kv_heads != 0 {
            return Err(bad(format!("{n_heads} heads, {n_kv_heads} KV heads and width {dim} do not fit together")));
        }
        let head_dim = dim / n_heads;
        let rot_dim = match m.get(&key("rope.dimension_count")) {
            Some(_) => m.usize(&key("rope.dimension_count"))?,
            None => head_dim,
        };
        if rot_dim > head_dim || rot_dim % 2 != 0 {
            return Err(bad(format!("rope dimension {rot_dim} does not fit heads of {head_dim}")));
        }
        let vocab_size = match m.get(&key("vocab_size")) {
            Some(_) => m.usize(&key("vocab_size"))?,
            None => m.array("tokenizer.ggml.tokens")?.len(),
        };
        let f = |k: &str, default: f64| -> Result<f32> {
            Ok(if m.get(&key(k)).is_some() { m.f64(&key(k))? as f32 } else { default as f32 })
        };
        // GGUF's Llama converters permute Q/K for adjacent-pair rotation; Qwen2 and unconverted Hugging Face
        // weights rotate halves.
        let rope_style = match m.get("tern.rope.style") {
            Some(_) if m.str("tern.rope.style")? == "halves" => RopeStyle::Halves,
            _ if arch == "qwen2" => RopeStyle::Halves,
            _ => RopeStyle::Interleaved,
        };
        let cfg = LlamaConfig {
            n_layers: m.usize(&key("block_count"))?,
            ffn_dim: m.usize(&key("feed_forward_length"))?,
            context_length: m.usize(&key("context_length"))?,
            rms_eps: f("attention.layer_norm_rms_epsilon", 1e-5)?,
            rope_base: f("rope.freq_base", 10000.0)?,
            architecture: arch,
            dim,
            n_heads,
            n_kv_heads,
            head_dim,
            rot_dim,
            vocab_size,
            rope_style,
        };
        if cfg.n_layers == 0 || cfg.n_layers > 1024 || cfg.context_length == 0 {
            return Err(bad(format!("{} layers with context {} is not a usable model", cfg.n_layers, cfg.context_length)));
        }
        Ok(cfg)
    }

    /// Width of the K and V rows: `n_kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Bytes of a KV cache of `ty` (F32 or F16) for `positions` positions.
    pub fn kv_cache_bytes(&self, positions: usize, ty: TensorType) -> usize {
        let element = if ty == TensorType::F16 { 2 } else { 4 };
        2 * self.n_layers * positions * self.kv_dim() * element
    }
}
