//! `tern bench`: prompt processing of `-p` tokens in one batch and generation of `-n` tokens one at a time,
//! each from an empty context (or from `-d` positions of context already cached), repeated; medians and spread
//! in tokens per second, as llama-bench reports them.
//! Generation rows also give the bytes a decode step reads (weights and KV cache) times its rate.
//!
//! Generation runs as `tern generate` does on the backend: from one random token, each step picks the next
//! token greedily on the backend, and on a GPU the next steps (`tern::STEPS_IN_FLIGHT`) are queued before the
//! token is read back.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use tern::core::{Backend, TokenSampling};
use tern::core::{TensorType, TernFormat};
use tern::model::{Llama, LlamaConfig, Scratch, StepInput};
use tern::{AnyBackend, BackendChoice, STEPS_IN_FLIGHT};

use crate::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A GGUF file or a Hugging Face model directory.
    #[arg(long, short, required_unless_present = "synthetic", conflicts_with = "synthetic")]
    model: Option<PathBuf>,
    /// Random weights in a named Llama shape instead of a model: 135m, 1b or 7b.
    #[arg(long)]
    synthetic: Option<String>,
    /// The weight type of --synthetic: Q4_0, Q4_1, Q8_0, T2, T3, T4, T8, TR2, TR3 or TR4.
    #[arg(long, default_value = "T4")]
    weights: String,
    /// Where to run: webgpu, cpu or auto.
    #[arg(long, default_value = "auto")]
    backend: BackendChoice,
    /// CPU threads (0: one per core).
    #[arg(long, short, default_value_t = 0)]
    threads: usize,
    /// Prompt tokens per prompt-processing test (0 skips it).
    #[arg(long, short = 'p', default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens per generation test (0 skips it).
    #[arg(long, short = 'n', default_value_t = 128)]
    gen_tokens: usize,
    /// Positions already in the KV cache when each test starts (llama-bench's `-d`): the tests then run at
    /// that depth of context, `pp512 @ d4096`.
    #[arg(long, short = 'd', default_value_t = 0)]
    depth: usize,
    /// How the KV cache stores K and V: f16 or f32.
    #[arg(long, default_value = "f16", value_parser = crate::cache_type)]
    kv_cache: TensorType,
    /// Measured repetitions of each test (after one warm-up run).
    #[arg(long, short = 'r', default_value_t = 5)]
    repetitions: usize,
    /// Sampling temperature of the generation test; 0 (the default) is greedy. Above 0, every token is drawn
    /// with top-k and top-p, as `tern generate` draws them.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// With --temperature: keep the K most likely tokens.
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// With --temperature: keep the most likely tokens up to this cumulative probability.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// After the tests, one more generation run on WebGPU with every kernel timed on the GPU, and a table of
    /// where a decode step's GPU time goes.
    #[arg(long)]
    profile: bool,
}

struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    Stats { median, min: v[0], max: v[n - 1] }
}

fn weight_type(name: &str) -> Result<TensorType, tern::Error> {
    let gguf = [TensorType::Q4_0, TensorType::Q4_1, TensorType::Q8_0].into_iter().find(|t| t.name().eq_ignore_ascii_case(name));
    gguf.or_else(|| TernFormat::from_name(&name.to_ascii_uppercase()).map(|f| f.tensor_type())).ok_or_else(|| {
        tern::Error::Option {
            name: "weights",
            detail: format!("unknown weight type {name:?}: expected Q4_0, Q4_1, Q8_0, T2, T3, T4, T8, TR2, TR3 or TR4"),
        }
    })
}

