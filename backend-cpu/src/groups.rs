//! Quantized matrices as the CPU kernels read them: rows interleaved in groups of [`GROUP_ROWS`], so that one
//! 256-bit vector holds four consecutive quants of each of eight rows. An int8 dot-product instruction then
//! yields eight rows' partial sums in its eight lanes, and converting and scaling a block's sums takes one
//! instruction for eight outputs, where a row-at-a-time kernel takes one per output.
//!
//! Every block format is repacked so once, when it is uploaded: tern's formats (docs/FORMATS.md) and GGUF's
//! Q4_0, Q4_1 and Q8_0. The quants and scales are the format's own, only their order changes. For group `g`
//! (rows `8g..8g + 8`; rows past the matrix are zero) and block `b`, `stride` bytes at `(g * nb + b) * stride`:
//! first the quant vectors, 32 bytes each, in which bytes `4r..4r + 4` belong to row `r` of the group, then
//! the block scales of the eight rows.
//!
//! | format | quant vectors | byte `4r + j` of vector `v` |
//! | --- | --- | --- |
//! | T2 | 2 | bits `2s..2s + 2`: quant `4(v + 2s) + j`, `s = 0..4` |
//! | T3 | 3 | vectors 0 and 1: the low two bits as T2's; vector 2, bit `c`: bit 2 of quant `4c + j` |
//! | T4, Q4_0, Q4_1 | 4 | low nibble: quant `4v + j`; high nibble: quant `4(v + 4) + j` |
//! | T8, Q8_0 | 8 | quant `4v + j` (two's complement) |
//!
//! So chunk `c` (quants `4c..4c + 4`) of all eight rows is one vector, or one shift and mask of one. Every
//! format's block `b` of row `r` is then `S q - O` with
//!
//! | format | block scales of the eight rows | `S` | `O` |
//! | --- | --- | --- | --- |
//! | T2 | 8 bytes, `sc \| mn << 4` | `D sc` | `M mn` |
//! | T3, T4 | 8 bytes `sc`, then 8 bytes `mn` | `D sc` | `M mn` |
//! | T8 | 8 bytes `sc` | `D sc` | 0 |
//! | Q4_0 | 8 f16 `d` | `d` | `8d` |
//! | Q4_1 | 8 f16 `d`, then 8 f16 `-m` | `d` | `-m` |
//! | Q8_0 | 8 f16 `d` | `d` | 0 |
//!
//! where `D` and `M` are tern's row units (docs/FORMATS.md), kept per group (`units`).
//!
//! The trellis formats (TR2, TR3, TR4: `k` bits per weight) keep each row's bit stream as it is: block `b`'s
//! `k` quant vectors hold, in lane `r`, row `r`'s stream words `k b..k b + k`, and one more vector after the
//! last block holds every row's last word (a weight's 12-bit window can reach into the next block's first
//! word). The block's scales are the eight rows' scale codes `sc` (of the 64 weights the block is in), `S = D sc`,
//! `O = 0`, and `q` is the state's codebook value (`-254..=254`). The x86 kernels take the codebook word's
//! byte sum instead (`q + 254`, unsigned, as an int8 dot product needs) and subtract `254 S` per activation sum.

use half::f16;
use tern_core::{BLOCK_LEN, MatrixView, TensorType, TernFormat};
use tern_quant::TernMatrix;

use crate::parallel::{SharedMut, for_each};

/// Rows per interleaved group.
pub(crate) const GROUP_ROWS: usize = 8;

/// A block format the groups hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupFormat {
    Tern(TernFormat),
    Q4_0,
    Q4_1,
    Q8_0,
}

impl GroupFormat {
    /// The format of block type `ty`, if it is one.
    pub fn of(ty: TensorType) -> Option<Self> {
        match ty {
            TensorType::Q4_0 => Some(GroupFormat::Q4_0),
            TensorType::Q4_1 => Some(GroupFormat::Q4_1),
            TensorType::Q8_0 => Some(GroupFormat::Q8_0),
            _ => ty.tern_format().map(GroupFormat::Tern),
        }
    }

    /// Bits per quant.
    pub fn quant_bits(self) -> usize {
        match self {
            GroupFormat::Tern(f) => f.quant_bits(),
            GroupFormat::Q4_0 | GroupFormat::Q4_1 => 4,
            GroupFormat::Q8_0 => 8,
        }
    }

    /// Whether the block scales are f16 values (GGUF's types) rather than codes of tern's row units.
    pub fn half_scales(self) -> bool {
        !matches!(self, GroupFormat::Tern(_))
    }

