//! Activation rows quantized to int8 in blocks of 32, the left operand of every quantized matrix product.

use tern_core::BLOCK_LEN;

use crate::SimdLevel;
use crate::parallel::{SharedMut, for_each};

/// Blocks per parallel task: a prefill's rows are quantized on every thread, a decode row on the caller's.
const BLOCKS_PER_TASK: usize = 512;

/// `rows` activation rows as int8 blocks: `qs` the quants, `d` one scale per block, `s` per block the scale
/// times the sum of the block's quants (what the weights' per-block offsets multiply).
#[derive(Debug, Default)]
pub(crate) struct QuantizedRows {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl QuantizedRows {
    /// Quantizes `rows x cols` values: scale = max |x| / 127 per block, each value rounded to the nearest quant
    /// (ties away from zero), the same on every SIMD level.
    pub fn quantize(&mut self, level: SimdLevel, x: &[f32], rows: usize, cols: usize) {
        let blocks = rows * cols / BLOCK_LEN;
        self.rows = rows;
        self.cols = cols;
        self.qs.resize(rows * cols, 0);
        self.d.resize(blocks, 0.0);
        self.s.resize(blocks, 0.0);
        let (qs, d, s) = (SharedMut(self.qs.as_mut_ptr()), SharedMut(self.d.as_mut_ptr()), SharedMut(self.s.as_mut_ptr()));
        let (x, _) = x[..blocks * BLOCK_LEN].as_chunks::<BLOCK_LEN>();
        let task = |t: usize| {
            let range = t * BLOCKS_PER_TASK..((t + 1) * BLOCKS_PER_TASK).min(blocks);
            for (b, xb) in range.clone().zip(&x[range]) {
                // Safety: block b's quants, scale and sum are written by this task alone, and are in bounds
                // (the vectors were sized for `blocks` blocks above).
                unsafe {
                    let qb = &mut *(qs.at(b * BLOCK_LEN) as *mut [i8; BLOCK_LEN]);
                    let (scale, sum) = quantize_block(level, xb, qb);
                    d.write(b, scale);
                    s.write(b, scale * sum as f32);
                }
            }
        };
        let tasks = blocks.div_ceil(BLOCKS_PER_TASK);
        if tasks == 1 { task(0) } else { for_each(tasks, task) }
    }

    /// Blocks per row.
    pub fn row_blocks(&self) -> usize {
        self.cols / BLOCK_LEN
    }
}

/// One block's quants into `q`; returns its scale and the sum of its quants.
fn quantize_block(level: SimdLevel, x: &[f32; BLOCK_LEN], q: &mut [i8; BLOCK_LEN]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if level != SimdLevel::Scalar {
        // Safety: every level but Scalar has AVX2 (SimdLevel::detect).
        return unsafe { block_avx2(x, q) };
    }
    let _ = level;
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    let mut sum = 0i32;
    for (q, v) in q.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    (d, sum)
}

/// `1 / d`, or 0 where that is not finite (an all-zero block, or one so small that `1 / d` overflows): such a
/// block's quants are all 0, on every level.
fn inverse(d: f32) -> f32 {
    let id = 1.0 / d;
    if d != 0.0 && id.is_finite() { id } else { 0.0 }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn block_avx2(x: &[f32; BLOCK_LEN], q: &mut [i8; BLOCK_LEN]) -> (f32, i32) {
    use std::arch::x86_64::*;
    // Safety: the pointers cover the 32 values of `x` and `q`.
    unsafe {
        let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(x.as_ptr().add(8 * i)));
        let sign = _mm256_set1_ps(-0.0);
        let m = v.iter().fold(_mm256_setzero_ps(), |m, &vi| _mm256_max_ps(m, _mm256_andnot_ps(sign, vi)));
        let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = _mm256_set1_ps(inverse(d));
        // Rounded half away from zero, as `f32::round` on the scalar path: truncate, then step away from zero
        // where the dropped fraction is at least a half (both steps exact).
        let half = _mm256_set1_ps(0.5);
        let qi = v.map(|vi| {
            let r = _mm256_mul_ps(vi, id);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(r);
            let up = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_andnot_ps(sign, _mm256_sub_ps(r, t)), half);
            let step = _mm256_or_ps(_mm256_set1_ps(1.0), _mm256_and_ps(sign, r));
            _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, step)))
        });
        // Packing works within 128-bit halves: the bytes come out in 4-quant groups ordered 0 2 4 6 1 3 5 7
        // (of `qi`'s halves), which the permutation puts back in order.
        let bytes = _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3]));
        let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, ordered);
        let t = _mm256_add_epi32(_mm256_add_epi32(qi[0], qi[1]), _mm256_add_epi32(qi[2], qi[3]));
        let t = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        let t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0b01_00_11_10));
        let t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0b10_11_00_01));
        (d, _mm_cvtsi128_si32(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every level's quants, scales and sums are the scalar path's, ties included (values of a 1/127 grid put
    /// many quants exactly halfway).
    #[test]
    fn levels_quantize_alike() {
        let mut x: Vec<f32> = (0..40 * BLOCK_LEN).map(|i| ((i * 7919) % 2001) as f32 / 997.0 - 1.0).collect();
        for (i, v) in x[..8 * BLOCK_LEN].iter_mut().enumerate() {
            // Blocks whose largest value is 1: v * 127 is exact, and odd multiples of 0.5 / 127 are ties.
            *v = if i % BLOCK_LEN == 0 { 1.0 } else { ((i * 37) % 255) as f32 * 0.5 / 127.0 - 1.0 };
        }
        let mut want = QuantizedRows::default();
        want.quantize(SimdLevel::Scalar, &x, 40, BLOCK_LEN);
        for level in SimdLevel::available() {
            let mut got = QuantizedRows::default();
            got.quantize(level, &x, 40, BLOCK_LEN);
            assert_eq!(got.d, want.d, "{level:?}");
            assert_eq!(got.qs, want.qs, "{level:?}");
            assert_eq!(got.s, want.s, "{level:?}");
        }
    }
}
