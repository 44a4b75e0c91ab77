//! Ops a backend may fuse (the attention inputs; a product with the residual add and norm after it) equal the
//! separate ops they stand for.

use tern_core::{Backend, RopeParams, RopeStyle};
use tern_quant::{TernFormat, TernMatrix};

use crate::{assert_close, values};

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
