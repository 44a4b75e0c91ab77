//! tern-format matrices as the CPU kernels read them: rows interleaved in groups of [`GROUP_ROWS`], so that one
//! 256-bit vector holds four consecutive quants of each of eight rows. An int8 dot-product instruction then
//! yields eight rows' partial sums in its eight lanes, and converting and scaling a block's sums takes one
//! instruction for eight outputs, where a row-at-a-time kernel takes one per output.
//!
//! The matrix is repacked once, when it is uploaded; the quants, codes and row units are tern's own
//! (docs/FORMATS.md), only their order changes. For group `g` (rows `8g..8g + 8`; rows past the matrix are zero)
//! and block `b`, `stride` bytes at `(g * nb + b) * stride`: first the quant vectors, 32 bytes each, in which
//! bytes `4r..4r + 4` belong to row `r` of the group, then the block codes of the eight rows.
//!
//! | format | quant vectors | byte `4r + j` of vector `v` | codes |
//! | --- | --- | --- | --- |
//! | T2 | 2 | bits `2s..2s + 2`: quant `4(v + 2s) + j`, `s = 0..4` | 8 bytes, `sc \| mn << 4` |
//! | T3 | 3 | vectors 0 and 1: the low two bits as T2's; vector 2, bit `c`: bit 2 of quant `4c + j` | 8 bytes `sc`, 8 bytes `mn` |
//! | T4 | 4 | low nibble: quant `4v + j`; high nibble: quant `4(v + 4) + j` | 8 bytes `sc`, 8 bytes `mn` |
//! | T8 | 8 | quant `4v + j` (two's complement) | 8 bytes `sc` |
//!
//! So chunk `c` (quants `4c..4c + 4`) of all eight rows is one vector, or one shift and mask of one.

use tern_core::{BLOCK_LEN, TernFormat};
use tern_quant::TernMatrix;

/// Rows per interleaved group.
pub(crate) const GROUP_ROWS: usize = 8;

/// A tern-format matrix with its rows interleaved in groups of eight (see the module documentation).
#[derive(Debug, Clone)]
pub(crate) struct TernGroups {
    pub format: TernFormat,
    pub rows: usize,
    pub cols: usize,
    /// Every group's blocks, `stride` bytes each.
    pub data: Vec<u8>,
    /// Per group, the eight rows' scale units `D`, then their minimum units `M`.
    pub units: Vec<f32>,
}

/// One group's operands, as the kernels take them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Group<'a> {
    pub format: TernFormat,
    /// `nb` blocks, `stride(format)` bytes each.
    pub data: &'a [u8],
    pub d: &'a [f32; GROUP_ROWS],
    pub m: &'a [f32; GROUP_ROWS],
}

/// Bytes of one block's quant vectors for eight rows.
pub(crate) fn quant_bytes(format: TernFormat) -> usize {
    GROUP_ROWS * BLOCK_LEN * format.quant_bits() / 8
}

/// Bytes of one block of a group: its quant vectors, then its codes.
pub(crate) fn stride(format: TernFormat) -> usize {
    let codes = match format {
        TernFormat::T3 | TernFormat::T4 => 2 * GROUP_ROWS,
        TernFormat::T2 | TernFormat::T8 => GROUP_ROWS,
    };
    quant_bytes(format) + codes
}

/// Where quant `i` of row `r` lies in a block's quant vectors: `(byte, shift, bits)` of its low bits, and for T3
/// `(byte, shift)` of its third bit.
fn place(format: TernFormat, r: usize, i: usize) -> ((usize, u32, u32), Option<(usize, u32)>) {
    let (c, j) = (i / 4, i % 4);
    let lane = 4 * r + j;
    match format {
        TernFormat::T2 | TernFormat::T3 => {
            let low = (32 * (c % 2) + lane, 2 * (c / 2) as u32, 2);
            (low, (format == TernFormat::T3).then_some((64 + lane, c as u32)))
        }
        TernFormat::T4 => ((32 * (c % 4) + lane, 4 * (c / 4) as u32, 4), None),
        TernFormat::T8 => ((32 * c + lane, 0, 8), None),
    }
}

