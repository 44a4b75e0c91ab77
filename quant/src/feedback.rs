//! Error feedback (the GPTQ method: Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
//! Pre-trained Transformers", 2022) for tern's formats.
//!
//! A product's output error for input activations `x` is `(w - w_q) . x`; over calibration activations with
//! second moments `H = sum x x^T`, its mean square is `(w - w_q)^T H (w - w_q)`. Quantizing a row one column at
//! a time, the rounding error of column `j` can be compensated by the columns not yet quantized: with `U` the
//! upper Cholesky factor of `H^-1`, the remaining weights move by `-(e_j / U_jj) U_j,k`. tern fits each block's
//! scale and minimum on the weights as they stand when the block is reached (after the earlier blocks' feedback),
//! codes them against the row units found on the original weights, and then rounds the block's elements one by
//! one with feedback.

use tern_core::{BLOCK_LEN, TernFormat};

use crate::{Error, Result, TernMatrix};

/// The upper Cholesky factor of the inverse of a damped second-moment matrix, for one input width.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackFactor {
    pub cols: usize,
    /// Row-major `cols x cols`, upper triangle.
    u: Vec<f64>,
    /// The diagonal of `H / n`: the mean square of each input column (an importance matrix).
    pub importance: Vec<f32>,
}

/// Lower Cholesky factor of the symmetric positive definite `a` (`n x n`, row-major), in place; `false` when
/// `a` is not positive definite.
fn cholesky(a: &mut [f64], n: usize) -> bool {
    for j in 0..n {
        let mut d = a[j * n + j];
        for k in 0..j {
            d -= a[j * n + k] * a[j * n + k];
        }
        if d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / d;
        }
        for k in j + 1..n {
            a[j * n + k] = 0.0;
        }
    }
    true
}

impl FeedbackFactor {
    /// From `sum x x^T` over `tokens` activations (`cols x cols`, row-major), damped by `damp` times the mean
    /// of its diagonal (GPTQ uses 0.01).
    pub fn new(gram: &[f64], cols: usize, tokens: usize, damp: f64) -> Result<Self> {
        let bad = |detail: String| Error::TernShape { detail: format!("error feedback: {detail}") };
        if gram.len() != cols * cols || tokens == 0 {
            return Err(bad(format!("{} second moments for {cols} columns over {tokens} tokens", gram.len())));
        }
        let n = cols;
        let mut h: Vec<f64> = gram.iter().map(|v| v / tokens as f64).collect();
        let importance: Vec<f32> = (0..n).map(|i| h[i * n + i] as f32).collect();
        let mean_diag = importance.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let lambda = damp * mean_diag.max(f64::MIN_POSITIVE);
        for i in 0..n {
            // A column never active gets the damping alone, so it takes no feedback and gives none.
            h[i * n + i] += lambda;
        }
        if !cholesky(&mut h, n) {
            return Err(bad("the second-moment matrix is not positive definite".into()));
        }
        // H^-1 = L^-T L^-1. `lit` holds L^-1 transposed (row j is column j of L^-1), so every inner loop below
        // runs over contiguous memory.
        let mut lit = vec![0f64; n * n];
        for j in 0..n {
            lit[j * n + j] = 1.0 / h[j * n + j];
            for i in j + 1..n {
                let s: f64 = (j..i).map(|k| h[i * n + k] * lit[j * n + k]).sum();
                lit[j * n + i] = -s / h[i * n + i];
            }
        }
        let mut inv = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                // (L^-T L^-1)_ij = sum over k >= i of (L^-1)_ki (L^-1)_kj.
                let s: f64 = (i..n).map(|k| lit[i * n + k] * lit[j * n + k]).sum();
                inv[i * n + j] = s;
                inv[j * n + i] = s;
            }
        }
        if !cholesky(&mut inv, n) {
            return Err(bad("the inverse second-moment matrix is not positive definite".into()));
        }
        // Upper factor U = M^T of the lower factor M.
        let mut u = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..=i {
                u[j * n + i] = inv[i * n + j];
            }
        }
        Ok(FeedbackFactor { cols, u, importance })
    }
}

