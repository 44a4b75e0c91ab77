use tern_core::{Error, Result, RopeParams, RopeStyle};

use crate::parallel::for_row_chunks;
use crate::tensor::CpuTensor;

/// Rotates every head of every row in place; row `t` is at position `p.pos0 + t`.
pub(crate) fn rope(x: &mut CpuTensor, p: &RopeParams) -> Result<()> {
    if x.cols != p.n_heads * p.head_dim || p.rot_dim > p.head_dim || !p.rot_dim.is_multiple_of(2) {
        return Err(Error::shape(
            "rope",
            format!("{} columns for {} heads of {} (rotating {})", x.cols, p.n_heads, p.head_dim, p.rot_dim),
        ));
    }
    let half = p.rot_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| p.freq_base.powf(-2.0 * i as f32 / p.rot_dim as f32)).collect();
    let cols = x.cols;
    for_row_chunks(&mut x.data, cols, |t0, rows| rotate(rows, cols, t0, p, &inv_freq));
    Ok(())
}

/// Rope over `data`'s rows, the first at row `t0` of the tensor.
fn rotate(data: &mut [f32], cols: usize, t0: usize, p: &RopeParams, inv_freq: &[f32]) {
    let half = p.rot_dim / 2;
    let mut cos_sin = vec![(0f32, 0f32); half];
    for (t, row) in data.chunks_exact_mut(cols).enumerate() {
        let pos = (p.pos0 + t0 + t) as f32;
        for (cs, f) in cos_sin.iter_mut().zip(inv_freq) {
            let (s, c) = (pos * f).sin_cos();
            *cs = (c, s);
        }
        for head in row.chunks_exact_mut(p.head_dim) {
            for (i, &(c, s)) in cos_sin.iter().enumerate() {
                let (a, b) = match p.style {
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                    RopeStyle::Halves => (i, i + half),
                };
                let (x0, x1) = (head[a], head[b]);
                head[a] = x0 * c - x1 * s;
                head[b] = x0 * s + x1 * c;
            }
        }
    }
}
