//! `tern quantize`: a GGUF or safetensors model in, a tern model file out.
//!
//! Every weight matrix (2-D, rows a multiple of 32, not a norm) goes into one of tern's formats; everything else
//! (norm vectors) is copied as it is. The format of each matrix comes from, in order of precedence: an override
//! whose pattern matches its name, then either `--bits` (one format for all) or the mixed-precision planner.
//!
//! The planner measures how much each matrix matters: with the model loaded, it replaces that matrix alone by
//! its quantized form and measures the KL-divergence of the model's next-token distributions from the
//! source model's over calibration tokens (one chunk from the middle of the text, its second half scored).
//! T8's rise is not measured but read off a line `KL = floor + slope * error` through the two largest measured
//! formats (importance-weighted squared errors; T8's error is about 1/100 of T4's). Then it picks formats to
//! meet the target bits per weight at the least summed rise ([`tern_quant::plan`]).
//!
//! With error feedback (`--error-feedback`), each matrix is rounded by the GPTQ method through the second
//! moments of its input over calibration text ([`tern_quant::FeedbackFactor`]).
//!
//! The output is a GGUF file (`docs/FORMATS.md`): the source's metadata (less `general.file_type`), tern's
//! tensors as I8 byte tensors with `tern.type.<name>` and `tern.dims.<name>` keys, the plan's summary under
//! `tern.quantize.*`, and for Hugging Face sources the tokenizer under `tokenizer.huggingface.json`.

use std::collections::HashMap;
use std::path::Path;

use tern_core::{Backend, TensorType, TernFormat};
use tern_loader::{GgufWriter, MetaValue, ModelSource, TensorInfo};
use tern_quant::plan::{Choice, PlanTensor, plan};
use tern_quant::{FeedbackFactor, TernMatrix, dequantize_gguf};

use crate::eval::{kl_divergence, log_softmax};
use crate::{Engine, Error, ImportanceMatrix, Result, SecondMoments};

/// How precise the output should be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Precision {
    /// One format for every matrix.
    Bits(TernFormat),
    /// Mixed formats chosen by measured sensitivity to meet this many bits per weight over the whole model.
    TargetBpw(f64),
}

/// A format forced on every matrix whose name matches `pattern` (`*` matches any run of characters, `?` one).
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub pattern: String,
    pub format: TernFormat,
}

impl Override {
    /// Parses an overrides file: one `pattern = format` per line (`blk.*.ffn_down.weight = T4`), `#` comments.
    pub fn parse(text: &str, origin: &str) -> Result<Vec<Override>> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |detail: String| Error::Option { name: "overrides", detail: format!("{origin} line {}: {detail}", i + 1) };
            let (pattern, format) = line.split_once('=').ok_or_else(|| bad(format!("{line:?} is not `pattern = format`")))?;
            let (pattern, format) = (pattern.trim(), format.trim());
            if pattern.is_empty() {
                return Err(bad("the pattern is empty".into()));
            }
            let format = TernFormat::from_name(format)
                .ok_or_else(|| bad(format!("{format:?} is not a tern format (T2, T3, T4, T8, TR2, TR3, TR4)")))?;
            out.push(Override { pattern: pattern.into(), format });
        }
        Ok(out)
    }

    /// Whether `name` matches the pattern.
    pub fn matches(&self, name: &str) -> bool {
        wildcard(self.pattern.as_bytes(), name.as_bytes())
    }
}

