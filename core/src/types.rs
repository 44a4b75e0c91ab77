use std::fmt;

/// Elements per quantization block in every block format tern loads today.
pub const BLOCK_LEN: usize = 32;

/// Where tern's own type ids start: above every `ggml_type` id, so the two never collide.
pub const TERN_TYPE_BASE: u32 = 1024;

/// How a tensor's elements are stored. The discriminants of GGUF's types are their `ggml_type` ids, so a type
/// read from a file maps to one value here and back. tern's own formats ([`TernFormat`]) have ids from
/// [`TERN_TYPE_BASE`] up; in a file they are stored as described in `docs/FORMATS.md` (GGUF `I8` byte tensors
/// named by `tern.` metadata), never under these ids.
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
    /// tern's 2-bit format ([`TernFormat::T2`]).
    T2 = TERN_TYPE_BASE + 2,
    /// tern's 3-bit format ([`TernFormat::T3`]).
    T3 = TERN_TYPE_BASE + 3,
    /// tern's 4-bit format ([`TernFormat::T4`]).
    T4 = TERN_TYPE_BASE + 4,
    /// tern's 8-bit format ([`TernFormat::T8`]).
    T8 = TERN_TYPE_BASE + 8,
    /// tern's 2-bit trellis format ([`TernFormat::TR2`]).
    TR2 = TERN_TYPE_BASE + 18,
    /// tern's 3-bit trellis format ([`TernFormat::TR3`]).
    TR3 = TERN_TYPE_BASE + 19,
    /// tern's 4-bit trellis format ([`TernFormat::TR4`]).
    TR4 = TERN_TYPE_BASE + 20,
}

impl TensorType {
    /// Every GGUF type tern reads, for iteration in tests and tables.
    pub const ALL: [TensorType; 6] =
        [TensorType::F32, TensorType::F16, TensorType::Bf16, TensorType::Q4_0, TensorType::Q4_1, TensorType::Q8_0];

    /// The GGUF type with `ggml_type` id `id`, if tern knows it.
    pub fn from_gguf_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u32 == id)
    }

    /// The tern format this type is, if it is one of tern's own.
    pub fn tern_format(self) -> Option<TernFormat> {
        match self {
            TensorType::T2 => Some(TernFormat::T2),
            TensorType::T3 => Some(TernFormat::T3),
            TensorType::T4 => Some(TernFormat::T4),
            TensorType::T8 => Some(TernFormat::T8),
            TensorType::TR2 => Some(TernFormat::TR2),
            TensorType::TR3 => Some(TernFormat::TR3),
            TensorType::TR4 => Some(TernFormat::TR4),
            _ => None,
        }
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
            TensorType::T2 => "T2",
            TensorType::T3 => "T3",
            TensorType::T4 => "T4",
            TensorType::T8 => "T8",
            TensorType::TR2 => "TR2",
            TensorType::TR3 => "TR3",
            TensorType::TR4 => "TR4",
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_len(self) -> usize {
        if self.is_quantized() { BLOCK_LEN } else { 1 }
    }

    /// Bytes per block in GGUF's array-of-structures encoding (`None` for tern's formats, which are stored
    /// as structures of arrays: see [`TensorType::data_bytes`]).
    pub fn gguf_block_bytes(self) -> Option<usize> {
        match self {
            TensorType::F32 => Some(4),
            TensorType::F16 | TensorType::Bf16 => Some(2),
            TensorType::Q4_0 => Some(18),
            TensorType::Q4_1 => Some(20),
            TensorType::Q8_0 => Some(34),
            _ => None,
        }
    }

    /// Bytes a tensor of `rows` rows of `cols` elements takes in a file (`cols` a multiple of the block length),
    /// or `None` when that overflows.
    pub fn data_bytes(self, rows: usize, cols: usize) -> Option<usize> {
        match self.tern_format() {
            Some(f) => f.row_words(cols).checked_mul(4)?.checked_mul(rows),
            None => (cols / self.block_len()).checked_mul(self.gguf_block_bytes()?)?.checked_mul(rows),
        }
    }

    /// Whether elements come in scaled blocks.
    pub fn is_quantized(self) -> bool {
        !matches!(self, TensorType::F32 | TensorType::F16 | TensorType::Bf16)
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
            TensorType::T2 | TensorType::TR2 => 2,
            TensorType::T3 | TensorType::TR3 => 3,
            TensorType::T4 | TensorType::TR4 => 4,
            TensorType::T8 => 8,
        }
    }

    /// Exact storage in bits per weight for rows of `cols` elements (a multiple of the block length), scales,
    /// minimums and row overhead included.
    pub fn bits_per_weight(self, cols: usize) -> f64 {
        self.data_bytes(1, cols).map_or(f64::NAN, |bytes| (8 * bytes) as f64 / cols as f64)
    }
}

