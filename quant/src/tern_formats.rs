//! tern's own weight formats: 2-, 3-, 4- and 8-bit quants in blocks of 32 for any row length that is a multiple
//! of 32, with 8-bit (4-bit for T2) block scales and minimums coded against two f32 scales per row. The exact
//! layouts, to the bit, are in `docs/FORMATS.md`; [`TernMatrix::dequantize_row`] is the reference.
//!
//! Quantization is an importance-weighted least-squares search per block (the weights of the error are an
//! importance per input column, from activation statistics when there are some, times `sqrt(sigma2 + x^2)`, the
//! element weighting ggml's quantizers use), then the block scales and minimums are coded against the row's
//! largest, and the quants are chosen again against the coded values.

use crate::{Error, Result};
use tern_core::{BLOCK_LEN, MatrixView, TernFormat};

/// Largest scale (and minimum) code of `format`.
pub(crate) fn code_max(format: TernFormat) -> u32 {
    if format == TernFormat::T2 { 15 } else { 255 }
}

/// Whether `format` has signed quants and no minimum.
fn symmetric(format: TernFormat) -> bool {
    format == TernFormat::T8
}

/// A matrix in one of tern's formats, structure of arrays: `quants` (u32 words, `quant_words` per block, blocks
/// in row-major order), `codes` (the block scale/minimum codes packed in little-endian u32 words, bytes or u16s
/// in block order) and `rows_scales` (per row the f32 bits of the scale unit `D` and the minimum unit `M`).
#[derive(Debug, Clone, PartialEq)]
pub struct TernMatrix {
    pub format: TernFormat,
    pub rows: usize,
    pub cols: usize,
    pub quants: Vec<u32>,
    pub codes: Vec<u32>,
    pub row_scales: Vec<u32>,
}

/// One row of a [`TernMatrix`]: its blocks' quant words, its code words, and its two row units.
#[derive(Debug, Clone, Copy)]
pub struct TernRow<'a> {
    pub format: TernFormat,
    pub quants: &'a [u32],
    pub codes: &'a [u32],
    /// The scale unit `D`.
    pub d: f32,
    /// The minimum unit `M`.
    pub m: f32,
}

impl TernRow<'_> {
    /// The scale and minimum codes of block `b`.
    pub fn block_codes(&self, b: usize) -> (u32, u32) {
        match self.format {
            TernFormat::T2 => {
                let c = get_bits(self.codes, b * 8, 8);
                (c & 15, c >> 4)
            }
            TernFormat::T3 | TernFormat::T4 => {
                let c = get_bits(self.codes, b * 16, 16);
                (c & 255, c >> 8)
            }
            TernFormat::T8 => (get_bits(self.codes, b * 8, 8), 0),
            TernFormat::TR2 | TernFormat::TR3 | TernFormat::TR4 => (get_bits(self.codes, b / 2 * 8, 8), 0),
        }
    }

    /// The quant of element `i` of block `b` (signed for T8; for the trellis formats, the codebook value of
    /// the element's state, `-254..=254`).
    pub fn quant(&self, b: usize, i: usize) -> i32 {
        let qw = self.format.quant_words();
        let w = || &self.quants[b * qw..(b + 1) * qw];
        match self.format {
            TernFormat::T2 => get_bits(w(), t2_bit(i), 2) as i32,
            TernFormat::T3 => (get_bits(w(), t2_bit(i), 2) | get_bits(w(), 64 + i, 1) << 2) as i32,
            TernFormat::T4 => get_bits(w(), t4_bit(i), 4) as i32,
            TernFormat::T8 => get_bits(w(), 8 * i, 8) as u8 as i8 as i32,
            // The row's whole stream: a window may reach into the next block's words.
            TernFormat::TR2 | TernFormat::TR3 | TernFormat::TR4 => {
                crate::trellis::code(crate::trellis::state(self.quants, self.format.quant_bits(), b * BLOCK_LEN + i))
            }
        }
    }

    /// The row as f32: `x[32b + i] = D * sc_b * q_bi - M * mn_b`. The reference every kernel is tested against.
    pub fn dequantize(&self, out: &mut [f32]) {
        for (b, block) in out.chunks_exact_mut(BLOCK_LEN).enumerate() {
            let (sc, mn) = self.block_codes(b);
            let (scale, offset) = (self.d * sc as f32, self.m * mn as f32);
            for (i, o) in block.iter_mut().enumerate() {
                *o = scale * self.quant(b, i) as f32 - offset;
            }
        }
    }
}

