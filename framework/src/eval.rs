//! Perplexity, and KL-divergence against a reference model, computed the way llama.cpp's `llama-perplexity`
//! computes them so that the figures compare directly:
//!
//! - the text is tokenized whole and cut into chunks of `ctx` tokens (the tail that does not fill a chunk is
//!   dropped); each chunk runs from an empty context, its first token replaced by BOS when the model adds one;
//! - in each chunk only the second half is scored (positions `ctx/2 .. ctx-1` predicting the next token), so
//!   every scored token sees at least `ctx/2` tokens of context;
//! - PPL = exp(mean negative log-likelihood), with error `PPL * stderr(nll)`; KL-divergence is the mean over
//!   scored positions of `KL(reference || model)` over the whole vocabulary, with its standard error, and top-1
//!   agreement the share of positions where both models' most likely tokens are the same.

use std::path::{Path, PathBuf};

use crate::{Engine, Error, Result};

/// What to evaluate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalOptions {
    /// Tokens per chunk (llama.cpp's `-c`; it defaults to 512 for perplexity).
    pub ctx: usize,
    /// At most this many chunks (`None`: all the text allows).
    pub max_chunks: Option<usize>,
    /// Save the model's log-probabilities at the scored positions here, to serve later as a
    /// [`Reference::Saved`] (f32, so about 50 MB per chunk of 512 for a vocabulary of 49152).
    pub save_logits: Option<PathBuf>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions { ctx: 512, max_chunks: None, save_logits: None }
    }
}