/// `*`/`?` wildcard matching, iterative with one backtrack point.
fn wildcard(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = si;
        } else if let Some(sp) = star {
            pi = sp + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// What to make.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub precision: Precision,
    /// Activation statistics to weight each matrix's error by (see [`ImportanceMatrix`]).
    pub importance: Option<ImportanceMatrix>,
    /// Text to gather activation statistics from when `importance` is not given, and to measure sensitivities
    /// on for [`Precision::TargetBpw`] (which needs it).
    pub calibration: Option<String>,
    /// Calibration chunk length for activation statistics.
    pub calibration_ctx: usize,
    /// At most this many chunks of calibration text for activation statistics.
    pub calibration_chunks: Option<usize>,
    /// Length of the calibration chunk each matrix's sensitivity is measured on (its second half is scored).
    pub sensitivity_tokens: usize,
    /// A JSON file of measured sensitivities: read when it exists and matches, written after measuring.
    pub sensitivity_cache: Option<std::path::PathBuf>,
    /// Round with error feedback (GPTQ) through second moments gathered from the calibration text.
    pub error_feedback: bool,
    /// Chunks of calibration text the second moments are gathered over.
    pub feedback_chunks: usize,
    /// Formats the planner may choose from.
    pub formats: Vec<TernFormat>,
    pub overrides: Vec<Override>,
    /// Worker threads (0: one per core).
    pub threads: usize,
}

impl QuantizeOptions {
    /// Options for `precision` with the defaults for everything else.
    pub fn new(precision: Precision) -> Self {
        QuantizeOptions {
            precision,
            importance: None,
            calibration: None,
            calibration_ctx: 512,
            calibration_chunks: None,
            sensitivity_tokens: 256,
            sensitivity_cache: None,
            error_feedback: false,
            feedback_chunks: 8,
            formats: TernFormat::SCALAR.to_vec(),
            overrides: Vec::new(),
            threads: 0,
        }
    }
}

/// The long steps of quantization, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Gathering activation statistics (units: chunks).
    Importance,
    /// Gathering second moments for error feedback (units: chunks).
    SecondMoments,
    /// Quantizing matrices (units: matrices).
    Quantize,
    /// Measuring each matrix's sensitivity (units: measurements).
    Sensitivity,
    /// Writing the file (units: tensors).
    Write,
}

/// How far quantization has come.
#[derive(Debug, Clone)]
pub struct QuantizeProgress<'a> {
    pub stage: Stage,
    pub done: usize,
    pub total: usize,
    /// The tensor being worked on, where there is one.
    pub tensor: &'a str,
}

/// Why a tensor has its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not a weight matrix: copied as it was.
    Kept,
    /// An override matched.
    Override,
    /// `--bits`.
    Uniform,
    /// The mixed-precision planner chose it.
    Planned,
}

/// One tensor of the output.
#[derive(Debug, Clone)]
pub struct TensorPlan {
    pub name: String,
    pub ty: TensorType,
    pub params: u64,
    /// Exact size in bits.
    pub bits: u64,
    pub reason: Reason,
    /// The measured (or, for T8, predicted) KL-divergence rise of this tensor alone in its format, when the
    /// planner measured it.
    pub kl: Option<f64>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub tensors: Vec<TensorPlan>,
    /// Bytes of the whole file.
    pub file_bytes: u64,
}

impl QuantizeReport {
    /// Parameters in all tensors.
    pub fn params(&self) -> u64 {
        self.tensors.iter().map(|t| t.params).sum()
    }

    /// Bits per weight over every tensor (tensor data only, as llama.cpp counts it).
    pub fn bpw(&self) -> f64 {
        self.tensors.iter().map(|t| t.bits).sum::<u64>() as f64 / self.params() as f64
    }

    /// Parameters and bits per type, largest share first.
    pub fn by_type(&self) -> Vec<(TensorType, u64, u64)> {
        let mut out: Vec<(TensorType, u64, u64)> = Vec::new();
        for t in &self.tensors {
            match out.iter_mut().find(|(ty, ..)| *ty == t.ty) {
                Some((_, p, b)) => {
                    *p += t.params;
                    *b += t.bits;
                }
                None => out.push((t.ty, t.params, t.bits)),
            }
        }
        out.sort_by_key(|t| std::cmp::Reverse(t.1));
        out
    }
}

