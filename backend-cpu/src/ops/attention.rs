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

    /// Whether rows `0..m` of `n` elements each, placed as `rows` says, lie in the cache: what the SIMD paths,
    /// which read them with raw loads, need. `AttentionParams::check` refuses any query that would read past
    /// the cache, so this always holds; were it ever false, the portable path's slice indexing would stop at
    /// the first read past the cache.
    fn holds(self, rows: Rows, m: usize, n: usize) -> bool {
        let len = match self {
            Cache::F32(c) => c.len(),
            Cache::F16(c) => c.len(),
        };
        m == 0 || rows.first + (m - 1) * rows.stride + n <= len
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
            scores.resize(n, 0.0);
            let rows = Rows { first: g * hd, stride: kv_cols };
            dots(level, qh, k, rows, p.scale, scores);
            let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let sum = exp_sum(level, scores, max);
            let (mut acc, mut wide) = ([0f32; 256], Vec::new());
            let acc = head_buf(&mut acc, &mut wide, hd);
            weighted_sum(level, acc, scores, v, rows);
            let base = t * q.cols + h * hd;
            for (i, a) in acc.iter().enumerate() {
                // Safety: (t, h) is this task's alone, so elements base..base + hd are written by it only.
                unsafe { dst.write(base + i, a / sum) };
            }
        });
    });
    Ok(())
}

/// Where a head's rows lie in the cache: row `j` from element `first + j * stride`.
#[derive(Clone, Copy)]
struct Rows {
    first: usize,
    stride: usize,
}

/// `scores[j] = scale * q · row j` for every `j < scores.len()`.
fn dots(level: SimdLevel, q: &[f32], cache: Cache<'_>, rows: Rows, scale: f32, scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 && cache.holds(rows, scores.len(), q.len()) {
        // Safety: the level was detected on this CPU (SimdLevel::detect), and the rows lie in the cache.
        unsafe {
            match cache {
                Cache::F32(c) => x86::dots_f32(q, c, rows, scale, scores),
                Cache::F16(c) => x86::dots_f16(q, c, rows, scale, scores),
            }
        }
        return;
    }
    let _ = level;
    let n = q.len();
    for (j, s) in scores.iter_mut().enumerate() {
        let at = rows.first + j * rows.stride;
        *s = scale
            * match cache {
                Cache::F32(c) => dot_f32(q, &c[at..at + n]),
                Cache::F16(c) => q.iter().zip(&c[at..at + n]).map(|(a, b)| a * b.to_f32()).sum(),
            };
    }
}

/// Each score `s` becomes `exp(s - max)`; returns their sum.
fn exp_sum(level: SimdLevel, scores: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 {
        // Safety: the level was detected on this CPU (SimdLevel::detect).
        return unsafe { x86::exp_sum(scores, max) };
    }
    let _ = level;
    scores.iter_mut().fold(0.0, |sum, s| {
        *s = (*s - max).exp();
        sum + *s
    })
}

