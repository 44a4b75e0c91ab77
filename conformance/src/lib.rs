//! One set of op tests for every tern backend. Each check runs an op on a backend and compares it with a plain
//! scalar f64 reference written here, with shapes that hit the tails of kernels' tiling (rows not a multiple of
//! the workgroup's, token counts not a multiple of the tile).
//!
//! A backend's test file instantiates the whole suite with [`conformance_suite!`], given a function that
//! returns the backends to test, each with a label for messages:
//!
//! ```ignore
//! fn backends() -> Vec<(String, Arc<CpuBackend>)> { ... }
//! tern_conformance::conformance_suite!(backends);
//! ```
//!
//! This is test code in a crate of its own (`publish = false`, only ever a dev-dependency): its `unwrap`s and
//! assertions are test failures, and nothing from a file, a socket or a user reaches them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use tern_core::{AttentionParams, Backend, Error, RopeParams, RopeStyle, TensorType, TokenSampling, kept_candidates, pick_token};
use tern_quant::{PackedMatrix, TernFormat, TernMatrix};

pub use proptest;

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

pub fn check_matmul<B: Backend>(be: &B, label: &str, ty: TensorType, rows: usize, cols: usize, tokens: usize, seed: u64) {
    let w = PackedMatrix::from_f32(ty, rows, cols, &values(rows * cols, seed, 1.0)).unwrap();
    let x = values(tokens * cols, seed + 1, 3.0);
    let (want, bound) = reference(&dequantized(&w), &x, rows, cols, ty.is_quantized());
    let m = be.upload_matrix(w.view()).unwrap();
    assert_eq!(be.matrix_shape(&m), (rows, cols));
    let xt = be.upload(&x, tokens, cols).unwrap();
    let mut out = be.zeros(0, 0).unwrap();
    be.matmul(&m, &xt, &mut out).unwrap();
    assert_eq!(be.shape(&out), (tokens, rows));
    let what = format!("matmul {ty:?} {rows}x{cols} by {tokens} tokens on {label}");
    assert_close(&be.read(&out).unwrap(), &want, |i| bound[i], &what);
}

pub fn matmul_model_sized_shapes<B: Backend>(be: &B, label: &str) {
    for ty in TYPES {
        check_matmul(be, label, ty, 67, 576, 13, 5);
    }
    check_matmul(be, label, TensorType::Q4_1, 576, 1536, 5, 9);
}

pub fn matmul_rejects_wrong_width<B: Backend>(be: &B, _label: &str) {
    let w = PackedMatrix::from_f32(TensorType::Q4_1, 4, 64, &values(256, 1, 1.0)).unwrap();
    let m = be.upload_matrix(w.view()).unwrap();
    let x = be.upload(&values(96, 2, 1.0), 1, 96).unwrap();
    let mut out = be.zeros(0, 0).unwrap();
    assert!(matches!(be.matmul(&m, &x, &mut out), Err(Error::Shape { .. })));
}

/// Dequantized rows, to within f32 rounding of the table's largest weight (a GPU may fuse `d * q + m`).
pub fn embed_gathers_dequantized_rows<B: Backend>(be: &B, label: &str) {
    for ty in TYPES {
        let (rows, cols) = (11, 64);
        let w = PackedMatrix::from_f32(ty, rows, cols, &values(rows * cols, 3, 1.0)).unwrap();
        let wf = dequantized(&w);
        let ids = [3u32, 0, 10, 3];
        let want: Vec<f64> =
            ids.iter().flat_map(|&i| wf[i as usize * cols..(i as usize + 1) * cols].iter().map(|&v| v as f64)).collect();
        let m = be.upload_matrix(w.view()).unwrap();
        let mut out = be.zeros(0, 0).unwrap();
        be.embed(&m, &ids, &mut out).unwrap();
        let tol = 2.4e-7 * wf.iter().fold(0f64, |m, &v| m.max(v.abs() as f64));
        assert_close(&be.read(&out).unwrap(), &want, |_| tol, &format!("embed {ty:?} on {label}"));
        assert!(be.embed(&m, &[11], &mut out).is_err(), "an id past the table is an error");
    }
}

/// The token a backend samples from the last row of `logits` (`rows x cols`).
fn sampled<B: Backend>(be: &B, logits: &B::Tensor, s: &TokenSampling) -> u32 {
    let mut out = be.zeros(0, 0).unwrap();
    be.sample(logits, s, &mut out).unwrap();
    let got = be.read(&out).unwrap();
    assert_eq!(got.len(), 1);
    got[0].to_bits()
}

