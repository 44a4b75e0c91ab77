//! Row ops: RMSNorm (with the residual add), RoPE (with the KV append), the elementwise ops and row copies.

use tern_core::{Backend, RopeParams, RopeStyle};

use crate::{CACHE_TYPES, as_stored, assert_close, cache_of, cache_tol, values};

/// Rows of whole `vec4`s (one per invocation and two with a partial tail, on a GPU) and a row that is not.
pub fn rms_norm_matches_reference<B: Backend>(be: &B, label: &str) {
    for cols in [96, 1028, 30] {
        rms_norm_of_width(be, label, cols);
    }
}

fn rms_norm_of_width<B: Backend>(be: &B, label: &str, cols: usize) {
    let (rows, eps) = (3, 1e-5f32);
    let x = values(rows * cols, 4, 4.0);
    let weight = values(cols, 5, 2.0);
    let mut want = Vec::new();
    for row in x.chunks(cols) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / cols as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        want.extend(row.iter().zip(&weight).map(|(&v, &g)| v as f64 * inv * g as f64));
    }
    let mut out = be.zeros(0, 0).unwrap();
    be.rms_norm(&be.upload(&x, rows, cols).unwrap(), &be.upload(&weight, 1, cols).unwrap(), eps, &mut out).unwrap();
    assert_close(&be.read(&out).unwrap(), &want, |i| 1e-5 * want[i].abs().max(1.0), &format!("rms_norm of {cols} on {label}"));
    let short = be.upload(&weight[..16], 1, 16).unwrap();
    assert!(be.rms_norm(&be.upload(&x, rows, cols).unwrap(), &short, eps, &mut out).is_err());
}

/// The residual add written back, and the norm of the sum, for the widths of [`rms_norm_matches_reference`].
pub fn add_rms_norm_matches_reference<B: Backend>(be: &B, label: &str) {
    for cols in [96, 1028, 30] {
        add_rms_norm_of_width(be, label, cols);
    }
}

fn add_rms_norm_of_width<B: Backend>(be: &B, label: &str, cols: usize) {
    let (rows, eps) = (3, 1e-5f32);
    let x = values(rows * cols, 15, 2.0);
    let y = values(rows * cols, 16, 2.0);
    let weight = values(cols, 17, 2.0);
    let sum: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    let mut want = Vec::new();
    for row in sum.chunks(cols) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / cols as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        want.extend(row.iter().zip(&weight).map(|(&v, &g)| v as f64 * inv * g as f64));
    }
    let mut xt = be.upload(&x, rows, cols).unwrap();
    let mut out = be.zeros(0, 0).unwrap();
    be.add_rms_norm(&mut xt, &be.upload(&y, rows, cols).unwrap(), &be.upload(&weight, 1, cols).unwrap(), eps, &mut out).unwrap();
    let sum64: Vec<f64> = sum.iter().map(|&v| v as f64).collect();
    assert_close(&be.read(&xt).unwrap(), &sum64, |_| 0.0, &format!("add_rms_norm's sum of {cols} on {label}"));
    let what = format!("add_rms_norm of {cols} on {label}");
    assert_close(&be.read(&out).unwrap(), &want, |i| 1e-5 * want[i].abs().max(1.0), &what);
}

fn rope_reference(x: &[f32], rows: usize, p: &RopeParams) -> Vec<f64> {
    let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let width = p.n_heads * p.head_dim;
    for t in 0..rows {
        let pos = (p.pos0 + t) as f64;
        for h in 0..p.n_heads {
            let base = t * width + h * p.head_dim;
            for i in 0..p.rot_dim / 2 {
                let theta = pos * (p.freq_base as f64).powf(-2.0 * i as f64 / p.rot_dim as f64);
                let (a, b) = match p.style {
                    RopeStyle::Interleaved => (base + 2 * i, base + 2 * i + 1),
                    RopeStyle::Halves => (base + i, base + i + p.rot_dim / 2),
                };
                let (x0, x1) = (x[a] as f64, x[b] as f64);
                out[a] = x0 * theta.cos() - x1 * theta.sin();
                out[b] = x0 * theta.sin() + x1 * theta.cos();
            }
        }
    }
    out
}

pub fn rope_matches_reference<B: Backend>(be: &B, label: &str) {
    for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
        for (rot_dim, pos0) in [(64, 0), (64, 37), (32, 1000)] {
            let p = RopeParams { n_heads: 3, head_dim: 64, rot_dim, freq_base: 10000.0, style, pos0 };
            let rows = 5;
            let x = values(rows * 3 * 64, 6, 1.0);
            let want = rope_reference(&x, rows, &p);
            let mut t = be.upload(&x, rows, 3 * 64).unwrap();
            be.rope(&mut t, &p).unwrap();
            // Angles up to ~1000 radians lose ~1e-4 in f32.
            let what = format!("rope {style:?} rot {rot_dim} pos {pos0} on {label}");
            assert_close(&be.read(&t).unwrap(), &want, |_| 2e-4, &what);
        }
    }
}

