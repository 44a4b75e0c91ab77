//! Every CPU op against a plain scalar reference written here, at every SIMD level this CPU offers, with
//! shapes that hit the tails of the kernels' tiling (rows not a multiple of the task size, token counts not a
//! multiple of the tile).

use proptest::prelude::*;
use tern_backend_cpu::{CpuBackend, SimdLevel};
use tern_core::{AttentionParams, Backend, Error, RopeParams, RopeStyle, TensorType};
use tern_quant::PackedMatrix;

const TYPES: [TensorType; 6] =
    [TensorType::F32, TensorType::F16, TensorType::Bf16, TensorType::Q4_0, TensorType::Q4_1, TensorType::Q8_0];

/// One backend per SIMD level, each with two threads so the parallel split is exercised.
fn backends() -> Vec<CpuBackend> {
    SimdLevel::available().into_iter().map(|l| CpuBackend::with_level(2, l).unwrap()).collect()
}

/// Deterministic pseudo-random values in `[-scale, scale)`.
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
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

fn dequantized(m: &PackedMatrix) -> Vec<f32> {
    let mut out = vec![0f32; m.rows * m.cols];
    for r in 0..m.rows {
        m.dequantize_row(r, &mut out[r * m.cols..(r + 1) * m.cols]);
    }
    out
}

fn assert_close(got: &[f32], want: &[f64], tol: impl Fn(usize) -> f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol(i), "{what}: element {i} is {g}, reference {w} (tolerance {})", tol(i));
    }
}

