//! Picking a token on the backend: greedy and top-k/top-p against `pick_token`, and the pick feeding the
//! next embedding.

use tern_core::{Backend, TensorType, TokenSampling, kept_candidates, pick_token};
use tern_quant::PackedMatrix;

use crate::{assert_close, dequantized, values};

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