/// Greedy and sampled picks follow [`pick_token`], on a short row and on one as long as a large vocabulary's
/// (which a GPU samples in chunks). Each sampled candidate is drawn at the middle of its share of the
/// probability, so that float rounding cannot move the pick; ties at the `top_k` threshold, and equal logits
/// anywhere, go to the lower ids.
pub fn sample_matches_reference<B: Backend>(be: &B, label: &str) {
    for (cols, seed) in [(3000, 0), (3000, 1), (3000, 2), (20000, 3)] {
        let label = &format!("{label}, {cols} logits");
        let mut logits = values(2 * cols, 40 + seed, 6.0);
        let last = cols;
        // Ties: a run of equal values around the 40th largest, and a copy of the largest.
        let mut order: Vec<usize> = (0..cols).collect();
        order.sort_by(|&a, &b| logits[last + b].total_cmp(&logits[last + a]));
        for &i in &order[37..45] {
            logits[last + i] = logits[last + order[37]];
        }
        logits[last + cols - 1] = logits[last + order[0]];
        let t = be.upload(&logits, 2, cols).unwrap();
        let row = &logits[last..];
        let mut scratch = Vec::new();
        let greedy = sampled(be, &t, &TokenSampling::GREEDY);
        assert_eq!(greedy, pick_token(row, &TokenSampling::GREEDY, &mut scratch), "greedy on {label}");
        for (temperature, top_k, top_p) in [(0.8, 40, 0.95), (1.5, 256, 1.0), (0.3, 41, 0.9), (1.0, 1, 1.0), (2.0, 3, 0.5)] {
            let mut s = TokenSampling { temperature, top_k, top_p, draw: 0.0 };
            let kept = kept_candidates(row, &s, &mut scratch).to_vec();
            let total: f32 = kept.iter().map(|c| c.1).sum();
            let mut before = 0f32;
            for &(id, prob) in &kept {
                s.draw = (before + prob / 2.0) / total;
                before += prob;
                if prob < 1e-4 * total {
                    continue;
                }
                assert_eq!(sampled(be, &t, &s), id, "{s:?} on {label}");
            }
        }
    }
    // Every logit equal: the candidates are the lowest ids.
    let flat = be.upload(&vec![0.5; 1000], 1, 1000).unwrap();
    let s = TokenSampling { temperature: 1.0, top_k: 10, top_p: 1.0, draw: 0.95 };
    assert_eq!(sampled(be, &flat, &s), 9, "equal logits on {label}");
    // A long row whose largest values are equal and spread over it: the lowest ids among them, in order.
    let mut long = vec![0.0; 20000];
    let peaks = [19999, 15000, 12289, 8191, 4096, 4095, 7];
    for &i in &peaks {
        long[i] = 1.0;
    }
    let long = be.upload(&long, 1, 20000).unwrap();
    assert_eq!(sampled(be, &long, &TokenSampling::GREEDY), 7, "greedy over equal peaks on {label}");
    let mut sorted = peaks;
    sorted.sort();
    for (n, &want) in sorted[..5].iter().enumerate() {
        let s = TokenSampling { temperature: 1.0, top_k: 5, top_p: 1.0, draw: (n as f32 + 0.5) / 5.0 };
        assert_eq!(sampled(be, &long, &s), want as u32, "{s:?} over equal peaks on {label}");
    }
    let mut out = be.zeros(0, 0).unwrap();
    assert!(be.sample(&flat, &TokenSampling { top_k: 0, ..s }, &mut out).is_err(), "top_k 0 is refused");
}

/// A sampled token feeds the next step's embedding lookup without leaving the device.
pub fn embed_sampled_takes_the_picked_row<B: Backend>(be: &B, label: &str) {
    let (rows, cols) = (50, 64);
    let w = PackedMatrix::from_f32(TensorType::Q8_0, rows, cols, &values(rows * cols, 9, 1.0)).unwrap();
    let wf = dequantized(&w);
    let table = be.upload_matrix(w.view()).unwrap();
    let mut logits = vec![0f32; rows];
    logits[17] = 3.0;
    let mut token = be.zeros(0, 0).unwrap();
    be.sample(&be.upload(&logits, 1, rows).unwrap(), &TokenSampling::GREEDY, &mut token).unwrap();
    let mut out = be.zeros(0, 0).unwrap();
    be.embed_sampled(&table, &token, &mut out).unwrap();
    let reading = be.read_begin(&out).unwrap();
    let want: Vec<f64> = wf[17 * cols..18 * cols].iter().map(|&v| v as f64).collect();
    assert_close(&be.read_finish(reading).unwrap(), &want, |_| 1e-6, &format!("embed_sampled on {label}"));
    assert!(be.embed_sampled(&table, &be.zeros(2, 1).unwrap(), &mut out).is_err(), "a token tensor must be 1x1");
}

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

