//! tern's structure-of-arrays packing of a weight matrix (see [`tern_core::MatrixView`] for the layout).

use half::{bf16, f16};
use tern_core::{BLOCK_LEN, MatrixView, TensorType};

use crate::gguf_blocks::gguf_bytes;
use crate::{Error, Result};

/// An owned weight matrix in tern's structure-of-arrays layout.
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    pub ty: TensorType,
    pub rows: usize,
    pub cols: usize,
    pub quants: Vec<u32>,
    pub scales: Vec<u32>,
    pub mins: Vec<u32>,
}

fn words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}

fn half_words(halves: &[u16]) -> Vec<u32> {
    halves.chunks(2).map(|c| c[0] as u32 | (c.get(1).copied().unwrap_or(0) as u32) << 16).collect()
}

fn half_at(words: &[u32], i: usize) -> u16 {
    (words[i / 2] >> (16 * (i % 2))) as u16
}

impl PackedMatrix {
    /// Repacks a `rows x cols` tensor stored in GGUF's encoding of `ty`.
    pub fn from_gguf(ty: TensorType, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        if !cols.is_multiple_of(BLOCK_LEN) {
            return Err(Error::RowLength { ty, cols, block: BLOCK_LEN });
        }
        let elements = rows * cols;
        let expected = gguf_bytes(ty, elements)?;
        if bytes.len() != expected {
            return Err(Error::Length { ty, elements, expected, actual: bytes.len() });
        }
        let (quant_bytes, scale_halves, min_halves): (Vec<u8>, Vec<u16>, Vec<u16>) = match ty {
            TensorType::F32 | TensorType::F16 | TensorType::Bf16 => (bytes.to_vec(), vec![], vec![]),
            TensorType::Q4_0 | TensorType::Q8_0 => {
                let bb = if ty == TensorType::Q4_0 { 18 } else { 34 };
                let mut q = Vec::with_capacity(elements / 32 * (bb - 2));
                let mut s = Vec::with_capacity(elements / 32);
                for b in bytes.chunks_exact(bb) {
                    s.push(u16::from_le_bytes([b[0], b[1]]));
                    q.extend_from_slice(&b[2..]);
                }
                (q, s, vec![])
            }
            TensorType::T2
            | TensorType::T3
            | TensorType::T4
            | TensorType::T8
            | TensorType::TR2
            | TensorType::TR3
            | TensorType::TR4 => {
                return Err(Error::Unsupported { op: "GGUF block repacking (tern formats load as TernMatrix)", ty });
            }
            TensorType::Q4_1 => {
                let mut q = Vec::with_capacity(elements / 2);
                let mut s = Vec::with_capacity(elements / 32);
                let mut m = Vec::with_capacity(elements / 32);
                for b in bytes.chunks_exact(20) {
                    s.push(u16::from_le_bytes([b[0], b[1]]));
                    m.push(u16::from_le_bytes([b[2], b[3]]));
                    q.extend_from_slice(&b[4..]);
                }
                (q, s, m)
            }
        };
        Ok(PackedMatrix {
            ty,
            rows,
            cols,
            quants: words(&quant_bytes),
            scales: half_words(&scale_halves),
            mins: half_words(&min_halves),
        })
    }

    /// Packs f32 values as `ty`, quantizing with tern's reference quantizer where `ty` is a block format.
    pub fn from_f32(ty: TensorType, rows: usize, cols: usize, data: &[f32]) -> Result<Self> {
        let bytes = crate::quantize_gguf(ty, data)?;
        Self::from_gguf(ty, rows, cols, &bytes)
    }

    /// The borrowed view that backends upload.
    pub fn view(&self) -> MatrixView<'_> {
        MatrixView {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            quants: &self.quants,
            scales: &self.scales,
            mins: &self.mins,
            row_scales: &[],
        }
    }

    /// Bytes the packed matrix occupies.
    pub fn bytes(&self) -> usize {
        4 * (self.quants.len() + self.scales.len() + self.mins.len())
    }

    /// Reference dequantization of row `r` into `out` (`cols` long), straight from the packed words.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(&self.view(), r, out)
    }
}

/// Reference dequantization of row `r` of any packed matrix into `out` (`cols` long).
pub fn dequantize_row(m: &MatrixView<'_>, r: usize, out: &mut [f32]) {
    let cols = m.cols;
    let row = &m.quants[r * m.row_words()..(r + 1) * m.row_words()];
    let byte = |i: usize| (row[i / 4] >> (8 * (i % 4))) as u8;
    if let Some(format) = m.ty.tern_format() {
        let cw = format.code_words(cols);
        let tern = crate::TernRow {
            format,
            quants: row,
            codes: &m.scales[r * cw..(r + 1) * cw],
            d: f32::from_bits(m.row_scales[2 * r]),
            m: f32::from_bits(m.row_scales[2 * r + 1]),
        };
        tern.dequantize(out);
        return;
    }
    match m.ty {
        TensorType::F32 => {
            for (o, w) in out.iter_mut().zip(row) {
                *o = f32::from_bits(*w);
            }
        }
        TensorType::F16 | TensorType::Bf16 => {
            for (c, o) in out.iter_mut().enumerate().take(cols) {
                let h = (row[c / 2] >> (16 * (c % 2))) as u16;
                *o = if m.ty == TensorType::F16 { f16::from_bits(h).to_f32() } else { bf16::from_bits(h).to_f32() };
            }
        }
        // Dequantized above.
        TensorType::T2
        | TensorType::T3
        | TensorType::T4
        | TensorType::T8
        | TensorType::TR2
        | TensorType::TR3
        | TensorType::TR4 => {}
        TensorType::Q4_0 | TensorType::Q4_1 | TensorType::Q8_0 => {
            let nb = cols / BLOCK_LEN;
            for b in 0..nb {
                let blk = r * nb + b;
                let d = f16::from_bits(half_at(m.scales, blk)).to_f32();
                let o = &mut out[b * 32..(b + 1) * 32];
                match m.ty {
                    TensorType::Q8_0 => {
                        for (j, v) in o.iter_mut().enumerate() {
                            *v = d * (byte(b * 32 + j) as i8) as f32;
                        }
                    }
                    _ => {
                        let (min, offset) =
                            if m.ty == TensorType::Q4_1 { (f16::from_bits(half_at(m.mins, blk)).to_f32(), 0) } else { (0.0, 8) };
                        for j in 0..16 {
                            let q = byte(b * 16 + j);
                            o[j] = d * ((q & 0x0f) as i32 - offset) as f32 + min;
                            o[j + 16] = d * ((q >> 4) as i32 - offset) as f32 + min;
                        }
                    }
                }
            }
        }
    }
}
