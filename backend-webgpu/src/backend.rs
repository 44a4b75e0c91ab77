use std::collections::HashMap;
use std::sync::Mutex;

use tern_core::{AttentionParams, Backend, Error, MatrixView, Result, RopeParams, RopeStyle, TensorType, TokenSampling};
use tern_shaders::{ATTENTION_SPAN, Kernel, MATMUL_TOKENS, MAX_HEAD_DIM, TILED_TOKENS, WORKGROUP};
use wgpu::util::DeviceExt;

use crate::device::{AdapterChoice, AdapterReport, Gpu};
use crate::recorder::{GpuReading, Grid, Recorder};

/// An f32 activation matrix in a GPU storage buffer, row-major. The buffer may be larger than the shape (it is
/// reused as ops resize their outputs).
#[derive(Debug)]
pub struct GpuTensor {
    buf: wgpu::Buffer,
    rows: usize,
    cols: usize,
}

impl GpuTensor {
    fn len(&self) -> usize {
        self.rows * self.cols
    }
}

/// A packed weight matrix: its four word arrays in GPU storage buffers (a shared empty one for absent parts).
#[derive(Debug)]
pub struct GpuMatrix {
    ty: TensorType,
    rows: usize,
    cols: usize,
    /// quants, scales (tern: block codes), mins, row units.
    parts: [wgpu::Buffer; 4],
}

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
    kernels: KernelChoice,
}

/// Which matmul kernels a [`WebGpuBackend`] uses; [`KernelChoice::for_adapter`] picks them by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelChoice {
    /// Invocations sharing rows in decode products (a power of two up to 64).
    pub lanes: u32,
    /// Rows those invocations share in decode products (1 to 4): each activation loaded serves that many.
    pub rows: u32,
    /// The GPU kernels: products of several tokens tiled, decode products with lanes on consecutive `vec4`s
    /// (fast on GPUs; on a CPU rasterizer their barriers cost more than they save). With them, a token's
    /// products in a batch and alone may differ by float rounding.
    pub tiled: bool,
    /// With `tiled`: rows per invocation in prefill products (1 or 2; each staged activation serves them all).
    pub tiled_rows: u32,
    /// With `tiled`: decode products summed by subgroup operations, one row per subgroup of this size (the
    /// adapter's fixed subgroup size), in place of `lanes` and `rows`.
    pub subgroup_size: Option<u32>,
}

impl KernelChoice {
    /// A GPU runs a row's `vec4`s on 32 lanes that meet in a tree, and prefill tiled. A CPU rasterizer
    /// (lavapipe) runs the invocations of a workgroup one after another and pays dearly for every barrier:
    /// there each invocation takes a whole row.
    pub fn for_adapter(report: &AdapterReport) -> Self {
        if report.is_gpu {
            // The subgroup matvec measured no faster on an H100 (and slower on 4096x11008), so it is opt-in.
            KernelChoice { lanes: 32, rows: 1, tiled: true, tiled_rows: 2, subgroup_size: None }
        } else {
            KernelChoice { lanes: 1, rows: 1, tiled: false, tiled_rows: 1, subgroup_size: None }
        }
    }
}

impl std::fmt::Debug for WebGpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebGpuBackend").field("adapter", &self.gpu.report.name).field("api", &self.gpu.report.api).finish()
    }
}