/// One of tern's own weight formats: 2-, 3-, 4- or 8-bit quants in blocks of 32 with block scale (and minimum)
/// codes against two f32 units per row, or 2-, 3- or 4-bit trellis codes (a bit stream per row, each weight a
/// pseudo-Gaussian function of a 12-bit window of it) with a scale code per 64 weights. `docs/FORMATS.md` gives
/// the layouts to the bit; `tern-quant` has the quantizers and the reference dequantization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TernFormat {
    /// 2-bit unsigned quants, 4-bit block scale and minimum codes: 2.25 bits per weight, plus per row 64 bits
    /// of row units and the padding of its codes to a word ([`TernFormat::bits_per_weight`] is exact).
    T2,
    /// 3-bit unsigned quants (a 2-bit plane and a 1-bit plane), 8-bit scale and minimum codes: 3.5 + per row.
    T3,
    /// 4-bit unsigned quants, 8-bit scale and minimum codes: 4.5 + per row.
    T4,
    /// 8-bit signed quants, 8-bit scale code, no minimum: 8.25 + per row.
    T8,
    /// 2-bit trellis code, an 8-bit scale code per 64 weights: 2.125 + per row (rows a multiple of 64).
    TR2,
    /// 3-bit trellis code: 3.125 + per row.
    TR3,
    /// 4-bit trellis code: 4.125 + per row.
    TR4,
}

impl TernFormat {
    /// Every format, smallest first.
    pub const ALL: [TernFormat; 7] =
        [TernFormat::TR2, TernFormat::T2, TernFormat::TR3, TernFormat::T3, TernFormat::TR4, TernFormat::T4, TernFormat::T8];

    /// The scalar formats (blocks of 32 quants, scale and minimum codes).
    pub const SCALAR: [TernFormat; 4] = [TernFormat::T2, TernFormat::T3, TernFormat::T4, TernFormat::T8];

    /// The trellis formats.
    pub const TRELLIS: [TernFormat; 3] = [TernFormat::TR2, TernFormat::TR3, TernFormat::TR4];

    /// Whether this is a trellis format.
    pub fn is_trellis(self) -> bool {
        matches!(self, TernFormat::TR2 | TernFormat::TR3 | TernFormat::TR4)
    }

    /// What every row length must be a multiple of: 32, or 64 for the trellis formats (their scale blocks).
    pub fn row_multiple(self) -> usize {
        if self.is_trellis() { 2 * BLOCK_LEN } else { BLOCK_LEN }
    }

    /// Whether rows of `cols` weights can be stored in this format.
    pub fn takes(self, cols: usize) -> bool {
        cols > 0 && cols.is_multiple_of(self.row_multiple())
    }

    /// Bits of each quant.
    pub fn quant_bits(self) -> usize {
        match self {
            TernFormat::T2 | TernFormat::TR2 => 2,
            TernFormat::T3 | TernFormat::TR3 => 3,
            TernFormat::T4 | TernFormat::TR4 => 4,
            TernFormat::T8 => 8,
        }
    }

    /// u32 words of quants per block of 32.
    pub fn quant_words(self) -> usize {
        self.quant_bits()
    }

    /// Bits of block scale and minimum codes per block (T2: a byte of two nibbles; T8: one scale byte; the
    /// trellis formats: a scale byte per two blocks).
    pub fn code_bits(self) -> usize {
        match self {
            TernFormat::T2 | TernFormat::T8 => 8,
            TernFormat::T3 | TernFormat::T4 => 16,
            TernFormat::TR2 | TernFormat::TR3 | TernFormat::TR4 => 4,
        }
    }

    /// u32 words of quants per row of `cols` weights: the blocks' words, and for the trellis formats one more
    /// (the last weights' windows reach past the last block).
    pub fn stream_words(self, cols: usize) -> usize {
        cols / BLOCK_LEN * self.quant_words() + usize::from(self.is_trellis())
    }

