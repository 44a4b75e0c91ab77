use indicatif::{ProgressBar, ProgressStyle};
use tern::Engine;

use crate::ModelArgs;

/// Loads the model with a progress bar on stderr (hidden when stderr is not a terminal).
pub fn engine(args: &ModelArgs) -> Result<Engine, tern::Error> {
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading {msg:24!} [{bar:30}] {bytes}/{total_bytes} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let b = bar.clone();
    let engine = Engine::builder(&args.model)
        .backend(args.backend)
        .threads(args.threads)
        .context(args.context)
        .cache_type(args.kv_cache)
        .on_progress(move |p| {
            b.set_length(p.total_bytes);
            b.set_position(p.done_bytes);
            b.set_message(p.tensor);
        })
        .build();
    bar.finish_and_clear();
    engine
}