/// `q` and `k` rotated in place and `k`, `v` appended at `pos0`, for 6 query heads over 2 KV heads, both
/// layouts, partial rotation, and more than one row, into f32 caches and f16 ones; cache rows outside the
/// appended ones keep their values.
pub fn rope_and_append_matches_reference<B: Backend>(be: &B, label: &str) {
    let (n_heads, n_kv, hd, rows, cap) = (6, 2, 32, 3, 12);
    for ty in CACHE_TYPES {
        for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
            for (rot_dim, pos0) in [(32, 0), (16, 7)] {
                let p = RopeParams { n_heads, head_dim: hd, rot_dim, freq_base: 10000.0, style, pos0 };
                let pk = RopeParams { n_heads: n_kv, ..p };
                let q = values(rows * n_heads * hd, 11, 1.0);
                let k = values(rows * n_kv * hd, 12, 1.0);
                let v = values(rows * n_kv * hd, 13, 1.0);
                let old = values(cap * n_kv * hd, 14, 1.0);
                let (want_q, want_k) = (rope_reference(&q, rows, &p), rope_reference(&k, rows, &pk));
                let stored = |x: &[f32]| -> Vec<f64> { as_stored(x, ty).iter().map(|&x| x as f64).collect() };
                let (mut want_kc, mut want_vc) = (stored(&old), stored(&old));
                let at = pos0 * n_kv * hd;
                want_kc[at..at + want_k.len()].copy_from_slice(&want_k);
                want_vc[at..at + v.len()].copy_from_slice(&stored(&v));
                let (mut qt, mut kt, vt) = (
                    be.upload(&q, rows, n_heads * hd).unwrap(),
                    be.upload(&k, rows, n_kv * hd).unwrap(),
                    be.upload(&v, rows, n_kv * hd).unwrap(),
                );
                let (mut kc, mut vc) = (cache_of(be, &old, cap, n_kv * hd, ty), cache_of(be, &old, cap, n_kv * hd, ty));
                be.rope_and_append(&mut qt, &mut kt, &vt, &p, n_kv, (&mut kc, &mut vc)).unwrap();
                let what = |t: &str| format!("rope_and_append {t}, {style:?} rot {rot_dim} pos {pos0}, {ty} cache on {label}");
                assert_close(&be.read(&qt).unwrap(), &want_q, |_| 1e-5, &what("q"));
                assert_close(&be.read(&kt).unwrap(), &want_k, |_| 1e-5, &what("k"));
                assert_close(&be.read(&kc).unwrap(), &want_kc, |i| cache_tol(ty, want_kc[i], 1e-5), &what("k cache"));
                assert_close(&be.read(&vc).unwrap(), &want_vc, |_| 0.0, &what("v cache"));
                let mut small = be.zeros_cache(pos0 + rows - 1, n_kv * hd, ty).unwrap();
                let short = be.rope_and_append(&mut qt, &mut kt, &vt, &p, n_kv, (&mut small, &mut vc));
                assert!(short.is_err(), "a cache too short");
            }
        }
    }
}

pub fn elementwise_ops_match_reference<B: Backend>(be: &B, label: &str) {
    let (rows, cols) = (3, 40);
    let a = values(rows * cols, 10, 6.0);
    let b = values(rows * cols, 11, 3.0);
    let silu: Vec<f64> = a.iter().zip(&b).map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64).collect();
    let sum: Vec<f64> = a.iter().zip(&b).map(|(&x, &y)| x as f64 + y as f64).collect();
    let (at, bt) = (be.upload(&a, rows, cols).unwrap(), be.upload(&b, rows, cols).unwrap());
    let mut out = be.zeros(0, 0).unwrap();
    be.silu_mul(&at, &bt, &mut out).unwrap();
    assert_close(&be.read(&out).unwrap(), &silu, |i| 1e-5 * silu[i].abs().max(1.0), &format!("silu_mul on {label}"));
    let mut x = be.upload(&a, rows, cols).unwrap();
    be.add(&mut x, &bt).unwrap();
    assert_close(&be.read(&x).unwrap(), &sum, |i| 1e-6 * sum[i].abs().max(1.0), &format!("add on {label}"));
    let wrong = be.upload(&b[..cols], 1, cols).unwrap();
    assert!(be.add(&mut x, &wrong).is_err());
    assert!(be.silu_mul(&at, &wrong, &mut out).is_err());
}

pub fn row_copies<B: Backend>(be: &B, _label: &str) {
    let src = values(2 * 8, 12, 1.0);
    let mut cache = be.zeros(5, 8).unwrap();
    be.write_rows(&be.upload(&src, 2, 8).unwrap(), &mut cache, 3).unwrap();
    let got = be.read(&cache).unwrap();
    assert!(got[..24].iter().all(|&v| v == 0.0));
    assert_eq!(&got[24..], &src[..]);
    assert!(be.write_rows(&be.upload(&src, 2, 8).unwrap(), &mut cache, 4).is_err(), "rows 4..6 overflow 5");
    let mut out = be.zeros(0, 0).unwrap();
    be.slice_rows(&cache, 4, 1, &mut out).unwrap();
    assert_eq!(be.shape(&out), (1, 8));
    assert_eq!(be.read(&out).unwrap(), &src[8..]);
    assert!(be.slice_rows(&cache, 4, 2, &mut out).is_err());
}
