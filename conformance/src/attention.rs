//! Causal grouped-query attention against an f64 reference.

use tern_core::{AttentionParams, Backend, TensorType};

use crate::{CACHE_TYPES, as_stored, assert_close, cache_of, values};

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
/// position 0, continuations after cached positions, a context longer than one 128-position tile, and decode
/// steps over contexts a GPU splits into spans (257 positions: a span and one more; 701: three spans); over
/// f32 caches and f16 ones (whose reference takes the values as the cache rounded them).
pub fn attention_matches_reference<B: Backend>(be: &B, label: &str) {
    for ty in CACHE_TYPES {
        // Heads of 36 are read four values a load whatever the cache; 2000 and 6200 positions are split decodes
        // of more spans than one merge pass takes at a time.
        for (n_heads, n_kv_heads, hd) in [(6, 2, 32), (4, 4, 32), (4, 1, 32), (2, 1, 128), (2, 2, 36)] {
            // Rows of one prefill workgroup on both sides of a tile's end: (126, 5).
            for (pos0, rows) in [(0, 7), (9, 3), (20, 1), (126, 5), (130, 2), (256, 1), (700, 1), (2000, 1), (6200, 1)] {
                attention_case(be, label, ty, (n_heads, n_kv_heads, hd), (pos0, rows));
            }
        }
        // Heads of 256, whose prefill takes fewer rows a workgroup.
        for (pos0, rows) in [(0, 7), (9, 3), (700, 1)] {
            attention_case(be, label, ty, (2, 1, 256), (pos0, rows));
        }
    }
}

fn attention_case<B: Backend>(
    be: &B,
    label: &str,
    ty: TensorType,
    (n_heads, n_kv_heads, hd): (usize, usize, usize),
    (pos0, rows): (usize, usize),
) {
    let p = AttentionParams { n_heads, n_kv_heads, head_dim: hd, pos0, scale: 1.0 / (hd as f32).sqrt() };
    let len = pos0 + rows;
    let cache_rows = len + 4; // capacity past the used length must be ignored
    let q = values(rows * n_heads * hd, 7, 2.0);
    let k = values(cache_rows * n_kv_heads * hd, 8, 2.0);
    let v = values(cache_rows * n_kv_heads * hd, 9, 1.0);
    let want = attention_reference(&q, &as_stored(&k, ty), &as_stored(&v, ty), rows, &p);
    let (qt, kt, vt) = (
        be.upload(&q, rows, n_heads * hd).unwrap(),
        cache_of(be, &k, cache_rows, n_kv_heads * hd, ty),
        cache_of(be, &v, cache_rows, n_kv_heads * hd, ty),
    );
    let mut out = be.zeros(0, 0).unwrap();
    be.attention(&qt, &kt, &vt, &p, &mut out).unwrap();
    let what = format!("attention {n_heads}/{n_kv_heads} heads of {hd}, pos0 {pos0}, {rows} rows, {ty} cache on {label}");
    assert_close(&be.read(&out).unwrap(), &want, |_| 1e-5, &what);
}

pub fn attention_rejects_positions_past_the_cache<B: Backend>(be: &B, _label: &str) {
    let p = AttentionParams { n_heads: 2, n_kv_heads: 1, head_dim: 32, pos0: 5, scale: 0.1 };
    let q = be.upload(&values(2 * 64, 1, 1.0), 2, 64).unwrap();
    let kv = be.upload(&values(6 * 32, 2, 1.0), 6, 32).unwrap();
    let mut out = be.zeros(0, 0).unwrap();
    assert!(be.attention(&q, &kv, &kv, &p, &mut out).is_err(), "positions 5..7 need 7 cached rows");
}

/// An f16 KV cache holds what is written to it rounded to f16, reads back as f32, and is refused by every op
/// that is not the cache's own; and caches of other types are refused.
pub fn f16_caches_round_and_stay_caches<B: Backend>(be: &B, label: &str) {
    let src = values(2 * 8, 15, 3.0);
    let mut cache = be.zeros_cache(5, 8, TensorType::F16).unwrap();
    assert_eq!(be.shape(&cache), (5, 8));
    be.write_rows(&be.upload(&src, 2, 8).unwrap(), &mut cache, 3).unwrap();
    let got = be.read(&cache).unwrap();
    assert!(got[..24].iter().all(|&v| v == 0.0), "rows before the written ones stay zero on {label}");
    assert_eq!(&got[24..], &as_stored(&src, TensorType::F16)[..], "f16 rows on {label}");
    assert!(be.write_rows(&be.upload(&src, 2, 8).unwrap(), &mut cache, 4).is_err(), "rows 4..6 overflow 5");
    let row = be.upload(&values(8, 16, 1.0), 1, 8).unwrap();
    let mut out = be.zeros(0, 0).unwrap();
    assert!(be.slice_rows(&cache, 4, 1, &mut out).is_err(), "slice_rows of an f16 cache on {label}");
    assert!(be.add(&mut out, &cache).is_err(), "add of an f16 cache on {label}");
    assert!(be.rms_norm(&cache, &row, 1e-5, &mut out).is_err(), "rms_norm of an f16 cache on {label}");
    assert!(be.silu_mul(&row, &row, &mut cache).is_err(), "silu_mul into an f16 cache on {label}");
    assert!(be.write_rows(&cache, &mut out, 0).is_err(), "an f16 cache as write_rows' source on {label}");
    assert!(be.zeros_cache(4, 8, TensorType::Q8_0).is_err(), "a Q8_0 cache on {label}");
    let p = AttentionParams { n_heads: 2, n_kv_heads: 1, head_dim: 8, pos0: 0, scale: 0.3 };
    let q = be.upload(&values(16, 17, 1.0), 1, 16).unwrap();
    assert!(be.attention(&q, &cache, &cache, &p, &mut out).is_ok(), "attention over f16 caches on {label}");
    assert!(be.attention(&cache, &cache, &cache, &p, &mut out).is_err(), "an f16 query on {label}");
}