/// `acc = sum over j of weights[j] * row j`, added to what `acc` holds.
fn weighted_sum(level: SimdLevel, acc: &mut [f32], weights: &[f32], cache: Cache<'_>, rows: Rows) {
    #[cfg(target_arch = "x86_64")]
    if level >= SimdLevel::Avx2 && cache.holds(rows, weights.len(), acc.len()) {
        // Safety: as in `dots`.
        unsafe {
            match cache {
                Cache::F32(c) => x86::weighted_sum_f32(acc, weights, c, rows),
                Cache::F16(c) => x86::weighted_sum_f16(acc, weights, c, rows),
            }
        }
        return;
    }
    let _ = level;
    let n = acc.len();
    for (j, &w) in weights.iter().enumerate() {
        let at = rows.first + j * rows.stride;
        match cache {
            Cache::F32(c) => acc.iter_mut().zip(&c[at..at + n]).for_each(|(a, x)| *a += w * x),
            Cache::F16(c) => acc.iter_mut().zip(&c[at..at + n]).for_each(|(a, x)| *a += w * x.to_f32()),
        }
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

/// AVX2 + FMA + F16C: the scores of eight positions at a time (eight independent sums sharing each load of q,
/// reduced together), the weighted sum with up to 64 accumulators held in registers across positions; a single
/// dot takes sixteen values a step in two sums, an axpy eight. An f16 row's eight values are one 16-byte load
/// and one `vcvtph2ps`.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use half::f16;

    use super::Rows;

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
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $name(q: &[f32], c: &[$t]) -> f32 {
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
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $name(acc: &mut [f32], s: f32, c: &[$t]) {
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

    /// `exp(x)` for eight `x <= 0`, to about 1e-7 relative: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `exp(r)` by
    /// the degree-6 polynomial of Cephes' `expf` (its published coefficients), times `2^n` through the exponent
    /// bits. Below -87.3 (where f32's normal range ends) the result is the smallest normal, as good as zero.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn exp8(x: __m256) -> __m256 {
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.3));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
        ));
        // ln 2 in two parts, so that `n * LN2_HI` is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        // `(p r^2 + r) + 1`: the small terms first, as Cephes sums them (`r + 1` first would round `r` away).
        let y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0));
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(y, _mm256_castsi256_ps(scale))
    }

    /// Each `s` becomes `exp(s - max)` (every `s <= max`); returns their sum.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn exp_sum(scores: &mut [f32], max: f32) -> f32 {
        let (n, p, m) = (scores.len(), scores.as_mut_ptr(), _mm256_set1_ps(max));
        let mut sum = _mm256_setzero_ps();
        let mut i = 0;
        // Safety: every load and store touches eight values below `n`.
        unsafe {
            while i + 8 <= n {
                let e = exp8(_mm256_sub_ps(load8_f32(p.add(i)), m));
                _mm256_storeu_ps(p.add(i), e);
                sum = _mm256_add_ps(sum, e);
                i += 8;
            }
        }
        scores[i..].iter_mut().fold(hsum(sum), |total, s| {
            *s = (*s - max).exp();
            total + *s
        })
    }

    /// Eight horizontal sums at once: lane `i` of the result is the sum of `a[i]`'s lanes.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum8(a: [__m256; 8]) -> __m256 {
        let s0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        let s1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
        // s0 holds rows 0-3's low-half sums, then their high-half sums; s1 the same for rows 4-7.
        _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(s0, s1), _mm256_permute2f128_ps::<0x31>(s0, s1))
    }

    /// [`super::dots`] and [`super::weighted_sum`] over rows of one element type.
    ///
    /// The dots take eight positions at a time (heads of a multiple of 8): each eight values of `q` are loaded
    /// once for the eight rows, which are eight independent sums, reduced together into one vector of scores.
    /// The weighted sum keeps up to 64 of the head's accumulators in registers while it walks every position,
    /// so each position costs its loads and FMAs alone; the rest of the head (past a multiple of 8) goes
    /// through `$axpy`.
    macro_rules! over_rows {
        ($dots:ident, $sums:ident, $chunk:ident, $t:ty, $load:ident, $dot:ident, $axpy:ident) => {
            /// # Safety
            /// AVX2, FMA and F16C are present, and rows `0..scores.len()` of `q.len()` elements lie in `c`.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) unsafe fn $dots(q: &[f32], c: &[$t], rows: Rows, scale: f32, scores: &mut [f32]) {
                let (n, m) = (q.len(), scores.len());
                if m == 0 {
                    return;
                }
                let mut j = 0;
                // Safety: every row read lies in `c` (the caller's precondition), every load below `n`.
                unsafe {
                    while n % 8 == 0 && j + 8 <= m {
                        let p: [*const $t; 8] = std::array::from_fn(|i| c.as_ptr().add(rows.first + (j + i) * rows.stride));
                        let mut a = [_mm256_setzero_ps(); 8];
                        for d in (0..n).step_by(8) {
                            let qv = load8_f32(q.as_ptr().add(d));
                            for i in 0..8 {
                                a[i] = _mm256_fmadd_ps(qv, $load(p[i].add(d)), a[i]);
                            }
                        }
                        let sums = _mm256_mul_ps(hsum8(a), _mm256_set1_ps(scale));
                        _mm256_storeu_ps(scores.as_mut_ptr().add(j), sums);
                        j += 8;
                    }
                    for j in j..m {
                        let at = rows.first + j * rows.stride;
                        scores[j] = scale * $dot(q, &c[at..at + n]);
                    }
                }
            }

            /// `acc[..8 V] += sum over j of weights[j] * row j[..8 V]` with the `V` vectors in registers.
            #[inline]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn $chunk<const V: usize>(acc: &mut [f32], weights: &[f32], c: *const $t, stride: usize) {
                // Safety: the caller passes `8 V` accumulators and rows of `8 V` readable values.
                unsafe {
                    let mut regs: [__m256; V] = std::array::from_fn(|v| load8_f32(acc.as_ptr().add(8 * v)));
                    for (j, &w) in weights.iter().enumerate() {
                        let (row, wv) = (c.add(j * stride), _mm256_set1_ps(w));
                        for v in 0..V {
                            regs[v] = _mm256_fmadd_ps(wv, $load(row.add(8 * v)), regs[v]);
                        }
                    }
                    for v in 0..V {
                        _mm256_storeu_ps(acc.as_mut_ptr().add(8 * v), regs[v]);
                    }
                }
            }

            /// # Safety
            /// AVX2, FMA and F16C are present, and rows `0..weights.len()` of `acc.len()` elements lie in `c`.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub(super) unsafe fn $sums(acc: &mut [f32], weights: &[f32], c: &[$t], rows: Rows) {
                let (n, m) = (acc.len(), weights.len());
                if m == 0 {
                    return;
                }
                let mut d = 0;
                // Safety: every row read lies in `c` (the caller's precondition); each chunk stays below `n`.
                unsafe {
                    let rows_at = |d: usize| c.as_ptr().add(rows.first + d);
                    while d + 64 <= n {
                        $chunk::<8>(&mut acc[d..], weights, rows_at(d), rows.stride);
                        d += 64;
                    }
                    while d + 8 <= n {
                        $chunk::<1>(&mut acc[d..], weights, rows_at(d), rows.stride);
                        d += 8;
                    }
                    if d < n {
                        for (j, &w) in weights.iter().enumerate() {
                            let at = rows.first + j * rows.stride;
                            $axpy(&mut acc[d..], w, &c[at + d..at + n]);
                        }
                    }
                }
            }
        };
    }

    dot!(dot_f32, f32, load8_f32, |x| *x);
    dot!(dot_f16, f16, load8_f16, |x| x.to_f32());
    axpy!(axpy_f32, f32, load8_f32, |x| *x);
    axpy!(axpy_f16, f16, load8_f16, |x| x.to_f32());
    over_rows!(dots_f32, weighted_sum_f32, chunk_f32, f32, load8_f32, dot_f32, axpy_f32);
    over_rows!(dots_f16, weighted_sum_f16, chunk_f16, f16, load8_f16, dot_f16, axpy_f16);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector `exp` of every level against f64's (worst relative error 7.7e-8 with AVX2, 5.7e-8 for Rust's
    /// `f32::exp`), over the range attention's scores take (`s - max <= 0`),
    /// past the end of f32's normal range, with a tail the vectors do not cover.
    #[test]
    fn exp_sum_matches_f64_exp() {
        let xs: Vec<f32> = (0..1003).map(|i| -(i as f32) * 0.0973).collect();
        for level in SimdLevel::available() {
            let mut got = xs.clone();
            let sum = exp_sum(level, &mut got, 0.0);
            let mut want_sum = 0f64;
            for (x, g) in xs.iter().zip(&got) {
                let want = (*x as f64).exp();
                want_sum += want;
                let err = (*g as f64 - want).abs();
                assert!(err <= 1e-7 * want + 2e-38, "{level:?}: exp({x}) = {g}, want {want}");
            }
            assert!((sum as f64 - want_sum).abs() <= 1e-6 * want_sum, "{level:?}: sum {sum}, want {want_sum}");
        }
    }
}
