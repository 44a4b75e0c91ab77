//! Matrix products, and the int8 activations of the products that take them.

use tern_core::{Error, Result, RopeParams, RopeStyle, TensorType};
use tern_shaders::{Kernel, MATMUL_TOKENS, NORM_PRODUCT_ROWS, TILED_TOKENS, WORKGROUP};

use super::WebGpuBackend;
use crate::pool::size_class;
use crate::recorder::Grid;
use crate::tensor::{GpuMatrix, GpuTensor};

/// The shapes of the fused decode products, measured in the pipelined 7B step on the H100 (BENCHMARKS.md):
/// rows per group of lanes in the Q/K/V product (`Kernel::MatvecInt8Rope`; 4 rather than the other products'
/// 2), and gate rows (each with its up row) per group in the SiLU product (`Kernel::MatvecInt8SiluMul`, in
/// workgroups of 256). Rows 8 or pairs 8 were slower.
const QKV_PRODUCT_ROWS: u32 = 4;
const SILU_PRODUCT_PAIRS: u32 = 4;

/// Blocks per step of the norm product (`Kernel::MatvecInt8Norm`) and of the SiLU product, by the weights'
/// bits: a block of 4 bits or more is enough loads in flight at fewer blocks a step (the norm product's 1024
/// invocations a workgroup leave each few registers), a narrower block needs more blocks a step. Measured on
/// the H100 at 7B: T4 with (1, 2) 437 t/s against 389-394 with (2, 2); T2 with (2, 4) 532 against 432 with
/// (1, 2); T3 415 against 376 (BENCHMARKS.md).
fn fused_unroll(ty: TensorType) -> (u32, u32) {
    if ty.quant_bits() >= 4 { (1, 2) } else { (2, 4) }
}

/// Bytes of one block of 32 activations in int8 (`Kernel::MatvecInt8`'s layout): 32 quants, the scale and
/// the scaled sum of the quants, padded to three `vec4<u32>`.
const INT8_BLOCK_BYTES: u64 = 48;

impl WebGpuBackend {
    /// Whether products of the formats with an int8 reader take int8 activations (decode and prefill).
    pub(super) fn int8_products(&self) -> bool {
        let k = self.kernels;
        k.tiled && k.int8 && k.subgroup_size.is_none()
    }

    /// The buffer for the int8 form of `t` (already shaped, and so marked stale), for an op that writes both,
    /// when decode products take int8 activations and `t` is one row of whole blocks of 32. The op sets
    /// `int8_ready` once its dispatch is recorded.
    pub(super) fn int8_output(&self, t: &mut GpuTensor) -> Result<Option<wgpu::Buffer>> {
        if !self.int8_products() || t.rows != 1 || !t.cols.is_multiple_of(32) {
            return Ok(None);
        }
        let bytes = (t.cols / 32) as u64 * INT8_BLOCK_BYTES;
        if t.int8.as_ref().is_none_or(|b| b.size() < bytes) {
            self.check_binding(|| format!("int8 form of a 1x{} tensor", t.cols), size_class(bytes))?;
            if let Some(old) = t.int8.replace(self.pool.take(&self.gpu.device, bytes)) {
                self.pool.give(old);
            }
        }
        Ok(t.int8.clone())
    }

    /// Whether int8 decode products sum their lanes by subgroup operations: with subgroup reductions, where a
    /// group of lanes is exactly one subgroup.
    fn subgroup_lanes(&self) -> bool {
        self.kernels.subgroup_reductions && self.gpu.report.subgroup_size == Some(self.kernels.lanes)
    }

