//! Matrix products: every GGUF and tern type against the reference, model-sized shapes, batches, matrices
//! stored together, and products of other ops' outputs.

use tern_core::{AttentionParams, Backend, Error, RopeParams, RopeStyle, TensorType};
use tern_quant::{PackedMatrix, TernFormat, TernMatrix};

use crate::{TYPES, assert_close, dequantized, product, reference, values};

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
/// within the int8 activation rounding bound of [`reference()`]. Returns the products.
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
        let t = TernMatrix::quantize(f, 9, 192, &values(9 * 192, 5, 1.0), None).unwrap();
        let x = values(7 * 192, 6, 2.0);
        let m = be.upload_matrix(t.view()).unwrap();
        let mut out = be.zeros(0, 0).unwrap();
        be.embed(&m, &[8, 0], &mut out).unwrap();
        let mut row = vec![0f32; 192];
        t.dequantize_row(8, &mut row);
        let want: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        let tol = 2.4e-7 * want.iter().fold(0f64, |m, v| m.max(v.abs()));
        assert_close(&be.read(&out).unwrap()[..192], &want, |_| tol, &format!("{f:?} embed on {label}"));
        // Batch invariance as in `matmul_is_batch_invariant`.
        let (_, bound) = reference(&t.dequantize(), &x, 9, 192, true);
        let all = product(be, &m, &x, 7, 192);
        for tk in 0..7 {
            let one = product(be, &m, &x[tk * 192..(tk + 1) * 192], 1, 192);
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
