use half::slice::HalfFloatSliceExt;
use tern_core::{Error, Result};

use crate::parallel::for_row_chunks;
use crate::tensor::{CpuMatrix, CpuTensor, check_cols};

fn same_shape(op: &'static str, a: &CpuTensor, b: &CpuTensor) -> Result<()> {
    if (a.rows, a.cols) != (b.rows, b.cols) {
        return Err(Error::shape(op, format!("{}x{} and {}x{}", a.rows, a.cols, b.rows, b.cols)));
    }
    Ok(())
}

/// `out = silu(gate) * up`.
pub(crate) fn silu_mul(gate: &CpuTensor, up: &CpuTensor, out: &mut CpuTensor) -> Result<()> {
    same_shape("silu_mul", gate, up)?;
    out.reshape(gate.rows, gate.cols);
    let cols = gate.cols;
    for_row_chunks(&mut out.data, cols, |t, o| {
        let at = t * cols..t * cols + o.len();
        for ((o, g), u) in o.iter_mut().zip(&gate.data[at.clone()]).zip(&up.data[at]) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    });
    Ok(())
}

/// `x += y`.
pub(crate) fn add(x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
    same_shape("add", x, y)?;
    let cols = x.cols;
    for_row_chunks(&mut x.data, cols, |t, xs| {
        let n = xs.len();
        xs.iter_mut().zip(&y.data[t * cols..t * cols + n]).for_each(|(a, b)| *a += b);
    });
    Ok(())
}

/// `out[t] = table[ids[t]]`, dequantized.
pub(crate) fn embed(table: &CpuMatrix, ids: &[u32], out: &mut CpuTensor) -> Result<()> {
    out.reshape(ids.len(), table.cols);
    for (o, &id) in out.data.chunks_exact_mut(table.cols).zip(ids) {
        if id as usize >= table.rows {
            return Err(Error::shape("embed", format!("token id {id} is outside the table's {} rows", table.rows)));
        }
        table.dequantize_row(id as usize, o);
    }
    Ok(())
}

/// Copies `src` into `dst` from row `row` on.
pub(crate) fn write_rows(src: &CpuTensor, dst: &mut CpuTensor, row: usize) -> Result<()> {
    check_cols("write_rows", "source", src.cols, dst.cols)?;
    if row + src.rows > dst.rows {
        return Err(Error::ContextFull { pos: row + src.rows - 1, capacity: dst.rows });
    }
    let at = row * dst.cols..(row + src.rows) * dst.cols;
    match &mut dst.halves {
        None => dst.data[at].copy_from_slice(&src.data),
        Some(h) => h[at].convert_from_f32_slice(&src.data),
    }
    Ok(())
}

/// `out = src[first..first + count]`.
pub(crate) fn slice_rows(src: &CpuTensor, first: usize, count: usize, out: &mut CpuTensor) -> Result<()> {
    if first + count > src.rows {
        return Err(Error::shape("slice_rows", format!("rows {first}..{} of {}", first + count, src.rows)));
    }
    out.reshape(count, src.cols);
    out.data.copy_from_slice(&src.data[first * src.cols..(first + count) * src.cols]);
    Ok(())
}
