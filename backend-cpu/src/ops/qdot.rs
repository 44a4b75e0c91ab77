//! Dot products of quantized weights, interleaved in groups of eight rows ([`crate::groups`]: tern's formats
//! and GGUF's Q4_0, Q4_1, Q8_0), with int8 activation rows: per row `sum_b S_b x.d_b sum_i q_bi x_bi - M_b x.s_b`.
//! A portable path here, and the x86-64 paths (AVX2, and AVX-512 VNNI on 256-bit vectors), in which one vector
//! holds a chunk of four quants of all eight rows: each chunk is multiplied by the activations' four matching
//! bytes broadcast to every lane, so the lanes of one integer sum are the eight rows' block sums, converted and
//! scaled together.
//!
//! Each token's sums are taken in block order by the same instructions whatever the number of tokens alongside
//! it, so a token's result does not depend on the batch it came in.

use tern_core::BLOCK_LEN;

use super::quantize_rows::QuantizedRows;
use crate::SimdLevel;
use crate::groups::{GROUP_ROWS, Group};

/// One activation row's operands: its int8 quants, and per block its scale `d` and `s` (the scale times the
/// block's quant sum).
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

impl<'a> ActRow<'a> {
    pub fn of(x: &'a QuantizedRows, t: usize) -> Self {
        let nb = x.row_blocks();
        let blocks = t * nb..(t + 1) * nb;
        ActRow { q: &x.qs[t * x.cols..(t + 1) * x.cols], d: &x.d[blocks.clone()], s: &x.s[blocks] }
    }
}

/// `out[n][r] = w[r] · x[n]` for the eight rows of group `w` (`nb` blocks each) and the `N` activation rows.
pub(crate) fn dot<const N: usize>(level: SimdLevel, w: Group<'_>, nb: usize, x: [ActRow<'_>; N]) -> [[f32; GROUP_ROWS]; N] {
    // The SIMD kernels read every byte of `nb` blocks and `nb` activation blocks with raw loads. `Groups` and
    // `QuantizedRows` are built to the product's checked column count, so the operands always fit; were they
    // ever short, the portable path's slice indexing would stop at the first read past them.
    #[cfg(target_arch = "x86_64")]
    if level != SimdLevel::Scalar
        && w.data.len() >= w.format.group_bytes(nb)
        && x.iter().all(|r| r.q.len() >= nb * BLOCK_LEN && r.d.len() >= nb && r.s.len() >= nb)
    {
        // Safety: the operands hold `nb` blocks (checked above).
        return unsafe { x86::dot(level, w, nb, x) };
    }
    let _ = level;
    dot_scalar(w, nb, x)
}