/// `q` and `k` rotated in place and `k`, `v` appended at `pos0`, for 6 query heads over 2 KV heads, both
/// layouts, partial rotation, and more than one row; cache rows outside the appended ones keep their values.
pub fn rope_and_append_matches_reference<B: Backend>(be: &B, label: &str) {
    let (n_heads, n_kv, hd, rows, cap) = (6, 2, 32, 3, 12);
    for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
        for (rot_dim, pos0) in [(32, 0), (16, 7)] {
            let p = RopeParams { n_heads, head_dim: hd, rot_dim, freq_base: 10000.0, style, pos0 };
            let pk = RopeParams { n_heads: n_kv, ..p };
            let q = values(rows * n_heads * hd, 11, 1.0);
            let k = values(rows * n_kv * hd, 12, 1.0);
            let v = values(rows * n_kv * hd, 13, 1.0);
            let old = values(cap * n_kv * hd, 14, 1.0);
            let (want_q, want_k) = (rope_reference(&q, rows, &p), rope_reference(&k, rows, &pk));
            let mut want_kc: Vec<f64> = old.iter().map(|&x| x as f64).collect();
            let mut want_vc = want_kc.clone();
            let at = pos0 * n_kv * hd;
            want_kc[at..at + want_k.len()].copy_from_slice(&want_k);
            want_vc[at..at + v.len()].iter_mut().zip(&v).for_each(|(w, &x)| *w = x as f64);
            let (mut qt, mut kt, vt) = (
                be.upload(&q, rows, n_heads * hd).unwrap(),
                be.upload(&k, rows, n_kv * hd).unwrap(),
                be.upload(&v, rows, n_kv * hd).unwrap(),
            );
            let (mut kc, mut vc) = (be.upload(&old, cap, n_kv * hd).unwrap(), be.upload(&old, cap, n_kv * hd).unwrap());
            be.rope_and_append(&mut qt, &mut kt, &vt, &p, n_kv, (&mut kc, &mut vc)).unwrap();
            let what = |t: &str| format!("rope_and_append {t}, {style:?} rot {rot_dim} pos {pos0} on {label}");
            assert_close(&be.read(&qt).unwrap(), &want_q, |_| 1e-5, &what("q"));
            assert_close(&be.read(&kt).unwrap(), &want_k, |_| 1e-5, &what("k"));
            assert_close(&be.read(&kc).unwrap(), &want_kc, |_| 1e-5, &what("k cache"));
            assert_close(&be.read(&vc).unwrap(), &want_vc, |_| 0.0, &what("v cache"));
            let mut small = be.zeros(pos0 + rows - 1, n_kv * hd).unwrap();
            assert!(be.rope_and_append(&mut qt, &mut kt, &vt, &p, n_kv, (&mut small, &mut vc)).is_err(), "a cache too short");
        }
    }
}

/// `matmul_add_rms_norm` leaves the residual and the normed row that `matmul` and then `add_rms_norm` leave,
/// for one token (which a backend may run in one pass) and for several; the normed row feeds a product as a
/// fresh upload of it would, and a second call in a row (as every layer makes) does the same.
pub fn matmul_add_rms_norm_equals_product_then_add_norm<B: Backend>(be: &B, label: &str) {
    // A row the norm's invocations share unevenly, and one of several `vec4`s per invocation.
    for (dim, cols, f) in [(288, 96, TernFormat::T4), (2080, 64, TernFormat::T2)] {
        let w = TernMatrix::quantize(f, dim, cols, &values(dim * cols, 50, 1.0), None).unwrap();
        let m = be.upload_matrix(w.view()).unwrap();
        let next = be.upload_matrix(TernMatrix::quantize(f, 32, dim, &values(32 * dim, 51, 1.0), None).unwrap().view()).unwrap();
        let weight = be.upload(&values(dim, 52, 1.0), 1, dim).unwrap();
        for tokens in [1, 3] {
            let a = be.upload(&values(tokens * cols, 53, 2.0), tokens, cols).unwrap();
            let residual = values(tokens * dim, 54, 4.0);
            let run = |fused: bool| {
                let (mut x, mut y, mut out) =
                    (be.upload(&residual, tokens, dim).unwrap(), be.zeros(0, 0).unwrap(), be.zeros(0, 0).unwrap());
                for _ in 0..2 {
                    if fused {
                        be.matmul_add_rms_norm(&m, &a, &mut y, &mut x, &weight, 1e-5, &mut out).unwrap();
                    } else {
                        be.matmul(&m, &a, &mut y).unwrap();
                        be.add_rms_norm(&mut x, &y, &weight, 1e-5, &mut out).unwrap();
                    }
                }
                let (mut p, mut fresh) = (be.zeros(0, 0).unwrap(), be.zeros(0, 0).unwrap());
                be.matmul(&next, &out, &mut p).unwrap();
                be.matmul(&next, &be.upload(&be.read(&out).unwrap(), tokens, dim).unwrap(), &mut fresh).unwrap();
                assert_eq!(
                    be.read(&p).unwrap(),
                    be.read(&fresh).unwrap(),
                    "a product of matmul_add_rms_norm's row ({fused}) on {label}"
                );
                [be.read(&x).unwrap(), be.read(&out).unwrap()]
            };
            let want = run(false);
            for ((g, w), name) in run(true).iter().zip(&want).zip(["residual", "normed row"]) {
                let w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
                let what = format!("matmul_add_rms_norm's {name}, {f:?} {dim}x{cols}, {tokens} tokens on {label}");
                assert_close(g, &w, |i| 1e-5 * w[i].abs().max(1.0), &what);
            }
        }
    }
}

