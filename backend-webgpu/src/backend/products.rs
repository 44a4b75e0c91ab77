//! Matrix products, and the int8 activations of decode products.

use tern_core::{Error, Result};
use tern_shaders::{Kernel, MATMUL_TOKENS, TILED_TOKENS, WORKGROUP};

use super::WebGpuBackend;
use crate::pool::size_class;
use crate::recorder::Grid;
use crate::tensor::{GpuMatrix, GpuTensor};

/// Bytes of one block of 32 activations in int8 (`Kernel::MatvecInt8`'s layout): 32 quants, the scale and
/// the scaled sum of the quants, padded to three `vec4<u32>`.
const INT8_BLOCK_BYTES: u64 = 48;

impl WebGpuBackend {
    /// Whether decode products take int8 activations.
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

    /// `outs[i] = ws[i] x` in one dispatch, for matrices stored together (or one matrix).
    pub(super) fn products(&self, ws: &[&GpuMatrix], x: &GpuTensor, outs: &mut [&mut GpuTensor]) -> Result<()> {
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
        let (kernel, rows_per_group, tokens) = if int8 {
            let (workgroup, lanes, rows) = (k.workgroup, k.lanes, k.rows);
            // A block holds four `vec4`s of weights: a quarter as many blocks keep as many loads in flight.
            (
                Kernel::MatvecInt8 { ty, workgroup, lanes, rows, unroll: (k.unroll / 4).max(1), outputs },
                workgroup / lanes * rows,
                1,
            )
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
        let row_groups = (rows as u64).div_ceil(rows_per_group as u64);
        let max = self.max_groups();
        let x_groups = row_groups.min(max as u64).max(1) as u32;
        let z_groups = row_groups.div_ceil(x_groups as u64) as u32;
        let token_groups = (x.rows as u64).div_ceil(tokens as u64) as u32;
        let grid = Grid { dims: (if row_groups == 0 { 0 } else { x_groups }, token_groups, z_groups.max(1)) };
        let rows_of = |i: usize| ws.get(i).map_or(0, |m| m.rows as u32);
        let params = [rows as u32, w.cols as u32, x.rows as u32, x_groups, w.first_row as u32, rows_of(0), rows_of(1), 0];
        let [q, s, mn, u] = &w.parts;
        // Parts, activations, then up to three outputs: a fixed array, so a dispatch allocates nothing.
        let quantized = match (int8, &x.int8, x.int8_ready) {
            (false, ..) => None,
            (true, Some(ready), true) => Some(ready.clone()),
            (true, ..) => Some(self.quantize_activations(x)?),
        };
        let mut buffers: [&wgpu::Buffer; 8] = [q, s, mn, u, quantized.as_ref().unwrap_or(&x.buf), q, q, q];
        for (slot, out) in buffers[5..].iter_mut().zip(outs.iter()) {
            *slot = &out.buf;
        }
        self.recorder.dispatch(&self.gpu, kernel, params, &buffers[..5 + outs.len()], grid)
    }

    /// Records `x` (rows of whole blocks of 32) quantized to int8 into the backend's activation buffer, in
    /// `Kernel::MatvecInt8`'s layout, and returns it.
    fn quantize_activations(&self, x: &GpuTensor) -> Result<wgpu::Buffer> {
        let buffer = self.scratch(&self.int8_activations, "tern int8 activations", (x.len() / 32) as u64 * INT8_BLOCK_BYTES)?;
        self.elementwise(Kernel::QuantizeRows, x.len() / 4, &[&x.buf, &buffer])?;
        Ok(buffer)
    }
}
