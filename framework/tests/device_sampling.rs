//! Generation with tokens picked on the device and steps queued ahead of the token read back (what
//! `Session::generate` does on WebGPU) gives the tokens of the plain loop: run a step, read the logits, sample
//! on the host. Runs on whatever adapter wgpu finds (lavapipe in CI).

use std::path::PathBuf;
use std::sync::OnceLock;

use tern::core::Backend;
use tern::model::{Sampler, SamplingParams, Scratch};
use tern::{BackendChoice, Engine, GenerateOptions};

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
        Engine::builder(path).backend(BackendChoice::WebGpu).context(64).build().unwrap()
    })
}

/// `n` tokens after `prompt` by the plain loop, stopping after an end token as generation does.
fn host_loop(e: &Engine, prompt: &str, params: SamplingParams, n: usize) -> Vec<u32> {
    let model = e.model();
    let mut cache = model.new_cache(64).unwrap();
    let mut scratch = Scratch::new(model.backend()).unwrap();
    let mut sampler = Sampler::new(params).unwrap();
    let mut history = Vec::new();
    let mut input = e.tokenizer().encode(prompt).unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let logits = model.forward(&input, &mut cache, &mut scratch, false).unwrap();
        history.extend_from_slice(&input);
        let id = sampler.sample(&logits, &history);
        out.push(id);
        if e.tokenizer().stop_ids.contains(&id) {
            break;
        }
        input = vec![id];
    }
    out
}

fn device_ids(e: &Engine, prompt: &str, params: SamplingParams, n: usize) -> Vec<u32> {
    let mut session = e.session().unwrap();
    let options = GenerateOptions { max_tokens: n, sampling: Some(params), stop: Vec::new() };
    let ids: Vec<u32> = session.generate(prompt, &options).unwrap().map(|t| t.unwrap().id).collect();
    ids
}

#[test]
fn device_sampling_gives_the_host_loops_tokens() {
    let e = engine();
    assert!(e.model().backend().queues_work(), "WebGPU queues work, so generation samples on the device");
    let prompt = "The capital of France is";
    let greedy = SamplingParams { temperature: 0.0, ..SamplingParams::default() };
    let seeded = SamplingParams { temperature: 0.9, top_k: 40, top_p: 0.95, seed: 7, ..SamplingParams::default() };
    for params in [greedy, seeded] {
        let want = host_loop(e, prompt, params.clone(), 6);
        let mut got = device_ids(e, prompt, params.clone(), 6);
        // Generation reports an end token by finishing, and returns it only with text still pending.
        if want.len() < 6 && got.last() != want.last() {
            got.push(*want.last().unwrap());
        }
        assert_eq!(got, want, "{params:?}");
    }
}

#[test]
fn a_session_continues_after_steps_queued_ahead() {
    // The steps queued ahead of the last token of a turn have already run it and the token after it: the next
    // turn must see the same cache as a fresh session that runs the whole conversation.
    let e = engine();
    let prompt = "Once upon a time";
    let mut session = e.session().unwrap();
    // Two tokens of five: the steps for the second and third are already queued when the generation is dropped.
    let first: String = session.generate(prompt, &GenerateOptions::greedy(5)).unwrap().take(2).map(|t| t.unwrap().text).collect();
    let next_prompt = format!("{prompt}{first} and");
    let continued: String =
        session.generate(&next_prompt, &GenerateOptions::greedy(3)).unwrap().map(|t| t.unwrap().text).collect();
    assert_eq!(continued, e.generate(&next_prompt, &GenerateOptions::greedy(3)).unwrap());
}