impl TernGroups {
    /// `t` with its rows interleaved.
    pub fn new(t: &TernMatrix) -> Self {
        let (format, nb) = (t.format, t.cols / BLOCK_LEN);
        let groups = t.rows.div_ceil(GROUP_ROWS);
        let (stride, qbytes) = (stride(format), quant_bytes(format));
        let mut data = vec![0u8; groups * nb * stride];
        let mut units = vec![0f32; groups * 2 * GROUP_ROWS];
        for row in 0..t.rows {
            let (g, r) = (row / GROUP_ROWS, row % GROUP_ROWS);
            let tr = t.row(row);
            units[g * 2 * GROUP_ROWS + r] = tr.d;
            units[g * 2 * GROUP_ROWS + GROUP_ROWS + r] = tr.m;
            for b in 0..nb {
                let block = &mut data[(g * nb + b) * stride..][..stride];
                for i in 0..BLOCK_LEN {
                    let q = tr.quant(b, i) as u32;
                    let ((byte, shift, bits), third) = place(format, r, i);
                    block[byte] |= ((q & ((1 << bits) - 1)) << shift) as u8;
                    if let Some((byte, shift)) = third {
                        block[byte] |= ((q >> 2 & 1) << shift) as u8;
                    }
                }
                let (sc, mn) = tr.block_codes(b);
                let codes = &mut block[qbytes..];
                match format {
                    TernFormat::T2 => codes[r] = (sc | mn << 4) as u8,
                    TernFormat::T3 | TernFormat::T4 => {
                        codes[r] = sc as u8;
                        codes[GROUP_ROWS + r] = mn as u8;
                    }
                    TernFormat::T8 => codes[r] = sc as u8,
                }
            }
        }
        TernGroups { format, rows: t.rows, cols: t.cols, data, units }
    }

    /// Blocks per row.
    pub fn row_blocks(&self) -> usize {
        self.cols / BLOCK_LEN
    }

    /// Group `g`.
    pub fn group(&self, g: usize) -> Group<'_> {
        let size = self.row_blocks() * stride(self.format);
        let units = &self.units[g * 2 * GROUP_ROWS..][..2 * GROUP_ROWS];
        Group {
            format: self.format,
            data: &self.data[g * size..][..size],
            d: units[..GROUP_ROWS].try_into().expect("eight units"),
            m: units[GROUP_ROWS..].try_into().expect("eight units"),
        }
    }

    /// Row `r` as f32 (`D * sc_b * q_bi - M * mn_b`, as [`tern_quant::TernRow::dequantize`]).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (group, lane) = (self.group(r / GROUP_ROWS), r % GROUP_ROWS);
        for (b, block) in out.chunks_exact_mut(BLOCK_LEN).enumerate() {
            let (sc, mn) = group.codes(b, lane);
            let (scale, offset) = (group.d[lane] * sc as f32, group.m[lane] * mn as f32);
            for (i, o) in block.iter_mut().enumerate() {
                *o = scale * group.quant(b, lane, i) as f32 - offset;
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() + 4 * self.units.len()
    }
}

impl Group<'_> {
    /// Block `b`'s bytes: quant vectors, then codes.
    pub fn block(&self, b: usize) -> &[u8] {
        let stride = stride(self.format);
        &self.data[b * stride..][..stride]
    }

    /// Row `r`'s scale and minimum codes in block `b`.
    pub fn codes(&self, b: usize, r: usize) -> (u32, u32) {
        let codes = &self.block(b)[quant_bytes(self.format)..];
        match self.format {
            TernFormat::T2 => ((codes[r] & 15) as u32, (codes[r] >> 4) as u32),
            TernFormat::T3 | TernFormat::T4 => (codes[r] as u32, codes[GROUP_ROWS + r] as u32),
            TernFormat::T8 => (codes[r] as u32, 0),
        }
    }

    /// Quant `i` of row `r` in block `b` (signed for T8).
    pub fn quant(&self, b: usize, r: usize, i: usize) -> i32 {
        let block = self.block(b);
        let ((byte, shift, bits), third) = place(self.format, r, i);
        let low = (block[byte] as u32 >> shift) & ((1 << bits) - 1);
        match (self.format, third) {
            (TernFormat::T8, _) => low as u8 as i8 as i32,
            (_, Some((byte, shift))) => (low | ((block[byte] as u32 >> shift) & 1) << 2) as i32,
            _ => low as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row read back from the groups is the row of the matrix it was made from, padding rows included
    /// in the shapes (rows not a multiple of eight).
    #[test]
    fn groups_hold_the_matrix_rows() {
        for format in TernFormat::ALL {
            for rows in [1, 8, 13] {
                let cols = 96;
                let values: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1013) as f32 / 500.0 - 1.0).collect();
                let t = TernMatrix::quantize(format, rows, cols, &values, None).unwrap();
                let groups = TernGroups::new(&t);
                let (mut want, mut got) = (vec![0f32; cols], vec![0f32; cols]);
                for r in 0..rows {
                    t.dequantize_row(r, &mut want);
                    groups.dequantize_row(r, &mut got);
                    assert_eq!(got, want, "{format} row {r} of {rows}");
                }
            }
        }
    }
}
