//! Dot products of packed weight rows with int8 activation rows: the portable reference path and the
//! dispatch to the SIMD paths. `R` weight rows and `N` activation rows are taken together, so that each block
//! load serves several products.

use half::f16;
use tern_core::TensorType;

use super::quantize_rows::QuantizedRows;
use crate::SimdLevel;
use crate::tensor::CpuMatrix;

/// One weight row's operands: its `nb` blocks' quant bytes, and its block scales and minimums (f16 bits) from
/// its first block to the end of the matrix's padded arrays (so at least seven more than `nb`).
#[derive(Clone, Copy)]
pub(crate) struct WeightRow<'a> {
    pub nb: usize,
    pub q: &'a [u8],
    pub d: &'a [u16],
    pub m: &'a [u16],
}

impl<'a> WeightRow<'a> {
    /// Row `r` of the packed matrix `w` of block type `ty`.
    pub fn of(w: &'a CpuMatrix, ty: TensorType, r: usize) -> Self {
        let nb = w.cols / 32;
        let qb = w.cols * ty.quant_bits() / 8;
        let m = w.min_halves();
        WeightRow {
            nb,
            q: &w.quant_bytes()[r * qb..(r + 1) * qb],
            d: &w.scale_halves()[r * nb..],
            m: if m.is_empty() { m } else { &m[r * nb..] },
        }
    }
}

/// One activation row's operands; `d` and `s` run on to the end of the padded arrays, like [`WeightRow`]'s.
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

impl<'a> ActRow<'a> {
    pub fn of(x: &'a QuantizedRows, t: usize) -> Self {
        let nb = x.row_blocks();
        ActRow { q: &x.qs[t * x.cols..(t + 1) * x.cols], d: &x.d[t * nb..], s: &x.s[t * nb..] }
    }
}

/// `w[r] · x[n]` for each of the `R` weight rows and `N` activation rows.
pub(crate) fn dot<const R: usize, const N: usize>(
    level: SimdLevel,
    ty: TensorType,
    w: [WeightRow<'_>; R],
    x: [ActRow<'_>; N],
) -> [[f32; N]; R] {
    #[cfg(target_arch = "x86_64")]
    if level != SimdLevel::Scalar {
        return super::qdot_x86::dot(level, ty, w, x);
    }
    let _ = level;
    w.map(|wr| dot_scalar(ty, wr, x))
}

fn h(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// The portable path, and the reference the SIMD paths are tested against.
pub(crate) fn dot_scalar<const N: usize>(ty: TensorType, w: WeightRow<'_>, x: [ActRow<'_>; N]) -> [f32; N] {
    let mut out = [0f32; N];
    for (n, xr) in x.iter().enumerate() {
        let mut acc = 0f32;
        for b in 0..w.nb {
            let d = h(w.d[b]);
            let xq = &xr.q[b * 32..(b + 1) * 32];
            let isum: i32 = match ty {
                TensorType::Q8_0 => (0..32).map(|j| (w.q[b * 32 + j] as i8 as i32) * xq[j] as i32).sum(),
                _ => (0..16)
                    .map(|j| {
                        let q = w.q[b * 16 + j];
                        (q & 0x0f) as i32 * xq[j] as i32 + (q >> 4) as i32 * xq[j + 16] as i32
                    })
                    .sum(),
            };
            acc += d * xr.d[b] * isum as f32;
            match ty {
                TensorType::Q4_1 => acc += h(w.m[b]) * xr.s[b],
                TensorType::Q4_0 => acc -= 8.0 * d * xr.s[b],
                _ => {}
            }
        }
        out[n] = acc;
    }
    out
}