    /// `outs[i] = ws[i] x` in one dispatch, for matrices stored together (or one matrix).
    pub(super) fn products(&self, ws: &[&GpuMatrix], x: &GpuTensor, outs: &mut [&mut GpuTensor]) -> Result<()> {
        let _recording = self.scratch_lock()?;
        let (Some(w), true) = (ws.first(), ws.len() == outs.len() && ws.len() <= 3) else {
            return Err(Error::shape("matmul", format!("{} matrices for {} outputs", ws.len(), outs.len())));
        };
        if x.cols != w.cols {
            return Err(Error::shape("matmul", format!("{}x{} matrix by activations of width {}", w.rows, w.cols, x.cols)));
        }
        for (m, out) in ws.iter().zip(outs.iter_mut()) {
            self.resize("matmul", out, x.rows, m.rows)?;
        }
        let rows: usize = ws.iter().map(|m| m.rows).sum();
        let outputs = ws.len() as u32;
        // Decode takes a kernel of its own: no batch to share the weights with.
        let (ty, k) = (w.ty, self.kernels);
        let int8 = x.rows == 1 && self.int8_products() && Kernel::has_int8(ty);
        // A row that waits for its RMS factor goes as it is to an int8 decode product, which applies it.
        let scaled = int8 && x.is_unscaled();
        if !scaled {
            self.settle("matmul", &[x])?;
        }
        // Prefill on int8 activations too, where they are whole blocks of 32.
        let tiled_int8 = x.rows > 1 && self.int8_products() && Kernel::has_int8(ty) && x.cols.is_multiple_of(32);
        let (kernel, rows_per_group, tokens) = if int8 {
            let (workgroup, lanes, rows) = (k.workgroup, k.lanes, k.rows);
            // A block holds four `vec4`s of weights: a quarter as many blocks keep as many loads in flight.
            (
                Kernel::MatvecInt8 {
                    ty,
                    workgroup,
                    lanes,
                    rows,
                    unroll: (k.unroll / 4).max(1),
                    outputs,
                    scaled,
                    subgroups: self.subgroup_lanes(),
                },
                workgroup / lanes * rows,
                1,
            )
        } else if tiled_int8 {
            (Kernel::MatmulTiledInt8 { ty, rows: k.tiled_rows, outputs }, WORKGROUP * k.tiled_rows, TILED_TOKENS)
        } else if x.rows > 1 && k.tiled {
            (
                Kernel::MatmulTiled { ty, tokens: TILED_TOKENS, rows: k.tiled_rows, outputs },
                WORKGROUP * k.tiled_rows,
                TILED_TOKENS,
            )
        } else if let (true, Some(size)) = (k.tiled, k.subgroup_size) {
            (Kernel::MatvecSubgroups { ty, outputs }, WORKGROUP / size, 1)
        } else if k.tiled {
            let (workgroup, lanes, rows, unroll) = (k.workgroup, k.lanes, k.rows, k.unroll);
            let kernel = if k.slots && Kernel::has_slots(ty) {
                // A slot holds at least two `vec4`s of weights: half as many slots keep as many loads in flight.
                Kernel::MatvecSlots { ty, workgroup, lanes, rows, unroll: unroll / 2, outputs }
            } else {
                Kernel::Matvec { ty, workgroup, lanes, rows, unroll, outputs }
            };
            (kernel, k.workgroup / k.lanes * k.rows, 1)
        } else {
            let (tokens, rows) = if x.rows == 1 { (1, k.rows) } else { (MATMUL_TOKENS, 1) };
            let kernel = Kernel::Matmul { ty, workgroup: WORKGROUP, lanes: k.lanes, rows, tokens, outputs };
            (kernel, WORKGROUP / k.lanes * rows, tokens)
        };
        let (grid, x_groups) = self.product_grid(rows, rows_per_group, x.rows, tokens);
        let rows_of = |i: usize| ws.get(i).map_or(0, |m| m.rows as u32);
        let params = [rows as u32, w.cols as u32, x.rows as u32, x_groups, w.first_row as u32, rows_of(0), rows_of(1), 0];
        let quantized = if int8 || tiled_int8 { Some(self.int8_activations(x)?) } else { None };
        let outputs: [&wgpu::Buffer; 3] = std::array::from_fn(|i| outs.get(i).map_or(&x.buf, |o| &o.buf));
        self.dispatch_product(kernel, params, w, quantized.as_ref().unwrap_or(&x.buf), &outputs[..outs.len()], grid)
    }

    /// Records a product `kernel` over `w`'s parts (bindings 1 to 4), the activations (binding 5) and `rest`
    /// (its outputs and any other buffers, from binding 6), gathered in a fixed array so that a dispatch
    /// allocates nothing.
    fn dispatch_product(
        &self,
        kernel: Kernel,
        params: [u32; 8],
        w: &GpuMatrix,
        activations: &wgpu::Buffer,
        rest: &[&wgpu::Buffer],
        grid: Grid,
    ) -> Result<()> {
        let [q, s, mn, u] = &w.parts;
        let mut buffers: [&wgpu::Buffer; 9] = [q, s, mn, u, activations, q, q, q, q];
        let n = 5 + rest.len();
        if n > buffers.len() {
            return Err(Error::Device { detail: format!("{} binds {n} buffers, past {}", kernel.label(), buffers.len()) });
        }
        buffers[5..n].copy_from_slice(rest);
        self.recorder.dispatch(&self.gpu, kernel, params, &buffers[..n], grid)
    }

