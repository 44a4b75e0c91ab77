//! `tern eval`: perplexity over a text file, the way llama.cpp's `llama-perplexity` measures it, and
//! optionally KL-divergence and top-1 agreement against a reference model run on the same chunks.

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use tern::{EvalOptions, EvalReport, Reference};

use crate::ModelArgs;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to score (UTF-8).
    #[arg(long)]
    text: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored.
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// At most this many chunks (default: as many as the text fills).
    #[arg(long)]
    chunks: Option<usize>,
    /// A reference model (same vocabulary, e.g. the unquantized one) for KL-divergence and top-1 agreement.
    #[arg(long, conflicts_with = "reference_logits")]
    reference: Option<PathBuf>,
    /// A reference's log-probabilities saved by `tern eval --save-logits` on the same text, ctx and chunks.
    #[arg(long)]
    reference_logits: Option<PathBuf>,
    /// Save this model's log-probabilities at the scored positions, to serve later as --reference-logits.
    #[arg(long)]
    save_logits: Option<PathBuf>,
}

pub fn run(args: &EvalArgs) -> Result<(), tern::Error> {
    let text = std::fs::read_to_string(&args.text)
        .map_err(|e| tern::Error::Option { name: "text", detail: format!("cannot read {}: {e}", args.text.display()) })?;
    let model_args = ModelArgs { context: args.model.context.max(args.ctx), ..args.model.clone() };
    let engine = crate::load::engine(&model_args)?;
    let reference = args
        .reference
        .as_ref()
        .map(|path| crate::load::engine(&ModelArgs { model: path.clone(), ..model_args.clone() }))
        .transpose()?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("scoring [{bar:30}] chunk {pos}/{len} ({elapsed}, {eta} left)")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let options = EvalOptions { ctx: args.ctx, max_chunks: args.chunks, save_logits: args.save_logits.clone() };
    let reference = match (&reference, &args.reference_logits) {
        (Some(engine), _) => Some(Reference::Model(engine)),
        (None, Some(path)) => Some(Reference::Saved(path)),
        (None, None) => None,
    };
    let report = tern::evaluate(&engine, reference, &text, &options, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    print(&report?, args.ctx);
    Ok(())
}

fn print(r: &EvalReport, ctx: usize) {
    println!("{} chunks of {ctx} tokens, {} positions scored", r.chunks, r.scored);
    println!("mean NLL = {:.6} ± {:.6}", r.nll.mean, r.nll.stderr);
    if let Some(c) = &r.reference {
        println!("reference PPL = {:.4} ± {:.5}", c.ppl.mean, c.ppl.stderr);
        println!("KL-divergence = {:.6} ± {:.6}", c.kl.mean, c.kl.stderr);
        println!("top-1 agreement = {:.3}% ± {:.3}%", 100.0 * c.top1.mean, 100.0 * c.top1.stderr);
    }
    println!("PPL = {:.4} ± {:.5}", r.ppl.mean, r.ppl.stderr);
}
