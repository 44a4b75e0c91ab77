//! The conformance suite (`tern-conformance`) at every SIMD level this CPU offers, plus what only the CPU
//! backend has: its SIMD levels against its scalar path, and threads sharing one backend.

use std::sync::Arc;

use proptest::prelude::*;
use tern_backend_cpu::{CpuBackend, SimdLevel};
use tern_conformance::{assert_close, values};
use tern_core::{Backend, TensorType};
use tern_quant::{PackedMatrix, TernFormat, TernMatrix};

/// One backend per SIMD level, each with two threads so the parallel split is exercised.
fn backends() -> Vec<(String, Arc<CpuBackend>)> {
    SimdLevel::available()
        .into_iter()
        .map(|l| (format!("cpu {}", l.name()), Arc::new(CpuBackend::with_level(2, l).unwrap())))
        .collect()
}

tern_conformance::conformance_suite!(backends);

/// The SIMD levels compute the same integer dot products as the scalar path; only the order of the float
/// sums may differ.
fn check_levels_agree(view: tern_core::MatrixView<'_>, tokens: usize, seed: u64) {
    let cols = view.cols;
    let x = values(tokens * cols, seed + 7, 2.0);
    let run = |be: &CpuBackend| tern_conformance::product(be, &be.upload_matrix(view).unwrap(), &x, tokens, cols);
    let bes = backends();
    let scalar: Vec<f64> = run(&bes[0].1).into_iter().map(f64::from).collect();
    for (label, be) in &bes[1..] {
        let what = format!("{:?} {}x{cols} by {tokens} on {label} against scalar", view.ty, view.rows);
        assert_close(&run(be), &scalar, |i| 1e-4 * scalar[i].abs().max(1.0), &what);
    }
}

const QUANTIZED: [TensorType; 3] = [TensorType::Q4_0, TensorType::Q4_1, TensorType::Q8_0];

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn simd_levels_agree_with_scalar(ty in 0..QUANTIZED.len(), rows in 1usize..40, blocks in 1usize..9, tokens in 1usize..10, seed in any::<u64>()) {
        let cols = blocks * 32;
        let w = PackedMatrix::from_f32(QUANTIZED[ty], rows, cols, &values(rows * cols, seed, 1.0)).unwrap();
        check_levels_agree(w.view(), tokens, seed);
    }

    #[test]
    fn tern_simd_levels_agree_with_scalar(f in 0usize..7, rows in 1usize..20, blocks in 1usize..20, tokens in 1usize..10, seed in any::<u64>()) {
        let f = TernFormat::ALL[f];
        let cols = blocks * f.row_multiple();
        let t = TernMatrix::quantize(f, rows, cols, &values(rows * cols, seed, 1.0), None).unwrap();
        check_levels_agree(t.view(), tokens, seed);
    }
}

/// A token's products are exactly the same in any batch (prefill tiles, decode, tails): a session that reuses
/// its KV cache gives exactly what a fresh prefill of the same tokens gives.
#[test]
fn matmul_is_exactly_batch_invariant() {
    let (rows, cols, tokens) = (37, 320, 11);
    let x = values(tokens * cols, 5, 2.0);
    let tern: Vec<TernMatrix> = TernFormat::ALL
        .iter()
        .map(|&f| TernMatrix::quantize(f, rows, cols, &values(rows * cols, 4, 1.0), None).unwrap())
        .collect();
    let gguf: Vec<PackedMatrix> =
        QUANTIZED.iter().map(|&ty| PackedMatrix::from_f32(ty, rows, cols, &values(rows * cols, 4, 1.0)).unwrap()).collect();
    let views = tern.iter().map(|t| t.view()).chain(gguf.iter().map(|m| m.view()));
    for view in views {
        for (label, be) in backends() {
            let m = be.upload_matrix(view).unwrap();
            let all = tern_conformance::product(&*be, &m, &x, tokens, cols);
            for t in 0..tokens {
                let one = tern_conformance::product(&*be, &m, &x[t * cols..(t + 1) * cols], 1, cols);
                assert_eq!(one, &all[t * rows..(t + 1) * rows], "{:?} token {t} on {label}", view.ty);
            }
        }
    }
}

/// Requests from several threads share one backend (as sessions of one engine do) without blocking each other.
#[test]
fn concurrent_callers_share_a_backend() {
    let be = Arc::new(CpuBackend::new(2).unwrap());
    let w = PackedMatrix::from_f32(TensorType::Q4_1, 300, 256, &values(300 * 256, 1, 1.0)).unwrap();
    let m = Arc::new(be.upload_matrix(w.view()).unwrap());
    let x = values(3 * 256, 2, 1.0);
    let expected = tern_conformance::product(&*be, &m, &x, 3, 256);
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
