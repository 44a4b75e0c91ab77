//! `tern info`: what a model file holds and what running it takes, and what this machine offers (CPU kernels,
//! WebGPU adapters with their limits and features).

use std::path::PathBuf;

use clap::Args;
use tern::backend_cpu::SimdLevel;
use tern::loader::ModelSource;
use tern::model::LlamaConfig;

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A GGUF file or a Hugging Face model directory (without one, only the machine is described).
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Tokens of context to size the KV cache for.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// The KV cache type to size it for: f16 or f32.
    #[arg(long, default_value = "f16", value_parser = crate::cache_type)]
    kv_cache: tern::core::TensorType,
    /// List every tensor.
    #[arg(long)]
    tensors: bool,
}

fn mib(bytes: usize) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

pub fn run(args: &InfoArgs) -> Result<(), tern::Error> {
    if let Some(model) = &args.model {
        describe_model(args, model)?;
        println!();
    }
    describe_machine();
    Ok(())
}

fn describe_machine() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("cpu: {} cores, kernels: {}", cores, SimdLevel::detect().name());
    let adapters = tern::backend_webgpu::adapters();
    if adapters.is_empty() {
        println!("webgpu: no adapter (no Vulkan, Metal or DX12 driver found); --backend auto runs on the CPU");
    }
    for a in &adapters {
        println!(
            "webgpu adapter: {} ({}, {}{})",
            a.name,
            a.api,
            a.kind,
            if a.is_gpu { "" } else { ": not a GPU, --backend auto skips it" }
        );
        if !a.driver.is_empty() {
            println!("  driver: {}", a.driver);
        }
        println!(
            "  limits: storage binding {}, buffer {}, workgroup {} invocations, {} KiB workgroup memory",
            mib(a.max_storage_binding_bytes as usize),
            mib(a.max_buffer_bytes as usize),
            a.max_workgroup_invocations,
            a.max_workgroup_storage_bytes / 1024
        );
        let size = a.subgroup_size.map_or_else(String::new, |s| format!(" of {s}"));
        println!("  features: shader-f16 {}, subgroups {}{size}", yes(a.shader_f16), yes(a.subgroups));
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn describe_model(args: &InfoArgs, model: &std::path::Path) -> Result<(), tern::Error> {
    let src = ModelSource::open(model)?;
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
    println!(
        "\ntensors: {} tensors, {:.2} M parameters, {}, {:.3} bits per weight",
        src.tensors().len(),
        elements as f64 / 1e6,
        mib(bytes),
        bytes as f64 * 8.0 / elements.max(1) as f64
    );
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
            println!(
                "\narchitecture: {} ({} layers, width {}, {} heads / {} KV heads of {}, FFN {}, vocab {}, context {})",
                c.architecture, c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size, c.context_length
            );
            println!(
                "memory: weights {} + {} KV cache {} for {ctx} tokens = {}",
                mib(bytes),
                args.kv_cache.name().to_lowercase(),
                mib(c.kv_cache_bytes(ctx, args.kv_cache)),
                mib(bytes + c.kv_cache_bytes(ctx, args.kv_cache))
            );
        }
        Err(e) => println!("\narchitecture: not runnable by tern: {e}"),
    }
    Ok(())
}
