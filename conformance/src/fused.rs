//! Ops a backend may fuse (the attention inputs; a product with the residual add and norm after it) equal the
//! separate ops they stand for.

use tern_core::{Backend, RopeParams, RopeStyle, TensorType};
use tern_quant::{PackedMatrix, TernFormat, TernMatrix};

use crate::{CACHE_TYPES, assert_close, cache_of, cache_tol, values};

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
                // A product of the row as the op left it (a backend may leave the norm's factor to the
                // product), then of the row once read: the latter exactly as the same values uploaded afresh.
                let (mut p, mut read, mut fresh) = (be.zeros(0, 0).unwrap(), be.zeros(0, 0).unwrap(), be.zeros(0, 0).unwrap());
                be.matmul(&next, &out, &mut p).unwrap();
                be.matmul(&next, &be.upload(&be.read(&out).unwrap(), tokens, dim).unwrap(), &mut fresh).unwrap();
                be.matmul(&next, &out, &mut read).unwrap();
                let fresh = be.read(&fresh).unwrap();
                let what = format!("a product of matmul_add_rms_norm's row ({fused}) on {label}");
                assert_eq!(be.read(&read).unwrap(), fresh, "{what}, read first");
                let top = fresh.iter().fold(1.0f64, |m, v| m.max(v.abs() as f64));
                let want: Vec<f64> = fresh.iter().map(|&v| v as f64).collect();
                assert_close(&be.read(&p).unwrap(), &want, |_| 1e-5 * top, &what);
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
/// and matrices stored together or apart, into f32 and f16 caches; cache rows other than the appended ones keep
/// their values.
pub fn attention_inputs_equal_products_then_rope<B: Backend>(be: &B, label: &str) {
    for ty in CACHE_TYPES {
        attention_inputs_case(be, label, ty);
    }
}

fn attention_inputs_case<B: Backend>(be: &B, label: &str, ty: TensorType) {
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
                    let (mut kc, mut vc) = (cache_of(be, &old, cap, kv_rows, ty), cache_of(be, &old, cap, kv_rows, ty));
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
                             pos {pos0}, {tokens} tokens, {ty} cache on {label}"
                        );
                        let ty = if name == "q" { TensorType::F32 } else { ty };
                        assert_close(g, &w, |i| cache_tol(ty, w[i], 1e-5 * w[i].abs().max(1.0)), &what);
                    }
                }
            }
        }
    }
}

/// Every op that takes `matmul_add_rms_norm`'s normed row (as an input, or as an output it writes in part)
/// sees the values the row reads back as: a backend that leaves the norm's factor for later must apply it
/// before any op but a product that takes the row so. Each op runs on a fresh normed row and on an upload of
/// the values, and the two must agree exactly.
pub fn ops_on_a_fused_norm_row_see_its_values<B: Backend>(be: &B, label: &str) {
    let (dim, cols) = (256, 64);
    let w = be.upload_matrix(TernMatrix::quantize(TernFormat::T4, dim, cols, &values(dim * cols, 60, 1.0), None).unwrap().view());
    let w = w.unwrap();
    let weight = be.upload(&values(dim, 61, 1.0), 1, dim).unwrap();
    let a = be.upload(&values(cols, 62, 2.0), 1, cols).unwrap();
    let other = be.upload(&values(dim, 63, 1.0), 1, dim).unwrap();
    let normed = || {
        let (mut x, mut y, mut out) =
            (be.upload(&values(dim, 64, 4.0), 1, dim).unwrap(), be.zeros(0, 0).unwrap(), be.zeros(0, 0).unwrap());
        be.matmul_add_rms_norm(&w, &a, &mut y, &mut x, &weight, 1e-5, &mut out).unwrap();
        out
    };
    let seen = be.read(&normed()).unwrap();
    let (mut x, mut y, mut want) =
        (be.upload(&values(dim, 64, 4.0), 1, dim).unwrap(), be.zeros(0, 0).unwrap(), be.zeros(0, 0).unwrap());
    be.matmul(&w, &a, &mut y).unwrap();
    be.add_rms_norm(&mut x, &y, &weight, 1e-5, &mut want).unwrap();
    let want: Vec<f64> = be.read(&want).unwrap().iter().map(|&v| v as f64).collect();
    assert_close(&seen, &want, |i| 1e-5 * want[i].abs().max(1.0), &format!("matmul_add_rms_norm's row on {label}"));
    let fresh = || be.upload(&seen, 1, dim).unwrap();
    // A float matrix (no int8 product) and a product of several matrices.
    let f16 = PackedMatrix::from_f32(TensorType::F16, 8, dim, &values(8 * dim, 65, 1.0)).unwrap();
    let f16 = be.upload_matrix(f16.view()).unwrap();
    let rope =
        RopeParams { n_heads: dim / 32, head_dim: 32, rot_dim: 32, freq_base: 10000.0, style: RopeStyle::Interleaved, pos0: 3 };
    type Op<'a, B> = Box<dyn Fn(&mut <B as Backend>::Tensor) -> <B as Backend>::Tensor + 'a>;
    let ops: Vec<(&str, Op<'_, B>)> = vec![
        ("read", Box::new(|t| be.upload(&be.read(t).unwrap(), 1, dim).unwrap())),
        (
            "matmul of an f16 matrix",
            Box::new(|t| {
                let mut out = be.zeros(0, 0).unwrap();
                be.matmul(&f16, t, &mut out).unwrap();
                out
            }),
        ),
        (
            "rms_norm",
            Box::new(|t| {
                let mut out = be.zeros(0, 0).unwrap();
                be.rms_norm(t, &weight, 1e-5, &mut out).unwrap();
                out
            }),
        ),
        (
            "add (as x)",
            Box::new(|t| {
                be.add(t, &other).unwrap();
                be.upload(&be.read(t).unwrap(), 1, dim).unwrap()
            }),
        ),
        (
            "add (as y)",
            Box::new(|t| {
                let mut x = be.upload(&values(dim, 66, 1.0), 1, dim).unwrap();
                be.add(&mut x, t).unwrap();
                x
            }),
        ),
        (
            "silu_mul",
            Box::new(|t| {
                let mut out = be.zeros(0, 0).unwrap();
                be.silu_mul(t, &other, &mut out).unwrap();
                out
            }),
        ),
        (
            "rope",
            Box::new(|t| {
                be.rope(t, &rope).unwrap();
                be.upload(&be.read(t).unwrap(), 1, dim).unwrap()
            }),
        ),
        (
            "write_rows (as the destination)",
            Box::new(|t| {
                let part = be.upload(&values(dim, 67, 1.0), 1, dim).unwrap();
                let mut two = be.zeros(2, dim).unwrap();
                be.write_rows(t, &mut two, 1).unwrap();
                be.write_rows(&part, &mut two, 0).unwrap();
                two
            }),
        ),
        (
            "slice_rows",
            Box::new(|t| {
                let mut out = be.zeros(0, 0).unwrap();
                be.slice_rows(t, 0, 1, &mut out).unwrap();
                out
            }),
        ),
    ];
    for (name, op) in &ops {
        let got = be.read(&op(&mut normed())).unwrap();
        let want = be.read(&op(&mut fresh())).unwrap();
        assert_eq!(got, want, "{name} of matmul_add_rms_norm's row on {label}");
    }
}