/// The portable path: each block of the group unpacked once for all the activation rows, then plain integer
/// dot products the compiler can vectorize for the target (NEON, wasm's simd128).
pub(crate) fn dot_scalar<const N: usize>(w: Group<'_>, nb: usize, x: [ActRow<'_>; N]) -> [[f32; GROUP_ROWS]; N] {
    let mut out = [[0f32; GROUP_ROWS]; N];
    let mut q = [[0i16; BLOCK_LEN]; GROUP_ROWS];
    for b in 0..nb {
        w.unpack(b, &mut q);
        let scales: [(f32, f32); GROUP_ROWS] = std::array::from_fn(|r| w.scales(b, r));
        for (xr, o) in x.iter().zip(out.iter_mut()) {
            let xq = &xr.q[b * BLOCK_LEN..(b + 1) * BLOCK_LEN];
            for (r, row) in q.iter().enumerate() {
                let isum: i32 = row.iter().zip(xq).map(|(&a, &c)| a as i32 * c as i32).sum();
                o[r] += scales[r].0 * xr.d[b] * isum as f32;
                o[r] -= scales[r].1 * xr.s[b];
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use tern_core::{BLOCK_LEN, TernFormat};
    use tern_quant::trellis::{CODE_ADD, CODE_MIDDLE, CODE_MUL};

    use super::ActRow;
    use crate::SimdLevel;
    use crate::groups::{GROUP_ROWS, Group, GroupFormat};

    const T2: u8 = 2;
    const T3: u8 = 3;
    const T4: u8 = 4;
    const T8: u8 = 8;
    /// The trellis formats: `F - TRELLIS` bits per weight.
    const TRELLIS: u8 = 10;
    const TR2: u8 = 12;
    const TR3: u8 = 13;
    const TR4: u8 = 14;

    /// How a block's scales are stored: codes of tern's row units; f16 `S` and `M`; f16 `S` alone, `M = 8 S`
    /// (Q4_0's offset).
    const CODES: u8 = 0;
    const HALVES: u8 = 1;
    const OFFSET8: u8 = 2;

    /// # Safety
    /// `w` and every row of `x` hold at least `nb` blocks, and `level` was detected on this CPU.
    pub(super) unsafe fn dot<const N: usize>(
        level: SimdLevel,
        w: Group<'_>,
        nb: usize,
        x: [ActRow<'_>; N],
    ) -> [[f32; GROUP_ROWS]; N] {
        let vnni = level == SimdLevel::Avx512Vnni;
        // Safety: guaranteed by the caller.
        unsafe {
            match (vnni, w.format) {
                (true, GroupFormat::Tern(TernFormat::T2)) => with_vnni::<N, T2, CODES>(w, nb, x),
                (true, GroupFormat::Tern(TernFormat::T3)) => with_vnni::<N, T3, CODES>(w, nb, x),
                (true, GroupFormat::Tern(TernFormat::T4)) => with_vnni::<N, T4, CODES>(w, nb, x),
                (true, GroupFormat::Tern(TernFormat::T8)) => with_vnni::<N, T8, CODES>(w, nb, x),
                (true, GroupFormat::Tern(TernFormat::TR2)) => with_vnni::<N, TR2, CODES>(w, nb, x),
                (true, GroupFormat::Tern(TernFormat::TR3)) => with_vnni::<N, TR3, CODES>(w, nb, x),
                (true, GroupFormat::Tern(TernFormat::TR4)) => with_vnni::<N, TR4, CODES>(w, nb, x),
                (true, GroupFormat::Q4_0) => with_vnni::<N, T4, OFFSET8>(w, nb, x),
                (true, GroupFormat::Q4_1) => with_vnni::<N, T4, HALVES>(w, nb, x),
                (true, GroupFormat::Q8_0) => with_vnni::<N, T8, HALVES>(w, nb, x),
                (false, GroupFormat::Tern(TernFormat::T2)) => with_avx2::<N, T2, CODES>(w, nb, x),
                (false, GroupFormat::Tern(TernFormat::T3)) => with_avx2::<N, T3, CODES>(w, nb, x),
                (false, GroupFormat::Tern(TernFormat::T4)) => with_avx2::<N, T4, CODES>(w, nb, x),
                (false, GroupFormat::Tern(TernFormat::T8)) => with_avx2::<N, T8, CODES>(w, nb, x),
                (false, GroupFormat::Tern(TernFormat::TR2)) => with_avx2::<N, TR2, CODES>(w, nb, x),
                (false, GroupFormat::Tern(TernFormat::TR3)) => with_avx2::<N, TR3, CODES>(w, nb, x),
                (false, GroupFormat::Tern(TernFormat::TR4)) => with_avx2::<N, TR4, CODES>(w, nb, x),
                (false, GroupFormat::Q4_0) => with_avx2::<N, T4, OFFSET8>(w, nb, x),
                (false, GroupFormat::Q4_1) => with_avx2::<N, T4, HALVES>(w, nb, x),
                (false, GroupFormat::Q8_0) => with_avx2::<N, T8, HALVES>(w, nb, x),
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn with_avx2<const N: usize, const F: u8, const S: u8>(
        w: Group<'_>,
        nb: usize,
        x: [ActRow<'_>; N],
    ) -> [[f32; GROUP_ROWS]; N] {
        // Safety: forwarded from the caller.
        unsafe { body::<N, F, S, false>(w, nb, x) }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn with_vnni<const N: usize, const F: u8, const S: u8>(
        w: Group<'_>,
        nb: usize,
        x: [ActRow<'_>; N],
    ) -> [[f32; GROUP_ROWS]; N] {
        // Safety: forwarded from the caller.
        unsafe { body::<N, F, S, true>(w, nb, x) }
    }

    /// Block sums of the eight rows against `N` activation rows. With VNNI, chunks go straight into 32-bit
    /// lanes (`vpdpbusd`). Without it, T2-T4's chunks are summed in 16-bit lanes (`vpmaddubsw`: at most
    /// 8 chunks x 2 x 15 x 127 = 30480, no saturation) and widened once a block; T8's products reach 2 x 128 x
    /// 127 a chunk (a GGUF Q8_0 quant may be -128) and are widened at every chunk, as are the trellis formats'
    /// (7-bit bytes: 2 x 127 x 128).
    struct Sums<const N: usize, const F: u8, const VNNI: bool> {
        acc: [__m256i; N],
    }

    impl<const N: usize, const F: u8, const VNNI: bool> Sums<N, F, VNNI> {
        /// # Safety
        /// The CPU has AVX2.
        #[inline(always)]
        unsafe fn new() -> Self {
            Sums { acc: [unsafe { _mm256_setzero_si256() }; N] }
        }

        /// Adds chunk `c` of the block (four quants of each row, `w`) times the activations' bytes at `xq[n]`.
        #[inline(always)]
        unsafe fn add(&mut self, w: __m256i, xq: &[*const u8; N], c: usize) {
            unsafe {
                let wu = if F == T8 { _mm256_sign_epi8(w, w) } else { w };
                for (acc, x) in self.acc.iter_mut().zip(xq) {
                    let xb = _mm256_set1_epi32((x.add(4 * c) as *const i32).read_unaligned());
                    let xs = if F == T8 { _mm256_sign_epi8(xb, w) } else { xb };
                    *acc = match (VNNI, F) {
                        (true, _) => _mm256_dpbusd_epi32(*acc, wu, xs),
                        (false, T8) => {
                            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wu, xs), _mm256_set1_epi16(1));
                            _mm256_add_epi32(*acc, p)
                        }
                        (false, _) => _mm256_add_epi16(*acc, _mm256_maddubs_epi16(wu, xs)),
                    };
                }
            }
        }

        /// Adds weight `i`'s codebook words of the eight rows (four 7-bit bytes a lane, `w`) times the activation
        /// byte `i` broadcast to every byte, so each lane gains the activation times the word's byte sum.
        #[inline(always)]
        unsafe fn add_word(&mut self, w: __m256i, xq: &[*const u8; N], i: usize) {
            unsafe {
                for (acc, x) in self.acc.iter_mut().zip(xq) {
                    let xb = _mm256_set1_epi8(x.add(i).cast::<i8>().read());
                    *acc = if VNNI {
                        _mm256_dpbusd_epi32(*acc, w, xb)
                    } else {
                        _mm256_add_epi32(*acc, _mm256_madd_epi16(_mm256_maddubs_epi16(w, xb), _mm256_set1_epi16(1)))
                    };
                }
            }
        }

        /// The 32-bit sums.
        #[inline(always)]
        unsafe fn finish(self) -> [__m256i; N] {
            unsafe {
                if VNNI || F == T8 || F > TRELLIS {
                    self.acc
                } else {
                    self.acc.map(|a| _mm256_madd_epi16(a, _mm256_set1_epi16(1)))
                }
            }
        }
    }

    /// Shifts each 16-bit lane right (`count > 0`) or left (`count < 0`).
    #[inline(always)]
    unsafe fn shift16(v: __m256i, count: i32) -> __m256i {
        unsafe {
            if count >= 0 {
                _mm256_srl_epi16(v, _mm_cvtsi32_si128(count))
            } else {
                _mm256_sll_epi16(v, _mm_cvtsi32_si128(-count))
            }
        }
    }

    /// The group's eight rows against `N` activation rows: quants of `F` bits, block scales stored as `S` says.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C (and AVX-512 VNNI/VL when `VNNI`); the slices are as long as `dot` checks.
    #[inline(always)]
    unsafe fn body<const N: usize, const F: u8, const S: u8, const VNNI: bool>(
        w: Group<'_>,
        nb: usize,
        x: [ActRow<'_>; N],
    ) -> [[f32; GROUP_ROWS]; N] {
        unsafe {
            let (stride, qbytes) = (w.format.stride(), w.format.quant_bytes());
            let (dv, mv) = (_mm256_loadu_ps(w.d.as_ptr()), _mm256_loadu_ps(w.m.as_ptr()));
            let mut acc = [_mm256_setzero_ps(); N];
            for b in 0..nb {
                let q = w.data.as_ptr().add(b * stride);
                let xq: [*const u8; N] = std::array::from_fn(|n| x[n].q.as_ptr().add(b * BLOCK_LEN) as *const u8);
                let load = |v: usize| _mm256_loadu_si256(q.add(32 * v) as *const __m256i);
                let mut sums = Sums::<N, F, VNNI>::new();
                match F {
                    T4 => {
                        let low4 = _mm256_set1_epi8(0x0f);
                        for v in 0..4 {
                            let raw = load(v);
                            sums.add(_mm256_and_si256(raw, low4), &xq, v);
                            sums.add(_mm256_and_si256(_mm256_srli_epi16(raw, 4), low4), &xq, v + 4);
                        }
                    }
                    T8 => {
                        for c in 0..8 {
                            sums.add(load(c), &xq, c);
                        }
                    }
                    TR2 | TR3 | TR4 => {
                        // Weight i's state is the 12-bit window at bit k i of the block's words; vector k is the
                        // next block's first (or, after the last block, the rows' last words).
                        let k = usize::from(F - TRELLIS);
                        let (mask12, mul) = (_mm256_set1_epi32(0xfff), _mm256_set1_epi32(CODE_MUL as i32));
                        let (add, mask7) = (_mm256_set1_epi32(CODE_ADD as i32), _mm256_set1_epi32(0x7f7f_7f7f));
                        for v in 0..k {
                            let (lo, hi) =
                                (load(v), _mm256_loadu_si256(q.add(if v + 1 < k { 32 * (v + 1) } else { stride }).cast()));
                            for i in (32 * v).div_ceil(k)..(32 * (v + 1)).div_ceil(k) {
                                let s = (k * i - 32 * v) as i32;
                                let window = _mm256_or_si256(
                                    _mm256_srl_epi32(lo, _mm_cvtsi32_si128(s)),
                                    _mm256_sll_epi32(hi, _mm_cvtsi32_si128(32 - s)),
                                );
                                let state = _mm256_and_si256(window, mask12);
                                let word = _mm256_and_si256(_mm256_add_epi32(_mm256_mullo_epi32(state, mul), add), mask7);
                                sums.add_word(word, &xq, i);
                            }
                        }
                    }
                    _ => {
                        let (low2, bit2) = (_mm256_set1_epi8(3), _mm256_set1_epi8(4));
                        let high = if F == T3 { load(2) } else { _mm256_setzero_si256() };
                        for v in 0..2 {
                            let raw = load(v);
                            for s in 0..4 {
                                let c = v + 2 * s;
                                let mut quants = _mm256_and_si256(shift16(raw, 2 * s as i32), low2);
                                if F == T3 {
                                    // Bit c of each byte of the third vector is bit 2 of that chunk's quants.
                                    let third = _mm256_and_si256(shift16(high, c as i32 - 2), bit2);
                                    quants = _mm256_or_si256(quants, third);
                                }
                                sums.add(quants, &xq, c);
                            }
                        }
                    }
                }
                let isum = sums.finish();
                let codes = q.add(qbytes);
                let (scale, min) = if S == CODES {
                    let bytes = |at: usize| _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes.add(at) as *const __m128i));
                    let (sc, mn) = match F {
                        T2 => {
                            let c = bytes(0);
                            (_mm256_and_si256(c, _mm256_set1_epi32(15)), _mm256_srli_epi32(c, 4))
                        }
                        T8 => (bytes(0), _mm256_setzero_si256()),
                        TR2 | TR3 | TR4 => (bytes(0), _mm256_setzero_si256()),
                        _ => (bytes(0), bytes(GROUP_ROWS)),
                    };
                    let scale = _mm256_mul_ps(_mm256_cvtepi32_ps(sc), dv);
                    if F > TRELLIS {
                        (scale, _mm256_mul_ps(scale, _mm256_set1_ps(CODE_MIDDLE as f32)))
                    } else {
                        (scale, _mm256_mul_ps(_mm256_cvtepi32_ps(mn), mv))
                    }
                } else {
                    let halves = |at: usize| _mm256_cvtph_ps(_mm_loadu_si128(codes.add(2 * at) as *const __m128i));
                    let scale = halves(0);
                    let min = match (S, F) {
                        (OFFSET8, _) => _mm256_mul_ps(scale, _mm256_set1_ps(8.0)),
                        (_, T8) => _mm256_setzero_ps(),
                        _ => halves(GROUP_ROWS),
                    };
                    (scale, min)
                };
                for n in 0..N {
                    let s = _mm256_mul_ps(scale, _mm256_set1_ps(*x[n].d.get_unchecked(b)));
                    acc[n] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(isum[n]), acc[n]);
                    if F != T8 {
                        acc[n] = _mm256_fnmadd_ps(min, _mm256_set1_ps(*x[n].s.get_unchecked(b)), acc[n]);
                    }
                }
            }
            let mut out = [[0f32; GROUP_ROWS]; N];
            for n in 0..N {
                _mm256_storeu_ps(out[n].as_mut_ptr(), acc[n]);
            }
            out
        }
    }
}
