//! The `tern` command.

mod bench;
mod chat;
mod eval;
mod info;
mod load;
mod quantize;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tern::{GenerateOptions, SamplingParams};

#[derive(Parser, Debug)]
#[command(name = "tern", version, about = "Run quantized language models on any GPU through WebGPU, or on the CPU")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Continue a prompt; prints only the generated text, token by token.
    Generate(GenerateArgs),
    /// Talk with a model through its chat template; the conversation is kept. /reset starts over, /exit quits.
    Chat(ChatArgs),
    /// Measure prompt processing (pp) and generation (tg) speed, like llama-bench.
    Bench(bench::BenchArgs),
    /// Show a model's metadata, tensor types and memory needs.
    Info(info::InfoArgs),
    /// Perplexity over a text (llama-perplexity's method), and KL-divergence against a reference model.
    Eval(eval::EvalArgs),
    /// Write a tern model file: every weight matrix in tern's 2/3/4/8-bit formats, uniform or mixed to a target.
    Quantize(quantize::QuantizeArgs),
    /// Gather activation statistics (mean x^2 per input column of every matrix) from calibration text.
    Imatrix(quantize::ImatrixArgs),
}

/// Options shared by every command that loads a model.
#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// A GGUF file or a Hugging Face model directory (config.json + *.safetensors + tokenizer.json).
    #[arg(long, short)]
    model: PathBuf,
    /// Where to run: webgpu (the best adapter, CPU rasterizers included), cpu, or auto (a hardware GPU if
    /// there is one, else the CPU).
    #[arg(long, default_value = "auto")]
    backend: tern::BackendChoice,
    /// CPU threads (0: one per core).
    #[arg(long, short, default_value_t = 0)]
    threads: usize,
    /// Tokens of context.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// How the KV cache stores K and V: f16 (half the memory of f32, as llama.cpp's default) or f32.
    #[arg(long, default_value = "f16", value_parser = cache_type)]
    kv_cache: tern::core::TensorType,
}

/// A `--kv-cache` value: f16 or f32.
pub fn cache_type(name: &str) -> Result<tern::core::TensorType, String> {
    match name.to_ascii_lowercase().as_str() {
        "f16" => Ok(tern::core::TensorType::F16),
        "f32" => Ok(tern::core::TensorType::F32),
        _ => Err(format!("unknown KV cache type {name:?}: expected f16 or f32")),
    }
}

#[derive(Args, Debug, Clone)]
struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Keep the K most likely tokens (0: all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the most likely tokens up to this cumulative probability.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Penalty for tokens among the last 64 (1: none).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Random seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

impl SamplingArgs {
    fn options(&self) -> GenerateOptions {
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        });
        GenerateOptions {
            max_tokens: self.max_tokens,
            sampling: Some(SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: 64,
                seed,
            }),
            stop: self.stop.clone(),
        }
    }
}

#[derive(Args, Debug)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to continue.
    #[arg(long, short)]
    prompt: String,
    #[command(flatten)]
    sampling: SamplingArgs,
}

#[derive(Args, Debug)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message to open the conversation with.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
}

fn generate(args: &GenerateArgs) -> Result<(), tern::Error> {
    let options = args.sampling.options();
    options.sampling.as_ref().map(SamplingParams::validate).transpose()?;
    let engine = load::engine(&args.model)?;
    let mut session = engine.session()?;
    let mut out = std::io::stdout().lock();
    for token in session.generate(&args.prompt, &options)? {
        let _ = out.write_all(token?.text.as_bytes());
        let _ = out.flush();
    }
    let _ = writeln!(out);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Generate(a) => generate(a),
        Command::Chat(a) => chat::run(&a.model, a.system.as_deref(), &a.sampling.options()),
        Command::Bench(a) => bench::run(a),
        Command::Info(a) => info::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Quantize(a) => quantize::run(a),
        Command::Imatrix(a) => quantize::imatrix(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // tern's errors carry their causes in their own message ("{path}: {source}"), so the message is
            // the whole story; walking `source()` as well would print each cause twice.
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
