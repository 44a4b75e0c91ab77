use tern_core::{Error, Result};

use crate::parallel::for_row_chunks;
use crate::tensor::{CpuTensor, check_cols};

/// `out[t] = x[t] / sqrt(mean(x[t]^2) + eps) * weight`.
pub(crate) fn rms_norm(x: &CpuTensor, weight: &CpuTensor, eps: f32, out: &mut CpuTensor) -> Result<()> {
    check_cols("rms_norm", "weight", weight.cols, x.cols)?;
    if weight.rows != 1 {
        return Err(Error::shape("rms_norm", format!("weight has {} rows, expected 1", weight.rows)));
    }
    out.reshape(x.rows, x.cols);
    let cols = x.cols;
    for_row_chunks(&mut out.data, cols, |t, out| {
        for (o, xr) in out.chunks_exact_mut(cols).zip(x.data[t * cols..].chunks_exact(cols)) {
            let ss: f64 = xr.iter().map(|v| (*v as f64) * (*v as f64)).sum();
            let scale = (1.0 / (ss / cols as f64 + eps as f64).sqrt()) as f32;
            for ((o, v), g) in o.iter_mut().zip(xr).zip(&weight.data) {
                *o = v * scale * g;
            }
        }
    });
    Ok(())
}