/// Bytes a tensor of `len` f32 takes: at least 16, a multiple of 16 (kernels read some as `vec4`).
fn tensor_bytes(len: usize) -> u64 {
    ((len as u64) * 4).max(16).next_multiple_of(16)
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
        if let Some(size) = k.subgroup_size
            && (gpu.report.subgroup_size != Some(size) || !WORKGROUP.is_multiple_of(size))
        {
            return Err(Error::Device {
                detail: format!(
                    "subgroups of {size}: the adapter's are {:?}, and {WORKGROUP} must be a multiple",
                    gpu.report.subgroup_size
                ),
            });
        }
        if !k.lanes.is_power_of_two() || k.lanes > WORKGROUP || !(1..=4).contains(&k.rows) || !(1..=2).contains(&k.tiled_rows) {
            return Err(Error::Device {
                detail: format!("{} lanes on {} rows: expected a power of two up to {WORKGROUP} on 1 to 4", k.lanes, k.rows),
            });
        }
        Ok(WebGpuBackend {
            gpu,
            recorder,
            empty,
            inv_freq: Mutex::new(HashMap::new()),
            attention_parts: Mutex::new(None),
            kernels: k,
        })
    }

    /// The adapter this backend runs on.
    pub fn adapter(&self) -> &AdapterReport {
        &self.gpu.report
    }

    fn check_binding(&self, what: impl FnOnce() -> String, bytes: u64) -> Result<()> {
        let limit = (self.gpu.limits.max_storage_buffer_binding_size as u64).min(self.gpu.limits.max_buffer_size);
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
        let bytes = tensor_bytes(rows * cols);
        if t.buf.size() < bytes {
            self.check_binding(|| format!("{op} output of {rows}x{cols}"), bytes)?;
            t.buf = self.storage("tern tensor", bytes);
        }
        t.rows = rows;
        t.cols = cols;
        Ok(())
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

    /// The buffer of split attention's partials, at least `bytes` long.
    fn attention_parts(&self, bytes: u64) -> Result<wgpu::Buffer> {
        let mut parts =
            self.attention_parts.lock().map_err(|_| Error::Device { detail: "a thread panicked during attention".into() })?;
        match parts.as_ref() {
            Some(b) if b.size() >= bytes => Ok(b.clone()),
            _ => {
                self.check_binding(|| "attention partials".into(), bytes)?;
                let b = self.storage("tern attention partials", bytes.next_power_of_two());
                *parts = Some(b.clone());
                Ok(b)
            }
        }
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
        let params = [table.cols as u32, tokens as u32, groups_x, 0, 0, 0, 0, 0];
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
        self.check_binding(|| format!("a {rows}x{cols} tensor"), bytes)?;
        Ok(GpuTensor { buf: self.storage("tern tensor", bytes), rows, cols })
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<GpuTensor> {
        if data.len() != rows * cols {
            return Err(Error::shape("upload", format!("{} values for {rows}x{cols}", data.len())));
        }
        let bytes = tensor_bytes(data.len());
        self.check_binding(|| format!("a {rows}x{cols} tensor"), bytes)?;
        let mut contents: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        contents.resize(bytes as usize, 0);
        Ok(GpuTensor { buf: self.storage_with("tern tensor", &contents), rows, cols })
    }

    fn read(&self, t: &GpuTensor) -> Result<Vec<f32>> {
        let reading = self.read_begin(t)?;
        self.read_finish(reading)
    }

    fn read_begin(&self, t: &GpuTensor) -> Result<GpuReading> {
        self.recorder.read_begin(&self.gpu, &t.buf, t.len())
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
        Ok(GpuMatrix { ty: m.ty, rows: m.rows, cols: m.cols, parts })
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
        self.resize("embed_sampled", out, 1, table.cols)?;
        self.gather(table, &id.buf, 1, out)
    }

    fn sample(&self, logits: &GpuTensor, s: &TokenSampling, out: &mut GpuTensor) -> Result<()> {
        s.check()?;
        if logits.rows == 0 || logits.cols == 0 {
            return Err(Error::shape("sample", "no logits to sample from"));
        }
        self.resize("sample", out, 1, 1)?;
        let params = [
            logits.cols as u32,
            logits.rows as u32 - 1,
            s.top_k as u32,
            s.temperature.to_bits(),
            s.top_p.to_bits(),
            s.draw.to_bits(),
            0,
            0,
        ];
        self.recorder.dispatch(&self.gpu, Kernel::Sample, params, &[&logits.buf, &out.buf], Grid { dims: (1, 1, 1) })
    }

    fn matmul(&self, w: &GpuMatrix, x: &GpuTensor, out: &mut GpuTensor) -> Result<()> {
        if x.cols != w.cols {
            return Err(Error::shape("matmul", format!("{}x{} matrix by activations of width {}", w.rows, w.cols, x.cols)));
        }
        self.resize("matmul", out, x.rows, w.rows)?;
        // Decode takes a kernel of its own: no batch to share the weights with.
        let k = self.kernels;
        let (kernel, rows_per_group, tokens) = if x.rows > 1 && k.tiled {
            (Kernel::MatmulTiled { ty: w.ty, tokens: TILED_TOKENS, rows: k.tiled_rows }, WORKGROUP * k.tiled_rows, TILED_TOKENS)
        } else if let (true, Some(size)) = (k.tiled, k.subgroup_size) {
            (Kernel::MatvecSubgroups { ty: w.ty }, WORKGROUP / size, 1)
        } else if k.tiled {
            (Kernel::Matvec { ty: w.ty, lanes: k.lanes, rows: k.rows }, WORKGROUP / k.lanes * k.rows, 1)
        } else {
            let (tokens, rows) = if x.rows == 1 { (1, k.rows) } else { (MATMUL_TOKENS, 1) };
            let kernel = Kernel::Matmul { ty: w.ty, workgroup: WORKGROUP, lanes: k.lanes, rows, tokens };
            (kernel, WORKGROUP / k.lanes * rows, tokens)
        };
        let row_groups = (w.rows as u64).div_ceil(rows_per_group as u64);
        let max = self.max_groups();
        let x_groups = row_groups.min(max as u64).max(1) as u32;
        let z_groups = row_groups.div_ceil(x_groups as u64) as u32;
        let token_groups = (x.rows as u64).div_ceil(tokens as u64) as u32;
        let grid = Grid { dims: (if row_groups == 0 { 0 } else { x_groups }, token_groups, z_groups.max(1)) };
        let [q, s, mn, u] = &w.parts;
        let params = [w.rows as u32, w.cols as u32, x.rows as u32, x_groups, 0, 0, 0, 0];
        self.recorder.dispatch(&self.gpu, kernel, params, &[q, s, mn, u, &x.buf, &out.buf], grid)
    }

    fn rms_norm(&self, x: &GpuTensor, weight: &GpuTensor, eps: f32, out: &mut GpuTensor) -> Result<()> {
        if weight.len() != x.cols {
            return Err(Error::shape("rms_norm", format!("weight of {} for rows of {}", weight.len(), x.cols)));
        }
        self.resize("rms_norm", out, x.rows, x.cols)?;
        let (grid, groups_x) = Grid::folded(x.rows as u64, self.max_groups());
        let params = [x.rows as u32, x.cols as u32, eps.to_bits(), groups_x, 0, 0, 0, 0];
        self.recorder.dispatch(&self.gpu, Kernel::RmsNorm, params, &[&x.buf, &weight.buf, &out.buf], grid)
    }

    fn rope(&self, x: &mut GpuTensor, p: &RopeParams) -> Result<()> {
        if x.cols != p.n_heads * p.head_dim || p.rot_dim > p.head_dim || !p.rot_dim.is_multiple_of(2) {
            return Err(Error::shape(
                "rope",
                format!("{} columns for {} heads of {} (rotating {})", x.cols, p.n_heads, p.head_dim, p.rot_dim),
            ));
        }
        let freqs = self.inv_freq(p.freq_base, p.rot_dim)?;
        let pairs = (x.rows * p.n_heads * p.rot_dim / 2) as u64;
        let (grid, groups_x) = Grid::folded(pairs.div_ceil(WORKGROUP as u64), self.max_groups());
        let interleaved = u32::from(p.style == RopeStyle::Interleaved);
        let params =
            [x.rows as u32, p.n_heads as u32, p.head_dim as u32, p.rot_dim as u32, interleaved, p.pos0 as u32, groups_x, 0];
        self.recorder.dispatch(&self.gpu, Kernel::Rope, params, &[&freqs, &x.buf], grid)
    }

    fn write_rows(&self, src: &GpuTensor, dst: &mut GpuTensor, row: usize) -> Result<()> {
        if src.cols != dst.cols || row + src.rows > dst.rows {
            return Err(Error::shape(
                "write_rows",
                format!("{}x{} at row {row} of {}x{}", src.rows, src.cols, dst.rows, dst.cols),
            ));
        }
        let row_bytes = dst.cols as u64 * 4;
        self.recorder.copy(&self.gpu, &src.buf, 0, &dst.buf, row as u64 * row_bytes, src.rows as u64 * row_bytes)
    }

    fn slice_rows(&self, src: &GpuTensor, first: usize, count: usize, out: &mut GpuTensor) -> Result<()> {
        if first + count > src.rows {
            return Err(Error::shape("slice_rows", format!("rows {first}..{} of {}", first + count, src.rows)));
        }
        self.resize("slice_rows", out, count, src.cols)?;
        let row_bytes = src.cols as u64 * 4;
        self.recorder.copy(&self.gpu, &src.buf, first as u64 * row_bytes, &out.buf, 0, count as u64 * row_bytes)
    }

    fn attention(&self, q: &GpuTensor, k: &GpuTensor, v: &GpuTensor, p: &AttentionParams, out: &mut GpuTensor) -> Result<()> {
        p.check((q.rows, q.cols), (k.rows, k.cols), (v.rows, v.cols))?;
        let hd = p.head_dim;
        if hd > MAX_HEAD_DIM as usize || !hd.is_multiple_of(4) {
            return Err(Error::shape(
                "attention",
                format!("heads of {hd}: the WebGPU kernel takes multiples of 4 up to {MAX_HEAD_DIM}"),
            ));
        }
        self.resize("attention", out, q.rows, q.cols)?;
        let visible = p.pos0 + q.rows;
        let span = ATTENTION_SPAN as usize;
        let params =
            |span| [q.rows as u32, p.n_heads as u32, p.n_kv_heads as u32, hd as u32, p.pos0 as u32, p.scale.to_bits(), span, 0];
        if q.rows > 1 || visible <= span {
            let grid = Grid { dims: (p.n_heads as u32, q.rows as u32, 1) };
            let kernel = Kernel::Attention { head_dim: hd as u32, split: false };
            return self.recorder.dispatch(&self.gpu, kernel, params(0), &[&q.buf, &k.buf, &v.buf, &out.buf], grid);
        }
        // Decode over a long context: spans of positions in workgroups of their own, then merged.
        let splits = visible.div_ceil(span);
        let parts = self.attention_parts(tensor_bytes(splits * p.n_heads * (hd + 2)))?;
        let kernel = Kernel::Attention { head_dim: hd as u32, split: true };
        let grid = Grid { dims: (p.n_heads as u32, splits as u32, 1) };
        self.recorder.dispatch(&self.gpu, kernel, params(span as u32), &[&q.buf, &k.buf, &v.buf, &parts], grid)?;
        let combine = Kernel::AttentionCombine { head_dim: hd as u32 };
        let params = [p.n_heads as u32, splits as u32, 0, 0, 0, 0, 0, 0];
        self.recorder.dispatch(&self.gpu, combine, params, &[&parts, &out.buf], Grid { dims: (p.n_heads as u32, 1, 1) })
    }

    fn silu_mul(&self, gate: &GpuTensor, up: &GpuTensor, out: &mut GpuTensor) -> Result<()> {
        Self::same_shape("silu_mul", gate, up)?;
        self.resize("silu_mul", out, gate.rows, gate.cols)?;
        self.elementwise(Kernel::SiluMul, gate.len(), &[&gate.buf, &up.buf, &out.buf])
    }

    fn add(&self, x: &mut GpuTensor, y: &GpuTensor) -> Result<()> {
        Self::same_shape("add", x, y)?;
        self.elementwise(Kernel::Add, x.len(), &[&y.buf, &x.buf])
    }
}
