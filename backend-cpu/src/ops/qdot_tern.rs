//! Dot products of tern-format weight rows (T2, T3, T4, T8; see docs/FORMATS.md) with int8 activation rows:
//! `sum_b (D sc_b) (x.d_b) sum_i q_bi x_bi - (M mn_b) x.s_b`. A portable reference here, and the x86-64
//! paths, which unpack each block into 32 quant bytes in element order with one broadcast, shift and mask.

use tern_quant::TernRow;

use super::qdot::ActRow;
use crate::SimdLevel;

/// `w[r] · x[n]` for each of the `R` weight rows (of one format, `nb` blocks each) and `N` activation rows.
pub(crate) fn dot<const R: usize, const N: usize>(
    level: SimdLevel,
    w: [TernRow<'_>; R],
    nb: usize,
    x: [ActRow<'_>; N],
) -> [[f32; N]; R] {
    #[cfg(target_arch = "x86_64")]
    if level != SimdLevel::Scalar {
        return x86::dot(level, w, nb, x);
    }
    let _ = level;
    w.map(|row| dot_scalar(row, nb, x))
}

/// The portable path, and the reference the SIMD paths are tested against.
pub(crate) fn dot_scalar<const N: usize>(w: TernRow<'_>, nb: usize, x: [ActRow<'_>; N]) -> [f32; N] {
    let mut out = [0f32; N];
    for (n, xr) in x.iter().enumerate() {
        let mut acc = 0f32;
        for b in 0..nb {
            let (sc, mn) = w.block_codes(b);
            let isum: i32 = (0..32).map(|i| w.quant(b, i) * xr.q[b * 32 + i] as i32).sum();
            acc += w.d * sc as f32 * xr.d[b] * isum as f32;
            acc -= w.m * mn as f32 * xr.s[b];
        }
        out[n] = acc;
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use tern_quant::{TernFormat, TernRow};

    use super::super::qdot::ActRow;
    use super::super::qdot_x86::{MASK, hsum};
    use super::dot_scalar;
    use crate::SimdLevel;

    const T2: u8 = 2;
    const T3: u8 = 3;
    const T4: u8 = 4;
    const T8: u8 = 8;

    pub(super) fn dot<const R: usize, const N: usize>(
        level: SimdLevel,
        w: [TernRow<'_>; R],
        nb: usize,
        x: [ActRow<'_>; N],
    ) -> [[f32; N]; R] {
        // Eight blocks' codes and activation scales are loaded at a time (lanes past `nb` masked off), so the
        // slices must reach `nb` rounded up to 8.
        let nb8 = nb.next_multiple_of(8);
        let format = w[0].format;
        let code_bytes = nb8 * format.code_bits() / 8;
        let fits = w
            .iter()
            .all(|r| r.format == format && r.quants.len() >= nb * format.quant_words() && r.codes.len() * 4 >= code_bytes)
            && x.iter().all(|r| r.q.len() >= nb * 32 && r.d.len() >= nb8 && r.s.len() >= nb8);
        if !fits {
            return w.map(|row| dot_scalar(row, nb, x));
        }
        // Safety: `level` was detected on this CPU, and the lengths were checked above.
        unsafe {
            match (level, format) {
                (SimdLevel::Avx512Vnni, TernFormat::T2) => vnni::<R, N, T2>(w, nb, x),
                (SimdLevel::Avx512Vnni, TernFormat::T3) => vnni::<R, N, T3>(w, nb, x),
                (SimdLevel::Avx512Vnni, TernFormat::T4) => vnni::<R, N, T4>(w, nb, x),
                (SimdLevel::Avx512Vnni, TernFormat::T8) => vnni::<R, N, T8>(w, nb, x),
                (_, TernFormat::T2) => avx2::<R, N, T2>(w, nb, x),
                (_, TernFormat::T3) => avx2::<R, N, T3>(w, nb, x),
                (_, TernFormat::T4) => avx2::<R, N, T4>(w, nb, x),
                (_, TernFormat::T8) => avx2::<R, N, T8>(w, nb, x),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn avx2<const R: usize, const N: usize, const F: u8>(
        w: [TernRow<'_>; R],
        nb: usize,
        x: [ActRow<'_>; N],
    ) -> [[f32; N]; R] {
        // Safety: forwarded from the caller.
        unsafe { body::<R, N, F, false>(w, nb, x) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn vnni<const R: usize, const N: usize, const F: u8>(
        w: [TernRow<'_>; R],
        nb: usize,
        x: [ActRow<'_>; N],
    ) -> [[f32; N]; R] {
        // Safety: forwarded from the caller.
        unsafe { body::<R, N, F, true>(w, nb, x) }
    }

    /// Block `b`'s 32 quants as bytes in element order (unsigned for T2/T3/T4, signed for T8).
    #[inline(always)]
    unsafe fn unpack<const F: u8>(q: *const u8, b: usize) -> __m256i {
        unsafe {
            match F {
                T4 => {
                    let v = _mm_loadu_si128(q.add(16 * b) as *const __m128i);
                    let low4 = _mm_set1_epi8(0x0f);
                    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), low4), _mm_and_si128(v, low4))
                }
                T8 => _mm256_loadu_si256(q.add(32 * b) as *const __m256i),
                _ => {
                    let qb = q.add(4 * F as usize * b);
                    // T2's eight bytes in every 64-bit lane; lane j shifted by 2j holds quants 8j..8j+7.
                    let planes = _mm256_set1_epi64x((qb as *const i64).read_unaligned());
                    let two = _mm256_and_si256(_mm256_srlv_epi64(planes, _mm256_set_epi64x(6, 4, 2, 0)), _mm256_set1_epi8(3));
                    if F == T2 {
                        return two;
                    }
                    // T3: bit i of the third word is quant i's bit 2. Byte i takes the word's byte i / 8, then
                    // tests its bit i % 8.
                    let word = _mm256_set1_epi32((qb.add(8) as *const i32).read_unaligned());
                    let spread = _mm256_shuffle_epi8(
                        word,
                        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
                    );
                    let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bits), bits);
                    _mm256_or_si256(two, _mm256_and_si256(set, _mm256_set1_epi8(4)))
                }
            }
        }
    }

    /// Eight blocks' scale and minimum codes from block `g` as floats.
    #[inline(always)]
    unsafe fn codes8<const F: u8>(codes: *const u8, g: usize) -> (__m256, __m256) {
        unsafe {
            match F {
                T3 | T4 => {
                    let c = _mm256_cvtepu16_epi32(_mm_loadu_si128(codes.add(2 * g) as *const __m128i));
                    let sc = _mm256_and_si256(c, _mm256_set1_epi32(255));
                    (_mm256_cvtepi32_ps(sc), _mm256_cvtepi32_ps(_mm256_srli_epi32(c, 8)))
                }
                _ => {
                    let c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes.add(g) as *const __m128i));
                    if F == T8 {
                        return (_mm256_cvtepi32_ps(c), _mm256_setzero_ps());
                    }
                    let sc = _mm256_and_si256(c, _mm256_set1_epi32(15));
                    (_mm256_cvtepi32_ps(sc), _mm256_cvtepi32_ps(_mm256_srli_epi32(c, 4)))
                }
            }
        }
    }

    /// `R` rows against `N` activation rows: each activation block is loaded once for all the rows, each
    /// weight block unpacked once for all the tokens. The minimum terms go into the same accumulators as the
    /// products (lane by lane; the lanes are summed at the end), so `R x N` registers hold every sum.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C (and AVX-512 VNNI/VL when `VNNI`); the slices are as long as `dot` checks.
    #[inline(always)]
    unsafe fn body<const R: usize, const N: usize, const F: u8, const VNNI: bool>(
        w: [TernRow<'_>; R],
        nb: usize,
        x: [ActRow<'_>; N],
    ) -> [[f32; N]; R] {
        unsafe {
            let q = w.map(|r| r.quants.as_ptr() as *const u8);
            let codes = w.map(|r| r.codes.as_ptr() as *const u8);
            let ones = _mm256_set1_epi16(1);
            let mut acc = [[_mm256_setzero_ps(); N]; R];
            let mut scales = [[[0f32; 8]; N]; R];
            let mut g = 0;
            while g < nb {
                let count = (nb - g).min(8);
                let mask = _mm256_loadu_ps(MASK.as_ptr().add(8 - count) as *const f32);
                for r in 0..R {
                    let (sc, mn) = codes8::<F>(codes[r], g);
                    let sc = _mm256_and_ps(_mm256_mul_ps(sc, _mm256_set1_ps(w[r].d)), mask);
                    let mn = _mm256_and_ps(_mm256_mul_ps(mn, _mm256_set1_ps(w[r].m)), mask);
                    for n in 0..N {
                        let xd = _mm256_loadu_ps(x[n].d.as_ptr().add(g));
                        _mm256_storeu_ps(scales[r][n].as_mut_ptr(), _mm256_mul_ps(sc, xd));
                        if F != T8 {
                            acc[r][n] = _mm256_fnmadd_ps(mn, _mm256_loadu_ps(x[n].s.as_ptr().add(g)), acc[r][n]);
                        }
                    }
                }
                for j in 0..count {
                    let b = g + j;
                    let mut wv = [_mm256_setzero_si256(); R];
                    let mut wu = [_mm256_setzero_si256(); R];
                    for r in 0..R {
                        wv[r] = unpack::<F>(q[r], b);
                        wu[r] = if F == T8 { _mm256_sign_epi8(wv[r], wv[r]) } else { wv[r] };
                    }
                    for n in 0..N {
                        let xv = _mm256_loadu_si256(x[n].q.as_ptr().add(32 * b) as *const __m256i);
                        for r in 0..R {
                            let xs = if F == T8 { _mm256_sign_epi8(xv, wv[r]) } else { xv };
                            let p = if VNNI {
                                _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu[r], xs)
                            } else {
                                _mm256_madd_epi16(_mm256_maddubs_epi16(wu[r], xs), ones)
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
                    out[r][n] = hsum(acc[r][n]);
                }
            }
            out
        }
    }
}