/// The quant of `v` for a block of coded `scale` and `offset` (signed for T8).
pub(crate) fn round_quant(format: TernFormat, v: f32, scale: f32, offset: f32) -> i32 {
    if scale <= 0.0 {
        return 0;
    }
    if symmetric(format) {
        (v / scale).round().clamp(-127.0, 127.0) as i32
    } else {
        let nmax = ((1u32 << format.quant_bits()) - 1) as f32;
        ((v + offset) / scale).round().clamp(0.0, nmax) as i32
    }
}

/// The block's fit coded against row units `(d, mu)`: its scale and minimum codes.
pub(crate) fn fit_and_code(format: TernFormat, x: &[f32], w: &[f32], (d, mu): (f32, f32)) -> (u32, u32) {
    let nmax = if symmetric(format) { 127.0 } else { ((1u32 << format.quant_bits()) - 1) as f32 };
    let fit = if symmetric(format) { (fit_symmetric(x, w, nmax), 0.0) } else { fit_asymmetric(x, w, nmax) };
    let (sc, mn) = best_codes(x, w, fit, (d, mu), code_max(format) as f32, nmax, symmetric(format));
    (sc, mn)
}

/// Element weighting of the error inside a block (ggml's: `sqrt(sigma2 + x^2)`, sigma2 the row's mean square).
pub(crate) fn element_weights(x: &[f32], importance: Option<&[f32]>, sigma2: f32, out: &mut [f32]) {
    for (i, (w, &v)) in out.iter_mut().zip(x).enumerate() {
        let imp = importance.map_or(1.0, |m| m[i]);
        *w = imp * (sigma2 + v * v).sqrt();
    }
}

/// Best `(scale, offset)` for unsigned `bits`-bit quants of `x` under weights `w`: `x ~ scale * q - offset`,
/// `offset >= 0`. A grid of candidate scales, each refined by weighted least squares on its quants.
fn fit_asymmetric(x: &[f32], w: &[f32], nmax: f32) -> (f32, f32) {
    let (min, max) = x.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let min = min.min(0.0);
    if max <= min {
        return (0.0, -min);
    }
    let sw: f32 = w.iter().sum();
    let error = |scale: f32, offset: f32| -> f32 {
        x.iter()
            .zip(w)
            .map(|(&v, &wi)| {
                let q = if scale > 0.0 { ((v + offset) / scale).round().clamp(0.0, nmax) } else { 0.0 };
                let d = scale * q - offset - v;
                wi * d * d
            })
            .sum()
    };
    let mut best = ((max - min) / nmax, -min);
    let mut best_err = error(best.0, best.1);
    for step in -9..=9 {
        let iscale = (nmax + 0.1 * step as f32) / (max - min);
        if iscale <= 0.0 {
            continue;
        }
        // Quants for this candidate, then the least-squares scale and offset for those quants.
        let (mut s_q, mut s_qq, mut s_x, mut s_qx) = (0f32, 0f32, 0f32, 0f32);
        for (&v, &wi) in x.iter().zip(w) {
            let q = (iscale * (v - min)).round().clamp(0.0, nmax);
            s_q += wi * q;
            s_qq += wi * q * q;
            s_x += wi * v;
            s_qx += wi * q * v;
        }
        let det = sw * s_qq - s_q * s_q;
        if det <= 0.0 {
            continue;
        }
        let mut scale = (sw * s_qx - s_q * s_x) / det;
        let mut offset = (s_q * s_qx - s_qq * s_x) / det;
        if offset < 0.0 {
            // A positive minimum: keep offset 0 and fit the scale alone.
            offset = 0.0;
            scale = if s_qq > 0.0 { s_qx / s_qq } else { 0.0 };
        }
        if scale <= 0.0 {
            continue;
        }
        let err = error(scale, offset);
        if err < best_err {
            best = (scale, offset);
            best_err = err;
        }
    }
    best
}

