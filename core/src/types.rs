use std::fmt;

/// Elements per quantization block in every block format tern loads today.
pub const BLOCK_LEN: usize = 32;

/// How a tensor's elements are stored. The discriminants are GGUF's `ggml_type` ids, so a type read from a file
/// maps to one value here and back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TensorType {
    F32 = 0,
    F16 = 1,
    /// 32 weights: an f16 scale `d` and 32 4-bit quants; `w = d * (q - 8)`.
    Q4_0 = 2,
    /// 32 weights: f16 scale `d`, f16 minimum `m`, 32 4-bit quants; `w = d * q + m`.
    Q4_1 = 3,
    /// 32 weights: an f16 scale `d` and 32 signed 8-bit quants; `w = d * q`.
    Q8_0 = 8,
    Bf16 = 30,
}

impl TensorType {
    /// Every type, for iteration in tests and tables.
    pub const ALL: [TensorType; 6] =
        [TensorType::F32, TensorType::F16, TensorType::Bf16, TensorType::Q4_0, TensorType::Q4_1, TensorType::Q8_0];

    /// The type with GGUF id `id`, if tern knows it.
    pub fn from_gguf_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u32 == id)
    }

    /// The name GGUF tools print for this type.
    pub fn name(self) -> &'static str {
        match self {
            TensorType::F32 => "F32",
            TensorType::F16 => "F16",
            TensorType::Bf16 => "BF16",
            TensorType::Q4_0 => "Q4_0",
            TensorType::Q4_1 => "Q4_1",
            TensorType::Q8_0 => "Q8_0",
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_len(self) -> usize {
        if self.is_quantized() { BLOCK_LEN } else { 1 }
    }

    /// Bytes per block in GGUF's array-of-structures encoding.
    pub fn gguf_block_bytes(self) -> usize {
        match self {
            TensorType::F32 => 4,
            TensorType::F16 | TensorType::Bf16 => 2,
            TensorType::Q4_0 => 18,
            TensorType::Q4_1 => 20,
            TensorType::Q8_0 => 34,
        }
    }

    /// Whether elements come in scaled blocks.
    pub fn is_quantized(self) -> bool {
        matches!(self, TensorType::Q4_0 | TensorType::Q4_1 | TensorType::Q8_0)
    }

    /// Whether the packed form carries a per-block minimum.
    pub fn has_mins(self) -> bool {
        self == TensorType::Q4_1
    }

    /// Bits of quant data per element (not counting scales).
    pub fn quant_bits(self) -> usize {
        match self {
            TensorType::F32 => 32,
            TensorType::F16 | TensorType::Bf16 => 16,
            TensorType::Q4_0 | TensorType::Q4_1 => 4,
            TensorType::Q8_0 => 8,
        }
    }

    /// Exact storage in bits per weight, scales and mins included.
    pub fn bits_per_weight(self) -> f64 {
        (self.gguf_block_bytes() * 8) as f64 / self.block_len() as f64
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A borrowed weight matrix of `rows` output features by `cols` input features in tern's structure-of-arrays
/// layout (see `tern-quant`): all parts are u32-aligned word arrays so that a GPU shader reads whole words.
///
/// - `quants`: row-major; each row is `cols * quant_bits / 32` words. For 4-bit blocks the 16 bytes of a block
///   hold element `j` in the low nibble of byte `j` and element `j + 16` in its high nibble. For 8-bit blocks
///   byte `j` is element `j` (two's complement). For F32 the words are the f32 bits; for F16/BF16 each word holds
///   elements `2i` (low half) and `2i + 1` (high half).
/// - `scales`: f16 bits, one per block, row-major, two per word (low half first); empty for float types.
/// - `mins`: like `scales`, for types that have mins; empty otherwise.
#[derive(Debug, Clone, Copy)]
pub struct MatrixView<'a> {
    pub ty: TensorType,
    pub rows: usize,
    pub cols: usize,
    pub quants: &'a [u32],
    pub scales: &'a [u32],
    pub mins: &'a [u32],
}

impl MatrixView<'_> {
    /// Words of quant data per row.
    pub fn row_words(&self) -> usize {
        self.cols * self.ty.quant_bits() / 32
    }

    /// Blocks per row (0 for float types).
    pub fn row_blocks(&self) -> usize {
        if self.ty.is_quantized() { self.cols / BLOCK_LEN } else { 0 }
    }

    /// Checks that the parts have the lengths the shape and type require.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |detail: String| crate::Error::BadMatrix { ty: self.ty, rows: self.rows, cols: self.cols, detail };
        if !self.cols.is_multiple_of(32) {
            return Err(bad(format!("row length {} is not a multiple of 32", self.cols)));
        }
        let want_quants = self.rows * self.row_words();
        if self.quants.len() != want_quants {
            return Err(bad(format!("quants hold {} words, expected {want_quants}", self.quants.len())));
        }
        let blocks = self.rows * self.row_blocks();
        let want_scales = blocks.div_ceil(2);
        if self.scales.len() != want_scales {
            return Err(bad(format!("scales hold {} words, expected {want_scales}", self.scales.len())));
        }
        let want_mins = if self.ty.has_mins() { want_scales } else { 0 };
        if self.mins.len() != want_mins {
            return Err(bad(format!("mins hold {} words, expected {want_mins}", self.mins.len())));
        }
        Ok(())
    }
}