    /// Bytes of one block's quant vectors for eight rows.
    pub fn quant_bytes(self) -> usize {
        GROUP_ROWS * BLOCK_LEN * self.quant_bits() / 8
    }

    /// Whether this is a trellis format (a bit stream per row, see the module documentation).
    pub fn is_trellis(self) -> bool {
        matches!(self, GroupFormat::Tern(f) if f.is_trellis())
    }

    /// Bytes of one group of `nb` blocks: the blocks, and for the trellis formats the rows' last stream words.
    pub fn group_bytes(self, nb: usize) -> usize {
        nb * self.stride() + if self.is_trellis() { 4 * GROUP_ROWS } else { 0 }
    }

    /// Bytes of one block of a group: its quant vectors, then its scales.
    pub fn stride(self) -> usize {
        let scales = match self {
            GroupFormat::Tern(TernFormat::T3 | TernFormat::T4) => 2 * GROUP_ROWS,
            // T2's and T8's scale codes, the trellis formats' (one byte a row each).
            GroupFormat::Tern(_) => GROUP_ROWS,
            GroupFormat::Q4_1 => 4 * GROUP_ROWS,
            GroupFormat::Q4_0 | GroupFormat::Q8_0 => 2 * GROUP_ROWS,
        };
        self.quant_bytes() + scales
    }
}

/// A quantized matrix with its rows interleaved in groups of eight (see the module documentation).
#[derive(Debug, Clone)]
pub(crate) struct Groups {
    pub format: GroupFormat,
    pub rows: usize,
    pub cols: usize,
    /// Every group's blocks, `stride` bytes each.
    pub data: Vec<u8>,
    /// Per group, the eight rows' scale units `D`, then their minimum units `M` (zero for GGUF's types).
    pub units: Vec<[f32; GROUP_ROWS]>,
}

/// One group's operands, as the kernels take them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Group<'a> {
    pub format: GroupFormat,
    /// `nb` blocks, `format.stride()` bytes each.
    pub data: &'a [u8],
    pub d: &'a [f32; GROUP_ROWS],
    pub m: &'a [f32; GROUP_ROWS],
}

/// Row `r`'s block `b` as the groups store it: its 32 quants (as stored: unsigned, or two's complement for
/// 8 bits) and its scale bytes (`format.stride() - quant_bytes` of them across the eight rows' slots).
trait SourceRows {
    fn quants(&self, r: usize, b: usize) -> [u8; BLOCK_LEN];
    /// Writes row `r`'s block-`b` scales into its slots of `scales` (slot `r` of each eight-row array).
    fn scales(&self, r: usize, b: usize, scales: &mut [u8]);
    /// Row `r`'s units `(D, M)`.
    fn units(&self, r: usize) -> (f32, f32);
}

impl SourceRows for TernMatrix {
    fn quants(&self, r: usize, b: usize) -> [u8; BLOCK_LEN] {
        // docs/FORMATS.md: T2's byte k holds quants k, k + 8, k + 16, k + 24 in its bit pairs (T3's third word
        // then bit i of quant i), T4's byte j quants j and j + 16 in its nibbles, T8's byte i quant i.
        let qw = self.format.quant_words();
        let words = &self.row(r).quants[b * qw..(b + 1) * qw];
        let byte = |i: usize| (words[i / 4] >> (8 * (i % 4))) as u8;
        match self.format {
            TernFormat::T8 => std::array::from_fn(byte),
            TernFormat::T4 => std::array::from_fn(|i| if i < 16 { byte(i) & 15 } else { byte(i - 16) >> 4 }),
            TernFormat::T2 | TernFormat::T3 => {
                let third = if self.format == TernFormat::T3 { words[2] } else { 0 };
                std::array::from_fn(|i| (byte(i % 8) >> (2 * (i / 8)) & 3) | ((third >> i & 1) << 2) as u8)
            }
            // `Groups::from_tern` copies trellis streams whole (`Groups::trellis`) and never asks for their quants:
            // this impl is only reached through `Groups::new`, which only scalar-format matrices take.
            TernFormat::TR2 | TernFormat::TR3 | TernFormat::TR4 => unreachable!("trellis rows are copied whole"),
        }
    }

    fn scales(&self, r: usize, b: usize, scales: &mut [u8]) {
        source_scales(&self.row(r), b, r, scales)
    }

    fn units(&self, r: usize) -> (f32, f32) {
        let row = self.row(r);
        (row.d, row.m)
    }
}

