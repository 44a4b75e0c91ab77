//! x86-64 paths of the quantized dot products: AVX2 (`vpmaddubsw` + `vpmaddwd`) and AVX-512 VNNI
//! (`vpdpbusd` on 256-bit vectors). One generic body; the two entry points differ only in the target features
//! they enable and the instruction that multiplies unsigned by signed bytes.
//!
//! The body takes `R` weight rows and `N` activation rows at once: each weight block is unpacked once for the
//! `N` activations and each activation block loaded once for the `R` weights, and the `R x N` accumulators are
//! independent chains the core can overlap. Block scales are converted eight at a time (`vcvtph2ps`), which the
//! structure-of-arrays layout makes one load, and the Q4_1 minimum and Q4_0 offset terms are vector FMAs over
//! the same groups of eight.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use tern_core::TensorType;

use super::qdot::{ActRow, WeightRow, dot_scalar};
use crate::SimdLevel;

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

/// `w[r] · x[n]` for every pair.
pub(crate) fn dot<const R: usize, const N: usize>(
    level: SimdLevel,
    ty: TensorType,
    w: [WeightRow<'_>; R],
    x: [ActRow<'_>; N],
) -> [[f32; N]; R] {
    let nb = w[0].nb;
    // The kernels read `nb` blocks of quants and, in groups of eight, `nb` rounded up to 8 scales, minimums and
    // activation sums (lanes past `nb` masked off); check that once here so they may use raw loads.
    let (qlen, nb8) = (if ty == TensorType::Q8_0 { 32 } else { 16 }, nb.next_multiple_of(8));
    let fits = w
        .iter()
        .all(|r| r.nb == nb && r.q.len() >= nb * qlen && r.d.len() >= nb8 && (ty != TensorType::Q4_1 || r.m.len() >= nb8))
        && x.iter().all(|r| r.q.len() >= nb * 32 && r.d.len() >= nb8 && r.s.len() >= nb8);
    if !fits {
        return w.map(|wr| dot_scalar(ty, wr, x));
    }
    // Safety: `level` was detected on this CPU (SimdLevel::detect), and the lengths were checked above.
    unsafe {
        match (level, ty) {
            (SimdLevel::Avx512Vnni, TensorType::Q4_0) => dot_vnni::<R, N, Q4_0>(w, x),
            (SimdLevel::Avx512Vnni, TensorType::Q4_1) => dot_vnni::<R, N, Q4_1>(w, x),
            (SimdLevel::Avx512Vnni, TensorType::Q8_0) => dot_vnni::<R, N, Q8_0>(w, x),
            (_, TensorType::Q4_0) => dot_avx2::<R, N, Q4_0>(w, x),
            (_, TensorType::Q4_1) => dot_avx2::<R, N, Q4_1>(w, x),
            (_, TensorType::Q8_0) => dot_avx2::<R, N, Q8_0>(w, x),
            _ => w.map(|wr| dot_scalar(ty, wr, x)),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2<const R: usize, const N: usize, const F: u8>(w: [WeightRow<'_>; R], x: [ActRow<'_>; N]) -> [[f32; N]; R] {
    // Safety: forwarded from the caller.
    unsafe { body::<R, N, F, false>(w, x) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_vnni<const R: usize, const N: usize, const F: u8>(w: [WeightRow<'_>; R], x: [ActRow<'_>; N]) -> [[f32; N]; R] {
    // Safety: forwarded from the caller.
    unsafe { body::<R, N, F, true>(w, x) }
}

/// All-ones lanes then zero lanes: eight floats from `MASK[8 - count..]` keep the first `count` lanes.
pub(crate) static MASK: [u32; 16] = [!0, !0, !0, !0, !0, !0, !0, !0, 0, 0, 0, 0, 0, 0, 0, 0];

/// # Safety
/// The CPU has AVX2, FMA and F16C (and AVX-512 VNNI/VL when `VNNI`); the slices are as long as `dot` checks.
#[inline(always)]
unsafe fn body<const R: usize, const N: usize, const F: u8, const VNNI: bool>(
    w: [WeightRow<'_>; R],
    x: [ActRow<'_>; N],
) -> [[f32; N]; R] {
    unsafe {
        let nb = w[0].nb;
        let low4 = _mm_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        // One accumulator per product, summed in block order whatever `R` and `N` are: a token's result does
        // not depend on how many tokens or rows were computed alongside it.
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        // Vector sums of the minimum (Q4_1) or offset (Q4_0) terms, eight blocks per lane group.
        let mut extra = [[_mm256_setzero_ps(); N]; R];
        // Combined scales `w.d[b] * x.d[b]` of the current group, read back one broadcast per block.
        let mut scales = [[[0f32; 8]; N]; R];
        let mut xd = [_mm256_setzero_ps(); N];
        let mut xv = [_mm256_setzero_si256(); N];
        let mut g = 0;
        while g < nb {
            let count = (nb - g).min(8);
            let mask = _mm256_loadu_ps(MASK.as_ptr().add(8 - count) as *const f32);
            for n in 0..N {
                // Activation scales past the row are zero padding or the next row's: masked off.
                xd[n] = _mm256_and_ps(_mm256_loadu_ps(x[n].d.as_ptr().add(g)), mask);
            }
            for r in 0..R {
                let wd = _mm256_cvtph_ps(_mm_loadu_si128(w[r].d.as_ptr().add(g) as *const __m128i));
                for n in 0..N {
                    _mm256_storeu_ps(scales[r][n].as_mut_ptr(), _mm256_mul_ps(wd, xd[n]));
                }
                if F != Q8_0 {
                    let a =
                        if F == Q4_1 { _mm256_cvtph_ps(_mm_loadu_si128(w[r].m.as_ptr().add(g) as *const __m128i)) } else { wd };
                    // Masked: the lanes past the row may hold another row's (finite or not) values.
                    let a = _mm256_and_ps(a, mask);
                    for n in 0..N {
                        let xs = _mm256_and_ps(_mm256_loadu_ps(x[n].s.as_ptr().add(g)), mask);
                        extra[r][n] = _mm256_fmadd_ps(a, xs, extra[r][n]);
                    }
                }
            }
            for j in 0..count {
                let b = g + j;
                for n in 0..N {
                    xv[n] = _mm256_loadu_si256(x[n].q.as_ptr().add(32 * b) as *const __m256i);
                }
                for r in 0..R {
                    let wv = if F == Q8_0 {
                        _mm256_loadu_si256(w[r].q.as_ptr().add(32 * b) as *const __m256i)
                    } else {
                        let q = _mm_loadu_si128(w[r].q.as_ptr().add(16 * b) as *const __m128i);
                        let lo = _mm_and_si128(q, low4);
                        let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low4);
                        _mm256_set_m128i(hi, lo)
                    };
                    // `vpmaddubsw`/`vpdpbusd` multiply unsigned by signed bytes: 4-bit quants are already
                    // unsigned; signed 8-bit weights move their sign onto the activations.
                    let wu = if F == Q8_0 { _mm256_sign_epi8(wv, wv) } else { wv };
                    for n in 0..N {
                        let xs = if F == Q8_0 { _mm256_sign_epi8(xv[n], wv) } else { xv[n] };
                        let p = if VNNI {
                            _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, xs)
                        } else {
                            _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xs), ones)
                        };
                        let d = _mm256_broadcast_ss(scales[r][n].get_unchecked(j));
                        acc[r][n] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc[r][n]);
                    }
                }
            }
            g += count;
        }
        let mut out = [[0f32; N]; R];
        for r in 0..R {
            for n in 0..N {
                let e = match F {
                    Q4_1 => extra[r][n],
                    Q4_0 => _mm256_mul_ps(extra[r][n], _mm256_set1_ps(-8.0)),
                    _ => _mm256_setzero_ps(),
                };
                out[r][n] = hsum(_mm256_add_ps(acc[r][n], e));
            }
        }
        out
    }
}

#[inline(always)]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}
