//! Activation statistics for importance-weighted quantization (`tern imatrix`): for every weight matrix, the
//! mean of `x^2` over calibration tokens for each of its input columns. A column whose activations are large
//! contributes more to the product's error, so the quantizer weights its error more.
//!
//! The statistics are gathered by running tern itself over calibration text in chunks of `ctx` tokens (each from
//! an empty context, BOS first, as in evaluation), observing the input of every matrix product. They are saved as
//! a GGUF file: one F32 tensor of `cols` values per matrix, under the matrix's name, plus
//! `tern.imatrix.tokens` and `tern.imatrix.chunks`.

use std::collections::BTreeMap;

use tern_core::{Backend, TensorType};
use tern_loader::{GgufFile, GgufWriter, MetaValue};

use crate::{Engine, Error, Result};

/// Mean `x^2` per input column, per weight matrix.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportanceMatrix {
    /// Calibration tokens the means are over.
    pub tokens: usize,
    /// Chunks run.
    pub chunks: usize,
    /// Matrix name to one mean per input column.
    pub columns: BTreeMap<String, Vec<f32>>,
}

/// What sees each product's input: the names of the matrices that take it, its rows and columns, and its values.
type ProductInputs<'a> = dyn FnMut(&[String], usize, usize, &[f32]) + Send + 'a;

/// Runs `engine` over `text` in chunks of `ctx` tokens (at most `max_chunks`), showing `observe` the input of
/// every matrix product (the names of the matrices that take it, `rows x cols`, the values) and calling
/// `progress(done, total)` after every chunk. Returns the number of chunks run.
fn observe_chunks(
    engine: &Engine,
    text: &str,
    ctx: usize,
    max_chunks: Option<usize>,
    progress: &mut dyn FnMut(usize, usize),
    observe: &mut ProductInputs<'_>,
) -> Result<usize> {
    let model = engine.model();
    let backend = model.backend();
    let chunks = crate::eval::chunk_tokens(engine, text, ctx, max_chunks)?;
    let mut cache = model.new_cache(ctx)?;
    let mut scratch = tern_model::Scratch::new(backend)?;
    progress(0, chunks.len());
    for (c, chunk) in chunks.iter().enumerate() {
        cache.truncate(0);
        let mut seen = |names: &[String], x: &crate::AnyTensor| -> tern_model::Result<()> {
            let (rows, cols) = backend.shape(x);
            observe(names, rows, cols, &backend.read(x)?);
            Ok(())
        };
        backend.install(|| model.forward_observed(chunk, &mut cache, &mut scratch, true, Some(&mut seen)))?;
        progress(c + 1, chunks.len());
    }
    Ok(chunks.len())
}

impl ImportanceMatrix {
    /// Runs `engine` over `text` in chunks of `ctx` tokens (at most `max_chunks`), calling `progress(done, total)`
    /// after every chunk.
    pub fn collect(
        engine: &Engine,
        text: &str,
        ctx: usize,
        max_chunks: Option<usize>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let mut sums: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let chunks = observe_chunks(engine, text, ctx, max_chunks, progress, &mut |names, rows, cols, values| {
            let first = sums.entry(names[0].clone()).or_insert_with(|| vec![0.0; cols]);
            for row in values.chunks_exact(cols).take(rows) {
                for (s, &v) in first.iter_mut().zip(row) {
                    *s += f64::from(v) * f64::from(v);
                }
            }
            let first = first.clone();
            for name in &names[1..] {
                sums.insert(name.clone(), first.clone());
            }
        })?;
        let tokens = chunks * ctx;
        let columns = sums.into_iter().map(|(k, v)| (k, v.iter().map(|s| (s / tokens as f64) as f32).collect())).collect();
        Ok(ImportanceMatrix { tokens, chunks, columns })
    }