/// What the model is compared with.
#[derive(Debug, Clone, Copy)]
pub enum Reference<'a> {
    /// Another model (same vocabulary), run on the same chunks.
    Model(&'a Engine),
    /// Log-probabilities saved by an earlier evaluation with [`EvalOptions::save_logits`] on the same text and
    /// chunk length.
    Saved(&'a Path),
}

const LOGITS_MAGIC: &[u8; 8] = b"TERNLOGP";
const LOGITS_VERSION: u32 = 1;

/// Writes scored positions' log-probabilities: a header (magic, version, ctx, vocab, chunks: u32), then per
/// chunk its `ctx` token ids (u32) and `ctx - 1 - ctx/2` rows of `vocab` f32 log-probabilities, little-endian.
struct LogitsWriter {
    out: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
    /// One row's bytes, reused.
    row: Vec<u8>,
}

fn io_error(path: &Path, e: std::io::Error) -> Error {
    Error::Load(tern_loader::Error::Io { path: path.display().to_string(), source: e })
}

impl LogitsWriter {
    fn create(path: &Path, ctx: usize, vocab: usize, chunks: usize) -> Result<Self> {
        let file = std::fs::File::create(path).map_err(|e| io_error(path, e))?;
        let mut w = LogitsWriter { out: std::io::BufWriter::new(file), path: path.to_path_buf(), row: Vec::new() };
        w.bytes(LOGITS_MAGIC)?;
        for v in [LOGITS_VERSION, ctx as u32, vocab as u32, chunks as u32] {
            w.bytes(&v.to_le_bytes())?;
        }
        Ok(w)
    }

    fn bytes(&mut self, b: &[u8]) -> Result<()> {
        use std::io::Write;
        self.out.write_all(b).map_err(|e| io_error(&self.path, e))
    }

    fn chunk(&mut self, tokens: &[u32]) -> Result<()> {
        for t in tokens {
            self.bytes(&t.to_le_bytes())?;
        }
        Ok(())
    }

    fn row(&mut self, log_probs: &[f64]) -> Result<()> {
        use std::io::Write;
        self.row.clear();
        self.row.extend(log_probs.iter().flat_map(|&v| (v as f32).to_le_bytes()));
        self.out.write_all(&self.row).map_err(|e| io_error(&self.path, e))
    }

    fn finish(mut self) -> Result<()> {
        use std::io::Write;
        self.out.flush().map_err(|e| io_error(&self.path, e))
    }
}

/// Reads what [`LogitsWriter`] wrote, checking it against the chunks being evaluated.
struct LogitsReader {
    input: std::io::BufReader<std::fs::File>,
    path: PathBuf,
    vocab: usize,
    buf: Vec<u8>,
}

impl LogitsReader {
    fn open(path: &Path, ctx: usize, vocab: usize, chunks: usize) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| io_error(path, e))?;
        let mut r = LogitsReader { input: std::io::BufReader::new(file), path: path.to_path_buf(), vocab, buf: Vec::new() };
        let bad = |detail: String| Error::Option { name: "reference", detail: format!("{}: {detail}", path.display()) };
        let magic = r.read(8)?.to_vec();
        if magic != LOGITS_MAGIC {
            return Err(bad("not a saved-logits file from `tern eval --save-logits`".into()));
        }
        let mut header = [0u32; 4];
        for h in &mut header {
            let b = r.read(4)?;
            *h = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        let [version, saved_ctx, saved_vocab, saved_chunks] = header;
        if version != LOGITS_VERSION {
            return Err(bad(format!("version {version}; this tern reads version {LOGITS_VERSION}")));
        }
        if saved_ctx as usize != ctx || saved_vocab as usize != vocab {
            return Err(bad(format!(
                "saved with ctx {saved_ctx} and a vocabulary of {saved_vocab}, evaluating with ctx {ctx} and {vocab}"
            )));
        }
        if (saved_chunks as usize) < chunks {
            return Err(bad(format!("holds {saved_chunks} chunks, {chunks} are to be scored")));
        }
        Ok(r)
    }

    fn read(&mut self, n: usize) -> Result<&[u8]> {
        use std::io::Read;
        self.buf.resize(n, 0);
        let path = &self.path;
        self.input
            .read_exact(&mut self.buf)
            .map_err(|e| Error::Option { name: "reference", detail: format!("{}: truncated ({e})", path.display()) })?;
        Ok(&self.buf)
    }

    fn chunk(&mut self, tokens: &[u32]) -> Result<()> {
        let same = self
            .read(4 * tokens.len())?
            .chunks_exact(4)
            .zip(tokens)
            .all(|(b, &t)| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) == t);
        if !same {
            return Err(Error::Option {
                name: "reference",
                detail: format!("{}: saved for different text (its tokens differ)", self.path.display()),
            });
        }
        Ok(())
    }

    fn row(&mut self, out: &mut Vec<f64>) -> Result<()> {
        let vocab = self.vocab;
        let b = self.read(4 * vocab)?;
        out.clear();
        out.extend(b.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))));
        Ok(())
    }
}

/// A mean with its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    pub mean: f64,
    pub stderr: f64,
}

/// Running sums for a mean and its standard error.
#[derive(Debug, Default, Clone, Copy)]
struct Moments {
    n: f64,
    sum: f64,
    sum_sq: f64,
}

impl Moments {
    fn push(&mut self, v: f64) {
        self.n += 1.0;
        self.sum += v;
        self.sum_sq += v * v;
    }

    fn estimate(&self) -> Estimate {
        let mean = self.sum / self.n;
        let var = (self.sum_sq / self.n - mean * mean).max(0.0);
        Estimate { mean, stderr: if self.n > 1.0 { (var / (self.n - 1.0)).sqrt() } else { f64::NAN } }
    }
}

/// The result of an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    pub chunks: usize,
    /// Positions scored (`chunks * (ctx - 1 - ctx/2)`).
    pub scored: usize,
    /// Perplexity and its error.
    pub ppl: Estimate,
    /// Mean negative log-likelihood per scored token (nats).
    pub nll: Estimate,
    /// Against the reference, when there is one.
    pub reference: Option<ReferenceReport>,
}

/// How the model's next-token distributions compare with the reference's.
#[derive(Debug, Clone, PartialEq)]
pub struct ReferenceReport {
    /// Perplexity of the reference on the same positions.
    pub ppl: Estimate,
    /// Mean KL(reference || model), nats.
    pub kl: Estimate,
    /// Share of positions where the two models' most likely tokens agree (0 to 1).
    pub top1: Estimate,
}