/// The block's scale and minimum codes: the neighbours of the rounded fit `(s, o)` in units `(d, mu)`, the one
/// with the least weighted error once the quants are chosen again against the coded values. Rounding each code
/// alone ignores that the two errors interact; with 4-bit codes (T2) the choice matters most.
fn best_codes(
    x: &[f32],
    w: &[f32],
    (s, o): (f32, f32),
    (d, mu): (f32, f32),
    cmax: f32,
    nmax: f32,
    symmetric: bool,
) -> (u32, u32) {
    let round = |v: f32, unit: f32| {
        if unit > 0.0 { (v / unit).round().clamp(0.0, cmax) } else { 0.0 }
    };
    let (sc0, mn0) = (round(s, d), round(o, mu));
    let error = |sc: f32, mn: f32| -> f32 {
        let (scale, offset) = (d * sc, mu * mn);
        x.iter()
            .zip(w)
            .map(|(&v, &wi)| {
                let q = match (scale > 0.0, symmetric) {
                    (false, _) => 0.0,
                    (true, true) => (v / scale).round().clamp(-nmax, nmax),
                    (true, false) => ((v + offset) / scale).round().clamp(0.0, nmax),
                };
                let e = scale * q - offset - v;
                wi * e * e
            })
            .sum()
    };
    let mut best = (sc0, mn0, error(sc0, mn0));
    let mn_steps: &[f32] = if symmetric { &[0.0] } else { &[-1.0, 0.0, 1.0] };
    for dsc in [-1.0f32, 0.0, 1.0] {
        for &dmn in mn_steps {
            let (sc, mn) = (sc0 + dsc, mn0 + dmn);
            if (dsc == 0.0 && dmn == 0.0) || !(0.0..=cmax).contains(&sc) || !(0.0..=cmax).contains(&mn) || (mu == 0.0 && mn > 0.0)
            {
                continue;
            }
            let e = error(sc, mn);
            if e < best.2 {
                best = (sc, mn, e);
            }
        }
    }
    (best.0 as u32, best.1 as u32)
}

/// Best scale for signed quants in `[-nmax, nmax]`: `x ~ scale * q`.
fn fit_symmetric(x: &[f32], w: &[f32], nmax: f32) -> f32 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    if amax == 0.0 {
        return 0.0;
    }
    let error = |scale: f32| -> f32 {
        x.iter()
            .zip(w)
            .map(|(&v, &wi)| {
                let d = scale * (v / scale).round().clamp(-nmax, nmax) - v;
                wi * d * d
            })
            .sum()
    };
    let mut best = amax / nmax;
    let mut best_err = error(best);
    for step in -6..=6 {
        let iscale = (nmax + 0.25 * step as f32) / amax;
        let (mut s_qq, mut s_qx) = (0f32, 0f32);
        for (&v, &wi) in x.iter().zip(w) {
            let q = (iscale * v).round().clamp(-nmax, nmax);
            s_qq += wi * q * q;
            s_qx += wi * q * v;
        }
        if s_qq <= 0.0 {
            continue;
        }
        let scale = s_qx / s_qq;
        let err = error(scale);
        if scale > 0.0 && err < best_err {
            best = scale;
            best_err = err;
        }
    }
    best
}

/// Bit position of 2-bit quant `i` in its block: byte `i % 8`, bits `2 (i / 8)`. Each group of eight
/// consecutive quants is one 2-bit plane of the block's eight bytes, so one shift and mask yields eight in order.
fn t2_bit(i: usize) -> usize {
    8 * (i % 8) + 2 * (i / 8)
}

