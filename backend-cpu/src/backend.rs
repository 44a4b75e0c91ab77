use std::cell::Cell;

use tern_core::{AttentionParams, Backend, Error, MatrixView, Result, RopeParams, TensorType, TokenSampling, pick_token};

use crate::SimdLevel;
use crate::ops::quantize_rows::QuantizedRows;
use crate::ops::{attention, elementwise, matmul, rms_norm, rope};
use crate::tensor::{CpuMatrix, CpuTensor};

thread_local! {
    /// Int8 activation rows, reused so that decode steps allocate nothing.
    static ACTIVATIONS: Cell<QuantizedRows> = Cell::new(QuantizedRows::default());
}

/// An error naming `op` unless every one of `ts` holds f32 elements (see [`CpuTensor::f32_only`]).
fn floats(op: &'static str, ts: &[&CpuTensor]) -> Result<()> {
    ts.iter().try_for_each(|t| t.f32_only(op))
}

/// The CPU backend: kernels at a [`SimdLevel`], work spread over a team of threads of its own (with a rayon
/// pool of its own for whatever the team cannot take).
#[derive(Debug)]
pub struct CpuBackend {
    level: SimdLevel,
    threads: usize,
    #[cfg(feature = "parallel")]
    pool: rayon::ThreadPool,
    /// Takes the parallel sections of whatever runs under [`CpuBackend::install`].
    #[cfg(feature = "parallel")]
    team: crate::team::Team,
}

impl CpuBackend {
    /// A backend using the best SIMD level of this CPU and `threads` threads (0: one per core).
    pub fn new(threads: usize) -> Result<Self> {
        Self::with_level(threads, SimdLevel::detect())
    }

