use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tern_core::TensorType;
use tern_core::{AttentionParams, Backend, Error, MatrixView, Result, RopeParams, RopeStyle, TokenSampling};
use tern_shaders::{
    ATTENTION_SPAN, GREEDY_CHUNK, Kernel, KvStore, MAX_HEAD_DIM, MAX_NORM_QUADS, SAMPLE_CHUNK, SamplePass, WORKGROUP,
};
use wgpu::util::DeviceExt;

mod products;

use crate::choice::KernelChoice;
use crate::device::{AdapterChoice, AdapterReport, Gpu};
use crate::pool::{BufferPool, size_class};
use crate::profile::Profile;
use crate::recorder::{GpuReading, Grid, Recorder};
use crate::tensor::{GpuMatrix, GpuTensor, tensor_bytes};

/// tern's [`Backend`] on wgpu: every op is a WGSL kernel (`tern-shaders`), recorded into one command encoder
/// that is submitted when a result is read.
pub struct WebGpuBackend {
    gpu: Gpu,
    recorder: Recorder,
    /// Bound where a matrix has no such part.
    empty: wgpu::Buffer,
    /// RoPE inverse frequencies per (base bits, rotated dims), computed once on the CPU as the CPU backend does.
    inv_freq: Mutex<HashMap<(u32, usize), wgpu::Buffer>>,
    /// The partial results of split decode attention (grown as needed; every layer reuses it in turn).
    attention_parts: Mutex<Option<wgpu::Buffer>>,
    /// The candidates of a long row's chunks, between the two passes of sampling (grown as needed).
    sample_candidates: Mutex<Option<wgpu::Buffer>>,
    /// A decode product's activations quantized to int8 (grown as needed; every product reuses it in turn).
    int8_activations: Mutex<Option<wgpu::Buffer>>,
    /// Held while an op records the dispatches that share one of the scratch buffers above (writing it, then
    /// reading it), so that ops recorded from several threads at once do not interleave there.
    scratch_use: Mutex<()>,
    /// Buffers of dropped tensors, for the next ones.
    pool: Arc<BufferPool>,
    kernels: KernelChoice,
}

impl std::fmt::Debug for WebGpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebGpuBackend").field("adapter", &self.gpu.report.name).field("api", &self.gpu.report.api).finish()
    }
}

/// An error naming `op` unless `t` holds f32: only the KV cache's ops take f16 tensors.
fn only_f32(op: &'static str, t: &GpuTensor) -> Result<()> {
    if t.half {
        return Err(Error::Unsupported { op, ty: TensorType::F16, backend: "webgpu" });
    }
    Ok(())
}

/// `vec4`s per invocation of the RMSNorm kernel for rows of `cols`: held in registers when the rows are whole
/// `vec4`s and short enough, else 0 (the kernel that walks any row).
pub(crate) fn norm_quads(cols: usize) -> u32 {
    let quads = cols.div_ceil(4 * 256) as u32;
    if cols.is_multiple_of(4) && quads <= MAX_NORM_QUADS { quads } else { 0 }
}

impl WebGpuBackend {
    /// A backend on the best adapter `choice` allows, with the kernels that suit it.
    pub fn new(choice: AdapterChoice) -> Result<Self> {
        Self::with_kernels(choice, None)
    }