    /// u32 words of codes per row of `cols` weights (each row's codes start on a word).
    pub fn code_words(self, cols: usize) -> usize {
        (cols / BLOCK_LEN * self.code_bits()).div_ceil(32)
    }

    /// u32 words one row of `cols` weights takes in all: quants, codes and the two row units.
    pub fn row_words(self, cols: usize) -> usize {
        self.stream_words(cols) + self.code_words(cols) + 2
    }

    /// Exact bits per weight of a matrix with rows of `cols` weights: the quants, the row's code words (padding
    /// included) and the two f32 row units.
    pub fn bits_per_weight(self, cols: usize) -> f64 {
        (32 * self.row_words(cols)) as f64 / cols as f64
    }

    /// A short name for reports and files ("T4").
    pub fn name(self) -> &'static str {
        self.tensor_type().name()
    }

    /// The format called `name` ("T4"), if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// This format as a [`TensorType`].
    pub fn tensor_type(self) -> TensorType {
        match self {
            TernFormat::T2 => TensorType::T2,
            TernFormat::T3 => TensorType::T3,
            TernFormat::T4 => TensorType::T4,
            TernFormat::T8 => TensorType::T8,
            TernFormat::TR2 => TensorType::TR2,
            TernFormat::TR3 => TensorType::TR3,
            TernFormat::TR4 => TensorType::TR4,
        }
    }
}

impl fmt::Display for TernFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
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
/// GGUF types:
/// - `quants`: row-major; each row is `cols * quant_bits / 32` words. For 4-bit blocks the 16 bytes of a block
///   hold element `j` in the low nibble of byte `j` and element `j + 16` in its high nibble. For 8-bit blocks
///   byte `j` is element `j` (two's complement). For F32 the words are the f32 bits; for F16/BF16 each word holds
///   elements `2i` (low half) and `2i + 1` (high half).
/// - `scales`: f16 bits, one per block, row-major, two per word (low half first); empty for float types.
/// - `mins`: like `scales`, for types that have mins; empty otherwise.
/// - `row_scales`: empty.
///
/// tern's formats (`docs/FORMATS.md`):
/// - `quants`: `quant_words` words per block, blocks row-major.
/// - `scales`: the block scale (and minimum) codes, [`TernFormat::code_words`] words per row.
/// - `mins`: empty (the minimum codes travel with the scale codes).
/// - `row_scales`: per row the f32 bits of the scale unit `D` and the minimum unit `M`.
#[derive(Debug, Clone, Copy)]
pub struct MatrixView<'a> {
    pub ty: TensorType,
    pub rows: usize,
    pub cols: usize,
    pub quants: &'a [u32],
    pub scales: &'a [u32],
    pub mins: &'a [u32],
    pub row_scales: &'a [u32],
}

impl MatrixView<'_> {
    /// Words of quant data per row.
    pub fn row_words(&self) -> usize {
        if let Some(f) = self.ty.tern_format() {
            return f.stream_words(self.cols);
        }
        self.cols * self.ty.quant_bits() / 32
    }

    /// Blocks per row (0 for float types).
    pub fn row_blocks(&self) -> usize {
        if self.ty.is_quantized() { self.cols / BLOCK_LEN } else { 0 }
    }

    /// Checks that the parts have the lengths the shape and type require.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |detail: String| crate::Error::BadMatrix { ty: self.ty, rows: self.rows, cols: self.cols, detail };
        let check = |what: &str, got: usize, want: usize| {
            if got == want { Ok(()) } else { Err(bad(format!("{what} hold {got} words, expected {want}"))) }
        };
        let multiple = self.ty.tern_format().map_or(BLOCK_LEN, TernFormat::row_multiple);
        if !self.cols.is_multiple_of(multiple) {
            return Err(bad(format!("row length {} is not a multiple of {multiple}", self.cols)));
        }
        check("quants", self.quants.len(), self.rows * self.row_words())?;
        let (want_scales, want_mins, want_row_scales) = match self.ty.tern_format() {
            Some(f) => (self.rows * f.code_words(self.cols), 0, 2 * self.rows),
            None => {
                let scales = (self.rows * self.row_blocks()).div_ceil(2);
                (scales, if self.ty.has_mins() { scales } else { 0 }, 0)
            }
        };
        check("scales", self.scales.len(), want_scales)?;
        check("mins", self.mins.len(), want_mins)?;
        check("row scales", self.row_scales.len(), want_row_scales)
    }
}