/// Row `r`'s block-`b` codes written into its slots of a block's scales.
fn source_scales(row: &tern_quant::TernRow<'_>, b: usize, r: usize, scales: &mut [u8]) {
    let (sc, mn) = row.block_codes(b);
    match row.format {
        TernFormat::T2 => scales[r % GROUP_ROWS] = (sc | mn << 4) as u8,
        TernFormat::T3 | TernFormat::T4 => {
            scales[r % GROUP_ROWS] = sc as u8;
            scales[GROUP_ROWS + r % GROUP_ROWS] = mn as u8;
        }
        TernFormat::T8 | TernFormat::TR2 | TernFormat::TR3 | TernFormat::TR4 => scales[r % GROUP_ROWS] = sc as u8,
    }
}

/// A GGUF block matrix in tern's structure-of-arrays packing ([`tern_quant::PackedMatrix`]).
struct Packed<'a> {
    ty: TensorType,
    cols: usize,
    quants: &'a [u8],
    scales: &'a [u16],
    mins: &'a [u16],
}

impl SourceRows for Packed<'_> {
    fn quants(&self, r: usize, b: usize) -> [u8; BLOCK_LEN] {
        let nb = self.cols / BLOCK_LEN;
        if self.ty == TensorType::Q8_0 {
            return self.quants.as_chunks::<BLOCK_LEN>().0[r * nb + b];
        }
        // GGUF's 4-bit blocks: byte j holds quant j (low nibble) and quant j + 16 (high).
        let q = &self.quants[(r * nb + b) * 16..][..16];
        std::array::from_fn(|i| if i < 16 { q[i] & 15 } else { q[i - 16] >> 4 })
    }

    fn scales(&self, r: usize, b: usize, scales: &mut [u8]) {
        let nb = self.cols / BLOCK_LEN;
        let slot = r % GROUP_ROWS;
        scales[2 * slot..][..2].copy_from_slice(&self.scales[r * nb + b].to_le_bytes());
        if self.ty == TensorType::Q4_1 {
            let m = -f16::from_bits(self.mins[r * nb + b]);
            scales[2 * (GROUP_ROWS + slot)..][..2].copy_from_slice(&m.to_bits().to_le_bytes());
        }
    }

    fn units(&self, _: usize) -> (f32, f32) {
        (0.0, 0.0)
    }
}

impl Groups {
    /// A tern-format matrix, its rows interleaved.
    pub fn from_tern(t: &TernMatrix) -> Self {
        if t.format.is_trellis() {
            return Self::trellis(t);
        }
        Self::new(GroupFormat::Tern(t.format), t.rows, t.cols, t)
    }

    /// A trellis-format matrix: each row's stream words and scale codes, interleaved.
    fn trellis(t: &TernMatrix) -> Self {
        let (format, nb, rows) = (GroupFormat::Tern(t.format), t.row_blocks(), t.rows);
        let (k, stride, size, qbytes) = (t.format.quant_words(), format.stride(), format.group_bytes(nb), format.quant_bytes());
        let groups = rows.div_ceil(GROUP_ROWS);
        let mut data = vec![0u8; groups * size];
        let mut units = vec![[0f32; GROUP_ROWS]; groups * 2];
        for (g, (data, units)) in data.chunks_exact_mut(size).zip(units.chunks_exact_mut(2)).enumerate() {
            for (r, d) in units[0].iter_mut().enumerate().take(rows - g * GROUP_ROWS) {
                let row = t.row(g * GROUP_ROWS + r);
                *d = row.d;
                for (i, &word) in row.quants.iter().enumerate() {
                    // Word i is block i / k's vector i % k; the last word is the vector after the last block.
                    let at = (i / k) * stride + 32 * (i % k) + 4 * r;
                    data[at..at + 4].copy_from_slice(&word.to_le_bytes());
                }
                for b in 0..nb {
                    source_scales(&row, b, r, &mut data[b * stride + qbytes..(b + 1) * stride]);
                }
            }
        }
        Groups { format, rows, cols: t.cols, data, units }
    }

    /// A GGUF block matrix (Q4_0, Q4_1 or Q8_0, already validated), its rows interleaved; `None` for other
    /// types.
    pub fn from_gguf(m: &MatrixView<'_>) -> Option<Self> {
        let format = GroupFormat::of(m.ty).filter(|f| f.half_scales())?;
        let packed = Packed {
            ty: m.ty,
            cols: m.cols,
            quants: bytemuck::cast_slice(m.quants),
            scales: bytemuck::cast_slice(m.scales),
            mins: bytemuck::cast_slice(m.mins),
        };
        Some(Self::new(format, m.rows, m.cols, &packed))
    }

