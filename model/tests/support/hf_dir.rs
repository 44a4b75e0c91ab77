//! A small random Llama model written as a Hugging Face directory (config.json, two safetensors shards,
//! tokenizer.json, tokenizer_config.json). Shared by the tests that read such directories (`#[path]` module).

#![allow(dead_code)]

use std::path::Path;

use half::{bf16, f16};
use serde_json::json;

pub const DIM: usize = 64;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = DIM / HEADS;
pub const FFN: usize = 96;
pub const LAYERS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
        }
    }

    pub fn round(self, v: f32) -> f32 {
        match self {
            Dtype::F32 => v,
            Dtype::F16 => f16::from_f32(v).to_f32(),
            Dtype::Bf16 => bf16::from_f32(v).to_f32(),
        }
    }

    pub fn encode(self, v: &[f32]) -> Vec<u8> {
        match self {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect(),
            Dtype::Bf16 => v.iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect(),
        }
    }
}

/// Deterministic pseudo-random values in `[offset - scale, offset + scale)`.
pub fn values(n: usize, seed: u64, scale: f32, offset: f32) -> Vec<f32> {
    tern_conformance::values(n, seed, scale).into_iter().map(|v| offset + v).collect()
}

/// A byte-level BPE tokenizer with no merges: one token per byte, plus the end-of-turn marker.
pub fn tokenizer_json() -> (Vec<u8>, usize) {
    use tokenizers::models::bpe::BPE;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort();
    let vocab: tokenizers::models::bpe::Vocab = alphabet.iter().enumerate().map(|(i, c)| (c.to_string(), i as u32)).collect();
    let bpe = BPE::builder().vocab_and_merges(vocab, vec![]).build().unwrap();
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tk.with_decoder(Some(ByteLevel::default()));
    tk.add_special_tokens(&[tokenizers::AddedToken::from("<|im_end|>", true)]);
    let size = tk.get_vocab_size(true);
    (tk.to_string(false).unwrap().into_bytes(), size)
}

/// The model's tensors as Hugging Face names them, with their shapes (slowest dimension first) and values.
pub fn hf_tensors(vocab: usize, dtype: Dtype) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    let mut seed = 1;
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32| {
        seed += 1;
        let v = values(shape.iter().product(), seed, scale, offset).into_iter().map(|x| dtype.round(x)).collect();
        out.push((name, shape, v));
    };
    add("model.embed_tokens.weight".into(), vec![vocab, DIM], 1.0, 0.0);
    add("model.norm.weight".into(), vec![DIM], 0.2, 1.0);
    for l in 0..LAYERS {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        add(p("input_layernorm"), vec![DIM], 0.2, 1.0);
        add(p("self_attn.q_proj"), vec![HEADS * HEAD_DIM, DIM], 0.3, 0.0);
        add(p("self_attn.k_proj"), vec![KV_HEADS * HEAD_DIM, DIM], 0.3, 0.0);
        add(p("self_attn.v_proj"), vec![KV_HEADS * HEAD_DIM, DIM], 0.3, 0.0);
        add(p("self_attn.o_proj"), vec![DIM, HEADS * HEAD_DIM], 0.2, 0.0);
        add(p("post_attention_layernorm"), vec![DIM], 0.2, 1.0);
        add(p("mlp.gate_proj"), vec![FFN, DIM], 0.2, 0.0);
        add(p("mlp.up_proj"), vec![FFN, DIM], 0.2, 0.0);
        add(p("mlp.down_proj"), vec![DIM, FFN], 0.2, 0.0);
    }
    out
}

pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, shape, v) in tensors {
        let bytes = dtype.encode(v);
        header.insert(
            name.clone(),
            json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend(bytes);
    }
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut h = serde_json::to_vec(&header).unwrap();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend(h);
    file.extend(data);
    std::fs::write(path, file).unwrap();
}

pub fn write_hf_dir(dir: &Path, dtype: Dtype) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    std::fs::create_dir_all(dir).unwrap();
    let (tok, vocab) = tokenizer_json();
    std::fs::write(dir.join("tokenizer.json"), tok).unwrap();
    let config = json!({
        "model_type": "llama", "hidden_size": DIM, "intermediate_size": FFN, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "num_hidden_layers": LAYERS, "vocab_size": vocab, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "max_position_embeddings": 128, "tie_word_embeddings": true,
        "bos_token_id": 0, "eos_token_id": vocab - 1,
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let chat = json!({"chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"});
    std::fs::write(dir.join("tokenizer_config.json"), chat.to_string()).unwrap();
    let tensors = hf_tensors(vocab, dtype);
    // Two shards, as large models ship.
    let half = tensors.len() / 2;
    write_safetensors(&dir.join("model-00001-of-00002.safetensors"), &tensors[..half], dtype);
    write_safetensors(&dir.join("model-00002-of-00002.safetensors"), &tensors[half..], dtype);
    tensors
}
