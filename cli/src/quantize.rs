//! `tern quantize` and `tern imatrix`: make a tern model file from a GGUF or safetensors model, and the
//! activation statistics that weight its quantization error.

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tern::core::TernFormat;
use tern::quantize::{Override, QuantizeProgress, Reason, Stage};
use tern::{ImportanceMatrix, Precision, QuantizeOptions, QuantizeReport};

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// The model to quantize: a GGUF file or a Hugging Face model directory.
    #[arg(long, short)]
    model: PathBuf,
    /// Where to write the tern model file (GGUF container).
    #[arg(long, short)]
    output: PathBuf,
    /// One format for every weight matrix: 2, 3, 4 or 8 bits (tern's scalar formats T2, T3, T4, T8).
    #[arg(long, conflicts_with_all = ["target_bpw", "format"], required_unless_present_any = ["target_bpw", "format"])]
    bits: Option<u32>,
    /// One format for every weight matrix, by name: T2, T3, T4, T8, or the trellis formats TR2, TR3, TR4 (rows
    /// a multiple of 64; docs/FORMATS.md).
    #[arg(long, conflicts_with = "target_bpw")]
    format: Option<String>,
    /// Mixed formats chosen by measured sensitivity to meet this many bits per weight (needs --calibration).
    #[arg(long)]
    target_bpw: Option<f64>,
    /// Activation statistics from `tern imatrix`.
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// Calibration text (UTF-8): activation statistics are gathered from it when --imatrix is not given, and
    /// --target-bpw measures sensitivities on it.
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// At most this many chunks of 512 calibration tokens for activation statistics.
    #[arg(long)]
    calibration_chunks: Option<usize>,
    /// Length of the calibration chunk each matrix's sensitivity is measured on (its second half is scored).
    #[arg(long, default_value_t = 256)]
    sensitivity_tokens: usize,
    /// A file to keep measured sensitivities in and reuse when the model and calibration match.
    #[arg(long)]
    sensitivity_cache: Option<PathBuf>,
    /// Round with error feedback (GPTQ) through second moments of activations on the calibration text.
    #[arg(long, requires = "calibration")]
    error_feedback: bool,
    /// Chunks of 512 calibration tokens the second moments for --error-feedback are gathered over.
    #[arg(long, default_value_t = 8)]
    feedback_chunks: usize,
    /// Formats the planner may choose (comma-separated; the trellis formats TR2, TR3 and TR4 too).
    #[arg(long, value_delimiter = ',', default_value = "T2,T3,T4,T8")]
    formats: Vec<String>,
    /// Per-tensor formats by name pattern: lines of `pattern = format`, e.g. `blk.*.ffn_down.weight = T4`.
    #[arg(long)]
    overrides: Option<PathBuf>,
    /// Print the format of every tensor, not only the summary.
    #[arg(long)]
    verbose: bool,
    /// CPU threads (0: one per core).
    #[arg(long, short, default_value_t = 0)]
    threads: usize,
}

#[derive(Args, Debug)]
pub struct ImatrixArgs {
    #[command(flatten)]
    model: crate::ModelArgs,
    /// Calibration text (UTF-8).
    #[arg(long)]
    text: PathBuf,
    /// Where to write the statistics (a GGUF file of one F32 row per matrix).
    #[arg(long, short)]
    output: PathBuf,
    /// Tokens per chunk.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// At most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
}

fn read_text(path: &PathBuf, name: &'static str) -> Result<String, tern::Error> {
    std::fs::read_to_string(path)
        .map_err(|e| tern::Error::Option { name, detail: format!("cannot read {}: {e}", path.display()) })
}

fn bar(template: &str) -> ProgressBar {
    ProgressBar::new(0)
        .with_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "))
}

