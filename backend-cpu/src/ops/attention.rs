//! Causal grouped-query attention over an f32 or f16 KV cache. One task per (query row, head).
//!
//! K and V rows are read where they lie in the cache; an f16 cache's values are converted as they are loaded
//! (eight at a time by F16C on x86-64 with AVX2), so an f16 cache reads half the bytes of an f32 one and
//! writes nothing.

use std::cell::RefCell;

use half::f16;
use tern_core::{AttentionParams, Result};

use super::matmul::dot_f32;
use crate::SimdLevel;
use crate::parallel::{SharedMut, for_each};
use crate::tensor::CpuTensor;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A KV cache's elements, as the tensor stores them.
#[derive(Clone, Copy)]
enum Cache<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> Cache<'a> {
    fn of(t: &'a CpuTensor) -> Self {
        match &t.halves {
            Some(h) => Cache::F16(h),
            None => Cache::F32(&t.data),
        }
    }
}

pub(crate) fn attention(
    level: SimdLevel,
    q: &CpuTensor,
    k: &CpuTensor,
    v: &CpuTensor,
    p: &AttentionParams,
    out: &mut CpuTensor,
) -> Result<()> {
    p.check((q.rows, q.cols), (k.rows, k.cols), (v.rows, v.cols))?;
    let hd = p.head_dim;
    let kv_cols = p.n_kv_heads * hd;
    out.reshape(q.rows, q.cols);
    let group = p.n_heads / p.n_kv_heads;
    let (k, v) = (Cache::of(k), Cache::of(v));
    let dst = SharedMut(out.data.as_mut_ptr());
    for_each(q.rows * p.n_heads, |task| {
        let (t, h) = (task / p.n_heads, task % p.n_heads);
        let g = h / group;
        let qh = &q.data[t * q.cols + h * hd..t * q.cols + (h + 1) * hd];
        let n = p.pos0 + t + 1;
        SCORES.with_borrow_mut(|scores| {
            scores.clear();
            let at = |j: usize| j * kv_cols + g * hd;
            scores.extend((0..n).map(|j| dot(level, qh, k, at(j)) * p.scale));
            let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut sum = 0f32;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let (mut acc, mut wide) = ([0f32; 256], Vec::new());
            let acc = head_buf(&mut acc, &mut wide, hd);
            for (j, &s) in scores.iter().enumerate() {
                axpy(level, acc, s, v, at(j));
            }
            let base = t * q.cols + h * hd;
            for (i, a) in acc.iter().enumerate() {
                // Safety: (t, h) is this task's alone, so elements base..base + hd are written by it only.
                unsafe { dst.write(base + i, a / sum) };
            }
        });
    });
    Ok(())
}

/// `q · cache[at..at + q.len()]`.
fn dot(level: SimdLevel, q: &[f32], cache: Cache<'_>, at: usize) -> f32 {
    let n = q.len();
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 {
        // Safety: the level was detected on this CPU (SimdLevel::detect), and the slices are `n` long.
        return unsafe {
            match cache {
                Cache::F32(c) => x86::dot_f32(q, &c[at..at + n]),
                Cache::F16(c) => x86::dot_f16(q, &c[at..at + n]),
            }
        };
    }
    let _ = level;
    match cache {
        Cache::F32(c) => dot_f32(q, &c[at..at + n]),
        Cache::F16(c) => q.iter().zip(&c[at..at + n]).map(|(a, b)| a * b.to_f32()).sum(),
    }
}

/// `acc += s * cache[at..at + acc.len()]`.
fn axpy(level: SimdLevel, acc: &mut [f32], s: f32, cache: Cache<'_>, at: usize) {
    let n = acc.len();
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 {
        // Safety: as in `dot`.
        unsafe {
            match cache {
                Cache::F32(c) => x86::axpy_f32(acc, s, &c[at..at + n]),
                Cache::F16(c) => x86::axpy_f16(acc, s, &c[at..at + n]),
            }
        }
        return;
    }
    let _ = level;
    match cache {
        Cache::F32(c) => acc.iter_mut().zip(&c[at..at + n]).for_each(|(a, x)| *a += s * x),
        Cache::F16(c) => acc.iter_mut().zip(&c[at..at + n]).for_each(|(a, x)| *a += s * x.to_f32()),
    }
}

/// `hd` zeros: on the stack for heads up to 256, else in `wide`.
fn head_buf<'a>(stack: &'a mut [f32; 256], wide: &'a mut Vec<f32>, hd: usize) -> &'a mut [f32] {
    if hd <= 256 {
        &mut stack[..hd]
    } else {
        wide.resize(hd, 0.0);
        wide
    }
}

/// AVX2 + FMA + F16C: sixteen values a step in two independent sums (dot), eight a step (axpy); an f16 row's
/// eight values are one 16-byte load and one `vcvtph2ps`.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    /// Eight f32 values from `p`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8_f32(p: *const f32) -> __m256 {
        // Safety: the caller passes eight readable values.
        unsafe { _mm256_loadu_ps(p) }
    }

    /// Eight f16 values from `p`, as f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8_f16(p: *const f16) -> __m256 {
        // Safety: the caller passes eight readable values.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(x: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
    }

    macro_rules! dot {
        ($name:ident, $t:ty, $load:ident, $to_f32:expr) => {
            /// `q · c`, both `q.len()` long.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) unsafe fn $name(q: &[f32], c: &[$t]) -> f32 {
                let n = q.len().min(c.len());
                let (qp, cp) = (q.as_ptr(), c.as_ptr());
                let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut i = 0;
                // Safety: every load reads eight values below `n`.
                unsafe {
                    while i + 16 <= n {
                        a0 = _mm256_fmadd_ps(load8_f32(qp.add(i)), $load(cp.add(i)), a0);
                        a1 = _mm256_fmadd_ps(load8_f32(qp.add(i + 8)), $load(cp.add(i + 8)), a1);
                        i += 16;
                    }
                    if i + 8 <= n {
                        a0 = _mm256_fmadd_ps(load8_f32(qp.add(i)), $load(cp.add(i)), a0);
                        i += 8;
                    }
                }
                let to_f32: fn(&$t) -> f32 = $to_f32;
                hsum(_mm256_add_ps(a0, a1)) + (i..n).map(|j| q[j] * to_f32(&c[j])).sum::<f32>()
            }
        };
    }

    macro_rules! axpy {
        ($name:ident, $t:ty, $load:ident, $to_f32:expr) => {
            /// `acc += s * c`, both `acc.len()` long.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) unsafe fn $name(acc: &mut [f32], s: f32, c: &[$t]) {
                let n = acc.len().min(c.len());
                let (ap, cp) = (acc.as_mut_ptr(), c.as_ptr());
                let sv = _mm256_set1_ps(s);
                let mut i = 0;
                // Safety: every load and store touches eight values below `n`.
                unsafe {
                    while i + 8 <= n {
                        _mm256_storeu_ps(ap.add(i), _mm256_fmadd_ps(sv, $load(cp.add(i)), load8_f32(ap.add(i))));
                        i += 8;
                    }
                }
                let to_f32: fn(&$t) -> f32 = $to_f32;
                for j in i..n {
                    acc[j] += s * to_f32(&c[j]);
                }
            }
        };
    }

    dot!(dot_f32, f32, load8_f32, |x| *x);
    dot!(dot_f16, f16, load8_f16, |x| x.to_f32());
    axpy!(axpy_f32, f32, load8_f32, |x| *x);
    axpy!(axpy_f16, f16, load8_f16, |x| x.to_f32());
}
