//! `out[t, r] = w[r] · x[t]`: quantized weights against int8 activation rows, float weights against f32 rows.
//! Work is split into tasks of whole multiples of `ROWS_PER_TASK` weight rows (more than one where a task would
//! hold fewer than `MIN_TASK_MACS` multiply-adds); inside a task, tiles of `TOKENS_PER_TILE` activation
//! rows share every weight block, so a prefill reads each weight once per tile, from L1 after the first.

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use tern_core::{Error, Result, TensorType};

use super::qdot::{self, ActRow};
use super::quantize_rows::QuantizedRows;
use crate::SimdLevel;
use crate::groups::{GROUP_ROWS, Groups};
use crate::parallel::{SharedMut, for_each};
use crate::tensor::{CpuMatrix, CpuTensor, check_cols};

const ROWS_PER_TASK: usize = 2 * GROUP_ROWS;
/// Multiply-adds a task holds at least: fewer cost more to hand to a thread than to compute.
const MIN_TASK_MACS: usize = 64 * 1024;
// Tasks own whole groups: two tasks writing one group's outputs would race.
const _: () = assert!(ROWS_PER_TASK.is_multiple_of(GROUP_ROWS));
const TOKENS_PER_TILE: usize = 4;

/// `outs[i] = ws[i] x`. When every matrix is quantized, `x` is quantized once and all products share one
/// parallel section (fewer synchronizations per decode step: Q, K and V together, gate and up together).
pub(crate) fn matmul_many(
    level: SimdLevel,
    scratch: &mut QuantizedRows,
    ws: &[&CpuMatrix],
    x: &CpuTensor,
    outs: &mut [&mut CpuTensor],
) -> Result<()> {
    if ws.len() != outs.len() {
        return Err(Error::shape("matmul", format!("{} matrices but {} outputs", ws.len(), outs.len())));
    }
    for w in ws {
        check_cols("matmul", "input", x.cols, w.cols)?;
    }
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        out.reshape(x.rows, w.rows);
    }
    // Quantize the activations once for every int8 product; those run in one parallel section.
    let (int8, dsts): (Vec<&Groups>, Vec<SharedMut>) =
        ws.iter().zip(outs.iter_mut()).filter_map(|(w, out)| Some((w.groups()?, SharedMut(out.data.as_mut_ptr())))).unzip();
    if !int8.is_empty() {
        scratch.quantize(level, &x.data, x.rows, x.cols);
        quantized(level, &int8, scratch, &dsts);
    }
    for (w, out) in ws.iter().zip(outs.iter_mut()) {
        if let Some(ty) = w.float_type() {
            float(w, ty, x, out);
        }
    }
    Ok(())
}

/// Every matrix of `ws` against the int8 rows `x`, into `dsts` (each `x.rows x w.rows`). Tasks are
/// rows of one matrix: `ROWS_PER_TASK`, or more of them where that holds too little work to be worth handing to
/// a thread (a decode step's products).
fn quantized(level: SimdLevel, ws: &[&Groups], x: &QuantizedRows, dsts: &[SharedMut]) {
    let per_task = |w: &Groups| MIN_TASK_MACS.div_ceil((w.cols * x.rows).max(1)).next_multiple_of(ROWS_PER_TASK);
    let tasks = |w: &Groups| w.rows.div_ceil(per_task(w));
    for_each(ws.iter().map(|w| tasks(w)).sum(), |task| {
        // The matrix this task belongs to (there are a handful) and its chunk of rows.
        let (mut i, mut chunk) = (0, task);
        while chunk >= tasks(ws[i]) {
            chunk -= tasks(ws[i]);
            i += 1;
        }
        let n = per_task(ws[i]);
        let rows = chunk * n..((chunk + 1) * n).min(ws[i].rows);
        group_rows(level, ws[i], rows, x, dsts[i]);
    });
}

/// Products of the rows `rows` (whole groups, but for the matrix's last) with every activation row: each group
/// against tiles of `TOKENS_PER_TILE` tokens, then the rest of the tokens one by one.
fn group_rows(level: SimdLevel, w: &Groups, rows: std::ops::Range<usize>, x: &QuantizedRows, dst: SharedMut) {
    let (tokens, nb) = (x.rows, w.row_blocks());
    for g in rows.start / GROUP_ROWS..rows.end.div_ceil(GROUP_ROWS) {
        let (group, r0) = (w.group(g), g * GROUP_ROWS);
        // The last group's padding rows are computed but not stored.
        let live = GROUP_ROWS.min(w.rows - r0);
        let mut t = 0;
        while t + TOKENS_PER_TILE <= tokens {
            let xs: [ActRow<'_>; TOKENS_PER_TILE] = std::array::from_fn(|i| ActRow::of(x, t + i));
            store(dst, w.rows, (t, r0), live, qdot::dot(level, group, nb, xs));
            t += TOKENS_PER_TILE;
        }
        for t in t..tokens {
            store(dst, w.rows, (t, r0), live, qdot::dot(level, group, nb, [ActRow::of(x, t)]));
        }
    }
}

/// Writes the first `live` values of `v[n]` to outputs `(t0 + n, r0..r0 + live)` of an output of `m` columns.
fn store<const N: usize>(dst: SharedMut, m: usize, (t0, r0): (usize, usize), live: usize, v: [[f32; GROUP_ROWS]; N]) {
    for (n, row) in v.iter().enumerate() {
        for (i, &value) in row[..live].iter().enumerate() {
            // Safety: (t0 + n, r0 + i) is in bounds and belongs to the calling task's rows alone.
            unsafe { dst.write((t0 + n) * m + r0 + i, value) };
        }
    }
}

/// Row `r` of a float matrix as f32, converted into `buf` when it is not f32 already.
fn float_row<'a>(w: &'a CpuMatrix, ty: TensorType, r: usize, buf: &'a mut [f32]) -> &'a [f32] {
    let row_bytes = w.cols * ty.quant_bits() / 8;
    let bytes = &w.float_bytes()[r * row_bytes..(r + 1) * row_bytes];
    match ty {
        TensorType::F16 => bytemuck::cast_slice::<u8, f16>(bytes).convert_to_f32_slice(buf),
        TensorType::Bf16 => bytemuck::cast_slice::<u8, bf16>(bytes).convert_to_f32_slice(buf),
        _ => return bytemuck::cast_slice(bytes),
    }
    buf
}

pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums let the compiler vectorize without reassociating a single sum.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn float(w: &CpuMatrix, ty: TensorType, x: &CpuTensor, out: &mut CpuTensor) {
    let (m, tokens) = (w.rows, x.rows);
    let dst = SharedMut(out.data.as_mut_ptr());
    for_each(m.div_ceil(ROWS_PER_TASK), |task| {
        let mut buf = vec![0f32; w.cols];
        for r in task * ROWS_PER_TASK..((task + 1) * ROWS_PER_TASK).min(m) {
            let row = float_row(w, ty, r, &mut buf);
            for t in 0..tokens {
                // Safety: (t, r) is in bounds and belongs to this task's rows alone.
                unsafe { dst.write(t * m + r, dot_f32(row, x.row(t))) };
            }
        }
    });
}
