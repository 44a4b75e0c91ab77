//! `tern::Engine` end to end on SmolLM2 (fetched by scripts/fetch-model.sh).

use std::path::PathBuf;
use std::sync::OnceLock;

use tern::model::{ChatMessage, SamplingParams};
use tern::{Engine, FinishReason, GenerateOptions};

fn model_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE
        .get_or_init(|| Engine::builder(model_path()).backend(tern::BackendChoice::Cpu).threads(2).context(256).build().unwrap())
}

/// llama.cpp's greedy continuation of the first golden prompt, up to its first near-tie (where its top-2
/// logits are within the golden test's tolerance, so int8 rounding noise may pick the other token).
fn golden_prefix() -> (String, Vec<u32>) {
    let text =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../model/tests/golden/smollm2-135m-q4_1.json"))
            .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let case = &v["cases"][0];
    let ids: Vec<u32> = case["greedy"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    let clear = case["top2"]
        .as_array()
        .unwrap()
        .iter()
        .take_while(|t| t[0][1].as_f64().unwrap() - t[1][1].as_f64().unwrap() > 0.75)
        .count();
    (case["prompt"].as_str().unwrap().to_string(), ids[..clear].to_vec())
}

#[test]
fn greedy_generation_streams_llama_cpp_tokens() {
    let (prompt, want) = golden_prefix();
    assert!(want.len() >= 4, "the fixture's first prompt starts with clear choices");
    let e = engine();
    let mut session = e.session().unwrap();
    let mut generation = session.generate(&prompt, &GenerateOptions::greedy(want.len())).unwrap();
    let tokens: Vec<_> = generation.by_ref().map(|t| t.unwrap()).collect();
    assert_eq!(generation.finish_reason(), Some(FinishReason::Length));
    drop(generation);
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    assert_eq!(ids, want);
    let streamed: String = tokens.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(streamed, e.tokenizer().decode(&want).unwrap());
    assert_eq!(e.generate(&prompt, &GenerateOptions::greedy(want.len())).unwrap(), streamed);
}

#[test]
fn a_session_reuses_its_cache_for_the_next_turn() {
    let e = engine();
    let mut turn = vec![ChatMessage::new("user", "Name a color.")];
    let first_prompt = e.chat_prompt(&turn).unwrap();
    let mut session = e.session().unwrap();
    let reply: String = session.generate(&first_prompt, &GenerateOptions::greedy(8)).unwrap().map(|t| t.unwrap().text).collect();
    turn.push(ChatMessage::new("assistant", reply.trim()));
    turn.push(ChatMessage::new("user", "Another one."));
    let second_prompt = e.chat_prompt(&turn).unwrap();
    let reused: String =
        session.generate(&second_prompt, &GenerateOptions::greedy(8)).unwrap().map(|t| t.unwrap().text).collect();
    // A fresh session running the whole second prompt gives the same greedy text.
    assert_eq!(reused, e.generate(&second_prompt, &GenerateOptions::greedy(8)).unwrap());
}

#[test]
fn stop_strings_and_end_of_turn() {
    let e = engine();
    let (prompt, want) = golden_prefix();
    let full = e.tokenizer().decode(&want).unwrap();
    // Stop at the text of the second generated token: the output is what came before it.
    let stop = e.tokenizer().decode(&want[1..2]).unwrap();
    let options = GenerateOptions { stop: vec![stop.clone()], ..GenerateOptions::greedy(16) };
    let mut session = e.session().unwrap();
    let mut g = session.generate(&prompt, &options).unwrap();
    let text: String = g.by_ref().map(|t| t.unwrap().text).collect();
    assert_eq!(g.finish_reason(), Some(FinishReason::StopString));
    assert_eq!(text, full[..full.find(&stop).unwrap()]);
    drop(g);

    // The chat prompt is answered and ends at <|im_end|>, which is not part of the text.
    let chat = e.chat_prompt(&[ChatMessage::new("user", "What is 2+2?")]).unwrap();
    let mut g = session.generate(&chat, &GenerateOptions::greedy(64)).unwrap();
    let text: String = g.by_ref().map(|t| t.unwrap().text).collect();
    assert_eq!(g.finish_reason(), Some(FinishReason::EndOfSequence), "{text:?}");
    assert!(text.contains('4') && !text.contains("<|im_end|>"), "{text:?}");
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let e = engine();
    let opts = |seed| GenerateOptions {
        sampling: Some(SamplingParams { temperature: 0.9, seed, ..SamplingParams::default() }),
        ..GenerateOptions::greedy(12)
    };
    let a = e.generate("Once upon a time", &opts(1)).unwrap();
    assert_eq!(a, e.generate("Once upon a time", &opts(1)).unwrap());
    let others: Vec<String> = (2..5).map(|s| e.generate("Once upon a time", &opts(s)).unwrap()).collect();
    assert!(others.iter().any(|o| *o != a), "different seeds give different text");
}

#[test]
fn bad_requests_are_errors() {
    let e = engine();
    let mut session = e.session().unwrap();
    let err = |o: GenerateOptions, prompt: &str| session_error(e, prompt, &o);
    assert!(err(GenerateOptions::greedy(4), "").contains("prompt"));
    let bad = GenerateOptions {
        sampling: Some(SamplingParams { top_p: 2.0, ..SamplingParams::default() }),
        ..GenerateOptions::greedy(4)
    };
    assert!(err(bad, "hi").contains("top_p"));
    let long = "word ".repeat(400);
    assert!(err(GenerateOptions::greedy(4), &long).contains("context"));
    // Generation that reaches the end of the context stops with a reason instead of failing.
    let mut g = session.generate(&"word ".repeat(250), &GenerateOptions::greedy(100)).unwrap();
    let n = g.by_ref().map(|t| t.unwrap()).count();
    assert_eq!(g.finish_reason(), Some(FinishReason::ContextFull));
    assert!(n < 10);
    assert!(Engine::builder("/nonexistent/model.gguf").build().unwrap_err().to_string().contains("/nonexistent/model.gguf"));
}

fn session_error(e: &Engine, prompt: &str, o: &GenerateOptions) -> String {
    let mut s = e.session().unwrap();
    match s.generate(prompt, o) {
        Ok(_) => panic!("{prompt:?} should be refused"),
        Err(err) => err.to_string(),
    }
}