/// `matmul_silu_mul` (a feed-forward step's first half, which a backend may run in one pass) leaves exactly
/// the row that `matmul_many` and then `silu_mul` leave, and that row multiplies exactly as theirs: for one
/// token and for three, gate and up stored together and apart, and
/// activations uploaded or left by `matmul_add_rms_norm` (whose norm factor a backend may leave to products).
pub fn matmul_silu_mul_equals_products_then_silu_mul<B: Backend>(be: &B, label: &str) {
    let cols = 64;
    let norm_w =
        be.upload_matrix(TernMatrix::quantize(TernFormat::T4, cols, 32, &values(cols * 32, 70, 1.0), None).unwrap().view());
    let norm_w = norm_w.unwrap();
    let weight = be.upload(&values(cols, 71, 1.0), 1, cols).unwrap();
    for (ff, f) in [(96, TernFormat::T4), (160, TernFormat::T2)] {
        let mats: Vec<TernMatrix> =
            (0..2).map(|i| TernMatrix::quantize(f, ff, cols, &values(ff * cols, 72 + i, 1.0), None).unwrap()).collect();
        let views: Vec<_> = mats.iter().map(|m| m.view()).collect();
        let together = be.upload_matrices(&views).unwrap();
        let apart: Vec<_> = views.iter().map(|v| be.upload_matrix(*v).unwrap()).collect();
        let down = TernMatrix::quantize(TernFormat::T4, 32, ff, &values(32 * ff, 74, 1.0), None).unwrap();
        let down = be.upload_matrix(down.view()).unwrap();
        for (tokens, normed) in [(1, false), (1, true), (3, false)] {
            // The activations afresh each run: an op may leave a normed row scaled in place.
            let x = || {
                let a = be.upload(&values(tokens * 32, 75, 2.0), tokens, 32).unwrap();
                let mut x = be.upload(&values(tokens * cols, 76, 4.0), tokens, cols).unwrap();
                if !normed {
                    return x;
                }
                let (mut y, mut out) = (be.zeros(0, 0).unwrap(), be.zeros(0, 0).unwrap());
                be.matmul_add_rms_norm(&norm_w, &a, &mut y, &mut x, &weight, 1e-5, &mut out).unwrap();
                out
            };
            let run = |(gate, up): (&B::Matrix, &B::Matrix), fused: bool| {
                let (mut g, mut u, mut h, mut p) =
                    (be.zeros(0, 0).unwrap(), be.zeros(0, 0).unwrap(), be.zeros(0, 0).unwrap(), be.zeros(0, 0).unwrap());
                let x = x();
                if fused {
                    be.matmul_silu_mul((gate, up), &x, (&mut g, &mut u), &mut h).unwrap();
                } else {
                    be.matmul_many(&[gate, up], &x, &mut [&mut g, &mut u]).unwrap();
                    be.silu_mul(&g, &u, &mut h).unwrap();
                }
                be.matmul(&down, &h, &mut p).unwrap();
                [be.read(&h).unwrap(), be.read(&p).unwrap()]
            };
            let want = run((&together[0], &together[1]), false);
            for (how, ws) in [("together", (&together[0], &together[1])), ("apart", (&apart[0], &apart[1]))] {
                let got = run(ws, true);
                for ((g, w), name) in got.iter().zip(&want).zip(["row", "product of the row"]) {
                    let what =
                        format!("matmul_silu_mul's {name}, {f:?} {ff}x{cols} stored {how}, {tokens} tokens (normed {normed})");
                    assert_eq!(g, w, "{what} on {label}");
                }
            }
        }
    }
}
