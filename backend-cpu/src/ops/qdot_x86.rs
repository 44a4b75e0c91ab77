//! x86-64 paths of the quantized dot products: AVX2 (`vpmaddubsw` + `vpmaddwd`) and AVX-512 VNNI
//! (`vpdpbusd` on 256-bit vectors). One generic body; the two entry points differ only in the target features
//! they enable and the instruction that multiplies unsigned by signed bytes.
#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use tern_core::TensorType;

use super::qdot::{dot_scalar, ActRow, WeightRow};
use crate::SimdLevel;

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

pub(crate) fn dot<const N: usize>(level: SimdLevel, ty: TensorType, w: WeightRow<'_>, x: [ActRow<'_>; N]) -> [f32; N] {
    let nb = w.d.len();
    // The kernels read exactly `nb` blocks from every slice; check that once here so they may use raw loads.
    let qlen = if ty == TensorType::Q8_0 { 32 } else { 16 };
    let fits = w.q.len() >= nb * qlen
        && (ty != TensorType::Q4_1 || w.m.len() >= nb)
        && x.iter().all(|r| r.q.len() >= nb * 32 && r.d.len() >= nb && r.s.len() >= nb);
    if !fits {
        return dot_scalar(ty, w, x);
    }
    // Safety: `level` was detected on this CPU (SimdLevel::detect), and the lengths were checked above.
    unsafe {
        match (level, ty) {
            (SimdLevel::Avx512Vnni, TensorType::Q4_0) => dot_vnni::<N, Q4_0>(w, x),
            (SimdLevel::Avx512Vnni, TensorType::Q4_1) => dot_vnni::<N, Q4_1>(w, x),
            (SimdLevel::Avx512Vnni, TensorType::Q8_0) => dot_vnni::<N, Q8_0>(w, x),
            (_, TensorType::Q4_0) => dot_avx2::<N, Q4_0>(w, x),
            (_, TensorType::Q4_1) => dot_avx2::<N, Q4_1>(w, x),
            (_, TensorType::Q8_0) => dot_avx2::<N, Q8_0>(w, x),
            _ => dot_scalar(ty, w, x),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2<const N: usize, const F: u8>(w: WeightRow<'_>, x: [ActRow<'_>; N]) -> [f32; N] {
    // Safety: forwarded from the caller.
    unsafe { body::<N, F, false>(w, x) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_vnni<const N: usize, const F: u8>(w: WeightRow<'_>, x: [ActRow<'_>; N]) -> [f32; N] {
    // Safety: forwarded from the caller.
    unsafe { body::<N, F, true>(w, x) }
}

/// # Safety
/// The CPU has AVX2, FMA and F16C (and AVX-512 VNNI/VL when `VNNI`); every slice holds `w.d.len()` blocks.
#[inline(always)]
unsafe fn body<const N: usize, const F: u8, const VNNI: bool>(w: WeightRow<'_>, x: [ActRow<'_>; N]) -> [f32; N] {
    unsafe {
        let nb = w.d.len();
        let low4 = _mm_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); N];
        let mut extra = [0f32; N];
        for b in 0..nb {
            let d = h2f(*w.d.get_unchecked(b));
            let wv = if F == Q8_0 {
                _mm256_loadu_si256(w.q.as_ptr().add(32 * b) as *const __m256i)
            } else {
                let q = _mm_loadu_si128(w.q.as_ptr().add(16 * b) as *const __m128i);
                let lo = _mm_and_si128(q, low4);
                let hi = _mm_and_si128(_mm_srli_epi16(q, 4), low4);
                _mm256_set_m128i(hi, lo)
            };
            // `vpmaddubsw`/`vpdpbusd` multiply unsigned by signed bytes: 4-bit quants are already unsigned;
            // signed 8-bit weights move their sign onto the activations.
            let wu = if F == Q8_0 { _mm256_sign_epi8(wv, wv) } else { wv };
            let m = if F == Q4_1 { h2f(*w.m.get_unchecked(b)) } else { 0.0 };
            for n in 0..N {
                let xr = x.get_unchecked(n);
                let mut xv = _mm256_loadu_si256(xr.q.as_ptr().add(32 * b) as *const __m256i);
                if F == Q8_0 {
                    xv = _mm256_sign_epi8(xv, wv);
                }
                let p = if VNNI {
                    _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, xv)
                } else {
                    _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xv), ones)
                };
                let xd = *xr.d.get_unchecked(b);
                acc[n] = _mm256_fmadd_ps(_mm256_set1_ps(d * xd), _mm256_cvtepi32_ps(p), acc[n]);
                if F == Q4_1 {
                    extra[n] += m * *xr.s.get_unchecked(b);
                } else if F == Q4_0 {
                    extra[n] -= 8.0 * d * *xr.s.get_unchecked(b);
                }
            }
        }
        let mut out = [0f32; N];
        for n in 0..N {
            out[n] = hsum(acc[n]) + extra[n];
        }
        out
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// One f16 (as bits) to f32 with F16C.
#[inline(always)]
unsafe fn h2f(bits: u16) -> f32 {
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))) }
}