    fn new(format: GroupFormat, rows: usize, cols: usize, source: &(impl SourceRows + Sync)) -> Self {
        let nb = cols / BLOCK_LEN;
        let groups = rows.div_ceil(GROUP_ROWS);
        let (stride, qbytes, bits) = (format.stride(), format.quant_bytes(), format.quant_bits());
        let mut data = vec![0u8; groups * nb * stride];
        let mut units = vec![[0f32; GROUP_ROWS]; groups * 2];
        let (data_at, units_at) = (SharedMut(data.as_mut_ptr()), SharedMut(units.as_mut_ptr()));
        for_each(groups, |g| {
            // Safety: group g's bytes and units are written by this task alone, and are in bounds.
            let (data, units) = unsafe {
                (
                    std::slice::from_raw_parts_mut(data_at.at(g * nb * stride), nb * stride),
                    std::slice::from_raw_parts_mut(units_at.at(2 * g), 2),
                )
            };
            for r in 0..GROUP_ROWS.min(rows - g * GROUP_ROWS) {
                let row = g * GROUP_ROWS + r;
                (units[0][r], units[1][r]) = source.units(row);
                for (b, block) in data.chunks_exact_mut(stride).enumerate() {
                    let q = source.quants(row, b);
                    // Chunk c (quants 4c..4c + 4) as a word, and row r's four bytes of quant vector v.
                    let chunk = |c: usize| u32::from_le_bytes(q.as_chunks::<4>().0[c]);
                    let mut put = |v: usize, word: u32| block[32 * v + 4 * r..][..4].copy_from_slice(&word.to_le_bytes());
                    match bits {
                        8 => (0..8).for_each(|c| put(c, chunk(c))),
                        4 => (0..4).for_each(|v| put(v, chunk(v) | chunk(v + 4) << 4)),
                        _ => {
                            for v in 0..2 {
                                put(v, (0..4).fold(0, |w, s| w | (chunk(v + 2 * s) & 0x0303_0303) << (2 * s)));
                            }
                            if bits == 3 {
                                put(2, (0..8).fold(0, |w, c| w | (chunk(c) >> 2 & 0x0101_0101) << c));
                            }
                        }
                    }
                    source.scales(row, b, &mut block[qbytes..]);
                }
            }
        });
        Groups { format, rows, cols, data, units }
    }

    /// Blocks per row.
    pub fn row_blocks(&self) -> usize {
        self.cols / BLOCK_LEN
    }

    /// Group `g`.
    pub fn group(&self, g: usize) -> Group<'_> {
        let size = self.format.group_bytes(self.row_blocks());
        Group { format: self.format, data: &self.data[g * size..][..size], d: &self.units[2 * g], m: &self.units[2 * g + 1] }
    }

    /// Row `r` as f32: `S q - O` per block (see the module documentation).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        let (group, lane) = (self.group(r / GROUP_ROWS), r % GROUP_ROWS);
        let mut q = [[0i16; BLOCK_LEN]; GROUP_ROWS];
        for (b, block) in out.chunks_exact_mut(BLOCK_LEN).enumerate() {
            group.unpack(b, &mut q);
            let (scale, offset) = group.scales(b, lane);
            for (o, &quant) in block.iter_mut().zip(&q[lane]) {
                *o = scale * quant as f32 - offset;
            }
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() + std::mem::size_of_val(self.units.as_slice())
    }
}