/// Whether tensor `t` is a weight matrix tern quantizes.
fn is_matrix(t: &TensorInfo) -> bool {
    t.dims.len() == 2 && t.dims[0].is_multiple_of(tern_core::BLOCK_LEN) && !t.name.contains("norm")
}

/// The tensor's values as f32, row-major.
fn dequantized(src: &ModelSource, t: &TensorInfo) -> Result<Vec<f32>> {
    let bytes = src.tensor(&t.name)?.bytes;
    let weights = |source| tern_model::Error::Weights { path: src.path().into(), tensor: t.name.clone(), source };
    match t.ty.tern_format() {
        Some(f) => {
            let (rows, cols) = t.matrix_shape();
            Ok(TernMatrix::from_bytes(f, rows, cols, bytes).map_err(weights)?.dequantize())
        }
        None => {
            let mut out = vec![0f32; t.elements()];
            dequantize_gguf(t.ty, bytes, &mut out).map_err(weights)?;
            Ok(out)
        }
    }
}

/// Quantizes rows in parallel (rows are independent in every tern format), in the current rayon pool.
/// With `feedback`, rows are rounded with error feedback through it (and its importance).
fn quantize_rows(
    format: TernFormat,
    rows: usize,
    cols: usize,
    data: &[f32],
    importance: Option<&[f32]>,
    feedback: Option<&FeedbackFactor>,
) -> Result<TernMatrix> {
    use rayon::prelude::*;
    const ROWS_PER_TASK: usize = 64;
    let parts = data
        .par_chunks(ROWS_PER_TASK * cols)
        .map(|part| match feedback {
            Some(f) => TernMatrix::quantize_with_feedback(format, part.len() / cols, cols, part, f),
            None => TernMatrix::quantize(format, part.len() / cols, cols, part, importance),
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Option { name: "model", detail: e.to_string() })?;
    let mut m = TernMatrix { format, rows, cols, quants: Vec::new(), codes: Vec::new(), row_scales: Vec::new() };
    for p in parts {
        m.quants.extend(p.quants);
        m.codes.extend(p.codes);
        m.row_scales.extend(p.row_scales);
    }
    Ok(m)
}

/// Importance-weighted squared error of `q` against `w`.
fn weighted_error(q: &TernMatrix, w: &[f32], importance: Option<&[f32]>) -> f64 {
    let mut row = vec![0f32; q.cols];
    let mut sum = 0f64;
    for (r, wr) in w.chunks_exact(q.cols).enumerate() {
        q.dequantize_row(r, &mut row);
        for (j, (a, b)) in row.iter().zip(wr).enumerate() {
            let imp = importance.map_or(1.0, |m| m[j]) as f64;
            sum += imp * f64::from(a - b).powi(2);
        }
    }
    sum
}

/// Sensitivities measured under one set of conditions.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct SensitivityCache {
    /// Identifies what was measured: the source file (path, size, modification time), the scored tokens and
    /// the importance matrix (a fingerprint of their values), and error feedback.
    key: String,
    /// `tensor name -> format name -> KL rise`.
    kl: HashMap<String, HashMap<String, f64>>,
}

/// The cache file: the measurements of the last [`SENSITIVITY_CACHE_ENTRIES`] sets of conditions, so that
/// runs with and without error feedback (whose candidate matrices differ) do not measure again in turn.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct SensitivityFile {
    measurements: Vec<SensitivityCache>,
}

const SENSITIVITY_CACHE_ENTRIES: usize = 16;

/// A 64-bit FNV-1a fingerprint of what the sensitivities are measured on: the scored chunk's tokens and the
/// importance matrix's values.
fn measurement_fingerprint(tokens: &[u32], importance: Option<&ImportanceMatrix>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    for t in tokens {
        eat(&t.to_le_bytes());
    }
    for (name, values) in importance.iter().flat_map(|i| &i.columns) {
        eat(name.as_bytes());
        for v in values {
            eat(&v.to_bits().to_le_bytes());
        }
    }
    h
}

