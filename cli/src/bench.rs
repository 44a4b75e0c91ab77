//! `tern bench`: prompt processing of `-p` tokens in one batch and generation of `-n` tokens one at a time,
//! each from an empty context, repeated; medians and spread in tokens per second, as llama-bench reports them.

use std::time::Instant;

use clap::Args;
use tern::model::Scratch;

use crate::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt tokens per prompt-processing test (0 skips it).
    #[arg(long, short = 'p', default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens per generation test (0 skips it).
    #[arg(long, short = 'n', default_value_t = 128)]
    gen_tokens: usize,
    /// Measured repetitions of each test (after one warm-up run).
    #[arg(long, short = 'r', default_value_t = 5)]
    repetitions: usize,
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

pub fn run(args: &BenchArgs) -> Result<(), tern::Error> {
    if args.repetitions == 0 {
        return Err(tern::Error::Option { name: "repetitions", detail: "must be at least 1".into() });
    }
    let need = args.prompt_tokens.max(args.gen_tokens) + 1;
    let model_args = ModelArgs { context: args.model.context.max(need), ..args.model.clone() };
    let engine = crate::load::engine(&model_args)?;
    let model = engine.model();
    let be = model.backend();
    let vocab = model.config.vocab_size as u64;
    let mut cache = model.new_cache(need)?;
    if cache.capacity() < need {
        return Err(tern::Error::Option { name: "prompt-tokens", detail: format!("the model's context is {} tokens", cache.capacity()) });
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
    let name = engine.path().file_name().map_or_else(|| engine.path().display().to_string(), |n| n.to_string_lossy().into());
    let params: f64 = model.config.n_layers as f64 * (model.config.dim as f64 * (model.config.dim as f64 * 2.0 + model.config.kv_dim() as f64 * 2.0 + model.config.ffn_dim as f64 * 3.0))
        + (model.config.vocab_size * model.config.dim) as f64;
    println!("| model | size | params | backend | threads | test | t/s (median) | spread (min - max) |");
    println!("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: |");
    let row = |test: String, s: Stats| {
        println!(
            "| {name} | {:.2} MiB | {:.2} M | {} | {} | {test} | {:.2} | {:.2} - {:.2} |",
            model.weight_bytes as f64 / (1 << 20) as f64,
            params / 1e6,
            be.describe(),
            args.model.threads,
            s.median,
            s.min,
            s.max
        );
    };
    if args.prompt_tokens > 0 {
        let prompt: Vec<u32> = (0..args.prompt_tokens).map(|_| next_id()).collect();
        let mut rates = Vec::new();
        for rep in 0..=args.repetitions {
            cache.truncate(0);
            let t = Instant::now();
            be.install(|| model.forward(&prompt, &mut cache, &mut scratch, false))?;
            if rep > 0 {
                rates.push(args.prompt_tokens as f64 / t.elapsed().as_secs_f64());
            }
        }
        row(format!("pp{}", args.prompt_tokens), stats(rates));
    }
    if args.gen_tokens > 0 {
        let tokens: Vec<u32> = (0..args.gen_tokens).map(|_| next_id()).collect();
        let mut rates = Vec::new();
        for rep in 0..=args.repetitions {
            cache.truncate(0);
            let t = Instant::now();
            be.install(|| -> Result<(), tern::Error> {
                for tok in &tokens {
                    model.forward(std::slice::from_ref(tok), &mut cache, &mut scratch, false)?;
                }
                Ok(())
            })?;
            if rep > 0 {
                rates.push(args.gen_tokens as f64 / t.elapsed().as_secs_f64());
            }
        }
        row(format!("tg{}", args.gen_tokens), stats(rates));
    }
    Ok(())
}