/// Log-probabilities of `logits` (log-softmax), in f64.
pub(crate) fn log_softmax(logits: &[f32], out: &mut Vec<f64>) {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    out.clear();
    out.extend(logits.iter().map(|&v| v as f64 - lse));
}

/// KL(p || q) from log-probabilities.
pub(crate) fn kl_divergence(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p.iter().zip(log_q).map(|(&lp, &lq)| lp.exp() * (lp - lq)).sum::<f64>().max(0.0)
}

fn argmax(v: &[f64]) -> usize {
    v.iter().enumerate().fold((0, f64::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

/// One engine's KV cache and scratch for chunks of `ctx` tokens, reused from chunk to chunk.
struct ChunkRunner<'e> {
    engine: &'e Engine,
    cache: tern_model::KvCache<crate::AnyBackend>,
    scratch: tern_model::Scratch<crate::AnyBackend>,
}

impl<'e> ChunkRunner<'e> {
    fn new(engine: &'e Engine, ctx: usize) -> Result<Self> {
        let model = engine.model();
        Ok(ChunkRunner { engine, cache: model.new_cache(ctx)?, scratch: tern_model::Scratch::new(model.backend())? })
    }

    /// Logits of every position of `tokens`, run from an empty context.
    fn logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>> {
        let model = self.engine.model();
        self.cache.truncate(0);
        let (cache, scratch) = (&mut self.cache, &mut self.scratch);
        Ok(model.backend().install(|| model.forward(tokens, cache, scratch, true))?)
    }
}

/// `text` tokenized whole and cut into chunks of `ctx` tokens (at most `max_chunks`), each starting with BOS
/// when the model adds one; the tail that does not fill a chunk is dropped.
pub(crate) fn chunk_tokens(engine: &Engine, text: &str, ctx: usize, max_chunks: Option<usize>) -> Result<Vec<Vec<u32>>> {
    let tokenizer = engine.tokenizer();
    // Tokenize without the BOS the encoder may add; chunks get their own.
    let mut tokens = tokenizer.encode(text)?;
    if tokenizer.add_bos && tokens.first() == tokenizer.bos.as_ref() {
        tokens.remove(0);
    }
    let available = tokens.len() / ctx;
    let chunks = max_chunks.map_or(available, |m| m.min(available));
    if chunks == 0 {
        return Err(Error::Option {
            name: "text",
            detail: format!("{} tokens do not fill one chunk of {ctx}: give more text or a smaller --ctx", tokens.len()),
        });
    }
    Ok(tokens
        .chunks_exact(ctx)
        .take(chunks)
        .map(|c| {
            let mut chunk = c.to_vec();
            if let (true, Some(bos)) = (tokenizer.add_bos, tokenizer.bos) {
                chunk[0] = bos;
            }
            chunk
        })
        .collect())
}

/// Evaluates `engine` on `text` (and compares it with `reference`, which must share its vocabulary), calling
/// `progress(done, total)` after every chunk.
pub fn evaluate(
    engine: &Engine,
    reference: Option<Reference<'_>>,
    text: &str,
    options: &EvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalReport> {
    let ctx = options.ctx;
    if ctx < 4 {
        return Err(Error::Option { name: "ctx", detail: format!("{ctx} tokens is too short to score (at least 4)") });
    }
    let context_length = engine.model().config.context_length;
    if ctx > context_length {
        return Err(Error::Option {
            name: "ctx",
            detail: format!("{ctx} tokens exceed the model's context of {context_length}"),
        });
    }
    let vocab = engine.model().config.vocab_size;
    if let Some(Reference::Model(r)) = reference
        && r.model().config.vocab_size != vocab
    {
        return Err(Error::Option {
            name: "reference",
            detail: format!("its vocabulary has {} tokens, the model's {vocab}", r.model().config.vocab_size),
        });
    }
    let chunks = chunk_tokens(engine, text, ctx, options.max_chunks)?;
    let first = ctx / 2;
    let (mut nll, mut ref_nll, mut kl, mut top1) =
        (Moments::default(), Moments::default(), Moments::default(), Moments::default());
    let (mut lp, mut lq) = (Vec::new(), Vec::new());
    let mut runner = ChunkRunner::new(engine, ctx)?;
    let (mut ref_runner, mut saved) = match reference {
        Some(Reference::Model(r)) => (Some(ChunkRunner::new(r, ctx)?), None),
        Some(Reference::Saved(path)) => (None, Some(LogitsReader::open(path, ctx, vocab, chunks.len())?)),
        None => (None, None),
    };
    let mut save = options.save_logits.as_deref().map(|p| LogitsWriter::create(p, ctx, vocab, chunks.len())).transpose()?;
    progress(0, chunks.len());
    for (c, chunk) in chunks.iter().enumerate() {
        let logits = runner.logits(chunk)?;
        let ref_logits = ref_runner.as_mut().map(|r| r.logits(chunk)).transpose()?;
        if let Some(s) = saved.as_mut() {
            s.chunk(chunk)?;
        }
        if let Some(w) = save.as_mut() {
            w.chunk(chunk)?;
        }
        for j in first..ctx - 1 {
            let next = chunk[j + 1] as usize;
            log_softmax(&logits[j * vocab..(j + 1) * vocab], &mut lq);
            nll.push(-lq[next]);
            if let Some(w) = save.as_mut() {
                w.row(&lq)?;
            }
            let have_reference = match (&ref_logits, saved.as_mut()) {
                (Some(rl), _) => {
                    log_softmax(&rl[j * vocab..(j + 1) * vocab], &mut lp);
                    true
                }
                (None, Some(s)) => {
                    s.row(&mut lp)?;
                    true
                }
                (None, None) => false,
            };
            if have_reference {
                ref_nll.push(-lp[next]);
                kl.push(kl_divergence(&lp, &lq));
                top1.push(if argmax(&lp) == argmax(&lq) { 1.0 } else { 0.0 });
            }
        }
        progress(c + 1, chunks.len());
    }
    save.map(LogitsWriter::finish).transpose()?;
    let ppl_of = |m: &Moments| {
        let e = m.estimate();
        let ppl = e.mean.exp();
        Estimate { mean: ppl, stderr: ppl * e.stderr }
    };
    Ok(EvalReport {
        chunks: chunks.len(),
        scored: nll.n as usize,
        ppl: ppl_of(&nll),
        nll: nll.estimate(),
        reference: reference.map(|_| ReferenceReport { ppl: ppl_of(&ref_nll), kl: kl.estimate(), top1: top1.estimate() }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_known_distributions() {
        let p = [0.5f64, 0.25, 0.25].map(f64::ln);
        let q = [0.25f64, 0.5, 0.25].map(f64::ln);
        let want = 0.5 * (0.5f64 / 0.25).ln() + 0.25 * (0.25f64 / 0.5).ln();
        assert!((kl_divergence(&p, &q) - want).abs() < 1e-12);
        assert_eq!(kl_divergence(&p, &p), 0.0);
    }

    #[test]
    fn log_softmax_normalizes() {
        let mut out = Vec::new();
        log_softmax(&[1000.0, 999.0, -5.0], &mut out);
        let total: f64 = out.iter().map(|v| v.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!((out[0] - out[1] - 1.0).abs() < 1e-9);
    }

    #[test]
    fn moments_give_mean_and_standard_error() {
        let mut m = Moments::default();
        for v in [1.0, 2.0, 3.0, 4.0] {
            m.push(v);
        }
        let e = m.estimate();
        assert_eq!(e.mean, 2.5);
        // Population variance 1.25, divided by n - 1 = 3.
        assert!((e.stderr - (1.25f64 / 3.0).sqrt()).abs() < 1e-12);
    }
}