/// Bit position of 4-bit quant `i` in its block: byte `i % 16`, low nibble for `i < 16`, high nibble after.
fn t4_bit(i: usize) -> usize {
    8 * (i % 16) + 4 * (i / 16)
}

fn put_bits(words: &mut [u32], bit: usize, width: usize, value: u32) {
    words[bit / 32] |= value << (bit % 32);
    debug_assert!(bit % 32 + width <= 32, "fields never straddle words");
}

fn get_bits(words: &[u32], bit: usize, width: usize) -> u32 {
    (words[bit / 32] >> (bit % 32)) & ((1u32 << width) - 1) // width < 32 for every field
}

impl TernMatrix {
    /// Quantizes `rows x cols` values (`cols` a multiple of [`TernFormat::row_multiple`]) to `format`.
    /// `importance`, when given, holds one non-negative weight per column (mean of x^2 over calibration
    /// activations, say).
    pub fn quantize(format: TernFormat, rows: usize, cols: usize, data: &[f32], importance: Option<&[f32]>) -> Result<Self> {
        check_input(format, rows, cols, data, importance)?;
        if format.is_trellis() {
            return Self::quantize_trellis(format, rows, cols, data, importance, None);
        }
        let nb = cols / BLOCK_LEN;
        let code_words = format.code_words(cols);
        let mut m = TernMatrix {
            format,
            rows,
            cols,
            quants: vec![0; rows * nb * format.quant_words()],
            codes: vec![0; rows * code_words],
            row_scales: vec![0; rows * 2],
        };
        let nmax = if symmetric(format) { 127.0 } else { ((1u32 << format.quant_bits()) - 1) as f32 };
        let cmax = code_max(format) as f32;
        let mut weights = vec![0f32; cols];
        let mut fits = vec![(0f32, 0f32); nb];
        for r in 0..rows {
            let x = &data[r * cols..(r + 1) * cols];
            let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / cols as f32;
            element_weights(x, importance, sigma2, &mut weights);
            for (b, fit) in fits.iter_mut().enumerate() {
                let (xb, wb) = (&x[b * 32..(b + 1) * 32], &weights[b * 32..(b + 1) * 32]);
                *fit = if symmetric(format) { (fit_symmetric(xb, wb, nmax), 0.0) } else { fit_asymmetric(xb, wb, nmax) };
            }
            // Row units: the largest block scale (offset) is the largest code.
            let d = fits.iter().fold(0f32, |a, f| a.max(f.0)) / cmax;
            let mu = fits.iter().fold(0f32, |a, f| a.max(f.1)) / cmax;
            m.row_scales[2 * r] = d.to_bits();
            m.row_scales[2 * r + 1] = mu.to_bits();
            let mut block_codes = Vec::with_capacity(nb);
            let mut quants = vec![0i32; cols];
            for (b, &fit) in fits.iter().enumerate() {
                let (xb, wb) = (&x[b * 32..(b + 1) * 32], &weights[b * 32..(b + 1) * 32]);
                let (sc, mn) = best_codes(xb, wb, fit, (d, mu), cmax, nmax, symmetric(format));
                block_codes.push((sc, mn));
                let (scale, offset) = (d * sc as f32, mu * mn as f32);
                for (q, &v) in quants[b * 32..(b + 1) * 32].iter_mut().zip(xb) {
                    *q = round_quant(format, v, scale, offset);
                }
            }
            m.set_row(r, &block_codes, &quants);
        }
        Ok(m)
    }