impl BenchArgs {
    /// How the generation test picks each token: greedy, or the sampling settings with a draw that is the same
    /// sequence every run.
    fn sampling(&self) -> impl FnMut() -> TokenSampling + use<> {
        let (temperature, top_k, top_p) = (self.temperature, self.top_k, self.top_p);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        move || {
            if temperature <= 0.0 {
                return TokenSampling::GREEDY;
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            TokenSampling { temperature, top_k, top_p, draw: (state >> 40) as f32 / (1u64 << 24) as f32 }
        }
    }

    /// The generation test's name: `tgN`, and the sampling when it is not greedy.
    fn gen_test(&self) -> String {
        if self.temperature <= 0.0 {
            format!("tg{}", self.gen_tokens)
        } else {
            format!("tg{} (temperature {}, top-k {}, top-p {})", self.gen_tokens, self.temperature, self.top_k, self.top_p)
        }
    }
}

pub fn run(args: &BenchArgs) -> Result<(), tern::Error> {
    if args.repetitions == 0 {
        return Err(tern::Error::Option { name: "repetitions", detail: "must be at least 1".into() });
    }
    (args.sampling())().check()?;
    let need = args.depth + args.prompt_tokens.max(args.gen_tokens) + 1;
    match (&args.model, &args.synthetic) {
        (_, Some(shape)) => {
            let mut config = LlamaConfig::preset(shape).ok_or_else(|| tern::Error::Option {
                name: "synthetic",
                detail: format!("unknown shape {shape:?}: expected one of {}", LlamaConfig::PRESETS.join(", ")),
            })?;
            config.context_length = config.context_length.max(need);
            let ty = weight_type(&args.weights)?;
            let backend = AnyBackend::new(args.backend, args.threads)?;
            eprintln!("building a {shape} model of random {ty} weights on {}", backend.describe());
            let mut model = Llama::synthetic(config, ty, backend, 7).map_err(tern::Error::from)?;
            model.set_cache_type(args.kv_cache)?;
            measure(args, &format!("synthetic {shape} {ty}"), &model)
        }
        (Some(path), None) => {
            let model_args = ModelArgs {
                model: path.clone(),
                backend: args.backend,
                threads: args.threads,
                context: need,
                kv_cache: args.kv_cache,
            };
            let engine = crate::load::engine(&model_args)?;
            let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
            measure(args, &name, engine.model())
        }
        (None, None) => Err(tern::Error::Option { name: "model", detail: "give --model FILE or --synthetic SHAPE".into() }),
    }
}

fn measure(args: &BenchArgs, name: &str, model: &Llama<AnyBackend>) -> Result<(), tern::Error> {
    let need = args.depth + args.prompt_tokens.max(args.gen_tokens) + 1;
    let be = model.backend();
    let vocab = model.config.vocab_size as u64;
    let mut cache = model.new_cache(need)?;
    if cache.capacity() < need {
        return Err(tern::Error::Option {
            name: "prompt-tokens",
            detail: format!("the model's context is {} tokens", cache.capacity()),
        });
    }
    let mut scratch = Scratch::new(be)?;
    // Token ids spread over the vocabulary, the same every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next_id = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % vocab) as u32
    };
    // The context every test starts from, in prompts of up to 512 tokens; each run truncates back to it.
    let depth = args.depth;
    let context: Vec<u32> = (0..depth).map(|_| next_id()).collect();
    for chunk in context.chunks(512) {
        be.install(|| model.forward(chunk, &mut cache, &mut scratch, false))?;
    }
    let at_depth = |test: String| if depth > 0 { format!("{test} @ d{depth}") } else { test };
    let params: f64 = model.config.n_layers as f64
        * (model.config.dim as f64
            * (model.config.dim as f64 * 2.0 + model.config.kv_dim() as f64 * 2.0 + model.config.ffn_dim as f64 * 3.0))
        + (model.config.vocab_size * model.config.dim) as f64;
    println!("| model | size | params | backend | threads | test | t/s (median) | spread (min - max) | read GB/s |");
    println!("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    let row = |test: String, s: Stats, bytes_per_token: Option<usize>| {
        let read = bytes_per_token.map_or_else(|| "-".to_string(), |b| format!("{:.1}", b as f64 * s.median / 1e9));
        println!(
            "| {name} | {:.2} MiB | {:.2} M | {} | {} | {test} | {:.2} | {:.2} - {:.2} | {read} |",
            model.weight_bytes as f64 / (1 << 20) as f64,
            params / 1e6,
            be.describe(),
            args.threads,
            s.median,
            s.min,
            s.max
        );
    };
    if args.prompt_tokens > 0 {
        let prompt: Vec<u32> = (0..args.prompt_tokens).map(|_| next_id()).collect();
        let mut rates = Vec::new();
        for rep in 0..=args.repetitions {
            cache.truncate(depth);
            let t = Instant::now();
            be.install(|| model.forward(&prompt, &mut cache, &mut scratch, false))?;
            if rep > 0 {
                rates.push(args.prompt_tokens as f64 / t.elapsed().as_secs_f64());
            }
        }
        row(at_depth(format!("pp{}", args.prompt_tokens)), stats(rates), None);
    }
    if args.gen_tokens > 0 {
        let first = next_id();
        let (mut rates, mut host) = (Vec::new(), Vec::new());
        for rep in 0..=args.repetitions {
            cache.truncate(depth);
            let mut sampling = args.sampling();
            let t = Instant::now();
            // The host's share of a step: recording and submitting it (the rest waits for the device).
            let mut recording = Duration::ZERO;
            be.install(|| -> Result<(), tern::Error> {
                // As `tern generate` decodes: up to STEPS_IN_FLIGHT steps queued ahead of the token read back.
                let mut readings = VecDeque::new();
                readings.push_back(model.forward_sample(StepInput::Tokens(&[first]), &mut cache, &mut scratch, &sampling())?);
                for _ in 1..args.gen_tokens {
                    let r = Instant::now();
                    let next = model.forward_sample(StepInput::Sampled, &mut cache, &mut scratch, &sampling())?;
                    recording += r.elapsed();
                    readings.push_back(next);
                    if readings.len() > STEPS_IN_FLIGHT
                        && let Some(oldest) = readings.pop_front()
                    {
                        be.read_finish(oldest)?;
                    }
                }
                for r in readings {
                    be.read_finish(r)?;
                }
                Ok(())
            })?;
            if rep > 0 {
                rates.push(args.gen_tokens as f64 / t.elapsed().as_secs_f64());
                host.push(recording.as_secs_f64() * 1e6 / (args.gen_tokens - 1).max(1) as f64);
            }
        }
        // Generation reads the KV cache of positions 0..depth + n: on average that of the middle step.
        row(at_depth(args.gen_test()), stats(rates), Some(model.decode_bytes(depth + args.gen_tokens / 2)));
        if be.queues_work() && !host.is_empty() {
            let h = stats(host);
            eprintln!("{}: the host records and submits a decode step in {:.1} µs (median)", args.gen_test(), h.median);
        }
        if args.profile {
            profile_decode(args, model, first, &mut cache, &mut scratch)?;
        }
    }
    Ok(())
}

