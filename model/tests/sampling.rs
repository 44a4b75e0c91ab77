//! The sampler, stop strings, streamed detokenization and the chat template, on their own.

use proptest::prelude::*;
use tern_loader::ModelSource;
use tern_model::{ChatMessage, ChatTemplate, Sampler, SamplingParams, StopStrings, TextStream, Tokenizer};

fn params(temperature: f32, top_k: usize, top_p: f32) -> SamplingParams {
    SamplingParams { temperature, top_k, top_p, repeat_penalty: 1.0, repeat_last_n: 64, seed: 42 }
}

#[test]
fn greedy_is_argmax_and_ignores_the_seed() {
    let logits = [0.5, 3.0, -1.0, 2.9];
    for seed in 0..5 {
        let mut s = Sampler::new(SamplingParams { seed, ..params(0.0, 40, 0.95) }).unwrap();
        assert_eq!(s.sample(&logits, &[]), 1);
    }
}

#[test]
fn repetition_penalty_demotes_recent_tokens() {
    let logits = [0.5, 3.0, -1.0, 2.9];
    let mut s = Sampler::new(SamplingParams { repeat_penalty: 1.5, ..params(0.0, 0, 1.0) }).unwrap();
    assert_eq!(s.sample(&logits, &[1]), 3, "3.0 / 1.5 falls below 2.9");
    // Only the last `repeat_last_n` tokens count.
    let mut s = Sampler::new(SamplingParams { repeat_penalty: 1.5, repeat_last_n: 1, ..params(0.0, 0, 1.0) }).unwrap();
    assert_eq!(s.sample(&logits, &[1, 0]), 1);
}

#[test]
fn top_k_one_is_greedy() {
    let logits = [0.1, 0.2, 5.0, 0.3];
    let mut s = Sampler::new(params(2.0, 1, 1.0)).unwrap();
    for _ in 0..50 {
        assert_eq!(s.sample(&logits, &[]), 2);
    }
}

#[test]
fn top_p_keeps_only_the_nucleus() {
    // Probabilities at temperature 1: about 0.665, 0.245, 0.090 and ~0 for the rest.
    let logits = [2.0, 1.0, 0.0, -20.0, -20.0];
    let mut s = Sampler::new(params(1.0, 0, 0.8)).unwrap();
    let mut seen = [0usize; 5];
    for _ in 0..2000 {
        seen[s.sample(&logits, &[]) as usize] += 1;
    }
    assert_eq!(seen[2] + seen[3] + seen[4], 0, "0.665 + 0.245 already reach 0.8: {seen:?}");
    // Renormalized over the two kept: 0.731 and 0.269.
    let share = seen[0] as f64 / 2000.0;
    assert!((share - 0.731).abs() < 0.05, "{seen:?}");
}

#[test]
fn temperature_sampling_follows_the_softmax_and_the_seed() {
    let logits = [1.0, 0.0, 2.0];
    let draw = |seed| {
        let mut s = Sampler::new(SamplingParams { seed, ..params(1.0, 0, 1.0) }).unwrap();
        (0..4000).map(|_| s.sample(&logits, &[])).collect::<Vec<_>>()
    };
    let a = draw(7);
    assert_eq!(a, draw(7), "same seed, same tokens");
    assert_ne!(a, draw(8));
    let z: f64 = [1f64, 0.0, 2.0].iter().map(|l| l.exp()).sum();
    for (id, l) in [(0usize, 1f64), (1, 0.0), (2, 2.0)] {
        let share = a.iter().filter(|&&t| t as usize == id).count() as f64 / a.len() as f64;
        assert!((share - l.exp() / z).abs() < 0.03, "token {id}: {share}");
    }
}

