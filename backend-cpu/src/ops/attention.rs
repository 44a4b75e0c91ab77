//! Causal grouped-query attention over an f32 or f16 KV cache. One task per (query row, head).

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
            // An f16 cache's K or V row as f32.
            let (mut row, mut wide_row) = ([0f32; 256], Vec::new());
            let row = head_buf(&mut row, &mut wide_row, hd);
            scores.extend((0..n).map(|j| dot_f32(qh, k.span(j * kv_cols + g * hd, hd, row)) * p.scale));
            let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let (mut acc, mut wide) = ([0f32; 256], Vec::new());
            let acc = head_buf(&mut acc, &mut wide, hd);
            for (j, s) in scores.iter().enumerate() {
                let vj = v.span(j * kv_cols + g * hd, hd, row);
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

/// `hd` zeros: on the stack for heads up to 256, else in `wide`.
fn head_buf<'a>(stack: &'a mut [f32; 256], wide: &'a mut Vec<f32>, hd: usize) -> &'a mut [f32] {
    if hd <= 256 {
        &mut stack[..hd]
    } else {
        wide.resize(hd, 0.0);
        wide
    }
}