    /// A backend forced to `level` (which must not exceed what the CPU offers).
    pub fn with_level(threads: usize, level: SimdLevel) -> Result<Self> {
        if level > SimdLevel::detect() {
            return Err(Error::Unsupported { op: "simd level", ty: tern_core::TensorType::F32, backend: "cpu" });
        }
        #[cfg(feature = "parallel")]
        {
            let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("tern-cpu-{i}"))
                .build()
                .map_err(|e| Error::OutOfMemory { reason: format!("cannot start {threads} CPU threads: {e}") })?;
            let team = crate::team::Team::new(threads)
                .map_err(|e| Error::OutOfMemory { reason: format!("cannot start {threads} CPU threads: {e}") })?;
            Ok(CpuBackend { level, threads, pool, team })
        }
        #[cfg(not(feature = "parallel"))]
        {
            let _ = threads;
            Ok(CpuBackend { level, threads: 1 })
        }
    }

    /// The SIMD level in use.
    pub fn level(&self) -> SimdLevel {
        self.level
    }

    /// Worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on this backend's threads, so that a whole forward pass (many ops) hops onto the pool once.
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        #[cfg(feature = "parallel")]
        return self.pool.install(|| {
            let _team = self.team.enter();
            f()
        });
        #[cfg(not(feature = "parallel"))]
        f()
    }

    /// A row-wise op over `len` values in rows of `cols`: on this backend's threads when it is large enough to
    /// be split (a prefill's rows), on the calling thread otherwise (a decode step's row, where handing the work
    /// to the pool would cost more than the op).
    fn rows_op<R: Send>(&self, (len, cols): (usize, usize), f: impl FnOnce() -> R + Send) -> R {
        if crate::parallel::splits(len, cols) { self.install(f) } else { f() }
    }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Matrix = CpuMatrix;
    type Reading = Vec<f32>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<CpuTensor> {
        Ok(CpuTensor::new(vec![0.0; rows * cols], rows, cols))
    }

    fn zeros_cache(&self, rows: usize, cols: usize, ty: TensorType) -> Result<CpuTensor> {
        match ty {
            TensorType::F32 => self.zeros(rows, cols),
            TensorType::F16 => Ok(CpuTensor::zeros_f16(rows, cols)),
            _ => Err(Error::Unsupported { op: "KV cache", ty, backend: "cpu" }),
        }
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<CpuTensor> {
        if data.len() != rows * cols {
            return Err(Error::shape("upload", format!("{} values for {rows}x{cols}", data.len())));
        }
        Ok(CpuTensor::new(data.to_vec(), rows, cols))
    }

    fn read(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.to_f32())
    }

    fn read_begin(&self, t: &CpuTensor) -> Result<Vec<f32>> {
        Ok(t.to_f32())
    }

    fn read_finish(&self, r: Vec<f32>) -> Result<Vec<f32>> {
        Ok(r)
    }

    fn shape(&self, t: &CpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn upload_matrix(&self, m: MatrixView<'_>) -> Result<CpuMatrix> {
        // Repacking runs on this backend's threads, as many as it was given.
        self.install(|| CpuMatrix::new(m))
    }

    fn matrix_shape(&self, m: &CpuMatrix) -> (usize, usize) {
        (m.rows, m.cols)
    }

    fn embed(&self, table: &CpuMatrix, ids: &[u32], out: &mut CpuTensor) -> Result<()> {
        out.f32_only("embed")?;
        elementwise::embed(table, ids, out)
    }

    fn embed_sampled(&self, table: &CpuMatrix, id: &CpuTensor, out: &mut CpuTensor) -> Result<()> {
        floats("embed_sampled", &[id, out])?;
        match id.data.as_slice() {
            [id] => elementwise::embed(table, &[id.to_bits()], out),
            _ => Err(Error::shape("embed_sampled", format!("a {}x{} token tensor, expected 1x1", id.rows, id.cols))),
        }
    }

    fn sample(&self, logits: &CpuTensor, s: &TokenSampling, out: &mut CpuTensor) -> Result<()> {
        s.check()?;
        floats("sample", &[logits, out])?;
        if logits.rows == 0 || logits.cols == 0 {
            return Err(Error::shape("sample", "no logits to sample from"));
        }
        let last = &logits.data[(logits.rows - 1) * logits.cols..];
        let id = pick_token(last, s, &mut Vec::new());
        out.reshape(1, 1);
        out.data[0] = f32::from_bits(id);
        Ok(())
    }

    fn matmul(&self, w: &CpuMatrix, x: &CpuTensor, out: &mut CpuTensor) -> Result<()> {
        self.matmul_many(&[w], x, &mut [out])
    }

    fn matmul_many(&self, ws: &[&CpuMatrix], x: &CpuTensor, outs: &mut [&mut CpuTensor]) -> Result<()> {
        floats("matmul", &[x])?;
        outs.iter().try_for_each(|o| o.f32_only("matmul"))?;
        self.install(|| {
            // The calling thread's int8 buffer, taken out for the call: a pool thread that steals another
            // request's matmul while this one waits finds the slot empty and uses a fresh buffer, so nothing is
            // held across the parallel section (a lock here could deadlock against work stealing).
            let mut scratch = ACTIVATIONS.take();
            let result = matmul::matmul_many(self.level, &mut scratch, ws, x, outs);
            ACTIVATIONS.set(scratch);
            result
        })
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &CpuTensor, eps: f32, out: &mut CpuTensor) -> Result<()> {
        floats("rms_norm", &[x, weight, out])?;
        self.rows_op((x.data.len(), x.cols), || rms_norm::rms_norm(x, weight, eps, out))
    }

    fn rope(&self, x: &mut CpuTensor, p: &RopeParams) -> Result<()> {
        x.f32_only("rope")?;
        self.rows_op((x.data.len(), x.cols), || rope::rope(x, p))
    }

    fn write_rows(&self, src: &CpuTensor, dst: &mut CpuTensor, row: usize) -> Result<()> {
        src.f32_only("write_rows")?;
        elementwise::write_rows(src, dst, row)
    }

    fn slice_rows(&self, src: &CpuTensor, first: usize, count: usize, out: &mut CpuTensor) -> Result<()> {
        floats("slice_rows", &[src, out])?;
        elementwise::slice_rows(src, first, count, out)
    }

    fn attention(&self, q: &CpuTensor, k: &CpuTensor, v: &CpuTensor, p: &AttentionParams, out: &mut CpuTensor) -> Result<()> {
        floats("attention", &[q, out])?;
        self.install(|| attention::attention(self.level, q, k, v, p, out))
    }

    fn silu_mul(&self, gate: &CpuTensor, up: &CpuTensor, out: &mut CpuTensor) -> Result<()> {
        floats("silu_mul", &[gate, up, out])?;
        self.rows_op((gate.data.len(), gate.cols), || elementwise::silu_mul(gate, up, out))
    }

    fn add(&self, x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
        floats("add", &[x, y])?;
        self.rows_op((y.data.len(), y.cols), || elementwise::add(x, y))
    }
}