#[test]
fn invalid_parameters_are_named() {
    for (p, name) in [
        (params(-1.0, 0, 1.0), "temperature"),
        (params(f32::NAN, 0, 1.0), "temperature"),
        (params(1.0, 0, 0.0), "top_p"),
        (params(1.0, 0, 1.5), "top_p"),
        (SamplingParams { repeat_penalty: 0.0, ..params(1.0, 0, 1.0) }, "repeat_penalty"),
    ] {
        let e = Sampler::new(p).unwrap_err().to_string();
        assert!(e.contains(name), "{e}");
    }
}

proptest! {
    #[test]
    fn sampling_always_returns_a_valid_id(logits in proptest::collection::vec(-50f32..50.0, 1..64), t in 0f32..3.0, k in 0usize..10, p in 0.01f32..=1.0, seed in any::<u64>()) {
        let mut s = Sampler::new(SamplingParams { seed, ..params(t, k, p) }).unwrap();
        prop_assert!((s.sample(&logits, &[0, 1, 2]) as usize) < logits.len());
    }

    /// Whatever way the text is split into pushes, the output is the text up to the first stop string.
    #[test]
    fn stop_strings_cut_at_the_first_match(text in "[ab\\n]{0,40}", cuts in proptest::collection::vec(0usize..40, 0..8)) {
        let stops = vec!["ab\n".to_string(), "bb".to_string()];
        let want = match stops.iter().filter_map(|s| text.find(s.as_str())).min() {
            Some(at) => (text[..at].to_string(), true),
            None => (text.clone(), false),
        };
        let mut cuts: Vec<usize> = cuts.into_iter().filter(|&c| c <= text.len()).collect();
        cuts.sort();
        let mut m = StopStrings::new(&stops);
        let (mut out, mut hit, mut last) = (String::new(), false, 0);
        for c in cuts.into_iter().chain([text.len()]) {
            let (o, h) = m.push(&text[last..c]);
            out.push_str(&o);
            last = c;
            if h { hit = true; break; }
        }
        if !hit { out.push_str(&m.finish()); }
        prop_assert_eq!((out, hit), want);
    }
}

fn smollm_tokenizer() -> Tokenizer {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    Tokenizer::from_source(&ModelSource::open(path).unwrap()).unwrap()
}

#[test]
fn streamed_text_equals_decoded_text() {
    let tok = smollm_tokenizer();
    for text in ["Les élèves français aiment 🦀 and 日本語 too", "  two  spaces\n\nand tabs\t!", "x"] {
        let ids = tok.encode(text).unwrap();
        let mut stream = TextStream::new();
        let mut out = String::new();
        for &id in &ids {
            let piece = stream.push(&tok, id).unwrap();
            assert!(!piece.contains('\u{fffd}'), "a piece of {text:?} split a character: {piece:?}");
            out.push_str(&piece);
        }
        out.push_str(&stream.finish(&tok).unwrap());
        assert_eq!(out, text);
    }
}

#[test]
fn chat_template_renders_the_conversation() {
    let src =
        ModelSource::open(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf"))
            .unwrap();
    let t = ChatTemplate::new(src.metadata().str("tokenizer.chat_template").unwrap(), "<|im_start|>", "<|im_end|>").unwrap();
    let text = t
        .render(
            &[ChatMessage::new("user", "What is 2+2?"), ChatMessage::new("assistant", "4"), ChatMessage::new("user", "Why?")],
            true,
        )
        .unwrap();
    assert!(text.contains("<|im_start|>user\nWhat is 2+2?<|im_end|>\n"), "{text}");
    assert!(text.contains("<|im_start|>assistant\n4<|im_end|>\n"), "{text}");
    assert!(text.ends_with("<|im_start|>user\nWhy?<|im_end|>\n<|im_start|>assistant\n"), "{text}");
    // A template that fails names the problem instead of panicking.
    let bad = ChatTemplate::new("{{ raise_exception('no system role') }}", "", "").unwrap();
    assert!(bad.render(&[], true).unwrap_err().to_string().contains("no system role"));
    assert!(ChatTemplate::new("{% for %}", "", "").is_err());
}