/// One generation run with every kernel timed on the GPU: GPU time per decode step by kernel.
fn profile_decode(
    args: &BenchArgs,
    model: &Llama<AnyBackend>,
    first: u32,
    cache: &mut tern::model::KvCache<AnyBackend>,
    scratch: &mut Scratch<AnyBackend>,
) -> Result<(), tern::Error> {
    let AnyBackend::WebGpu(gpu) = model.backend() else {
        return Err(tern::Error::Option { name: "profile", detail: "kernel times need the WebGPU backend".into() });
    };
    let mut sampling = args.sampling();
    cache.truncate(args.depth);
    gpu.start_profiling()?;
    let t = Instant::now();
    let be = model.backend();
    let mut reading = model.forward_sample(StepInput::Tokens(&[first]), cache, scratch, &sampling())?;
    for _ in 1..args.gen_tokens {
        let next = model.forward_sample(StepInput::Sampled, cache, scratch, &sampling())?;
        be.read_finish(std::mem::replace(&mut reading, next))?;
    }
    be.read_finish(reading)?;
    let wall_us = t.elapsed().as_secs_f64() * 1e6;
    let p = gpu.stop_profiling()?;
    let steps = args.gen_tokens as f64;
    let kernels_us: f64 = p.kernels.iter().map(|k| k.total_us).sum();
    println!();
    println!("GPU time per decode step ({} steps, timed one submit at a time):", args.gen_tokens);
    println!();
    println!("| kernel | calls per step | µs per call | µs per step | share |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let total = kernels_us + p.between_us;
    for k in &p.kernels {
        println!(
            "| {} | {:.1} | {:.2} | {:.1} | {:.1}% |",
            k.label,
            k.calls as f64 / steps,
            k.total_us / k.calls.max(1) as f64,
            k.total_us / steps,
            100.0 * k.total_us / total
        );
    }
    println!("| between kernels | | | {:.1} | {:.1}% |", p.between_us / steps, 100.0 * p.between_us / total);
    println!("| all, on the GPU | | | {:.1} | 100% |", total / steps);
    println!("| wall time while profiling | | | {:.1} | |", wall_us / steps);
    Ok(())
}
