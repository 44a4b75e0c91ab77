//! A Hugging Face model directory (config.json + safetensors + tokenizer.json), written here with random
//! weights, loads and gives the same logits as the same weights in a GGUF file. The two layouts differ in tensor
//! names, dimension order and RoPE pairing (GGUF converters permute Q and K rows for adjacent-pair RoPE, Hugging
//! Face keeps rotate-half), so agreement checks all three.

use std::path::{Path, PathBuf};

use tern_backend_cpu::CpuBackend;
use tern_core::TensorType;
use tern_loader::{GgufWriter, MetaValue, ModelSource};
use tern_model::{Llama, Scratch, Tokenizer};

#[path = "support/hf_dir.rs"]
mod hf_dir;
use hf_dir::*;

/// GGUF's row order for Q or K: within each head, rotate-half pairs `(i, i + d/2)` become adjacent `(2i, 2i+1)`.
fn permute_for_gguf(v: &[f32], heads: usize) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..HEAD_DIM / 2 {
                let (src, dst) = (h * HEAD_DIM + j * HEAD_DIM / 2 + i, h * HEAD_DIM + 2 * i + j);
                out[dst * DIM..(dst + 1) * DIM].copy_from_slice(&v[src * DIM..(src + 1) * DIM]);
            }
        }
    }
    out
}

fn write_gguf(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], vocab: usize) {
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", MetaValue::String("llama".into()));
    for (k, v) in [
        ("block_count", LAYERS),
        ("embedding_length", DIM),
        ("feed_forward_length", FFN),
        ("attention.head_count", HEADS),
        ("attention.head_count_kv", KV_HEADS),
        ("context_length", 128),
        ("vocab_size", vocab),
    ] {
        w.metadata(format!("llama.{k}"), MetaValue::U32(v as u32));
    }
    w.metadata("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(1e-5));
    w.metadata("llama.rope.freq_base", MetaValue::F32(10000.0));
    for (name, shape, v) in tensors {
        let gguf = name
            .replace("model.embed_tokens", "token_embd")
            .replace("model.norm", "output_norm")
            .replace("model.layers.", "blk.")
            .replace("input_layernorm", "attn_norm")
            .replace("self_attn.q_proj", "attn_q")
            .replace("self_attn.k_proj", "attn_k")
            .replace("self_attn.v_proj", "attn_v")
            .replace("self_attn.o_proj", "attn_output")
            .replace("post_attention_layernorm", "ffn_norm")
            .replace("mlp.gate_proj", "ffn_gate")
            .replace("mlp.up_proj", "ffn_up")
            .replace("mlp.down_proj", "ffn_down");
        let v = if name.contains("q_proj") {
            permute_for_gguf(v, HEADS)
        } else if name.contains("k_proj") {
            permute_for_gguf(v, KV_HEADS)
        } else {
            v.clone()
        };
        let dims: Vec<usize> = shape.iter().rev().copied().collect();
        w.tensor(gguf, TensorType::F32, &dims, Dtype::F32.encode(&v)).unwrap();
    }
    w.write(path).unwrap();
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-hf-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn logits(src: &ModelSource, tokens: &[u32]) -> Vec<f32> {
    let model = Llama::load(src, CpuBackend::new(2).unwrap(), &mut |_| {}).unwrap();
    let mut cache = model.new_cache(64).unwrap();
    let mut s = Scratch::new(model.backend()).unwrap();
    // A prefill and two single-token decode steps: every position's logits.
    let mut all = model.forward(&tokens[..tokens.len() - 2], &mut cache, &mut s, true).unwrap();
    for &t in &tokens[tokens.len() - 2..] {
        all.extend(model.forward(&[t], &mut cache, &mut s, false).unwrap());
    }
    all
}

#[test]
fn safetensors_model_matches_the_same_weights_in_gguf() {
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        let dir = scratch_dir(dtype.name());
        let tensors = write_hf_dir(&dir, dtype);
        let vocab = tensors[0].1[0];
        let gguf_path = dir.join("same.gguf");
        write_gguf(&gguf_path, &tensors, vocab);

        let hf = ModelSource::open(&dir).unwrap();
        assert_eq!(hf.metadata().u64("llama.attention.head_count_kv").unwrap(), KV_HEADS as u64);
        assert_eq!(hf.tensor("blk.1.ffn_down.weight").unwrap().info.dims, vec![FFN, DIM]);
        let tokens = [5u32, 77, 200, 31, 9, 140, 3];
        let (a, b) = (logits(&hf, &tokens), logits(&ModelSource::open(&gguf_path).unwrap(), &tokens));
        assert_eq!((a.len(), b.len()), (tokens.len() * vocab, tokens.len() * vocab));
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(worst <= 1e-4 * scale.max(1.0), "{dtype:?}: logits differ by up to {worst} (largest logit {scale})");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn tokenizer_json_and_chat_template_are_read() {
    let dir = scratch_dir("tokenizer");
    write_hf_dir(&dir, Dtype::F32);
    let src = ModelSource::open(dir.join("config.json")).unwrap();
    let tok = Tokenizer::from_source(&src).unwrap();
    let ids = tok.encode("héllo<|im_end|>").unwrap();
    assert_eq!(ids.len(), "héllo".len() + 1, "one token per byte, and the marker as one token");
    assert_eq!(tok.decode(&ids).unwrap(), "héllo");
    assert!(tok.stop_ids.contains(ids.last().unwrap()));
    assert!(src.metadata().str("tokenizer.chat_template").unwrap().contains("messages"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn malformed_model_directories_are_clear_errors() {
    let dir = scratch_dir("bad");
    let tensors = write_hf_dir(&dir, Dtype::F32);
    let shard = dir.join("model-00001-of-00002.safetensors");
    let good = std::fs::read(&shard).unwrap();

    // A header that claims more bytes than the file has.
    let mut bad = good.clone();
    bad[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    std::fs::write(&shard, &bad).unwrap();
    let e = ModelSource::open(&dir).unwrap_err().to_string();
    assert!(e.contains("model-00001-of-00002.safetensors"), "{e}");

    // Data cut short.
    std::fs::write(&shard, &good[..good.len() - 10]).unwrap();
    assert!(ModelSource::open(&dir).is_err());

    // An integer dtype.
    write_safetensors(&shard, &tensors[..1], Dtype::F32);
    let mut bytes = std::fs::read(&shard).unwrap();
    let at = bytes.windows(5).position(|w| w == b"\"F32\"").unwrap();
    bytes[at + 1] = b'I';
    std::fs::write(&shard, bytes).unwrap();
    let e = ModelSource::open(&dir).unwrap_err().to_string();
    assert!(e.contains("I32") && e.contains("embed_tokens"), "{e}");

    // Missing config fields and unsupported architectures.
    std::fs::write(dir.join("config.json"), r#"{"model_type": "llama"}"#).unwrap();
    let e = ModelSource::open(&dir).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("num_hidden_layers"), "{e}");
    std::fs::write(dir.join("config.json"), r#"{"model_type": "gpt_neox"}"#).unwrap();
    assert!(ModelSource::open(&dir).unwrap_err().to_string().contains("gpt_neox"));
    std::fs::write(dir.join("config.json"), "{not json").unwrap();
    assert!(ModelSource::open(&dir).unwrap_err().to_string().contains("invalid JSON"));
    std::fs::remove_dir_all(&dir).unwrap();
}
