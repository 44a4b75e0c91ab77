//! The scalar references and helpers every check shares: deterministic values, the f64 product with its
//! int8 tolerance, and the comparison.

use tern_core::{Backend, TensorType};
use tern_quant::PackedMatrix;

/// The GGUF types every backend multiplies.
pub const TYPES: [TensorType; 6] =
    [TensorType::F32, TensorType::F16, TensorType::Bf16, TensorType::Q4_0, TensorType::Q4_1, TensorType::Q8_0];

/// Deterministic pseudo-random values in `[-scale, scale)`.
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

pub fn dequantized(m: &PackedMatrix) -> Vec<f32> {
    let mut out = vec![0f32; m.rows * m.cols];
    for r in 0..m.rows {
        m.dequantize_row(r, &mut out[r * m.cols..(r + 1) * m.cols]);
    }
    out
}

/// The types a KV cache can be stored as ([`tern_core::Backend::zeros_cache`]).
pub const CACHE_TYPES: [TensorType; 2] = [TensorType::F32, TensorType::F16];

/// `v` as a cache of `ty` holds it: f16 rounds each value to nearest.
pub fn as_stored(v: &[f32], ty: TensorType) -> Vec<f32> {
    match ty {
        TensorType::F16 => v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect(),
        _ => v.to_vec(),
    }
}

/// A KV cache of `ty`, `rows x cols`, holding `data` (rounded as `ty` stores it).
pub fn cache_of<B: Backend>(be: &B, data: &[f32], rows: usize, cols: usize, ty: TensorType) -> B::Tensor {
    let mut cache = be.zeros_cache(rows, cols, ty).unwrap();
    be.write_rows(&be.upload(data, rows, cols).unwrap(), &mut cache, 0).unwrap();
    cache
}

/// The tolerance for a value `w` a cache of `ty` holds, beside `f32_tol`: f16 caches may round a value whose
/// f32 computation differs in its last bits to the neighbouring half (a relative step of 2^-10).
pub fn cache_tol(ty: TensorType, w: f64, f32_tol: f64) -> f64 {
    if ty == TensorType::F16 { f32_tol + w.abs() / 1024.0 } else { f32_tol }
}

pub fn assert_close(got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol(i), "{what}: element {i} is {g}, reference {w} (tolerance {})", tol(i));
    }
}

/// The f64 products `wf · x` (`rows x cols` weights, `tokens` activation rows), and per product the tolerance:
/// f32 accumulation slack, plus, for quantized weights, the rounding bound of int8 activations.
///
/// A backend may round activations to int8 per block of 32 with scale `d = max|x| / 127`: each element then
/// moves by at most `d / 2` and the product by at most `sum_b d_b / 2 * sum_{c in b} |w_rc|`. That bound is the
/// tolerance, so the test holds any correct int8 scheme to its promise (and an f32 one passes easily).
pub fn reference(wf: &[f32], x: &[f32], rows: usize, cols: usize, int8: bool) -> (Vec<f64>, Vec<f64>) {
    let tokens = x.len() / cols;
    let mut want = vec![0f64; tokens * rows];
    let mut bound = vec![0f64; tokens * rows];
    for t in 0..tokens {
        let xt = &x[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let wr = &wf[r * cols..(r + 1) * cols];
            want[t * rows + r] = wr.iter().zip(xt).map(|(&a, &b)| a as f64 * b as f64).sum();
            let magnitude: f64 = wr.iter().zip(xt).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
            let rounding: f64 = if int8 {
                (0..cols / 32)
                    .map(|b| {
                        let d = xt[b * 32..(b + 1) * 32].iter().fold(0f32, |m, v| m.max(v.abs())) as f64 / 127.0;
                        d / 2.0 * wr[b * 32..(b + 1) * 32].iter().map(|v| v.abs() as f64).sum::<f64>()
                    })
                    .sum()
            } else {
                0.0
            };
            bound[t * rows + r] = rounding + 1e-5 * magnitude + 1e-5;
        }
    }
    (want, bound)
}

/// Runs `x` (`tokens` rows) through `w` and reads the product back.
pub fn product<B: Backend>(be: &B, w: &B::Matrix, x: &[f32], tokens: usize, cols: usize) -> Vec<f32> {
    let mut out = be.zeros(0, 0).unwrap();
    be.matmul(w, &be.upload(x, tokens, cols).unwrap(), &mut out).unwrap();
    be.read(&out).unwrap()
}