impl Group<'_> {
    /// Block `b`'s bytes: quant vectors, then scales.
    pub fn block(&self, b: usize) -> &[u8] {
        let stride = self.format.stride();
        &self.data[b * stride..][..stride]
    }

    /// Row `r`'s block-`b` scale `S` and offset `O` (its values are `S q - O`).
    pub fn scales(&self, b: usize, r: usize) -> (f32, f32) {
        let s = &self.block(b)[self.format.quant_bytes()..];
        let half = |i: usize| f16::from_le_bytes([s[2 * i], s[2 * i + 1]]).to_f32();
        let (d, m) = (self.d[r], self.m[r]);
        match self.format {
            GroupFormat::Tern(TernFormat::T2) => (d * (s[r] & 15) as f32, m * (s[r] >> 4) as f32),
            GroupFormat::Tern(TernFormat::T3 | TernFormat::T4) => (d * s[r] as f32, m * s[GROUP_ROWS + r] as f32),
            GroupFormat::Tern(TernFormat::T8) => (d * s[r] as f32, 0.0),
            GroupFormat::Tern(TernFormat::TR2 | TernFormat::TR3 | TernFormat::TR4) => (d * s[r] as f32, 0.0),
            GroupFormat::Q4_0 => (half(r), 8.0 * half(r)),
            GroupFormat::Q4_1 => (half(r), half(GROUP_ROWS + r)),
            GroupFormat::Q8_0 => (half(r), 0.0),
        }
    }

    /// Block `b` of the eight rows, as quants in element order (signed for 8-bit formats; for the trellis
    /// formats the states' codebook values), the inverse of the packing in [`Groups::new`].
    /// Each row's four bytes of a quant vector are one little-endian word, unpacked four quants at a time.
    pub fn unpack(&self, b: usize, q: &mut [[i16; BLOCK_LEN]; GROUP_ROWS]) {
        if let GroupFormat::Tern(f) = self.format
            && f.is_trellis()
        {
            return self.unpack_trellis(b, f.quant_bits(), q);
        }
        let (words, _) = self.block(b).as_chunks::<4>();
        let word = |v: usize, r: usize| u32::from_le_bytes(words[8 * v + r]);
        for (r, row) in q.iter_mut().enumerate() {
            let mut put = |c: usize, quants: u32| {
                for (dst, byte) in row[4 * c..4 * c + 4].iter_mut().zip(quants.to_le_bytes()) {
                    *dst = i16::from(byte as i8);
                }
            };
            match self.format.quant_bits() {
                8 => (0..8).for_each(|c| put(c, word(c, r))),
                4 => {
                    for v in 0..4 {
                        put(v, word(v, r) & 0x0f0f_0f0f);
                        put(v + 4, word(v, r) >> 4 & 0x0f0f_0f0f);
                    }
                }
                bits => {
                    let third = if bits == 3 { word(2, r) } else { 0 };
                    for c in 0..8 {
                        let low = word(c % 2, r) >> (2 * (c / 2)) & 0x0303_0303;
                        put(c, low | (third >> c & 0x0101_0101) << 2);
                    }
                }
            }
        }
    }
}

impl Group<'_> {
    /// A trellis block: weight `i`'s state is the 12-bit window at bit `k i` of the block's words (and the
    /// next block's first), its quant the state's codebook value.
    fn unpack_trellis(&self, b: usize, k: usize, q: &mut [[i16; BLOCK_LEN]; GROUP_ROWS]) {
        use tern_quant::trellis::{STATE_BITS, code};
        let stride = self.format.stride();
        let (words, _) = self.data[b * stride..].as_chunks::<4>();
        for (r, row) in q.iter_mut().enumerate() {
            // Words k b.. of the row: vectors 0..k of this block, then vector 0 of the next (or the tail).
            let word = |v: usize| {
                let at = if v < k { 8 * v + r } else { stride / 4 + r };
                u64::from(u32::from_le_bytes(words[at]))
            };
            for (i, o) in row.iter_mut().enumerate() {
                let (v, s) = (k * i / 32, k * i % 32);
                let state = ((word(v + 1) << 32 | word(v)) >> s) as u32 & ((1 << STATE_BITS) - 1);
                *o = code(state) as i16;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tern_quant::PackedMatrix;

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919) % 1013) as f32 / 500.0 - 1.0).collect()
    }

    /// Every row read back from the groups is the row of the matrix it was made from, in shapes whose last
    /// group is padded (rows not a multiple of eight).
    #[test]
    fn groups_hold_the_tern_rows() -> Result<(), Box<dyn std::error::Error>> {
        for format in TernFormat::ALL {
            for rows in [1, 8, 13] {
                let cols = if format.is_trellis() { 192 } else { 96 };
                let t = TernMatrix::quantize(format, rows, cols, &values(rows * cols), None)?;
                let groups = Groups::from_tern(&t);
                let (mut want, mut got) = (vec![0f32; cols], vec![0f32; cols]);
                for r in 0..rows {
                    t.dequantize_row(r, &mut want);
                    groups.dequantize_row(r, &mut got);
                    assert_eq!(got, want, "{format} row {r} of {rows}");
                }
            }
        }
        Ok(())
    }

    /// The same for GGUF's block types, against tern-quant's reference dequantization.
    #[test]
    fn groups_hold_the_gguf_rows() -> Result<(), Box<dyn std::error::Error>> {
        for ty in [TensorType::Q4_0, TensorType::Q4_1, TensorType::Q8_0] {
            for rows in [1, 8, 13] {
                let cols = 96;
                let p = PackedMatrix::from_f32(ty, rows, cols, &values(rows * cols))?;
                let groups = Groups::from_gguf(&p.view()).ok_or("a GGUF block type makes groups")?;
                let (mut want, mut got) = (vec![0f32; cols], vec![0f32; cols]);
                for r in 0..rows {
                    tern_quant::dequantize_row(&p.view(), r, &mut want);
                    groups.dequantize_row(r, &mut got);
                    assert_eq!(got, want, "{ty} row {r} of {rows}");
                }
            }
        }
        Ok(())
    }
}