    /// The grid of a product of `rows` rows, `rows_per_group` a workgroup, over `tokens` rows of activations
    /// `per_group` a workgroup, and the workgroups along x (rows past the per-dimension limit fold into z).
    fn product_grid(&self, rows: usize, rows_per_group: u32, tokens: usize, per_group: u32) -> (Grid, u32) {
        let row_groups = (rows as u64).div_ceil(rows_per_group as u64);
        let x_groups = row_groups.min(self.max_groups() as u64).max(1) as u32;
        let z_groups = row_groups.div_ceil(x_groups as u64) as u32;
        let token_groups = (tokens as u64).div_ceil(per_group as u64) as u32;
        (Grid { dims: (if row_groups == 0 { 0 } else { x_groups }, token_groups, z_groups.max(1)) }, x_groups)
    }

    /// The int8 form of `x` (rows of whole blocks of 32) for a product on int8 activations: the one its producer
    /// wrote beside it (one-row tensors), or quantized now.
    fn int8_activations(&self, x: &GpuTensor) -> Result<wgpu::Buffer> {
        match (&x.int8, x.int8_ready) {
            (Some(ready), true) => Ok(ready.clone()),
            _ => self.quantize_activations(x),
        }
    }

    /// A decode step's attention inputs in one dispatch (`Kernel::MatvecInt8Rope`): Q, K and V's products with
    /// RoPE applied as they are written, K's and V's rows going straight to the caches. `false` (nothing
    /// recorded) where that kernel does not apply: more than one token, products not on int8 activations,
    /// matrices not stored together, RoPE in halves, an adapter with fewer
    /// than nine storage buffers a kernel, or shapes that do not fit (which the separate ops then report).
    pub(super) fn fused_attention_inputs(
        &self,
        ws: [&GpuMatrix; 3],
        x: &GpuTensor,
        p: &RopeParams,
        n_kv_heads: usize,
        q: &mut GpuTensor,
        (k_cache, v_cache): (&mut GpuTensor, &mut GpuTensor),
    ) -> Result<bool> {
        let [wq, wk, wv] = ws;
        let k = self.kernels;
        let (hd, kv_cols) = (p.head_dim, n_kv_heads * p.head_dim);
        let fits = x.rows == 1
            && !x.half
            && self.int8_products()
            && Kernel::has_int8(wq.ty)
            && p.style == RopeStyle::Interleaved
            && hd.is_multiple_of(2)
            && p.rot_dim.is_multiple_of(2)
            && p.rot_dim <= hd
            && hd < 1 << 16
            && wq.rows == p.n_heads * hd
            && wk.rows == kv_cols
            && wv.rows == kv_cols
            && x.cols == wq.cols
            && [&*k_cache, &*v_cache].iter().all(|c| c.cols == kv_cols && p.pos0 < c.rows)
            && GpuMatrix::stored_together(&ws)
            && self.gpu.limits.max_storage_buffers_per_shader_stage >= 9;
        if !fits {
            return Ok(false);
        }
        let _recording = self.scratch_lock()?;
        let kv = self.cache_store("attention_inputs", k_cache, v_cache)?;
        self.resize("attention_inputs", q, 1, wq.rows)?;
        k_cache.written();
        v_cache.written();
        let kernel = Kernel::MatvecInt8Rope {
            ty: wq.ty,
            workgroup: k.workgroup,
            lanes: k.lanes,
            rows: QKV_PRODUCT_ROWS,
            unroll: (k.unroll / 4).max(1),
            scaled: x.is_unscaled(),
            subgroups: self.subgroup_lanes(),
            kv,
        };
        let rows = wq.rows + 2 * kv_cols;
        let (grid, x_groups) = self.product_grid(rows, k.workgroup / k.lanes * QKV_PRODUCT_ROWS, 1, 1);
        let rope = (hd | p.rot_dim << 16) as u32;
        let params =
            [rows as u32, wq.cols as u32, rope, x_groups, wq.first_row as u32, wq.rows as u32, kv_cols as u32, p.pos0 as u32];
        let xq = self.int8_activations(x)?;
        let freqs = self.inv_freq(p.freq_base, p.rot_dim)?;
        self.dispatch_product(kernel, params, wq, &xq, &[&q.buf, &k_cache.buf, &v_cache.buf, &freqs], grid)?;
        Ok(true)
    }