    /// Quantizes to a trellis format (`crate::trellis`), with error feedback through `factor` when given.
    pub(crate) fn quantize_trellis(
        format: TernFormat,
        rows: usize,
        cols: usize,
        data: &[f32],
        importance: Option<&[f32]>,
        factor: Option<&crate::FeedbackFactor>,
    ) -> Result<Self> {
        let (k, block) = (format.quant_bits(), format.row_multiple());
        let trellis_rows = crate::trellis::quantize_rows(k, cols, data, importance, factor, (block, code_max(format)))?;
        let (sw, cw) = (format.stream_words(cols), format.code_words(cols));
        let mut m = TernMatrix {
            format,
            rows,
            cols,
            quants: Vec::with_capacity(rows * sw),
            codes: vec![0; rows * cw],
            row_scales: vec![0; rows * 2],
        };
        for (r, t) in trellis_rows.iter().enumerate() {
            debug_assert_eq!(t.stream.len(), sw, "the trellis stream is the format's");
            m.quants.extend_from_slice(&t.stream);
            for (b, &c) in t.codes.iter().enumerate() {
                put_bits(&mut m.codes[r * cw..(r + 1) * cw], b * 8, 8, c);
            }
            m.row_scales[2 * r] = t.d.to_bits();
        }
        Ok(m)
    }

    /// Writes row `r`'s block codes `(scale, minimum)` and its quants (signed for T8), replacing what was there.
    pub(crate) fn set_row(&mut self, r: usize, block_codes: &[(u32, u32)], quants: &[i32]) {
        let (format, nb) = (self.format, self.row_blocks());
        let (cw, qw) = (format.code_words(self.cols), format.quant_words());
        let codes = &mut self.codes[r * cw..(r + 1) * cw];
        codes.fill(0);
        for (b, &(sc, mn)) in block_codes.iter().enumerate() {
            match format {
                TernFormat::T2 => put_bits(codes, b * 8, 8, sc | mn << 4),
                TernFormat::T3 | TernFormat::T4 => put_bits(codes, b * 16, 16, sc | mn << 8),
                TernFormat::T8 => put_bits(codes, b * 8, 8, sc),
                TernFormat::TR2 | TernFormat::TR3 | TernFormat::TR4 => put_bits(codes, b / 2 * 8, 8, sc),
            }
        }
        let row = &mut self.quants[r * nb * qw..(r + 1) * nb * qw];
        row.fill(0);
        for (b, qw_block) in row.chunks_exact_mut(qw).enumerate() {
            for (i, &q) in quants[b * 32..(b + 1) * 32].iter().enumerate() {
                let q = q as u32;
                match format {
                    TernFormat::T2 => put_bits(qw_block, t2_bit(i), 2, q),
                    TernFormat::T3 => {
                        put_bits(qw_block, t2_bit(i), 2, q & 3);
                        put_bits(qw_block, 64 + i, 1, q >> 2);
                    }
                    TernFormat::T4 => put_bits(qw_block, t4_bit(i), 4, q),
                    TernFormat::T8 => put_bits(qw_block, 8 * i, 8, q & 0xff),
                    // Trellis rows are searched whole (`quantize_trellis`), never set quant by quant.
                    TernFormat::TR2 | TernFormat::TR3 | TernFormat::TR4 => {}
                }
            }
        }
    }

    /// Blocks per row.
    pub fn row_blocks(&self) -> usize {
        self.cols / BLOCK_LEN
    }

