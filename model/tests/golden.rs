//! tern against llama.cpp on the same GGUF file: the fixtures in `golden/` were made by
//! `scripts/make-golden.py` (llama.cpp through llama-cpp-python). `scripts/fetch-model.sh` fetches the model.

use std::path::PathBuf;

use serde_json::Value;
use tern_backend_cpu::CpuBackend;
use tern_backend_webgpu::{AdapterChoice, WebGpuBackend};
use tern_core::Backend;
use tern_loader::ModelSource;
use tern_model::{Llama, Scratch, Tokenizer};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(root().join("model/tests/golden/smollm2-135m-q4_1.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn source() -> ModelSource {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(path.exists(), "{} is missing: run scripts/fetch-model.sh", path.display());
    ModelSource::open(path).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
}

#[test]
fn tokenizer_matches_llama_cpp() {
    let tok = Tokenizer::from_source(&source()).unwrap();
    for case in golden()["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(tok.encode(prompt).unwrap(), ids(&case["prompt_ids"]), "prompt {prompt:?}");
        // Decoding what llama.cpp generated gives the text llama.cpp printed.
        let want = case["text"].as_str().unwrap();
        if !want.contains('\u{fffd}') {
            assert_eq!(tok.decode(&ids(&case["greedy"])).unwrap(), want, "prompt {prompt:?}");
        }
    }
}

/// Largest accepted difference of one logit from llama.cpp's.
///
/// Both engines quantize activations to int8 in blocks of 32 before every quantized product but round and sum
/// differently (llama.cpp also keeps its KV cache in f16), and this small model amplifies that noise: measured on
/// these fixtures, tern's int8 path differs from its own f32-activation path by 0.23 logits RMS, and that f32 path
/// differs from llama.cpp by 0.21 RMS with no bias (mean signed difference below 0.03), the largest single
/// difference being 0.55. Real errors (a wrong RoPE layout, norm epsilon, quant nibble order or GQA head mapping)
/// move logits by whole units and change most tokens.
const LOGIT_TOLERANCE: f32 = 0.75;
/// Largest accepted root-mean-square difference over all compared logits (measured: 0.22).
const RMS_TOLERANCE: f64 = 0.35;

/// Greedy tokens equal llama.cpp's, and the top-5 logits of the first 4 generated positions agree.
///
/// Each step feeds llama.cpp's token back (teacher forcing), so one divergence cannot derail the rest of the
/// comparison. Where llama.cpp's own top two are within `LOGIT_TOLERANCE` of each other, the noise above can
/// legitimately reorder the leaders, so there tern may pick another token if it also scores llama.cpp's choice
/// within `LOGIT_TOLERANCE` of its own; everywhere else the tokens must be the same.
#[test]
fn greedy_tokens_and_logits_match_llama_cpp() {
    check_against_llama_cpp(CpuBackend::new(0).unwrap());
}

/// The same on the WebGPU backend (lavapipe in CI), whose products use f32 activations.
#[test]
fn webgpu_greedy_tokens_and_logits_match_llama_cpp() {
    let backend = WebGpuBackend::new(AdapterChoice::Any)
        .unwrap_or_else(|e| panic!("the WebGPU tests need a Vulkan adapter (scripts/test.sh installs lavapipe): {e}"));
    check_against_llama_cpp(backend);
}

fn check_against_llama_cpp<B: Backend>(backend: B) {
    let src = source();
    let model = Llama::load(&src, backend, &mut |_| {}).unwrap();
    let mut scratch = Scratch::new(model.backend()).unwrap();
    let (mut worst, mut squares, mut compared) = (0f32, 0f64, 0usize);
    let (mut positions, mut same, mut ties) = (0usize, 0usize, 0usize);
    for case in golden()["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want = ids(&case["greedy"]);
        let mut cache = model.new_cache(256).unwrap();
        let mut logits = model.forward(&ids(&case["prompt_ids"]), &mut cache, &mut scratch, false).unwrap();
        for (step, &expected) in want.iter().enumerate() {
            if let Some(top) = case["top5"].as_array().unwrap().get(step) {
                for pair in top.as_array().unwrap() {
                    let (id, value) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
                    let diff = (logits[id] - value).abs();
                    assert!(
                        diff <= LOGIT_TOLERANCE,
                        "{prompt:?} step {step}: logit of token {id} is {} where llama.cpp has {value}",
                        logits[id]
                    );
                    worst = worst.max(diff);
                    squares += f64::from(diff).powi(2);
                    compared += 1;
                }
            }
            let top2 = &case["top2"][step];
            let first = top2[0][0].as_u64().unwrap() as u32;
            let margin = (top2[0][1].as_f64().unwrap() - top2[1][1].as_f64().unwrap()) as f32;
            assert_eq!(first, expected, "fixture: top-2 and greedy disagree");
            let got = argmax(&logits);
            positions += 1;
            if got == expected {
                same += 1;
            } else {
                let behind = logits[got as usize] - logits[expected as usize];
                assert!(
                    margin <= LOGIT_TOLERANCE && behind <= LOGIT_TOLERANCE,
                    "{prompt:?} step {step}: tern picks token {got}, llama.cpp {expected} (llama.cpp's top-2 margin \
                     {margin}, tern's logit of {expected} {behind} below its best)"
                );
                ties += 1;
            }
            logits = model.forward(&[expected], &mut cache, &mut scratch, false).unwrap();
        }
    }
    let rms = (squares / compared as f64).sqrt();
    eprintln!(
        "{}: {same}/{positions} greedy tokens equal, {ties} near-ties swapped; logits: largest difference {worst}, RMS {rms}",
        model.backend().name()
    );
    assert!(rms <= RMS_TOLERANCE, "logits differ from llama.cpp by {rms} RMS");
}
