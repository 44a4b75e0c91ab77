//! Causal grouped-query attention over an f32 KV cache. One task per (query row, head).

use std::cell::RefCell;

use tern_core::{AttentionParams, Result};

use super::matmul::dot_f32;
use crate::parallel::{SharedMut, for_each};
use crate::tensor::CpuTensor;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn attention(q: &CpuTensor, k: &CpuTensor, v: &CpuTensor, p: &AttentionParams, out: &mut CpuTensor) -> Result<()> {
    p.check((q.rows, q.cols), (k.rows, k.cols), (v.rows, v.cols))?;
    let hd = p.head_dim;
    let kv_cols = p.n_kv_heads * hd;
    out.reshape(q.rows, q.cols);
    let group = p.n_heads / p.n_kv_heads;
    let dst = SharedMut(out.data.as_mut_ptr());
    for_each(q.rows * p.n_heads, |task| {
        let (t, h) = (task / p.n_heads, task % p.n_heads);
        let g = h / group;
        let qh = &q.data[t * q.cols + h * hd..t * q.cols + (h + 1) * hd];
        let n = p.pos0 + t + 1;
        SCORES.with_borrow_mut(|scores| {
            scores.clear();
            scores.extend((0..n).map(|j| dot_f32(qh, &k.data[j * kv_cols + g * hd..j * kv_cols + (g + 1) * hd]) * p.scale));
            let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let mut acc = [0f32; 256];
            let acc = &mut acc[..hd.min(256)];
            let mut wide = Vec::new();
            let acc: &mut [f32] = if hd <= 256 {
                acc
            } else {
                wide.resize(hd, 0.0);
                &mut wide
            };
            for (j, s) in scores.iter().enumerate() {
                let vj = &v.data[j * kv_cols + g * hd..j * kv_cols + (g + 1) * hd];
                for (a, x) in acc.iter_mut().zip(vj) {
                    *a += s * x;
                }
            }
            let base = t * q.cols + h * hd;
            for (i, a) in acc.iter().enumerate() {
                // Safety: (t, h) is this task's alone, so elements base..base + hd are written by it only.
                unsafe { dst.write(base + i, a / sum) };
            }
        });
    });
    Ok(())
}