/// One matrix to quantize, with its float values and its quantized forms as they are made.
struct Matrix {
    info: TensorInfo,
    rows: usize,
    cols: usize,
    forced: Option<(TernFormat, Reason)>,
    quantized: HashMap<TernFormat, TernMatrix>,
    /// Importance-weighted squared error per format (for the planner's prediction of T8).
    errors: HashMap<TernFormat, f64>,
    kl: HashMap<TernFormat, f64>,
}

/// Quantizes the model at `input` into a tern file at `output`.
pub fn quantize(
    input: &Path,
    output: &Path,
    options: &QuantizeOptions,
    progress: &mut dyn FnMut(&QuantizeProgress<'_>),
) -> Result<QuantizeReport> {
    if let Precision::TargetBpw(x) = options.precision
        && (!x.is_finite() || x <= 0.0)
    {
        return Err(Error::Option { name: "target-bpw", detail: format!("{x} is not a positive number of bits") });
    }
    if options.formats.is_empty() {
        return Err(Error::Option { name: "formats", detail: "the planner needs at least one format".into() });
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads)
        .build()
        .map_err(|e| Error::Option { name: "threads", detail: e.to_string() })?;
    let source = ModelSource::open(input)?;
    let mut matrices: Vec<Matrix> = source
        .tensors()
        .iter()
        .filter(|t| is_matrix(t))
        .map(|t| {
            let (rows, cols) = t.matrix_shape();
            let forced = match (options.overrides.iter().find(|o| o.matches(&t.name)), options.precision) {
                (Some(o), _) => Some((o.format, Reason::Override)),
                (None, Precision::Bits(f)) => Some((f, Reason::Uniform)),
                (None, Precision::TargetBpw(_)) => None,
            };
            Matrix { info: t.clone(), rows, cols, forced, quantized: HashMap::new(), errors: HashMap::new(), kl: HashMap::new() }
        })
        .collect();
    if matrices.is_empty() {
        return Err(Error::Option { name: "model", detail: format!("{} has no weight matrices to quantize", source.path()) });
    }

    // What the plan must fit, checked before any long work.
    let kept_bits: u64 = source.tensors().iter().filter(|t| !is_matrix(t)).map(|t| 8 * t.size as u64).sum();
    let params: u64 = source.tensors().iter().map(|t| t.elements() as u64).sum();
    let bits_of = |m: &Matrix, f: TernFormat| 8 * f.tensor_type().data_bytes(m.rows, m.cols).unwrap_or(usize::MAX) as u64;
    let fixed_bits = kept_bits + matrices.iter().filter_map(|m| m.forced.map(|(f, _)| bits_of(m, f))).sum::<u64>();
    let needs_sensitivity = matrices.iter().any(|m| m.forced.is_none());
    if let Precision::TargetBpw(target) = options.precision {
        let smallest = fixed_bits
            + matrices
                .iter()
                .filter(|m| m.forced.is_none())
                .map(|m| options.formats.iter().filter(|f| f.takes(m.cols)).map(|&f| bits_of(m, f)).min().unwrap_or(0))
                .sum::<u64>();
        if (target * params as f64) < smallest as f64 {
            return Err(Error::Option {
                name: "target-bpw",
                detail: format!(
                    "{target} bits per weight is below the smallest this model can take with these formats and overrides ({:.3})",
                    smallest as f64 / params as f64
                ),
            });
        }
        if needs_sensitivity && options.calibration.is_none() {
            return Err(Error::Option {
                name: "calibration",
                detail: "--target-bpw measures each matrix's sensitivity on calibration text: give --calibration FILE".into(),
            });
        }
    }

    if options.error_feedback && options.calibration.is_none() {
        return Err(Error::Option {
            name: "error-feedback",
            detail: "error feedback needs the second moments of activations on calibration text: give --calibration FILE".into(),
        });
    }

    // The model itself runs for activation statistics and for sensitivities.
    let needs_importance = options.importance.is_none() && options.calibration.is_some();
    let mut engine = if needs_sensitivity || needs_importance || options.error_feedback {
        Some(
            Engine::builder(input)
                .backend(crate::BackendChoice::Cpu)
                .threads(options.threads)
                .context(options.calibration_ctx.max(options.sensitivity_tokens))
                .build()?,
        )
    } else {
        None
    };
    let collected;
    let importance = match (&options.importance, &options.calibration, &engine) {
        (Some(i), ..) => Some(i),
        (None, Some(text), Some(engine)) => {
            collected = ImportanceMatrix::collect(
                engine,
                text,
                options.calibration_ctx,
                options.calibration_chunks,
                &mut |done, total| progress(&QuantizeProgress { stage: Stage::Importance, done, total, tensor: "" }),
            )?;
            Some(&collected)
        }
        _ => None,
    };
    let imp = |m: &Matrix| importance.and_then(|i| i.get(&m.info.name)).filter(|v| v.len() == m.cols);
    let (moments, factors) = match (options.error_feedback, &engine, &options.calibration) {
        (true, Some(engine), Some(text)) => {
            let moments = SecondMoments::collect(
                engine,
                text,
                options.calibration_ctx,
                Some(options.feedback_chunks),
                &mut |done, total| progress(&QuantizeProgress { stage: Stage::SecondMoments, done, total, tensor: "" }),
            )?;
            let factors = pool.install(|| {
                use rayon::prelude::*;
                moments
                    .grams
                    .par_iter()
                    .map(|(cols, g)| FeedbackFactor::new(g, *cols, moments.tokens, 0.01))
                    .collect::<std::result::Result<Vec<_>, _>>()
            });
            let factors = factors.map_err(|e| Error::Option { name: "error-feedback", detail: e.to_string() })?;
            (Some(moments), factors)
        }
        _ => (None, Vec::new()),
    };
    let feedback = |m: &Matrix| {
        moments.as_ref().and_then(|s| s.site_of.get(&m.info.name)).map(|&i| &factors[i]).filter(|f| f.cols == m.cols)
    };

    // Quantize every matrix to every format it may take.
    let total = matrices.len();
    for (i, m) in matrices.iter_mut().enumerate() {
        progress(&QuantizeProgress { stage: Stage::Quantize, done: i, total, tensor: &m.info.name });
        let w = dequantized(&source, &m.info)?;
        // Free matrices always get T8 (for its error, which predicts its rise: see `measure_sensitivities`).
        let formats: Vec<TernFormat> = match m.forced {
            Some((f, _)) => vec![f],
            None => {
                // A format whose blocks do not divide the rows (the trellis formats' 64) is not a candidate.
                let mut all: Vec<TernFormat> = options.formats.iter().copied().filter(|f| f.takes(m.cols)).collect();
                if !all.contains(&TernFormat::T8) {
                    all.push(TernFormat::T8);
                }
                all
            }
        };
        let importance = imp(m);
        let feedback = feedback(m);
        for f in formats {
            let q = pool.install(|| quantize_rows(f, m.rows, m.cols, &w, importance, feedback)).map_err(|e| match e {
                Error::Option { name, detail } => Error::Option { name, detail: format!("{}: {detail}", m.info.name) },
                e => e,
            })?;
            m.quantized.insert(f, q);
        }
        if m.forced.is_none() {
            for (f, q) in &m.quantized {
                m.errors.insert(*f, weighted_error(q, &w, importance));
            }
        }
    }
    progress(&QuantizeProgress { stage: Stage::Quantize, done: total, total, tensor: "" });

    if needs_sensitivity {
        // Both were checked for above; this only keeps a broken invariant from being a panic.
        let (Some(engine), Some(text)) = (engine.as_mut(), options.calibration.as_deref()) else {
            return Err(Error::Option {
                name: "calibration",
                detail: "measuring sensitivities needs the model and calibration text".into(),
            });
        };
        measure_sensitivities(engine, input, text, importance, options, &mut matrices, progress)?;
    }

    // The plan.
    let mut chosen: Vec<(TernFormat, Reason)> =
        matrices.iter().map(|m| m.forced.unwrap_or((TernFormat::T8, Reason::Planned))).collect();
    if let Precision::TargetBpw(target) = options.precision {
        let budget = (target * params as f64).floor() as u64;
        let free: Vec<usize> = (0..matrices.len()).filter(|&i| matrices[i].forced.is_none()).collect();
        let tensors: Vec<PlanTensor<TernFormat>> = free
            .iter()
            .map(|&i| {
                let m = &matrices[i];
                let choices = options
                    .formats
                    .iter()
                    .filter_map(|&f| m.kl.get(&f).map(|&cost| Choice { format: f, bits: bits_of(m, f), cost }))
                    .collect();
                PlanTensor { name: m.info.name.clone(), choices }
            })
            .collect();
        let picks = plan(&tensors, budget.saturating_sub(fixed_bits))
            .map_err(|e| Error::Option { name: "target-bpw", detail: e.to_string() })?;
        for (&i, (&c, t)) in free.iter().zip(picks.iter().zip(&tensors)) {
            chosen[i] = (t.choices[c].format, Reason::Planned);
        }
    }

    // The file.
    let mut w = GgufWriter::new();
    for (k, v) in source.metadata().iter() {
        // What describes the source's storage goes; what describes the model (`tern.rope.style`) stays.
        if k == "general.file_type" || ["tern.type.", "tern.dims.", "tern.quantize."].iter().any(|p| k.starts_with(p)) {
            continue;
        }
        w.metadata(k, v.clone());
    }
    if let Some(json) = source.tokenizer_json()
        && source.metadata().get("tokenizer.huggingface.json").is_none()
    {
        let json = std::str::from_utf8(json)
            .map_err(|_| Error::Option { name: "model", detail: "tokenizer.json is not UTF-8".into() })?;
        w.metadata("tokenizer.huggingface.json", MetaValue::String(json.into()));
    }
    let mut report = Vec::new();
    let by_name: HashMap<String, usize> = matrices.iter().enumerate().map(|(i, m)| (m.info.name.clone(), i)).collect();
    let n = source.tensors().len();
    for (i, t) in source.tensors().iter().enumerate() {
        progress(&QuantizeProgress { stage: Stage::Write, done: i, total: n, tensor: &t.name });
        match by_name.get(&t.name) {
            Some(&mi) => {
                let m = &mut matrices[mi];
                let (f, reason) = chosen[mi];
                let q = m.quantized.remove(&f).ok_or_else(|| Error::Option {
                    name: "formats",
                    detail: format!("{} was planned in {f}, which was not made for it", t.name),
                })?;
                let bytes = q.to_bytes();
                report.push(TensorPlan {
                    name: t.name.clone(),
                    ty: f.tensor_type(),
                    params: t.elements() as u64,
                    bits: 8 * bytes.len() as u64,
                    reason,
                    kl: m.kl.get(&f).copied(),
                });
                w.tensor(t.name.clone(), f.tensor_type(), &[m.cols, m.rows], bytes)?;
            }
            None => {
                let bytes = source.tensor(&t.name)?.bytes.to_vec();
                report.push(TensorPlan {
                    name: t.name.clone(),
                    ty: t.ty,
                    params: t.elements() as u64,
                    bits: 8 * bytes.len() as u64,
                    reason: Reason::Kept,
                    kl: None,
                });
                w.tensor(t.name.clone(), t.ty, &t.dims, bytes)?;
            }
        }
    }
    let report_so_far = QuantizeReport { tensors: report, file_bytes: 0 };
    w.metadata("tern.quantize.bpw", MetaValue::F64(report_so_far.bpw()));
    match options.precision {
        Precision::Bits(f) => w.metadata("tern.quantize.bits", MetaValue::U32(f.quant_bits() as u32)),
        Precision::TargetBpw(x) => w.metadata("tern.quantize.target_bpw", MetaValue::F64(x)),
    };
    if let Some(i) = importance {
        w.metadata("tern.quantize.imatrix_tokens", MetaValue::U64(i.tokens as u64));
    }
    if let Some(m) = &moments {
        w.metadata("tern.quantize.error_feedback_tokens", MetaValue::U64(m.tokens as u64));
    }
    let bytes = w.to_bytes()?;
    let tmp = output.with_extension("partial");
    let io = |source| Error::Load(tern_loader::Error::Io { path: output.display().to_string(), source });
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, output).map_err(io)?;
    progress(&QuantizeProgress { stage: Stage::Write, done: n, total: n, tensor: "" });
    Ok(QuantizeReport { file_bytes: bytes.len() as u64, ..report_so_far })
}

