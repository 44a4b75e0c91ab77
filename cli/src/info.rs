//! `tern info`: what a model file holds and what running it takes.

use std::path::PathBuf;

use clap::Args;
use tern::backend_cpu::SimdLevel;
use tern::loader::ModelSource;
use tern::model::LlamaConfig;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A GGUF file or a Hugging Face model directory.
    #[arg(long, short)]
    model: PathBuf,
    /// Tokens of context to size the KV cache for.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// List every tensor.
    #[arg(long)]
    tensors: bool,
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

pub fn run(args: &InfoArgs) -> Result<(), tern::Error> {
    let src = ModelSource::open(&args.model)?;
    println!("model: {}", src.path());
    if let ModelSource::Gguf(g) = &src {
        println!("format: GGUF v{}, {} bytes, alignment {}", g.version, g.file_len(), g.alignment);
    } else {
        println!("format: Hugging Face safetensors");
    }
    println!("\nmetadata ({} keys):", src.metadata().len());
    // tern's per-tensor type and shape keys are summarized by the tensor table below.
    let per_tensor = |k: &str| k.starts_with("tern.type.") || k.starts_with("tern.dims.");
    for (k, v) in src.metadata().iter().filter(|(k, _)| !per_tensor(k)) {
        println!("  {k} = {v}");
    }
    let hidden = src.metadata().iter().filter(|(k, _)| per_tensor(k)).count();
    if hidden > 0 {
        println!("  ({hidden} tern.type.* / tern.dims.* keys: the format and shape of each tern tensor)");
    }
    let mut by_type: Vec<(String, usize, usize, usize)> = Vec::new();
    for t in src.tensors() {
        let key = t.ty.name().to_string();
        match by_type.iter_mut().find(|e| e.0 == key) {
            Some(e) => {
                e.1 += 1;
                e.2 += t.elements();
                e.3 += t.size;
            }
            None => by_type.push((key, 1, t.elements(), t.size)),
        }
    }
    let (elements, bytes): (usize, usize) = src.tensors().iter().fold((0, 0), |a, t| (a.0 + t.elements(), a.1 + t.size));
    println!("\ntensors: {} tensors, {:.2} M parameters, {}, {:.3} bits per weight", src.tensors().len(), elements as f64 / 1e6, mib(bytes), bytes as f64 * 8.0 / elements.max(1) as f64);
    for (ty, n, el, b) in &by_type {
        println!("  {ty:>5}: {n:>4} tensors, {:>8.2} M parameters, {}", *el as f64 / 1e6, mib(*b));
    }
    if args.tensors {
        for t in src.tensors() {
            println!("  {:<32} {:>5} {:?}", t.name, t.ty.name(), t.dims);
        }
    }
    match LlamaConfig::from_metadata(src.metadata()) {
        Ok(c) => {
            let ctx = args.context.min(c.context_length);
            println!("\narchitecture: {} ({} layers, width {}, {} heads / {} KV heads of {}, FFN {}, vocab {}, context {})", c.architecture, c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size, c.context_length);
            println!("memory: weights {} + f32 KV cache {} for {ctx} tokens = {}", mib(bytes), mib(c.kv_cache_bytes(ctx)), mib(bytes + c.kv_cache_bytes(ctx)));
        }
        Err(e) => println!("\narchitecture: not runnable by tern: {e}"),
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cpu: {} cores, kernels: {}", cores, SimdLevel::detect().name());
    Ok(())
}
