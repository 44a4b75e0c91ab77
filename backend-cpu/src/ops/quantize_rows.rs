//! Activation rows quantized to int8 in blocks of 32, the left operand of every quantized matrix product.

use tern_core::BLOCK_LEN;

/// `rows` activation rows as int8 blocks: `qs` the quants, `d` one scale per block, `s` per block the scale
/// times the sum of the block's quants (what the minimum and offset terms of Q4_1 and Q4_0 multiply). `d` and
/// `s` end with eight zeros so that kernels may load eight blocks' values from any block.
#[derive(Debug, Default)]
pub(crate) struct QuantizedRows {
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl QuantizedRows {
    /// Quantizes `rows x cols` values (round to nearest, scale = max |x| / 127 per block).
    pub fn quantize(&mut self, x: &[f32], rows: usize, cols: usize) {
        let blocks = rows * cols / BLOCK_LEN;
        self.rows = rows;
        self.cols = cols;
        self.qs.resize(rows * cols, 0);
        self.d.resize(blocks + 8, 0.0);
        self.s.resize(blocks + 8, 0.0);
        self.d[blocks..].fill(0.0);
        self.s[blocks..].fill(0.0);
        for (b, (xb, qb)) in x.chunks_exact(BLOCK_LEN).zip(self.qs.chunks_exact_mut(BLOCK_LEN)).enumerate() {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in qb.iter_mut().zip(xb) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            self.d[b] = d;
            self.s[b] = d * sum as f32;
        }
    }

    /// Blocks per row.
    pub fn row_blocks(&self) -> usize {
        self.cols / BLOCK_LEN
    }
}