/// Puts `m` in place of the model's matrix `name`, returning the one it replaces.
fn swap_matrix(engine: &mut Engine, name: &str, m: crate::AnyMatrix) -> Result<crate::AnyMatrix> {
    let slot = engine
        .model
        .matrix_mut(name)
        .ok_or_else(|| Error::Option { name: "model", detail: format!("the model has no matrix {name:?} to measure") })?;
    Ok(std::mem::replace(slot, m))
}

/// Fills `m.kl` of every unforced matrix with its KL rise per format: measured for every format but T8, which
/// is predicted (see the module docs). Reads and writes the cache file when there is one.
fn measure_sensitivities(
    engine: &mut Engine,
    input: &Path,
    text: &str,
    importance: Option<&ImportanceMatrix>,
    options: &QuantizeOptions,
    matrices: &mut [Matrix],
    progress: &mut dyn FnMut(&QuantizeProgress<'_>),
) -> Result<()> {
    // One chunk from the middle of the text (a file's opening is often a title page, not prose), scored like
    // an evaluation: only its second half, where every position has context.
    let mut chunks = crate::eval::chunk_tokens(engine, text, options.sensitivity_tokens, None)?;
    let middle = chunks.len() / 2;
    let tokens = chunks.swap_remove(middle);
    let first_scored = tokens.len() / 2;
    let meta = std::fs::metadata(input).ok();
    let modified = meta.as_ref().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    let key = format!(
        "{} ({} bytes, modified {}), {} tokens from the middle, second half scored, importance over {} tokens, \
         fingerprint {:016x}{}",
        input.display(),
        meta.map_or(0, |m| m.len()),
        modified.map_or(0, |d| d.as_secs()),
        tokens.len(),
        importance.map_or(0, |i| i.tokens),
        measurement_fingerprint(&tokens, importance),
        if options.error_feedback { format!(", error feedback over {} chunks", options.feedback_chunks) } else { String::new() }
    );
    let mut file: SensitivityFile = options
        .sensitivity_cache
        .as_ref()
        .and_then(|p| std::fs::read(p).ok())
        .and_then(|b| serde_json::from_slice::<SensitivityFile>(&b).ok())
        .unwrap_or_default();
    let mut cache = match file.measurements.iter().position(|c| c.key == key) {
        Some(i) => file.measurements.remove(i),
        None => SensitivityCache { key, kl: HashMap::new() },
    };

    // The baseline is the source model itself, with float matrices and so float activations: every
    // measurement then changes exactly one product. (A baseline of tern matrices would not do: their int8
    // activations round differently whenever anything upstream changes, a noise that swamps the rise of one
    // small matrix.)
    let vocab = engine.model().config.vocab_size;
    let run = |engine: &Engine| -> Result<Vec<f32>> {
        let model = engine.model();
        let mut cache = model.new_cache(tokens.len())?;
        let mut scratch = tern_model::Scratch::new(model.backend())?;
        Ok(model.backend().install(|| model.forward(&tokens, &mut cache, &mut scratch, true))?)
    };
    let reference: Vec<Vec<f64>> = run(engine)?
        .chunks_exact(vocab)
        .skip(first_scored)
        .map(|l| {
            let mut lp = Vec::new();
            log_softmax(l, &mut lp);
            lp
        })
        .collect();
    let measured: Vec<TernFormat> = options.formats.iter().copied().filter(|&f| f != TernFormat::T8).collect();
    let todo: Vec<(usize, TernFormat)> = matrices
        .iter()
        .enumerate()
        .filter(|(_, m)| m.forced.is_none())
        .flat_map(|(i, m)| measured.iter().filter(|f| m.quantized.contains_key(f)).map(move |&f| (i, f)))
        .collect();
    let mut lq = Vec::new();
    for (done, &(i, f)) in todo.iter().enumerate() {
        let m = &mut matrices[i];
        progress(&QuantizeProgress { stage: Stage::Sensitivity, done, total: todo.len(), tensor: &m.info.name });
        let cached = cache.kl.get(&m.info.name).and_then(|k| k.get(f.name())).copied();
        let kl = match cached {
            Some(kl) => kl,
            None => {
                let q = engine.model.backend().upload_matrix(m.quantized[&f].view())?;
                let original = swap_matrix(engine, &m.info.name, q)?;
                let logits = run(engine);
                swap_matrix(engine, &m.info.name, original)?;
                let mut sum = 0f64;
                for (l, lp) in logits?.chunks_exact(vocab).skip(first_scored).zip(&reference) {
                    log_softmax(l, &mut lq);
                    sum += kl_divergence(lp, &lq);
                }
                let kl = sum / reference.len() as f64;
                cache.kl.entry(m.info.name.clone()).or_default().insert(f.name().into(), kl);
                kl
            }
        };
        m.kl.insert(f, kl);
    }
    progress(&QuantizeProgress { stage: Stage::Sensitivity, done: todo.len(), total: todo.len(), tensor: "" });
    // T8 is not measured (its rise is near the int8 rounding of one product's input, whatever its weights):
    // fit `KL = floor + slope * error` through the two measured formats of least error and read T8 off the line.
    for m in matrices.iter_mut().filter(|m| m.forced.is_none()) {
        let e8 = m.errors[&TernFormat::T8];
        let mut by_error: Vec<TernFormat> = measured.iter().copied().filter(|f| m.kl.contains_key(f)).collect();
        by_error.sort_by(|a, b| m.errors[a].total_cmp(&m.errors[b]));
        let predicted = match by_error.as_slice() {
            [a, b, ..] if m.errors[b] > m.errors[a] => {
                let slope = ((m.kl[b] - m.kl[a]) / (m.errors[b] - m.errors[a])).max(0.0);
                let floor = (m.kl[a] - slope * m.errors[a]).max(0.0);
                (floor + slope * e8).min(m.kl[a])
            }
            [a, ..] if m.errors[a] > 0.0 => m.kl[a] * e8 / m.errors[a],
            _ => 0.0,
        };
        m.kl.insert(TernFormat::T8, predicted);
    }
    if let Some(p) = &options.sensitivity_cache {
        // The newest measurements last; the oldest go past the limit.
        file.measurements.push(cache);
        let excess = file.measurements.len().saturating_sub(SENSITIVITY_CACHE_ENTRIES);
        file.measurements.drain(..excess);
        let json =
            serde_json::to_vec_pretty(&file).map_err(|e| Error::Option { name: "sensitivity-cache", detail: e.to_string() })?;
        std::fs::write(p, json)
            .map_err(|source| Error::Load(tern_loader::Error::Io { path: p.display().to_string(), source }))?;
    }
    Ok(())
}