    /// Row `r`, borrowed.
    pub fn row(&self, r: usize) -> TernRow<'_> {
        let (qw, cw) = (self.format.stream_words(self.cols), self.format.code_words(self.cols));
        TernRow {
            format: self.format,
            quants: &self.quants[r * qw..(r + 1) * qw],
            codes: &self.codes[r * cw..(r + 1) * cw],
            d: f32::from_bits(self.row_scales[2 * r]),
            m: f32::from_bits(self.row_scales[2 * r + 1]),
        }
    }

    /// The scale and minimum codes of block `b` of row `r`.
    pub fn block_codes(&self, r: usize, b: usize) -> (u32, u32) {
        self.row(r).block_codes(b)
    }

    /// The quant of element `i` of block `b` of row `r` (signed for T8).
    pub fn quant(&self, r: usize, b: usize, i: usize) -> i32 {
        self.row(r).quant(b, i)
    }

    /// Row `r` as f32 (see [`TernRow::dequantize`]).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        self.row(r).dequantize(out)
    }

    /// The whole matrix as f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            self.dequantize_row(r, &mut out[r * self.cols..(r + 1) * self.cols]);
        }
        out
    }

    /// Bytes of the three arrays.
    pub fn bytes(&self) -> usize {
        4 * (self.quants.len() + self.codes.len() + self.row_scales.len())
    }

    /// The matrix as a [`MatrixView`] (codes as `scales`, row units as `row_scales`).
    pub fn view(&self) -> MatrixView<'_> {
        MatrixView {
            ty: self.format.tensor_type(),
            rows: self.rows,
            cols: self.cols,
            quants: &self.quants,
            scales: &self.codes,
            mins: &[],
            row_scales: &self.row_scales,
        }
    }

    /// A copy of a validated view of one of tern's formats.
    pub fn from_view(v: &MatrixView<'_>) -> Result<Self> {
        let format = v.ty.tern_format().ok_or(Error::Unsupported { op: "TernMatrix::from_view", ty: v.ty })?;
        v.validate().map_err(|e| Error::TernShape { detail: e.to_string() })?;
        Ok(TernMatrix {
            format,
            rows: v.rows,
            cols: v.cols,
            quants: v.quants.to_vec(),
            codes: v.scales.to_vec(),
            row_scales: v.row_scales.to_vec(),
        })
    }

    /// The matrix as stored in a file: the quant words, then the code words, then the row units, each
    /// little-endian (`docs/FORMATS.md`).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes());
        for w in self.quants.iter().chain(&self.codes).chain(&self.row_scales) {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Reads a matrix stored by [`TernMatrix::to_bytes`], checking its length and that every row unit is a
    /// finite, non-negative f32.
    pub fn from_bytes(format: TernFormat, rows: usize, cols: usize, bytes: &[u8]) -> Result<Self> {
        let ty = format.tensor_type();
        if !format.takes(cols) {
            return Err(Error::RowLength { ty, cols, block: format.row_multiple() });
        }
        let expected = ty.data_bytes(rows, cols).ok_or(Error::TernShape { detail: format!("{rows}x{cols} overflows") })?;
        if bytes.len() != expected {
            return Err(Error::Length { ty, elements: rows * cols, expected, actual: bytes.len() });
        }
        let mut words = bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        let mut take = |n: usize| words.by_ref().take(n).collect::<Vec<u32>>();
        let m = TernMatrix {
            format,
            rows,
            cols,
            quants: take(rows * format.stream_words(cols)),
            codes: take(rows * format.code_words(cols)),
            row_scales: take(2 * rows),
        };
        if let Some(i) = m.row_scales.iter().position(|&w| !f32::from_bits(w).is_finite() || f32::from_bits(w) < 0.0) {
            return Err(Error::TernShape {
                detail: format!(
                    "row {} has row unit {} (must be finite and non-negative)",
                    i / 2,
                    f32::from_bits(m.row_scales[i])
                ),
            });
        }
        Ok(m)
    }
}

/// Checks the shape, the importance values and the weights given to a quantizer.
pub(crate) fn check_input(format: TernFormat, rows: usize, cols: usize, data: &[f32], importance: Option<&[f32]>) -> Result<()> {
    if !format.takes(cols) {
        return Err(Error::TernShape {
            detail: format!("{format} takes rows of a multiple of {} weights, not {cols}", format.row_multiple()),
        });
    }
    if data.len() != rows * cols {
        return Err(Error::TernShape { detail: format!("{} values for {rows}x{cols}", data.len()) });
    }
    if let Some(imp) = importance {
        if imp.len() != cols {
            return Err(Error::TernShape { detail: format!("{} importance values for rows of {cols}", imp.len()) });
        }
        if imp.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(Error::TernShape { detail: "importance values must be finite and non-negative".into() });
        }
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::TernShape { detail: format!("weight {i} (row {}, column {}) is not finite", i / cols, i % cols) });
    }
    Ok(())
}