/// `out[t, r] = w[r] · x[t]` against the f64 product of the dequantized weights and the exact activations.
///
/// Quantized types see activations rounded to int8 per block of 32 with scale `d = max|x| / 127`, so each
/// element moves by at most `d / 2` and the product by at most `sum_b d_b / 2 * sum_{c in b} |w_rc|`; that bound
/// (plus f32 accumulation slack) is the tolerance, so the test holds any correct int8 scheme to its promise.
/// The f64 products `wf · x` (`rows x cols` weights, `tokens` activation rows), and per product the tolerance:
/// f32 accumulation slack, plus, when `int8` activations are used, their rounding bound.
fn reference(wf: &[f32], x: &[f32], rows: usize, cols: usize, int8: bool) -> (Vec<f64>, Vec<f64>) {
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

fn check_matmul(ty: TensorType, rows: usize, cols: usize, tokens: usize, seed: u64) {
    let w = PackedMatrix::from_f32(ty, rows, cols, &values(rows * cols, seed, 1.0)).unwrap();
    let x = values(tokens * cols, seed + 1, 3.0);
    let (want, bound) = reference(&dequantized(&w), &x, rows, cols, ty.is_quantized());
    for be in backends() {
        let m = be.upload_matrix(w.view()).unwrap();
        assert_eq!(be.matrix_shape(&m), (rows, cols));
        let xt = be.upload(&x, tokens, cols).unwrap();
        let mut out = be.zeros(0, 0).unwrap();
        be.matmul(&m, &xt, &mut out).unwrap();
        assert_eq!(be.shape(&out), (tokens, rows));
        let what = format!("matmul {ty:?} {rows}x{cols} by {tokens} tokens at {}", be.level().name());
        assert_close(&be.read(&out).unwrap(), &want, |i| bound[i], &what);
    }
}

/// The SIMD levels compute the same integer dot products as the scalar path; only the order of the float
/// sums may differ.
fn check_levels_agree(ty: TensorType, rows: usize, cols: usize, tokens: usize, seed: u64) {
    let w = PackedMatrix::from_f32(ty, rows, cols, &values(rows * cols, seed, 1.0)).unwrap();
    let x = values(tokens * cols, seed + 7, 2.0);
    let run = |be: &CpuBackend| {
        let m = be.upload_matrix(w.view()).unwrap();
        let mut out = be.zeros(0, 0).unwrap();
        be.matmul(&m, &be.upload(&x, tokens, cols).unwrap(), &mut out).unwrap();
        be.read(&out).unwrap()
    };
    let bes = backends();
    let scalar: Vec<f64> = run(&bes[0]).into_iter().map(f64::from).collect();
    for be in &bes[1..] {
        let what = format!("{ty:?} {rows}x{cols} by {tokens} at {} against scalar", be.level().name());
        assert_close(&run(be), &scalar, |i| 1e-4 * scalar[i].abs().max(1.0), &what);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn matmul_matches_reference(ty in 0..TYPES.len(), rows in 1usize..40, blocks in 1usize..6, tokens in 1usize..10, seed in any::<u64>()) {
        check_matmul(TYPES[ty], rows, blocks * 32, tokens, seed);
    }

    #[test]
    fn simd_levels_agree_with_scalar(ty in 3..TYPES.len(), rows in 1usize..40, blocks in 1usize..9, tokens in 1usize..10, seed in any::<u64>()) {
        check_levels_agree(TYPES[ty], rows, blocks * 32, tokens, seed);
    }
}

#[test]
fn matmul_model_sized_shapes() {
    for ty in TYPES {
        check_matmul(ty, 67, 576, 13, 5);
    }
    check_matmul(TensorType::Q4_1, 576, 1536, 5, 9);
}

#[test]
fn matmul_rejects_wrong_width() {
    for be in backends() {
        let w = PackedMatrix::from_f32(TensorType::Q4_1, 4, 64, &values(256, 1, 1.0)).unwrap();
        let m = be.upload_matrix(w.view()).unwrap();
        let x = be.upload(&values(96, 2, 1.0), 1, 96).unwrap();
        let mut out = be.zeros(0, 0).unwrap();
        assert!(matches!(be.matmul(&m, &x, &mut out), Err(Error::Shape { .. })));
    }
}

#[test]
fn embed_gathers_dequantized_rows() {
    for ty in TYPES {
        let (rows, cols) = (11, 64);
        let w = PackedMatrix::from_f32(ty, rows, cols, &values(rows * cols, 3, 1.0)).unwrap();
        let wf = dequantized(&w);
        let ids = [3u32, 0, 10, 3];
        let want: Vec<f64> =
            ids.iter().flat_map(|&i| wf[i as usize * cols..(i as usize + 1) * cols].iter().map(|&v| v as f64)).collect();
        for be in backends() {
            let m = be.upload_matrix(w.view()).unwrap();
            let mut out = be.zeros(0, 0).unwrap();
            be.embed(&m, &ids, &mut out).unwrap();
            assert_close(&be.read(&out).unwrap(), &want, |_| 0.0, &format!("embed {ty:?}"));
            assert!(be.embed(&m, &[11], &mut out).is_err(), "an id past the table is an error");
        }
    }
}

#[test]
fn rms_norm_matches_reference() {
    let (rows, cols, eps) = (3, 96, 1e-5f32);
    let x = values(rows * cols, 4, 4.0);
    let weight = values(cols, 5, 2.0);
    let mut want = Vec::new();
    for row in x.chunks(cols) {
        let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / cols as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        want.extend(row.iter().zip(&weight).map(|(&v, &g)| v as f64 * inv * g as f64));
    }
    for be in backends() {
        let mut out = be.zeros(0, 0).unwrap();
        be.rms_norm(&be.upload(&x, rows, cols).unwrap(), &be.upload(&weight, 1, cols).unwrap(), eps, &mut out).unwrap();
        assert_close(&be.read(&out).unwrap(), &want, |i| 1e-5 * want[i].abs().max(1.0), "rms_norm");
        let short = be.upload(&weight[..32], 1, 32).unwrap();
        assert!(be.rms_norm(&be.upload(&x, rows, cols).unwrap(), &short, eps, &mut out).is_err());
    }
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

#[test]
fn rope_matches_reference() {
    for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
        for (rot_dim, pos0) in [(64, 0), (64, 37), (32, 1000)] {
            let p = RopeParams { n_heads: 3, head_dim: 64, rot_dim, freq_base: 10000.0, style, pos0 };
            let rows = 5;
            let x = values(rows * 3 * 64, 6, 1.0);
            let want = rope_reference(&x, rows, &p);
            for be in backends() {
                let mut t = be.upload(&x, rows, 3 * 64).unwrap();
                be.rope(&mut t, &p).unwrap();
                // Angles up to ~1000 radians lose ~1e-4 in f32.
                assert_close(&be.read(&t).unwrap(), &want, |_| 2e-4, &format!("rope {style:?} rot {rot_dim} pos {pos0}"));
            }
        }
    }
}

fn attention_reference(q: &[f32], k: &[f32], v: &[f32], rows: usize, p: &AttentionParams) -> Vec<f64> {
    let (hd, kv_width) = (p.head_dim, p.n_kv_heads * p.head_dim);
    let group = p.n_heads / p.n_kv_heads;
    let mut out = vec![0f64; rows * p.n_heads * hd];
    for t in 0..rows {
        let visible = p.pos0 + t + 1;
        for h in 0..p.n_heads {
            let kvh = h / group;
            let qh = &q[(t * p.n_heads + h) * hd..][..hd];
            let scores: Vec<f64> = (0..visible)
                .map(|j| {
                    let kj = &k[j * kv_width + kvh * hd..][..hd];
                    qh.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * p.scale as f64
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let total: f64 = weights.iter().sum();
            for (j, w) in weights.iter().enumerate() {
                for d in 0..hd {
                    out[(t * p.n_heads + h) * hd + d] += w / total * v[j * kv_width + kvh * hd + d] as f64;
                }
            }
        }
    }
    out
}

#[test]
fn attention_matches_reference() {
    // Grouped-query (3 query heads per KV head), multi-head (1) and multi-query (all on one KV head), for a
    // prefill from position 0 and a continuation after cached positions.
    for (n_heads, n_kv_heads) in [(6, 2), (4, 4), (4, 1)] {
        for (pos0, rows) in [(0, 7), (9, 3), (20, 1)] {
            let hd = 32;
            let p = AttentionParams { n_heads, n_kv_heads, head_dim: hd, pos0, scale: 1.0 / (hd as f32).sqrt() };
            let len = pos0 + rows;
            let cache_rows = len + 4; // capacity past the used length must be ignored
            let q = values(rows * n_heads * hd, 7, 2.0);
            let k = values(cache_rows * n_kv_heads * hd, 8, 2.0);
            let v = values(cache_rows * n_kv_heads * hd, 9, 1.0);
            let want = attention_reference(&q, &k, &v, rows, &p);
            for be in backends() {
                let (qt, kt, vt) = (
                    be.upload(&q, rows, n_heads * hd).unwrap(),
                    be.upload(&k, cache_rows, n_kv_heads * hd).unwrap(),
                    be.upload(&v, cache_rows, n_kv_heads * hd).unwrap(),
                );
                let mut out = be.zeros(0, 0).unwrap();
                be.attention(&qt, &kt, &vt, &p, &mut out).unwrap();
                let what = format!("attention {n_heads}/{n_kv_heads} heads, pos0 {pos0}, {rows} rows");
                assert_close(&be.read(&out).unwrap(), &want, |_| 1e-5, &what);
            }
        }
    }
}

#[test]
fn attention_rejects_positions_past_the_cache() {
    for be in backends() {
        let p = AttentionParams { n_heads: 2, n_kv_heads: 1, head_dim: 32, pos0: 5, scale: 0.1 };
        let q = be.upload(&values(2 * 64, 1, 1.0), 2, 64).unwrap();
        let kv = be.upload(&values(6 * 32, 2, 1.0), 6, 32).unwrap();
        let mut out = be.zeros(0, 0).unwrap();
        assert!(be.attention(&q, &kv, &kv, &p, &mut out).is_err(), "positions 5..7 need 7 cached rows");
    }
}

#[test]
fn elementwise_ops_match_reference() {
    let (rows, cols) = (3, 40);
    let a = values(rows * cols, 10, 6.0);
    let b = values(rows * cols, 11, 3.0);
    let silu: Vec<f64> =
        a.iter().zip(&b).map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64).collect();
    let sum: Vec<f64> = a.iter().zip(&b).map(|(&x, &y)| x as f64 + y as f64).collect();
    for be in backends() {
        let (at, bt) = (be.upload(&a, rows, cols).unwrap(), be.upload(&b, rows, cols).unwrap());
        let mut out = be.zeros(0, 0).unwrap();
        be.silu_mul(&at, &bt, &mut out).unwrap();
        assert_close(&be.read(&out).unwrap(), &silu, |i| 1e-5 * silu[i].abs().max(1.0), "silu_mul");
        let mut x = be.upload(&a, rows, cols).unwrap();
        be.add(&mut x, &bt).unwrap();
        assert_close(&be.read(&x).unwrap(), &sum, |i| 1e-6 * sum[i].abs().max(1.0), "add");
        let wrong = be.upload(&b[..cols], 1, cols).unwrap();
        assert!(be.add(&mut x, &wrong).is_err());
        assert!(be.silu_mul(&at, &wrong, &mut out).is_err());
    }
}

#[test]
fn row_copies() {
    let src = values(2 * 8, 12, 1.0);
    for be in backends() {
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
}

/// Requests from several threads share one backend (as sessions of one engine do) without blocking each other.
#[test]
fn concurrent_callers_share_a_backend() {
    let be = std::sync::Arc::new(CpuBackend::new(2).unwrap());
    let w = PackedMatrix::from_f32(TensorType::Q4_1, 300, 256, &values(300 * 256, 1, 1.0)).unwrap();
    let m = std::sync::Arc::new(be.upload_matrix(w.view()).unwrap());
    let x = values(3 * 256, 2, 1.0);
    let expected = {
        let mut out = be.zeros(0, 0).unwrap();
        be.matmul(&m, &be.upload(&x, 3, 256).unwrap(), &mut out).unwrap();
        be.read(&out).unwrap()
    };
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (be, m, x, expected) = (be.clone(), m.clone(), x.clone(), expected.clone());
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let mut out = be.zeros(0, 0).unwrap();
                    be.install(|| be.matmul(&m, &be.upload(&x, 3, 256).unwrap(), &mut out)).unwrap();
                    assert_eq!(be.read(&out).unwrap(), expected);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn matmul_many_equals_separate_products() {
    let cols = 96;
    let x = values(5 * cols, 3, 2.0);
    let mats: Vec<PackedMatrix> = [(TensorType::Q4_1, 40), (TensorType::Q4_0, 7), (TensorType::Q8_0, 33), (TensorType::F16, 9)]
        .iter()
        .enumerate()
        .map(|(i, &(ty, rows))| PackedMatrix::from_f32(ty, rows, cols, &values(rows * cols, 20 + i as u64, 1.0)).unwrap())
        .collect();
    for be in backends() {
        let ms: Vec<_> = mats.iter().map(|m| be.upload_matrix(m.view()).unwrap()).collect();
        let xt = be.upload(&x, 5, cols).unwrap();
        // All quantized (one fused pass), then with a float matrix among them.
        for n in [3, 4] {
            let refs: Vec<_> = ms[..n].iter().collect();
            let mut outs: Vec<_> = (0..n).map(|_| be.zeros(0, 0).unwrap()).collect();
            let mut out_refs: Vec<&mut _> = outs.iter_mut().collect();
            be.matmul_many(&refs, &xt, &mut out_refs).unwrap();
            for (m, got) in ms[..n].iter().zip(&outs) {
                let mut want = be.zeros(0, 0).unwrap();
                be.matmul(m, &xt, &mut want).unwrap();
                assert_eq!(be.read(got).unwrap(), be.read(&want).unwrap());
            }
        }
        let mut one = be.zeros(0, 0).unwrap();
        assert!(be.matmul_many(&[&ms[0], &ms[1]], &xt, &mut [&mut one]).is_err());
    }
}

/// A token's products do not depend on the batch it was computed in (prefill tiles, decode, tails): a session
/// that reuses its KV cache gives exactly what a fresh prefill of the same tokens gives.
#[test]
fn matmul_is_batch_invariant() {
    for ty in [TensorType::Q4_0, TensorType::Q4_1, TensorType::Q8_0] {
        let (rows, cols, tokens) = (37, 320, 11);
        let w = PackedMatrix::from_f32(ty, rows, cols, &values(rows * cols, 4, 1.0)).unwrap();
        let x = values(tokens * cols, 5, 2.0);
        for be in backends() {
            let m = be.upload_matrix(w.view()).unwrap();
            let mut all = be.zeros(0, 0).unwrap();
            be.matmul(&m, &be.upload(&x, tokens, cols).unwrap(), &mut all).unwrap();
            let all = be.read(&all).unwrap();
            for t in 0..tokens {
                let mut one = be.zeros(0, 0).unwrap();
                be.matmul(&m, &be.upload(&x[t * cols..(t + 1) * cols], 1, cols).unwrap(), &mut one).unwrap();
                assert_eq!(be.read(&one).unwrap(), &all[t * rows..(t + 1) * rows], "{ty:?} token {t} at {}", be.level().name());
            }
        }
    }
}

mod tern_formats {
    use super::*;
    use tern_quant::{TernFormat, TernMatrix};

    /// tern-format products against the f64 product of the reference dequantization and the exact activations,
    /// within the int8 activation rounding bound of `reference`; every SIMD level against the scalar path.
    fn check(f: TernFormat, rows: usize, cols: usize, tokens: usize, seed: u64) {
        let t = TernMatrix::quantize(f, rows, cols, &values(rows * cols, seed, 1.0), None).unwrap();
        let x = values(tokens * cols, seed + 1, 3.0);
        let (want, bound) = reference(&t.dequantize(), &x, rows, cols, true);
        let mut scalar: Option<Vec<f32>> = None;
        for be in backends() {
            let m = be.upload_matrix(t.view()).unwrap();
            let mut out = be.zeros(0, 0).unwrap();
            be.matmul(&m, &be.upload(&x, tokens, cols).unwrap(), &mut out).unwrap();
            let got = be.read(&out).unwrap();
            let what = format!("{f:?} {rows}x{cols} by {tokens} at {}", be.level().name());
            assert_close(&got, &want, |i| bound[i], &what);
            match &scalar {
                None => scalar = Some(got),
                Some(s) => {
                    let s64: Vec<f64> = s.iter().map(|&v| v as f64).collect();
                    assert_close(&got, &s64, |i| 1e-4 * s64[i].abs().max(1.0), &format!("{what} against scalar"));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

        #[test]
        fn products_match_reference(f in 0usize..4, rows in 1usize..20, blocks in 1usize..20, tokens in 1usize..10, seed in any::<u64>()) {
            check(TernFormat::ALL[f], rows, blocks * 32, tokens, seed);
        }
    }

    #[test]
    fn model_shapes_embedding_and_batch_invariance() {
        for f in TernFormat::ALL {
            check(f, 40, 576, 6, 3);
            let t = TernMatrix::quantize(f, 9, 96, &values(9 * 96, 5, 1.0), None).unwrap();
            let x = values(7 * 96, 6, 2.0);
            for be in backends() {
                let m = be.upload_matrix(t.view()).unwrap();
                let mut out = be.zeros(0, 0).unwrap();
                be.embed(&m, &[8, 0], &mut out).unwrap();
                let mut row = vec![0f32; 96];
                t.dequantize_row(8, &mut row);
                assert_eq!(&be.read(&out).unwrap()[..96], &row[..]);
                let mut all = be.zeros(0, 0).unwrap();
                be.matmul(&m, &be.upload(&x, 7, 96).unwrap(), &mut all).unwrap();
                let all = be.read(&all).unwrap();
                for tk in 0..7 {
                    let mut one = be.zeros(0, 0).unwrap();
                    be.matmul(&m, &be.upload(&x[tk * 96..(tk + 1) * 96], 1, 96).unwrap(), &mut one).unwrap();
                    assert_eq!(be.read(&one).unwrap(), &all[tk * 9..(tk + 1) * 9], "{f:?} token {tk}");
                }
            }
        }
    }

    #[test]
    fn inconsistent_matrices_are_refused() {
        let mut t = TernMatrix::quantize(TernFormat::T4, 2, 64, &values(128, 1, 1.0), None).unwrap();
        t.codes.pop();
        let err = CpuBackend::new(1).unwrap().upload_matrix(t.view()).unwrap_err();
        assert!(err.to_string().contains("scales hold 1 words, expected 2"), "{err}");
    }
}