    /// A backend with the given kernels (`None`: [`KernelChoice::for_adapter`]).
    pub fn with_kernels(choice: AdapterChoice, kernels: Option<KernelChoice>) -> Result<Self> {
        let gpu = Gpu::new(choice)?;
        let recorder = Recorder::new(&gpu);
        let empty = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tern empty part"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let k = kernels.unwrap_or_else(|| KernelChoice::for_adapter(&gpu.report));
        k.check(&gpu.report)?;
        Ok(WebGpuBackend {
            gpu,
            recorder,
            empty,
            inv_freq: Mutex::new(HashMap::new()),
            attention_parts: Mutex::new(None),
            sample_candidates: Mutex::new(None),
            int8_activations: Mutex::new(None),
            scratch_use: Mutex::new(()),
            pool: Arc::new(BufferPool::default()),
            kernels: k,
        })
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterReport {
        &self.gpu.report
    }

    /// Starts timing every kernel on the GPU (timestamps around each dispatch). Each submit then waits for its
    /// timestamps, so steps run slower while profiling; the times per kernel stay right. An error if the
    /// adapter cannot write timestamps inside compute passes.
    pub fn start_profiling(&self) -> Result<()> {
        self.recorder.profile(&self.gpu, true).map(|_| ())
    }

    /// Stops timing and returns what was measured since [`WebGpuBackend::start_profiling`].
    pub fn stop_profiling(&self) -> Result<Profile> {
        Ok(self.recorder.profile(&self.gpu, false)?.unwrap_or_default())
    }

    /// Bytes of GPU memory held by dropped tensors for reuse (at most 1 GiB).
    pub fn idle_bytes(&self) -> u64 {
        self.pool.idle_bytes()
    }

    fn check_binding(&self, what: impl FnOnce() -> String, bytes: u64) -> Result<()> {
        let limit = self.gpu.limits.max_storage_buffer_binding_size.min(self.gpu.limits.max_buffer_size);
        if bytes > limit {
            return Err(Error::BufferLimit { what: what(), bytes, limit });
        }
        Ok(())
    }

    fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn storage_with(&self, label: &str, contents: &[u8]) -> wgpu::Buffer {
        self.gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// Gives `t` the shape `rows x cols`, with a larger buffer if its own is too small.
    fn resize(&self, op: &'static str, t: &mut GpuTensor, rows: usize, cols: usize) -> Result<()> {
        only_f32(op, t)?;
        let bytes = tensor_bytes(rows * cols);
        if t.buf.size() < bytes {
            self.check_binding(|| format!("{op} output of {rows}x{cols}"), size_class(bytes))?;
            let old = std::mem::replace(&mut t.buf, self.pool.take(&self.gpu.device, bytes));
            self.pool.give(old);
        }
        t.rows = rows;
        t.cols = cols;
        t.written();
        // The op overwrites the whole tensor.
        t.set_unscaled(false);
        Ok(())
    }

    /// Applies the RMS factor to each of `ts` that waits for it (see `GpuTensor::unscaled`), in place: every
    /// op but a scaled product calls this on the tensors it reads or writes in part, before recording; they
    /// must hold f32 (the cache's ops check their caches with [`WebGpuBackend::cache_store`] instead).
    fn settle(&self, op: &'static str, ts: &[&GpuTensor]) -> Result<()> {
        for t in ts {
            only_f32(op, t)?;
            if !t.is_unscaled() {
                continue;
            }
            let Some(int8) = &t.int8 else {
                return Err(Error::Device { detail: "a row waiting for its RMS factor has no int8 form".into() });
            };
            self.elementwise(Kernel::NormScale, t.len() / 4, &[&t.buf, int8])?;
            t.set_unscaled(false);
        }
        Ok(())
    }

    /// How the kernels take the caches `k` and `v` (which must be stored alike) for `op`.
    pub(super) fn cache_store(&self, op: &'static str, k: &GpuTensor, v: &GpuTensor) -> Result<KvStore> {
        if k.half != v.half {
            return Err(Error::shape(op, "the K cache and the V cache are stored as different types"));
        }
        Ok(self.kv_store(k))
    }

    /// How the kernels take the cache `t`.
    fn kv_store(&self, t: &GpuTensor) -> KvStore {
        match (t.half, self.kernels.shader_f16) {
            (false, _) => KvStore::F32,
            (true, false) => KvStore::F16Packed,
            (true, true) => KvStore::F16,
        }
    }

    fn max_groups(&self) -> u32 {
        self.gpu.limits.max_compute_workgroups_per_dimension
    }

    fn inv_freq(&self, base: f32, rot_dim: usize) -> Result<wgpu::Buffer> {
        let mut cache = self.inv_freq.lock().map_err(|_| Error::Device { detail: "a thread panicked during rope".into() })?;
        let key = (base.to_bits(), rot_dim);
        if let Some(b) = cache.get(&key) {
            return Ok(b.clone());
        }
        let freqs: Vec<u8> =
            (0..rot_dim / 2).flat_map(|i| base.powf(-2.0 * i as f32 / rot_dim as f32).to_le_bytes()).chain([0u8; 16]).collect();
        let buf = self.storage_with("tern rope frequencies", &freqs);
        cache.insert(key, buf.clone());
        Ok(buf)
    }

    /// The lock an op holds while it records dispatches that share a scratch buffer (`scratch_use`).
    pub(super) fn scratch_lock(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.scratch_use.lock().map_err(|_| Error::Device { detail: "a thread panicked while recording".into() })
    }

    /// The backend's scratch buffer in `held` (`label` names it), grown to at least `bytes` (a power of two).
    fn scratch(&self, held: &Mutex<Option<wgpu::Buffer>>, label: &'static str, bytes: u64) -> Result<wgpu::Buffer> {
        let mut held = held.lock().map_err(|_| Error::Device { detail: format!("a thread panicked while using the {label}") })?;
        match held.as_ref() {
            Some(b) if b.size() >= bytes => Ok(b.clone()),
            _ => {
                let bytes = bytes.max(16).next_power_of_two();
                self.check_binding(|| label.into(), bytes)?;
                let b = self.storage(label, bytes);
                *held = Some(b.clone());
                Ok(b)
            }
        }
    }

    /// Records `kernel` over `buffers` followed by `int8` (an op's int8 output) where there is one.
    fn dispatch_with_int8(
        &self,
        kernel: Kernel,
        params: [u32; 8],
        buffers: &[&wgpu::Buffer],
        int8: Option<&wgpu::Buffer>,
        grid: Grid,
    ) -> Result<()> {
        let mut all: [&wgpu::Buffer; 8] = [&self.empty; 8];
        let n = buffers.len();
        if n >= all.len() {
            return Err(Error::Device {
                detail: format!("{} binds {n} buffers and an int8 output, past {}", kernel.label(), all.len()),
            });
        }
        all[..n].copy_from_slice(buffers);
        let n = match int8 {
            Some(b) => {
                all[n] = b;
                n + 1
            }
            None => n,
        };
        self.recorder.dispatch(&self.gpu, kernel, params, &all[..n], grid)
    }

    fn same_shape(op: &'static str, a: &GpuTensor, b: &GpuTensor) -> Result<()> {
        if (a.rows, a.cols) != (b.rows, b.cols) {
            return Err(Error::shape(op, format!("{}x{} and {}x{}", a.rows, a.cols, b.rows, b.cols)));
        }
        Ok(())
    }

    /// `out[t] = table[ids[t]]` for `tokens` ids in `ids`, with `out` already shaped.
    fn gather(&self, table: &GpuMatrix, ids: &wgpu::Buffer, tokens: usize, out: &GpuTensor) -> Result<()> {
        let blocks = (tokens * table.cols / 32) as u64;
        let (grid, groups_x) = Grid::folded(blocks.div_ceil(WORKGROUP as u64), self.max_groups());
        let [q, s, mn, u] = &table.parts;
        let params = [table.cols as u32, tokens as u32, groups_x, table.first_row as u32, 0, 0, 0, 0];
        self.recorder.dispatch(&self.gpu, Kernel::Embed { ty: table.ty }, params, &[q, s, mn, u, ids, &out.buf], grid)
    }

    fn elementwise(&self, kernel: Kernel, len: usize, buffers: &[&wgpu::Buffer]) -> Result<()> {
        let (grid, groups_x) = Grid::folded((len as u64).div_ceil(256), self.max_groups());
        self.recorder.dispatch(&self.gpu, kernel, [len as u32, groups_x, 0, 0, 0, 0, 0, 0], buffers, grid)
    }
}

impl Backend for WebGpuBackend {
    type Tensor = GpuTensor;
    type Matrix = GpuMatrix;
    type Reading = GpuReading;

    fn name(&self) -> &'static str {
        "webgpu"
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<GpuTensor> {
        let bytes = tensor_bytes(rows * cols);
        self.check_binding(|| format!("a {rows}x{cols} tensor"), size_class(bytes))?;
        let buf = self.pool.take(&self.gpu.device, bytes);
        // A reused buffer holds its last user's values.
        self.recorder.clear(&self.gpu, &buf)?;
        Ok(GpuTensor::new(buf, rows, cols, self.pool.clone()))
    }

    fn zeros_cache(&self, rows: usize, cols: usize, ty: TensorType) -> Result<GpuTensor> {
        match ty {
            TensorType::F32 => self.zeros(rows, cols),
            TensorType::F16 => {
                if !cols.is_multiple_of(2) {
                    return Err(Error::shape("KV cache", format!("rows of {cols}: an f16 cache takes an even width")));
                }
                let bytes = tensor_bytes(rows * cols / 2);
                self.check_binding(|| format!("a {rows}x{cols} f16 KV cache"), size_class(bytes))?;
                let buf = self.pool.take(&self.gpu.device, bytes);
                self.recorder.clear(&self.gpu, &buf)?;
                let mut t = GpuTensor::new(buf, rows, cols, self.pool.clone());
                t.half = true;
                Ok(t)
            }
            _ => Err(Error::Unsupported { op: "KV cache", ty, backend: "webgpu" }),
        }
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<GpuTensor> {
        if data.len() != rows * cols {
            return Err(Error::shape("upload", format!("{} values for {rows}x{cols}", data.len())));
        }
        let bytes = size_class(tensor_bytes(data.len()));
        self.check_binding(|| format!("a {rows}x{cols} tensor"), bytes)?;
        let mut contents: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        contents.resize(bytes as usize, 0);
        // A fresh buffer, written at creation: a reused one would need a write ordered after recorded work.
        let buf = self.storage_with("tern tensor", &contents);
        Ok(GpuTensor::new(buf, rows, cols, self.pool.clone()))
    }

    fn read(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        let reading = self.read_begin(t)?;
        self.read_finish(reading)
    }

    fn read_begin(&self, t: &GpuTensor) -> Result<GpuReading> {
        if !t.half {
            self.settle("read", &[t])?;
        }
        self.recorder.read_begin(&self.gpu, &t.buf, t.len(), t.half)
    }

    fn read_finish(&self, r: GpuReading) -> Result<Vec<f32>> {
        self.recorder.read_finish(&self.gpu, r)
    }

    fn queues_work(&self) -> bool {
        true
    }

    fn shape(&self, t: &GpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn upload_matrices(&self, ms: &[MatrixView<'_>]) -> Result<Vec<GpuMatrix>> {
        let Some(first) = ms.first() else { return Ok(Vec::new()) };
        // Stored together when every matrix has the type and width of the first, and its f16 scales (and
        // minimums) fill whole words, so that the concatenated parts are those of one taller matrix.
        let whole_words = |m: &MatrixView<'_>| m.ty.tern_format().is_some() || (m.rows * m.row_blocks()).is_multiple_of(2);
        // And only while every joined part fits one binding: matrices that fit apart must still load.
        let limit = (self.gpu.limits.max_storage_buffer_binding_size).min(self.gpu.limits.max_buffer_size);
        let joined = |part: fn(&MatrixView<'_>) -> usize| ms.iter().map(part).sum::<usize>() as u64 * 4 + 16 <= limit;
        let together = ms.len() > 1
            && ms.iter().all(|m| m.ty == first.ty && m.cols == first.cols && whole_words(m) && m.validate().is_ok())
            && joined(|m| m.quants.len())
            && joined(|m| m.scales.len())
            && joined(|m| m.mins.len())
            && joined(|m| m.row_scales.len());
        if !together {
            return ms.iter().map(|m| self.upload_matrix(*m)).collect();
        }
        let (mut quants, mut scales, mut mins, mut row_scales) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for m in ms {
            quants.extend_from_slice(m.quants);
            scales.extend_from_slice(m.scales);
            mins.extend_from_slice(m.mins);
            row_scales.extend_from_slice(m.row_scales);
        }
        let rows = ms.iter().map(|m| m.rows).sum();
        let view = MatrixView {
            ty: first.ty,
            rows,
            cols: first.cols,
            quants: &quants,
            scales: &scales,
            mins: &mins,
            row_scales: &row_scales,
        };
        let stored = self.upload_matrix(view)?;
        let mut first_row = 0;
        Ok(ms
            .iter()
            .map(|m| {
                let part = GpuMatrix { ty: m.ty, rows: m.rows, cols: m.cols, first_row, parts: stored.parts.clone() };
                first_row += m.rows;
                part
            })
            .collect())
    }

    fn upload_matrix(&self, m: MatrixView<'_>) -> Result<GpuMatrix> {
        m.validate()?;
        if !tern_shaders::FORMATS.contains(&m.ty) {
            return Err(Error::Unsupported { op: "upload_matrix", ty: m.ty, backend: "webgpu" });
        }
        let names = ["quants", "scales", "mins", "row units"];
        let words = [m.quants, m.scales, m.mins, m.row_scales];
        let mut parts = Vec::with_capacity(4);
        for (name, w) in names.iter().zip(words) {
            if w.is_empty() {
                parts.push(self.empty.clone());
                continue;
            }
            let bytes = w.len() as u64 * 4;
            self.check_binding(|| format!("the {name} of a {} {}x{} matrix", m.ty, m.rows, m.cols), bytes)?;
            // Padded to 16 bytes: kernels read quants as vec4<u32>.
            let mut contents: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            contents.resize(contents.len().next_multiple_of(16), 0);
            parts.push(self.storage_with(&format!("tern matrix {name}"), &contents));
        }
        let parts: [wgpu::Buffer; 4] = parts.try_into().map_err(|_| Error::Device { detail: "matrix parts".into() })?;
        self.gpu.check()?;
        Ok(GpuMatrix { ty: m.ty, rows: m.rows, cols: m.cols, first_row: 0, parts })
    }

    fn matrix_shape(&self, m: &GpuMatrix) -> (usize, usize) {
        (m.rows, m.cols)
    }

    fn embed(&self, table: &GpuMatrix, ids: &[u32], out: &mut GpuTensor) -> Result<()> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= table.rows) {
            return Err(Error::shape("embed", format!("token id {bad} is past the table's {} rows", table.rows)));
        }
        self.resize("embed", out, ids.len(), table.cols)?;
        if ids.is_empty() {
            return Ok(());
        }
        let id_bytes: Vec<u8> = ids.iter().flat_map(|i| i.to_le_bytes()).collect();
        let id_buf = self.storage_with("tern token ids", &id_bytes);
        self.gather(table, &id_buf, ids.len(), out)
    }

    fn embed_sampled(&self, table: &GpuMatrix, id: &GpuTensor, out: &mut GpuTensor) -> Result<()> {
        if (id.rows, id.cols) != (1, 1) {
            return Err(Error::shape("embed_sampled", format!("a {}x{} token tensor, expected 1x1", id.rows, id.cols)));
        }
        self.settle("embed_sampled", &[id])?;
        self.resize("embed_sampled", out, 1, table.cols)?;
        self.gather(table, &id.buf, 1, out)
    }

    fn sample(&self, logits: &GpuTensor, s: &TokenSampling, out: &mut GpuTensor) -> Result<()> {
        s.check()?;
        self.settle("sample", &[logits])?;
        let _recording = self.scratch_lock()?;
        if logits.rows == 0 || logits.cols == 0 {
            return Err(Error::shape("sample", "no logits to sample from"));
        }
        self.resize("sample", out, 1, 1)?;
        let cols = logits.cols as u32;
        let (temperature, top_p, draw) = (s.temperature.to_bits(), s.top_p.to_bits(), s.draw.to_bits());
        let top_k = s.top_k as u32;
        let row = logits.rows as u32 - 1;
        let chunk = if s.temperature <= 0.0 { GREEDY_CHUNK } else { SAMPLE_CHUNK };
        if cols <= chunk {
            let params = [cols, row, top_k, temperature, top_p, draw, 0, 0];
            let kernel = Kernel::Sample { pass: SamplePass::Whole };
            return self.recorder.dispatch(&self.gpu, kernel, params, &[&logits.buf, &out.buf], Grid { dims: (1, 1, 1) });
        }
        // A long row: each chunk's candidates, then the pick among them.
        let chunks = cols.div_ceil(chunk);
        let slots = if s.temperature <= 0.0 { 1 } else { top_k.min(SAMPLE_CHUNK) };
        let cand = self.scratch(&self.sample_candidates, "tern sampling candidates", chunks as u64 * slots as u64 * 8)?;
        let params = [cols, row, top_k, temperature, top_p, draw, chunk, slots];
        let kernel = Kernel::Sample { pass: SamplePass::Chunks };
        self.recorder.dispatch(&self.gpu, kernel, params, &[&logits.buf, &cand], Grid { dims: (chunks, 1, 1) })?;
        let params = [chunks * slots, 0, top_k, temperature, top_p, draw, 0, cols];
        let kernel = Kernel::Sample { pass: SamplePass::Merge };
        self.recorder.dispatch(&self.gpu, kernel, params, &[&cand, &out.buf], Grid { dims: (1, 1, 1) })
    }

    fn matmul(&self, w: &GpuMatrix, x: &GpuTensor, out: &mut GpuTensor) -> Result<()> {
        self.products(&[w], x, &mut [out])
    }

    fn matmul_many(&self, ws: &[&GpuMatrix], x: &GpuTensor, outs: &mut [&mut GpuTensor]) -> Result<()> {
        if ws.len() != outs.len() {
            return Err(Error::shape("matmul_many", format!("{} matrices but {} outputs", ws.len(), outs.len())));
        }
        if (2..=3).contains(&ws.len()) && GpuMatrix::stored_together(ws) {
            return self.products(ws, x, outs);
        }
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.products(&[w], x, &mut [&mut **out])?;
        }
        Ok(())
    }

    fn rms_norm(&self, x: &GpuTensor, weight: &GpuTensor, eps: f32, out: &mut GpuTensor) -> Result<()> {
        if weight.len() != x.cols {
            return Err(Error::shape("rms_norm", format!("weight of {} for rows of {}", weight.len(), x.cols)));
        }
        self.settle("rms_norm", &[x, weight])?;
        self.resize("rms_norm", out, x.rows, x.cols)?;
        let (grid, groups_x) = Grid::folded(x.rows as u64, self.max_groups());
        let params = [x.rows as u32, x.cols as u32, eps.to_bits(), groups_x, 0, 0, 0, 0];
        let quads = norm_quads(x.cols);
        let int8 = if quads > 0 { self.int8_output(out)? } else { None };
        let subgroups = quads > 0 && self.kernels.subgroup_reductions;
        let kernel = Kernel::RmsNorm { residual: false, quads, int8: int8.is_some(), subgroups };
        self.dispatch_with_int8(kernel, params, &[&x.buf, &weight.buf, &out.buf], int8.as_ref(), grid)?;
        out.int8_ready = int8.is_some();
        Ok(())
    }

    fn add_rms_norm(&self, x: &mut GpuTensor, y: &GpuTensor, weight: &GpuTensor, eps: f32, out: &mut GpuTensor) -> Result<()> {
        Self::same_shape("add_rms_norm", x, y)?;
        if weight.len() != x.cols {
            return Err(Error::shape("add_rms_norm", format!("weight of {} for rows of {}", weight.len(), x.cols)));
        }
        self.settle("add_rms_norm", &[&*x, y, weight])?;
        self.resize("add_rms_norm", out, x.rows, x.cols)?;
        let (grid, groups_x) = Grid::folded(x.rows as u64, self.max_groups());
        let params = [x.rows as u32, x.cols as u32, eps.to_bits(), groups_x, 0, 0, 0, 0];
        x.written();
        let quads = norm_quads(x.cols);
        let int8 = if quads > 0 { self.int8_output(out)? } else { None };
        let subgroups = quads > 0 && self.kernels.subgroup_reductions;
        let kernel = Kernel::RmsNorm { residual: true, quads, int8: int8.is_some(), subgroups };
        self.dispatch_with_int8(kernel, params, &[&y.buf, &weight.buf, &x.buf, &out.buf], int8.as_ref(), grid)?;
        out.int8_ready = int8.is_some();
        Ok(())
    }

    fn matmul_add_rms_norm(
        &self,
        w: &GpuMatrix,
        a: &GpuTensor,
        y: &mut GpuTensor,
        x: &mut GpuTensor,
        weight: &GpuTensor,
        eps: f32,
        out: &mut GpuTensor,
    ) -> Result<()> {
        if self.fused_matmul_add_rms_norm(w, a, x, weight, eps, out)? {
            return Ok(());
        }
        self.matmul(w, a, y)?;
        self.add_rms_norm(x, y, weight, eps, out)
    }

    fn rope_and_append(
        &self,
        q: &mut GpuTensor,
        k: &mut GpuTensor,
        v: &GpuTensor,
        rope: &RopeParams,
        n_kv_heads: usize,
        (k_cache, v_cache): (&mut GpuTensor, &mut GpuTensor),
    ) -> Result<()> {
        let p = rope;
        let kv_cols = n_kv_heads * p.head_dim;
        if q.cols != p.n_heads * p.head_dim
            || p.rot_dim > p.head_dim
            || !p.rot_dim.is_multiple_of(2)
            || !p.head_dim.is_multiple_of(2)
        {
            return Err(Error::shape(
                "rope_and_append",
                format!("{} columns for {} heads of {} (rotating {})", q.cols, p.n_heads, p.head_dim, p.rot_dim),
            ));
        }
        if (k.rows, k.cols) != (q.rows, kv_cols) || (v.rows, v.cols) != (q.rows, kv_cols) {
            return Err(Error::shape(
                "rope_and_append",
                format!(
                    "k {}x{} and v {}x{} for {} rows of {n_kv_heads} heads of {}",
                    k.rows, k.cols, v.rows, v.cols, q.rows, p.head_dim
                ),
            ));
        }
        for cache in [&*k_cache, &*v_cache] {
            if cache.cols != kv_cols || p.pos0 + q.rows > cache.rows {
                return Err(Error::shape(
                    "rope_and_append",
                    format!("{} rows at row {} of a {}x{} cache", q.rows, p.pos0, cache.rows, cache.cols),
                ));
            }
        }
        self.settle("rope_and_append", &[&*q, &*k, v])?;
        let kv = self.cache_store("rope_and_append", k_cache, v_cache)?;
        // An f16 cache is written a word (two values) at a time, two rotation pairs an invocation.
        let per_invocation = if kv == KvStore::F32 { 2 } else { 4 };
        if !p.head_dim.is_multiple_of(per_invocation) || !p.rot_dim.is_multiple_of(per_invocation) {
            return Err(Error::shape(
                "rope_and_append",
                format!(
                    "heads of {} rotating {}: an f16 KV cache takes multiples of 4 (use an f32 cache)",
                    p.head_dim, p.rot_dim
                ),
            ));
        }
        let freqs = self.inv_freq(p.freq_base, p.rot_dim)?;
        let pairs = (q.rows * (p.n_heads + 2 * n_kv_heads) * p.head_dim / per_invocation) as u64;
        let (grid, groups_x) = Grid::folded(pairs.div_ceil(WORKGROUP as u64), self.max_groups());
        let interleaved = u32::from(p.style == RopeStyle::Interleaved);
        let params = [
            q.rows as u32,
            p.n_heads as u32,
            n_kv_heads as u32,
            p.head_dim as u32,
            p.rot_dim as u32,
            interleaved,
            p.pos0 as u32,
            groups_x,
        ];
        for t in [&mut *q, &mut *k, &mut *k_cache, &mut *v_cache] {
            t.written();
        }
        let buffers = [&freqs, &v.buf, &q.buf, &k.buf, &k_cache.buf, &v_cache.buf];
        self.recorder.dispatch(&self.gpu, Kernel::RopeAppend { kv }, params, &buffers, grid)
    }

    fn attention_inputs(
        &self,
        ws: [&GpuMatrix; 3],
        x: &GpuTensor,
        rope: &RopeParams,
        n_kv_heads: usize,
        (q, k, v): (&mut GpuTensor, &mut GpuTensor, &mut GpuTensor),
        (k_cache, v_cache): (&mut GpuTensor, &mut GpuTensor),
    ) -> Result<()> {
        if self.fused_attention_inputs(ws, x, rope, n_kv_heads, q, (&mut *k_cache, &mut *v_cache))? {
            return Ok(());
        }
        self.matmul_many(&ws, x, &mut [&mut *q, &mut *k, &mut *v])?;
        self.rope_and_append(q, k, v, rope, n_kv_heads, (k_cache, v_cache))
    }

    fn rope(&self, x: &mut GpuTensor, p: &RopeParams) -> Result<()> {
        if x.cols != p.n_heads * p.head_dim || p.rot_dim > p.head_dim || !p.rot_dim.is_multiple_of(2) {
            return Err(Error::shape(
                "rope",
                format!("{} columns for {} heads of {} (rotating {})", x.cols, p.n_heads, p.head_dim, p.rot_dim),
            ));
        }
        self.settle("rope", &[&*x])?;
        let freqs = self.inv_freq(p.freq_base, p.rot_dim)?;
        let pairs = (x.rows * p.n_heads * p.rot_dim / 2) as u64;
        let (grid, groups_x) = Grid::folded(pairs.div_ceil(WORKGROUP as u64), self.max_groups());
        let interleaved = u32::from(p.style == RopeStyle::Interleaved);
        let params =
            [x.rows as u32, p.n_heads as u32, p.head_dim as u32, p.rot_dim as u32, interleaved, p.pos0 as u32, groups_x, 0];
        x.written();
        self.recorder.dispatch(&self.gpu, Kernel::Rope, params, &[&freqs, &x.buf], grid)
    }

    fn write_rows(&self, src: &GpuTensor, dst: &mut GpuTensor, row: usize) -> Result<()> {
        if src.cols != dst.cols || row + src.rows > dst.rows {
            return Err(Error::shape(
                "write_rows",
                format!("{}x{} at row {row} of {}x{}", src.rows, src.cols, dst.rows, dst.cols),
            ));
        }
        self.settle("write_rows", &[src])?;
        dst.written();
        if dst.half {
            // Converted to f16 a pair of values an invocation (an f16 cache's rows are of even width).
            let kv = self.kv_store(dst);
            let pairs = src.len() / 2;
            let (grid, groups_x) = Grid::folded((pairs as u64).div_ceil(WORKGROUP as u64), self.max_groups());
            let params = [pairs as u32, groups_x, (row * dst.cols / 2) as u32, 0, 0, 0, 0, 0];
            return self.recorder.dispatch(&self.gpu, Kernel::CacheWrite { kv }, params, &[&src.buf, &dst.buf], grid);
        }
        self.settle("write_rows", &[&*dst])?;
        let row_bytes = dst.cols as u64 * 4;
        self.recorder.copy(&self.gpu, &src.buf, 0, &dst.buf, row as u64 * row_bytes, src.rows as u64 * row_bytes)
    }

    fn slice_rows(&self, src: &GpuTensor, first: usize, count: usize, out: &mut GpuTensor) -> Result<()> {
        if first + count > src.rows {
            return Err(Error::shape("slice_rows", format!("rows {first}..{} of {}", first + count, src.rows)));
        }
        self.settle("slice_rows", &[src])?;
        self.resize("slice_rows", out, count, src.cols)?;
        let row_bytes = src.cols as u64 * 4;
        self.recorder.copy(&self.gpu, &src.buf, first as u64 * row_bytes, &out.buf, 0, count as u64 * row_bytes)
    }

    fn attention(&self, q: &GpuTensor, k: &GpuTensor, v: &GpuTensor, p: &AttentionParams, out: &mut GpuTensor) -> Result<()> {
        p.check((q.rows, q.cols), (k.rows, k.cols), (v.rows, v.cols))?;
        let _recording = self.scratch_lock()?;
        let hd = p.head_dim;
        if hd > MAX_HEAD_DIM as usize || !hd.is_multiple_of(4) {
            return Err(Error::shape(
                "attention",
                format!("heads of {hd}: the WebGPU kernel takes multiples of 4 up to {MAX_HEAD_DIM}"),
            ));
        }
        self.settle("attention", &[q])?;
        let kv = self.cache_store("attention", k, v)?;
        self.resize("attention", out, q.rows, q.cols)?;
        let visible = p.pos0 + q.rows;
        let span = ATTENTION_SPAN as usize;
        let params =
            |span| [q.rows as u32, p.n_heads as u32, p.n_kv_heads as u32, hd as u32, p.pos0 as u32, p.scale.to_bits(), span, 0];
        // Decode writes its output quantized to int8 as well, for the product that follows.
        let int8 = if hd.is_multiple_of(32) { self.int8_output(out)? } else { None };
        let subgroups = self.kernels.subgroup_reductions;
        // K eight values a load pays for many rows and long contexts, not for one row over a short one.
        let can_widen = kv != KvStore::F32 && hd.is_multiple_of(8);
        if q.rows > 1 || visible <= span {
            let memory = self.gpu.limits.max_compute_workgroup_storage_size;
            let rows = if q.rows > 1 { Kernel::attention_rows(hd as u32, memory) } else { 1 };
            let grid = Grid { dims: (p.n_heads as u32, q.rows.div_ceil(rows as usize) as u32, 1) };
            let wide_k = can_widen && q.rows > 1;
            let with_int8 = int8.is_some();
            let kernel = Kernel::Attention { head_dim: hd as u32, rows, split: false, subgroups, int8: with_int8, kv, wide_k };
            self.dispatch_with_int8(kernel, params(0), &[&q.buf, &k.buf, &v.buf, &out.buf], int8.as_ref(), grid)?;
            out.int8_ready = int8.is_some();
            return Ok(());
        }
        // Decode over a long context: spans of positions in workgroups of their own, then merged.
        let splits = visible.div_ceil(span);
        let parts =
            self.scratch(&self.attention_parts, "tern attention partials", tensor_bytes(splits * p.n_heads * (hd + 2)))?;
        let kernel =
            Kernel::Attention { head_dim: hd as u32, rows: 1, split: true, subgroups, int8: false, kv, wide_k: can_widen };
        let grid = Grid { dims: (p.n_heads as u32, splits as u32, 1) };
        self.recorder.dispatch(&self.gpu, kernel, params(span as u32), &[&q.buf, &k.buf, &v.buf, &parts], grid)?;
        let combine = Kernel::AttentionCombine { head_dim: hd as u32, int8: int8.is_some() };
        let params = [p.n_heads as u32, splits as u32, 0, 0, 0, 0, 0, 0];
        let grid = Grid { dims: (p.n_heads as u32, 1, 1) };
        self.dispatch_with_int8(combine, params, &[&parts, &out.buf], int8.as_ref(), grid)?;
        out.int8_ready = int8.is_some();
        Ok(())
    }

    fn silu_mul(&self, gate: &GpuTensor, up: &GpuTensor, out: &mut GpuTensor) -> Result<()> {
        Self::same_shape("silu_mul", gate, up)?;
        self.settle("silu_mul", &[gate, up])?;
        self.resize("silu_mul", out, gate.rows, gate.cols)?;
        let int8 = self.int8_output(out)?;
        match &int8 {
            Some(q) => self.elementwise(Kernel::SiluMul { int8: true }, gate.len() / 4, &[&gate.buf, &up.buf, &out.buf, q])?,
            None => self.elementwise(Kernel::SiluMul { int8: false }, gate.len(), &[&gate.buf, &up.buf, &out.buf])?,
        }
        out.int8_ready = int8.is_some();
        Ok(())
    }

    fn matmul_silu_mul(
        &self,
        (gate, up): (&GpuMatrix, &GpuMatrix),
        x: &GpuTensor,
        (g, u): (&mut GpuTensor, &mut GpuTensor),
        out: &mut GpuTensor,
    ) -> Result<()> {
        if self.fused_matmul_silu_mul([gate, up], x, out)? {
            return Ok(());
        }
        self.matmul_many(&[gate, up], x, &mut [&mut *g, &mut *u])?;
        self.silu_mul(g, u, out)
    }

    fn add(&self, x: &mut GpuTensor, y: &GpuTensor) -> Result<()> {
        Self::same_shape("add", x, y)?;
        self.settle("add", &[&*x, y])?;
        x.written();
        self.elementwise(Kernel::Add, x.len(), &[&y.buf, &x.buf])
    }
}