/// A step's attention inputs (Q, K and V's products, RoPE, and the append to the caches, which a backend may do
/// in one pass) equal the separate ops, for one token and for three, both RoPE layouts, partial rotation, GQA
/// and matrices stored together or apart; cache rows other than the appended ones keep their values.
pub fn attention_inputs_equal_products_then_rope<B: Backend>(be: &B, label: &str) {
    let cols = 96;
    for (n_heads, n_kv, hd, f) in [(6, 2, 32, TernFormat::T4), (2, 2, 64, TernFormat::T2)] {
        let (q_rows, kv_rows, cap) = (n_heads * hd, n_kv * hd, 9);
        let mats: Vec<TernMatrix> = [q_rows, kv_rows, kv_rows]
            .iter()
            .enumerate()
            .map(|(i, &rows)| TernMatrix::quantize(f, rows, cols, &values(rows * cols, 40 + i as u64, 1.0), None).unwrap())
            .collect();
        let views: Vec<_> = mats.iter().map(|m| m.view()).collect();
        let together = be.upload_matrices(&views).unwrap();
        let apart: Vec<_> = views.iter().map(|v| be.upload_matrix(*v).unwrap()).collect();
        let old = values(cap * kv_rows, 43, 1.0);
        for style in [RopeStyle::Interleaved, RopeStyle::Halves] {
            for (rot_dim, pos0, tokens) in [(hd, 0, 1), (hd / 2, 5, 1), (hd, 3, 3)] {
                let p = RopeParams { n_heads, head_dim: hd, rot_dim, freq_base: 10000.0, style, pos0 };
                let x = be.upload(&values(tokens * cols, 44 + pos0 as u64, 2.0), tokens, cols).unwrap();
                let run = |ws: [&B::Matrix; 3], fused: bool| {
                    let mut t: Vec<B::Tensor> = (0..3).map(|_| be.zeros(0, 0).unwrap()).collect();
                    let (kc, vc) = (be.upload(&old, cap, kv_rows).unwrap(), be.upload(&old, cap, kv_rows).unwrap());
                    let (mut kc, mut vc) = (kc, vc);
                    let [q, k, v] = &mut t[..] else { unreachable!() };
                    if fused {
                        be.attention_inputs(ws, &x, &p, n_kv, (q, k, v), (&mut kc, &mut vc)).unwrap();
                    } else {
                        be.matmul_many(&ws, &x, &mut [&mut *q, &mut *k, &mut *v]).unwrap();
                        be.rope_and_append(q, k, v, &p, n_kv, (&mut kc, &mut vc)).unwrap();
                    }
                    [be.read(q).unwrap(), be.read(&kc).unwrap(), be.read(&vc).unwrap()]
                };
                let want = run([&apart[0], &apart[1], &apart[2]], false);
                for (how, ws) in
                    [("together", [&together[0], &together[1], &together[2]]), ("apart", [&apart[0], &apart[1], &apart[2]])]
                {
                    let got = run(ws, true);
                    for ((g, w), name) in got.iter().zip(&want).zip(["q", "k cache", "v cache"]) {
                        let w: Vec<f64> = w.iter().map(|&v| v as f64).collect();
                        let what = format!(
                            "attention_inputs' {name}, {f:?} {n_heads}/{n_kv} heads of {hd} stored {how}, {style:?} rot {rot_dim} \
                             pos {pos0}, {tokens} tokens on {label}"
                        );
                        assert_close(g, &w, |i| 1e-5 * w[i].abs().max(1.0), &what);
                    }
                }
            }
        }
    }
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

/// Grouped-query (3 query heads per KV head), multi-head and multi-query attention, for a prefill from
/// position 0, continuations after cached positions, a context longer than one 64-position tile, and decode
/// steps over contexts a GPU splits into spans (257 positions: a span and one more; 701: three spans).
pub fn attention_matches_reference<B: Backend>(be: &B, label: &str) {
    for (n_heads, n_kv_heads, hd) in [(6, 2, 32), (4, 4, 32), (4, 1, 32), (2, 1, 128)] {
        for (pos0, rows) in [(0, 7), (9, 3), (20, 1), (130, 2), (256, 1), (700, 1)] {
            let p = AttentionParams { n_heads, n_kv_heads, head_dim: hd, pos0, scale: 1.0 / (hd as f32).sqrt() };
            let len = pos0 + rows;
            let cache_rows = len + 4; // capacity past the used length must be ignored
            let q = values(rows * n_heads * hd, 7, 2.0);
            let k = values(cache_rows * n_kv_heads * hd, 8, 2.0);
            let v = values(cache_rows * n_kv_heads * hd, 9, 1.0);
            let want = attention_reference(&q, &k, &v, rows, &p);
            let (qt, kt, vt) = (
                be.upload(&q, rows, n_heads * hd).unwrap(),
                be.upload(&k, cache_rows, n_kv_heads * hd).unwrap(),
                be.upload(&v, cache_rows, n_kv_heads * hd).unwrap(),
            );
            let mut out = be.zeros(0, 0).unwrap();
            be.attention(&qt, &kt, &vt, &p, &mut out).unwrap();
            let what = format!("attention {n_heads}/{n_kv_heads} heads of {hd}, pos0 {pos0}, {rows} rows on {label}");
            assert_close(&be.read(&out).unwrap(), &want, |_| 1e-5, &what);
        }
    }
}

pub fn attention_rejects_positions_past_the_cache<B: Backend>(be: &B, _label: &str) {
    let p = AttentionParams { n_heads: 2, n_kv_heads: 1, head_dim: 32, pos0: 5, scale: 0.1 };
    let q = be.upload(&values(2 * 64, 1, 1.0), 2, 64).unwrap();
    let kv = be.upload(&values(6 * 32, 2, 1.0), 6, 32).unwrap();
    let mut out = be.zeros(0, 0).unwrap();
    assert!(be.attention(&q, &kv, &kv, &p, &mut out).is_err(), "positions 5..7 need 7 cached rows");
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

/// A product of an op's output equals the product of the same values uploaded afresh, for every op that may
/// write more than its values (a backend may keep a quantized form beside a tensor), and after every in-place
/// write that must make such a form stale.
pub fn products_of_op_outputs_match_fresh_uploads<B: Backend>(be: &B, label: &str) {
    // A row of three blocks, and rows that several invocations (or workgroups) share unevenly, one of them past
    // 4096 (a backend may take wide rows in parts).
    for cols in [96, 2080, 4160] {
        op_outputs_in_products(be, label, cols);
    }
}

fn op_outputs_in_products<B: Backend>(be: &B, label: &str, cols: usize) {
    let rows = 20;
    let w = PackedMatrix::from_f32(TensorType::Q4_0, rows, cols, &values(rows * cols, 40, 1.0)).unwrap();
    let m = be.upload_matrix(w.view()).unwrap();
    let check = |t: &B::Tensor, what: &str| {
        let fresh = be.upload(&be.read(t).unwrap(), 1, cols).unwrap();
        let (mut a, mut b) = (be.zeros(0, 0).unwrap(), be.zeros(0, 0).unwrap());
        be.matmul(&m, t, &mut a).unwrap();
        be.matmul(&m, &fresh, &mut b).unwrap();
        assert_eq!(be.read(&a).unwrap(), be.read(&b).unwrap(), "a product of {what} (1x{cols}) on {label}");
    };
    let x = be.upload(&values(cols, 41, 2.0), 1, cols).unwrap();
    let y = be.upload(&values(cols, 42, 2.0), 1, cols).unwrap();
    let weight = be.upload(&values(cols, 43, 1.0), 1, cols).unwrap();
    let mut out = be.zeros(0, 0).unwrap();
    be.rms_norm(&x, &weight, 1e-5, &mut out).unwrap();
    check(&out, "rms_norm");
    be.add(&mut out, &y).unwrap();
    check(&out, "add after rms_norm");
    let mut residual = be.upload(&values(cols, 44, 2.0), 1, cols).unwrap();
    be.add_rms_norm(&mut residual, &y, &weight, 1e-5, &mut out).unwrap();
    check(&out, "add_rms_norm");
    check(&residual, "add_rms_norm's residual");
    be.rms_norm(&x, &weight, 1e-5, &mut residual).unwrap();
    be.add_rms_norm(&mut residual, &y, &weight, 1e-5, &mut out).unwrap();
    check(&residual, "add_rms_norm's residual after rms_norm");
    be.silu_mul(&x, &y, &mut out).unwrap();
    check(&out, "silu_mul");
    be.write_rows(&y, &mut out, 0).unwrap();
    check(&out, "write_rows after silu_mul");
    be.silu_mul(&x, &y, &mut out).unwrap();
    let p =
        RopeParams { n_heads: cols / 32, head_dim: 32, rot_dim: 32, freq_base: 10000.0, style: RopeStyle::Interleaved, pos0: 5 };
    be.rope(&mut out, &p).unwrap();
    check(&out, "rope after silu_mul");
    let (mut k, v) = (be.upload(&values(cols, 45, 1.0), 1, cols).unwrap(), be.upload(&values(cols, 46, 1.0), 1, cols).unwrap());
    let (mut k_cache, mut v_cache) = (be.zeros(8, cols).unwrap(), be.zeros(8, cols).unwrap());
    be.silu_mul(&x, &y, &mut out).unwrap();
    be.rms_norm(&x, &weight, 1e-5, &mut k).unwrap();
    be.rope_and_append(&mut out, &mut k, &v, &p, cols / 32, (&mut k_cache, &mut v_cache)).unwrap();
    check(&out, "rope_and_append's q after silu_mul");
    check(&k, "rope_and_append's k after rms_norm");
    // Attention over a few positions, and over more than a backend may take in one workgroup.
    let positions = 300;
    let kc = be.upload(&values(positions * cols, 47, 1.0), positions, cols).unwrap();
    let vc = be.upload(&values(positions * cols, 48, 1.0), positions, cols).unwrap();
    for pos0 in [5, positions - 1] {
        let a = AttentionParams { n_heads: cols / 32, n_kv_heads: cols / 32, head_dim: 32, pos0, scale: 0.2 };
        be.attention(&x, &kc, &vc, &a, &mut out).unwrap();
        check(&out, &format!("attention at position {pos0}"));
    }
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

pub fn matmul_many_equals_separate_products<B: Backend>(be: &B, label: &str) {
    let cols = 96;
    let x = values(5 * cols, 3, 2.0);
    let mats: Vec<PackedMatrix> = [(TensorType::Q4_1, 40), (TensorType::Q4_0, 7), (TensorType::Q8_0, 33), (TensorType::F16, 9)]
        .iter()
        .enumerate()
        .map(|(i, &(ty, rows))| PackedMatrix::from_f32(ty, rows, cols, &values(rows * cols, 20 + i as u64, 1.0)).unwrap())
        .collect();
    let ms: Vec<_> = mats.iter().map(|m| be.upload_matrix(m.view()).unwrap()).collect();
    let xt = be.upload(&x, 5, cols).unwrap();
    // All quantized (one fused pass on backends that fuse), then with a float matrix among them.
    for n in [3, 4] {
        let refs: Vec<_> = ms[..n].iter().collect();
        let mut outs: Vec<_> = (0..n).map(|_| be.zeros(0, 0).unwrap()).collect();
        let mut out_refs: Vec<&mut _> = outs.iter_mut().collect();
        be.matmul_many(&refs, &xt, &mut out_refs).unwrap();
        for (m, got) in ms[..n].iter().zip(&outs) {
            let mut want = be.zeros(0, 0).unwrap();
            be.matmul(m, &xt, &mut want).unwrap();
            assert_eq!(be.read(got).unwrap(), be.read(&want).unwrap(), "{n} products on {label}");
        }
    }
    let mut one = be.zeros(0, 0).unwrap();
    assert!(be.matmul_many(&[&ms[0], &ms[1]], &xt, &mut [&mut one]).is_err());
}

/// A token's products do not depend on the batch it was computed in (prefill tiles, decode, tails) beyond f32
/// rounding, and, where a backend rounds activations to int8 for one and not the other, beyond twice that
/// rounding's bound (each is within it of the exact product). The CPU backend promises exact equality and
/// tests it on its own.
pub fn matmul_is_batch_invariant<B: Backend>(be: &B, label: &str) {
    for ty in [TensorType::Q4_0, TensorType::Q4_1, TensorType::Q8_0] {
        let (rows, cols, tokens) = (37, 320, 11);
        let w = PackedMatrix::from_f32(ty, rows, cols, &values(rows * cols, 4, 1.0)).unwrap();
        let x = values(tokens * cols, 5, 2.0);
        let (_, bound) = reference(&dequantized(&w), &x, rows, cols, true);
        let m = be.upload_matrix(w.view()).unwrap();
        let all = product(be, &m, &x, tokens, cols);
        for t in 0..tokens {
            let one = product(be, &m, &x[t * cols..(t + 1) * cols], 1, cols);
            let want: Vec<f64> = all[t * rows..(t + 1) * rows].iter().map(|&v| v as f64).collect();
            let tol = |i: usize| 1e-5 * want[i].abs().max(1.0) + 2.0 * bound[t * rows + i];
            assert_close(&one, &want, tol, &format!("{ty:?} token {t} on {label}"));
        }
    }
}

/// Matrices uploaded together multiply as they do uploaded apart: through `matmul_many` (one product on a
/// backend that stores them together) and one by one, for decode and a batch. Among the cases: rows whose
/// f16 scales end mid-word (which a backend cannot store together), and tern's per-row codes.
pub fn matrices_uploaded_together_multiply_as_apart<B: Backend>(be: &B, label: &str) {
    let tern = |f: TernFormat, rows: usize, cols: usize, seed: u64| {
        TernMatrix::quantize(f, rows, cols, &values(rows * cols, seed, 1.0), None).unwrap()
    };
    let gguf = |ty: TensorType, rows: usize, cols: usize, seed: u64| {
        PackedMatrix::from_f32(ty, rows, cols, &values(rows * cols, seed, 1.0)).unwrap()
    };
    let q = [gguf(TensorType::Q4_0, 40, 64, 30), gguf(TensorType::Q4_0, 8, 64, 31), gguf(TensorType::Q4_0, 9, 64, 32)];
    let odd = [gguf(TensorType::Q4_1, 3, 32, 33), gguf(TensorType::Q4_1, 5, 32, 34)];
    let t = [tern(TernFormat::T3, 17, 96, 35), tern(TernFormat::T3, 6, 96, 36)];
    let cases: [Vec<tern_core::MatrixView<'_>>; 3] =
        [q.iter().map(|m| m.view()).collect(), odd.iter().map(|m| m.view()).collect(), t.iter().map(|m| m.view()).collect()];
    for views in cases {
        let together = be.upload_matrices(&views).unwrap();
        let cols = views[0].cols;
        for tokens in [1, 5] {
            let xt = be.upload(&values(tokens * cols, 37, 2.0), tokens, cols).unwrap();
            let mut outs: Vec<_> = views.iter().map(|_| be.zeros(0, 0).unwrap()).collect();
            let mut out_refs: Vec<&mut _> = outs.iter_mut().collect();
            be.matmul_many(&together.iter().collect::<Vec<_>>(), &xt, &mut out_refs).unwrap();
            for ((view, m), got) in views.iter().zip(&together).zip(&outs) {
                let what = format!(
                    "{} {}x{} by {tokens} stored with {} others on {label}",
                    view.ty,
                    view.rows,
                    view.cols,
                    views.len() - 1
                );
                let apart = be.upload_matrix(*view).unwrap();
                let (mut want, mut alone) = (be.zeros(0, 0).unwrap(), be.zeros(0, 0).unwrap());
                be.matmul(&apart, &xt, &mut want).unwrap();
                be.matmul(m, &xt, &mut alone).unwrap();
                let want: Vec<f64> = be.read(&want).unwrap().iter().map(|&v| v as f64).collect();
                assert_close(&be.read(got).unwrap(), &want, |i| 1e-5 * want[i].abs().max(1.0), &what);
                assert_close(&be.read(&alone).unwrap(), &want, |i| 1e-5 * want[i].abs().max(1.0), &what);
            }
        }
    }
}

/// tern-format products against the f64 product of the reference dequantization and the exact activations,
/// within the int8 activation rounding bound of [`reference`]. Returns the products.
pub fn check_tern<B: Backend>(
    be: &B,
    label: &str,
    f: TernFormat,
    rows: usize,
    cols: usize,
    tokens: usize,
    seed: u64,
) -> Vec<f32> {
    let t = TernMatrix::quantize(f, rows, cols, &values(rows * cols, seed, 1.0), None).unwrap();
    let x = values(tokens * cols, seed + 1, 3.0);
    let (want, bound) = reference(&t.dequantize(), &x, rows, cols, true);
    let m = be.upload_matrix(t.view()).unwrap();
    let got = product(be, &m, &x, tokens, cols);
    assert_close(&got, &want, |i| bound[i], &format!("{f:?} {rows}x{cols} by {tokens} on {label}"));
    got
}

pub fn tern_model_shapes_embedding_and_batch_invariance<B: Backend>(be: &B, label: &str) {
    for f in TernFormat::ALL {
        check_tern(be, label, f, 40, 576, 6, 3);
        let t = TernMatrix::quantize(f, 9, 96, &values(9 * 96, 5, 1.0), None).unwrap();
        let x = values(7 * 96, 6, 2.0);
        let m = be.upload_matrix(t.view()).unwrap();
        let mut out = be.zeros(0, 0).unwrap();
        be.embed(&m, &[8, 0], &mut out).unwrap();
        let mut row = vec![0f32; 96];
        t.dequantize_row(8, &mut row);
        let want: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        let tol = 2.4e-7 * want.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert_close(&be.read(&out).unwrap()[..96], &want, |_| tol, &format!("{f:?} embed on {label}"));
        // Batch invariance as in `matmul_is_batch_invariant`.
        let (_, bound) = reference(&t.dequantize(), &x, 9, 96, true);
        let all = product(be, &m, &x, 7, 96);
        for tk in 0..7 {
            let one = product(be, &m, &x[tk * 96..(tk + 1) * 96], 1, 96);
            let want: Vec<f64> = all[tk * 9..(tk + 1) * 9].iter().map(|&v| v as f64).collect();
            let tol = |i: usize| 1e-5 * want[i].abs().max(1.0) + 2.0 * bound[tk * 9 + i];
            assert_close(&one, &want, tol, &format!("{f:?} token {tk} on {label}"));
        }
    }
}

pub fn inconsistent_tern_matrices_are_refused<B: Backend>(be: &B, _label: &str) {
    let mut t = TernMatrix::quantize(TernFormat::T4, 2, 64, &values(128, 1, 1.0), None).unwrap();
    t.codes.pop();
    let err = be.upload_matrix(t.view()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("scales hold 1 words, expected 2"), "{err}");
}

/// Instantiates every conformance test for the backends `$backends()` returns (`Vec<(String, Arc<B>)>`: a
/// label for messages and the backend, shared so that a backend that is slow to set up can be made once).
#[macro_export]
macro_rules! conformance_suite {
    ($backends:ident) => {
        mod conformance {
            use $crate::proptest::prelude::*;

            $crate::__conformance_each!(super::$backends;
                matmul_model_sized_shapes,
                matmul_rejects_wrong_width,
                embed_gathers_dequantized_rows,
                sample_matches_reference,
                embed_sampled_takes_the_picked_row,
                rms_norm_matches_reference,
                rope_matches_reference,
                rope_and_append_matches_reference,
                attention_inputs_equal_products_then_rope,
                matmul_add_rms_norm_equals_product_then_add_norm,
                add_rms_norm_matches_reference,
                attention_matches_reference,
                attention_rejects_positions_past_the_cache,
                elementwise_ops_match_reference,
                row_copies,
                products_of_op_outputs_match_fresh_uploads,
                matmul_many_equals_separate_products,
                matrices_uploaded_together_multiply_as_apart,
                matmul_is_batch_invariant,
                tern_model_shapes_embedding_and_batch_invariance,
                inconsistent_tern_matrices_are_refused,
            );

            proptest! {
                #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

                #[test]
                fn matmul_matches_reference(ty in 0..$crate::TYPES.len(), rows in 1usize..40, blocks in 1usize..6, tokens in 1usize..10, seed in any::<u64>()) {
                    for (label, be) in super::$backends() {
                        $crate::check_matmul(&*be, &label, $crate::TYPES[ty], rows, blocks * 32, tokens, seed);
                    }
                }

                #[test]
                fn tern_products_match_reference(f in 0usize..4, rows in 1usize..20, blocks in 1usize..20, tokens in 1usize..10, seed in any::<u64>()) {
                    for (label, be) in super::$backends() {
                        $crate::check_tern(&*be, &label, $crate::proptest_tern_format(f), rows, blocks * 32, tokens, seed);
                    }
                }
            }
        }
    };
}

/// One `#[test]` per check, each running it on every backend.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_each {
    ($backends:path; $($check:ident),* $(,)?) => {$(
        #[test]
        fn $check() {
            for (label, be) in $backends() {
                $crate::$check(&*be, &label);
            }
        }
    )*};
}

/// Format `i` of [`TernFormat::ALL`], for the suite's property tests.
pub fn proptest_tern_format(i: usize) -> TernFormat {
    TernFormat::ALL[i % TernFormat::ALL.len()]
}