    /// The means for matrix `name`, if it was observed.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.columns.get(name).map(Vec::as_slice)
    }

    /// Saves the statistics as a GGUF file.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let mut w = GgufWriter::new();
        w.metadata("general.type", MetaValue::String("imatrix".into()));
        w.metadata("tern.imatrix.tokens", MetaValue::U64(self.tokens as u64));
        w.metadata("tern.imatrix.chunks", MetaValue::U64(self.chunks as u64));
        for (name, v) in &self.columns {
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.tensor(name.clone(), TensorType::F32, &[v.len()], bytes)?;
        }
        Ok(w.write(path)?)
    }

    /// Reads statistics saved by [`ImportanceMatrix::save`], checking that every value is finite and
    /// non-negative.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let file = GgufFile::open(path.as_ref())?;
        let bad = |detail: String| Error::Option { name: "imatrix", detail: format!("{}: {detail}", file.path) };
        if file.metadata.get("tern.imatrix.tokens").is_none() {
            return Err(bad("not an importance matrix (no tern.imatrix.tokens key; make one with `tern imatrix`)".into()));
        }
        let tokens = file.metadata.usize("tern.imatrix.tokens")?;
        let chunks = file.metadata.usize("tern.imatrix.chunks")?;
        let mut columns = BTreeMap::new();
        for t in &file.tensors {
            if t.ty != TensorType::F32 || t.dims.len() != 1 {
                return Err(bad(format!("tensor {:?} is {} {:?}, expected one F32 row", t.name, t.ty, t.dims)));
            }
            let v: Vec<f32> = file.data(t).chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            if let Some(x) = v.iter().find(|x| !x.is_finite() || **x < 0.0) {
                return Err(bad(format!("tensor {:?} holds {x}; means of squares are finite and non-negative", t.name)));
            }
            columns.insert(t.name.clone(), v);
        }
        Ok(ImportanceMatrix { tokens, chunks, columns })
    }
}

/// Second moments `sum x x^T` of the input of every matrix product, for error feedback
/// ([`tern_quant::FeedbackFactor`]): one `cols x cols` matrix per input (q, k and v share one), over `tokens`.
#[derive(Debug, Clone, Default)]
pub struct SecondMoments {
    pub tokens: usize,
    /// Matrix name to an index into `grams`.
    pub site_of: BTreeMap<String, usize>,
    /// `(cols, row-major cols x cols sums)` per input.
    pub grams: Vec<(usize, Vec<f64>)>,
}

/// Adds `x^T x` of `rows x cols` activations into `gram` (f64), tiled so each tile of the result stays in cache,
/// in parallel over tiles.
fn add_gram(x: &[f32], rows: usize, cols: usize, gram: &mut [f64]) {
    use rayon::prelude::*;
    const TILE: usize = 32;
    gram.par_chunks_mut(TILE * cols).enumerate().for_each(|(tile, g)| {
        let i0 = tile * TILE;
        let mut acc = vec![0f32; g.len()];
        for t in 0..rows {
            let xt = &x[t * cols..(t + 1) * cols];
            for (di, row) in acc.chunks_exact_mut(cols).enumerate() {
                let xi = xt[i0 + di];
                for (a, &xj) in row.iter_mut().zip(xt) {
                    *a += xi * xj;
                }
            }
        }
        for (o, a) in g.iter_mut().zip(&acc) {
            *o += f64::from(*a);
        }
    });
}

impl SecondMoments {
    /// Runs `engine` over `text` in chunks of `ctx` tokens (at most `max_chunks`), like
    /// [`ImportanceMatrix::collect`].
    pub fn collect(
        engine: &Engine,
        text: &str,
        ctx: usize,
        max_chunks: Option<usize>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        let mut m = SecondMoments::default();
        let chunks = observe_chunks(engine, text, ctx, max_chunks, progress, &mut |names, rows, cols, values| {
            let site = match m.site_of.get(&names[0]) {
                Some(&s) => s,
                None => {
                    m.grams.push((cols, vec![0.0; cols * cols]));
                    m.grams.len() - 1
                }
            };
            for name in names {
                m.site_of.insert(name.clone(), site);
            }
            add_gram(values, rows, cols, &mut m.grams[site].1);
        })?;
        m.tokens = chunks * ctx;
        Ok(m)
    }
}