pub fn imatrix(args: &ImatrixArgs) -> Result<(), tern::Error> {
    let text = read_text(&args.text, "text")?;
    let model_args = crate::ModelArgs { context: args.model.context.max(args.ctx), ..args.model.clone() };
    let engine = crate::load::engine(&model_args)?;
    let bar = bar("calibrating [{bar:30}] chunk {pos}/{len} ({elapsed}, {eta} left)");
    let m = ImportanceMatrix::collect(&engine, &text, args.ctx, args.chunks, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let m = m?;
    m.save(&args.output)?;
    println!("{} matrices, {} tokens in {} chunks -> {}", m.columns.len(), m.tokens, m.chunks, args.output.display());
    Ok(())
}

pub fn run(args: &QuantizeArgs) -> Result<(), tern::Error> {
    let precision = match (args.bits, &args.format, args.target_bpw) {
        (Some(bits), _, _) => Precision::Bits(
            TernFormat::SCALAR
                .into_iter()
                .find(|f| f.quant_bits() as u32 == bits)
                .ok_or_else(|| tern::Error::Option { name: "bits", detail: format!("{bits} is not 2, 3, 4 or 8") })?,
        ),
        (None, Some(name), _) => Precision::Bits(TernFormat::from_name(name.trim()).ok_or_else(|| tern::Error::Option {
            name: "format",
            detail: format!("{name:?} is not one of tern's formats ({})", format_names()),
        })?),
        (None, None, Some(x)) => Precision::TargetBpw(x),
        (None, None, None) => {
            return Err(tern::Error::Option { name: "bits", detail: "give --bits, --format or --target-bpw".into() });
        }
    };
    let mut options = QuantizeOptions::new(precision);
    options.threads = args.threads;
    options.sensitivity_tokens = args.sensitivity_tokens;
    options.sensitivity_cache = args.sensitivity_cache.clone();
    options.calibration_chunks = args.calibration_chunks;
    options.error_feedback = args.error_feedback;
    options.feedback_chunks = args.feedback_chunks;
    options.formats = args
        .formats
        .iter()
        .map(|f| {
            TernFormat::from_name(f.trim()).ok_or_else(|| tern::Error::Option {
                name: "formats",
                detail: format!("{f:?} is not one of tern's formats ({})", format_names()),
            })
        })
        .collect::<Result<_, _>>()?;
    if let Some(path) = &args.imatrix {
        options.importance = Some(ImportanceMatrix::load(path)?);
    }
    if let Some(path) = &args.calibration {
        options.calibration = Some(read_text(path, "calibration")?);
    }
    if let Some(path) = &args.overrides {
        options.overrides = Override::parse(&read_text(path, "overrides")?, &path.display().to_string())?;
    }
    let bar = bar("{msg:>12} [{bar:30}] {pos}/{len} ({elapsed}, {eta} left) {prefix}");
    let mut stage = None;
    let report = tern::quantize(&args.model, &args.output, &options, &mut |p: &QuantizeProgress<'_>| {
        if stage != Some(p.stage) {
            stage = Some(p.stage);
            bar.reset();
            bar.set_message(match p.stage {
                Stage::Importance => "calibrating",
                Stage::SecondMoments => "moments",
                Stage::Quantize => "quantizing",
                Stage::Sensitivity => "sensitivity",
                Stage::Write => "writing",
            });
        }
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_prefix(p.tensor.to_string());
    });
    bar.finish_and_clear();
    print(&report?, args.verbose, &args.output);
    Ok(())
}

fn print(r: &QuantizeReport, verbose: bool, output: &std::path::Path) {
    if verbose {
        println!("{:<32} {:>5} {:>11} {:>7} {:>10}  why", "tensor", "type", "params", "bpw", "KL rise");
        for t in &r.tensors {
            let why = match t.reason {
                Reason::Kept => "kept",
                Reason::Override => "override",
                Reason::Uniform => "--bits",
                Reason::Planned => "planned",
            };
            let kl = t.kl.map_or(String::new(), |k| format!("{k:.6}"));
            println!(
                "{:<32} {:>5} {:>11} {:>7.3} {:>10}  {why}",
                t.name,
                t.ty.name(),
                t.params,
                t.bits as f64 / t.params as f64,
                kl
            );
        }
        println!();
    }
    println!("{:<6} {:>8} {:>12} {:>7} {:>7}", "type", "tensors", "params", "share", "bpw");
    for (ty, params, bits) in r.by_type() {
        let n = r.tensors.iter().filter(|t| t.ty == ty).count();
        println!(
            "{:<6} {n:>8} {params:>12} {:>6.1}% {:>7.3}",
            ty.name(),
            100.0 * params as f64 / r.params() as f64,
            bits as f64 / params as f64
        );
    }
    println!(
        "total: {} params, {:.4} bits per weight, {:.1} MiB file -> {}",
        r.params(),
        r.bpw(),
        r.file_bytes as f64 / (1 << 20) as f64,
        output.display()
    );
}

/// The names of tern's formats, for error messages.
fn format_names() -> String {
    TernFormat::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}