impl FeedbackFactor {
    /// Row `j` of the upper factor.
    pub(crate) fn u_row(&self, j: usize) -> &[f64] {
        &self.u[j * self.cols..(j + 1) * self.cols]
    }

    /// Element `(i, j)` of the upper factor.
    pub(crate) fn u_at(&self, i: usize, j: usize) -> f64 {
        self.u[i * self.cols + j]
    }
}

impl TernMatrix {
    /// Quantizes like [`TernMatrix::quantize`] (importance from the factor's diagonal), then rounds every block
    /// again with error feedback through `factor`.
    pub fn quantize_with_feedback(
        format: TernFormat,
        rows: usize,
        cols: usize,
        data: &[f32],
        factor: &FeedbackFactor,
    ) -> Result<Self> {
        if factor.cols != cols {
            return Err(Error::TernShape { detail: format!("error feedback for rows of {} given rows of {cols}", factor.cols) });
        }
        if format.is_trellis() {
            crate::tern_formats::check_input(format, rows, cols, data, None)?;
            return TernMatrix::quantize_trellis(format, rows, cols, data, None, Some(factor));
        }
        let mut m = TernMatrix::quantize(format, rows, cols, data, Some(&factor.importance))?;
        let (nb, n) = (cols / BLOCK_LEN, cols);
        let mut w = vec![0f64; cols];
        let mut block = [0f32; BLOCK_LEN];
        let mut weights = vec![0f32; cols];
        for r in 0..rows {
            let x = &data[r * cols..(r + 1) * cols];
            for (wi, &xi) in w.iter_mut().zip(x) {
                *wi = f64::from(xi);
            }
            let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / cols as f32;
            let row = m.row(r);
            let (d, mu) = (row.d, row.m);
            let mut codes = Vec::with_capacity(nb);
            let mut quants = vec![0i32; cols];
            for b in 0..nb {
                for (o, &v) in block.iter_mut().zip(&w[b * 32..(b + 1) * 32]) {
                    *o = v as f32;
                }
                crate::tern_formats::element_weights(
                    &block,
                    Some(&factor.importance[b * 32..(b + 1) * 32]),
                    sigma2,
                    &mut weights[..32],
                );
                let (sc, mn) = crate::tern_formats::fit_and_code(format, &block, &weights[..32], (d, mu));
                codes.push((sc, mn));
                let (scale, offset) = (f64::from(d * sc as f32), f64::from(mu * mn as f32));
                for i in 0..32 {
                    let j = b * 32 + i;
                    let q = crate::tern_formats::round_quant(format, w[j] as f32, scale as f32, offset as f32);
                    quants[j] = q;
                    let err = (w[j] - (scale * f64::from(q) - offset)) / factor.u[j * n + j];
                    let uj = &factor.u[j * n..(j + 1) * n];
                    for k in j + 1..n {
                        w[k] -= err * uj[k];
                    }
                }
            }
            m.set_row(r, &codes, &quants);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_inverts_the_second_moments() {
        // H = A A^T + I for a small A: check U^T U H = I.
        let n = 5;
        let a: Vec<f64> = (0..n * n).map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0).collect();
        let mut h = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                h[i * n + j] = (0..n).map(|k| a[i * n + k] * a[j * n + k]).sum::<f64>() + if i == j { 1.0 } else { 0.0 };
            }
        }
        let f = FeedbackFactor::new(&h, n, 1, 0.0).unwrap();
        for i in 0..n {
            for j in 0..n {
                let prod: f64 = (0..n).map(|k| (0..n).map(|l| f.u[l * n + i] * f.u[l * n + k]).sum::<f64>() * h[k * n + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((prod - want).abs() < 1e-9, "({i}, {j}): {prod}");
            }
        }
    }
}