    /// `x += w a` and `out = rms_norm(x)` in one dispatch (`Kernel::MatvecInt8Norm`): the product's rows join
    /// the residual as they are written, and each workgroup writes its block of `out` before the row's RMS
    /// factor, which `out` then waits for (`GpuTensor::unscaled`). `false` (nothing recorded) where that
    /// kernel does not apply: more than one token, products not on int8 activations, workgroups of
    /// `32 x lanes` past the adapter's limit, fewer than nine storage buffers a kernel, or shapes that do not
    /// fit (which the separate ops then report).
    pub(super) fn fused_matmul_add_rms_norm(
        &self,
        w: &GpuMatrix,
        a: &GpuTensor,
        x: &mut GpuTensor,
        weight: &GpuTensor,
        eps: f32,
        out: &mut GpuTensor,
    ) -> Result<bool> {
        let k = self.kernels;
        let limits = &self.gpu.limits;
        let workgroup = NORM_PRODUCT_ROWS * k.lanes;
        let fits = a.rows == 1
            && x.rows == 1
            && self.int8_products()
            && Kernel::has_int8(w.ty)
            && w.cols == a.cols
            && w.rows == x.cols
            && weight.len() == x.cols
            && x.cols.is_multiple_of(NORM_PRODUCT_ROWS as usize)
            && workgroup <= limits.max_compute_invocations_per_workgroup
            && workgroup <= limits.max_compute_workgroup_size_x
            && limits.max_storage_buffers_per_shader_stage >= 9;
        if !fits {
            return Ok(false);
        }
        self.settle("matmul_add_rms_norm", &[a, &*x, weight])?;
        let _recording = self.scratch_lock()?;
        self.resize("matmul_add_rms_norm", out, 1, x.cols)?;
        let Some(int8) = self.int8_output(out)? else { return Ok(false) };
        x.written();
        let subgroups = self.subgroup_lanes();
        let kernel = Kernel::MatvecInt8Norm { ty: w.ty, lanes: k.lanes, unroll: fused_unroll(w.ty).0, subgroups };
        let (grid, x_groups) = self.product_grid(w.rows, NORM_PRODUCT_ROWS, 1, 1);
        let params = [w.rows as u32, w.cols as u32, eps.to_bits(), x_groups, w.first_row as u32, 0, 0, 0];
        let xq = self.int8_activations(a)?;
        self.dispatch_product(kernel, params, w, &xq, &[&x.buf, &weight.buf, &out.buf, &int8], grid)?;
        out.int8_ready = true;
        out.set_unscaled(true);
        Ok(true)
    }

    /// `out = silu(gate x) * (up x)` in one dispatch (`Kernel::MatvecInt8SiluMul`): each workgroup takes one
    /// block of 32 outputs, its gate rows and their up rows, and writes the block in f32 and int8. `false`
    /// (nothing recorded) where that kernel does not apply: more than one token, products not on int8
    /// activations, matrices not stored together, outputs not whole blocks of 32, workgroups past the adapter's
    /// limit, or shapes that do not fit (which the separate ops then report).
    pub(super) fn fused_matmul_silu_mul(&self, ws: [&GpuMatrix; 2], x: &GpuTensor, out: &mut GpuTensor) -> Result<bool> {
        let [gate, up] = ws;
        let k = self.kernels;
        let limits = &self.gpu.limits;
        let pairs = SILU_PRODUCT_PAIRS;
        let workgroup = NORM_PRODUCT_ROWS / pairs * k.lanes;
        let fits = x.rows == 1
            && !x.half
            && self.int8_products()
            && Kernel::has_int8(gate.ty)
            && gate.rows == up.rows
            && gate.cols == x.cols
            && gate.rows.is_multiple_of(NORM_PRODUCT_ROWS as usize)
            && GpuMatrix::stored_together(&ws)
            && workgroup <= limits.max_compute_invocations_per_workgroup
            && workgroup <= limits.max_compute_workgroup_size_x;
        if !fits {
            return Ok(false);
        }
        let _recording = self.scratch_lock()?;
        self.resize("matmul_silu_mul", out, 1, gate.rows)?;
        let Some(int8) = self.int8_output(out)? else { return Ok(false) };
        let kernel = Kernel::MatvecInt8SiluMul {
            ty: gate.ty,
            lanes: k.lanes,
            pairs,
            unroll: fused_unroll(gate.ty).1,
            scaled: x.is_unscaled(),
            subgroups: self.subgroup_lanes(),
        };
        let (grid, x_groups) = self.product_grid(gate.rows, NORM_PRODUCT_ROWS, 1, 1);
        let params = [2 * gate.rows as u32, gate.cols as u32, 0, x_groups, gate.first_row as u32, gate.rows as u32, 0, 0];
        let xq = self.int8_activations(x)?;
        self.dispatch_product(kernel, params, gate, &xq, &[&out.buf, &int8], grid)?;
        out.int8_ready = true;
        Ok(true)
    }

    /// Records `x` (rows of whole blocks of 32) quantized to int8 into the backend's activation buffer, in
    /// `Kernel::MatvecInt8`'s layout, and returns it.
    fn quantize_activations(&self, x: &GpuTensor) -> Result<wgpu::Buffer> {
        let buffer = self.scratch(&self.int8_activations, "tern int8 activations", (x.len() / 32) as u64 * INT8_BLOCK_BYTES)?;
        self.elementwise(Kernel::QuantizeRows, x.len() / 4, &[&x.buf, &buffer])?;
        Ok(buffer)
    }
}
