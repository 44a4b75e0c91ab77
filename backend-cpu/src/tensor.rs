use tern_core::{Error, MatrixView, Result, TensorType};
use tern_quant::{TernMatrix, TernRow};

/// An f32 activation matrix in host memory, row-major.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuTensor {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl CpuTensor {
    /// Resizes to `rows x cols`, keeping the allocation when it is large enough. Contents are unspecified.
    pub(crate) fn reshape(&mut self, rows: usize, cols: usize) {
        self.rows = rows;
        self.cols = cols;
        self.data.resize(rows * cols, 0.0);
    }

    /// Row `r`.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// A packed weight matrix in host memory: tern's structure-of-arrays words, owned.
#[derive(Debug, Clone)]
pub struct CpuMatrix {
    pub ty: TensorType,
    pub rows: usize,
    pub cols: usize,
    quants: Vec<u32>,
    scales: Vec<u32>,
    mins: Vec<u32>,
    /// A matrix in one of tern's formats (then `ty` is unused and the three arrays above are empty); its code
    /// array ends with four zero words so kernels may load eight blocks' codes from any block.
    tern: Option<TernMatrix>,
}

/// Words of f16 pairs followed by eight zero halves, so that the kernels may load eight scales at once from
/// any block of any row (lanes past the row are masked off).
fn padded(halves: &[u32]) -> Vec<u32> {
    let mut v = Vec::with_capacity(halves.len() + SCALE_PAD_WORDS);
    v.extend_from_slice(halves);
    v.resize(halves.len() + SCALE_PAD_WORDS, 0);
    v
}

const SCALE_PAD_WORDS: usize = 4;

fn unpad(v: &[u32]) -> &[u32] {
    if v.is_empty() { v } else { &v[..v.len() - SCALE_PAD_WORDS] }
}

impl CpuMatrix {
    pub(crate) fn new(m: MatrixView<'_>) -> Result<Self> {
        m.validate()?;
        Ok(CpuMatrix {
            ty: m.ty,
            rows: m.rows,
            cols: m.cols,
            quants: m.quants.to_vec(),
            scales: padded(m.scales),
            mins: if m.mins.is_empty() { Vec::new() } else { padded(m.mins) },
            tern: None,
        })
    }

    /// A matrix in one of tern's formats.
    pub(crate) fn from_tern(m: &TernMatrix) -> Result<Self> {
        let (nb, f) = (m.cols / tern_core::BLOCK_LEN, m.format);
        let consistent = m.cols.is_multiple_of(tern_core::BLOCK_LEN)
            && m.quants.len() == m.rows * nb * f.quant_words()
            && m.codes.len() == m.rows * f.code_words(m.cols)
            && m.row_scales.len() == 2 * m.rows;
        if !consistent {
            return Err(Error::BadMatrix {
                ty: TensorType::F32,
                rows: m.rows,
                cols: m.cols,
                detail: format!("{} arrays do not match the shape", f.name()),
            });
        }
        let mut tern = m.clone();
        tern.codes.resize(tern.codes.len() + 4, 0);
        Ok(CpuMatrix {
            ty: TensorType::F32,
            rows: m.rows,
            cols: m.cols,
            quants: Vec::new(),
            scales: Vec::new(),
            mins: Vec::new(),
            tern: Some(tern),
        })
    }

    /// Row `r` of a tern-format matrix, with its codes running on to the end of the padded array.
    pub(crate) fn tern_row(&self, r: usize) -> Option<TernRow<'_>> {
        let t = self.tern.as_ref()?;
        let mut row = t.row(r);
        row.codes = &t.codes[r * t.format.code_words(t.cols)..];
        Some(row)
    }

    /// Whether products with this matrix take int8 activations (GGUF block types and tern's formats).
    pub(crate) fn takes_int8(&self) -> bool {
        self.tern.is_some() || self.ty.is_quantized()
    }

    pub(crate) fn view(&self) -> MatrixView<'_> {
        MatrixView {
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            quants: &self.quants,
            scales: unpad(&self.scales),
            mins: unpad(&self.mins),
        }
    }

    /// The quant bytes (packed words viewed as bytes: tern's layouts are little-endian).
    pub(crate) fn quant_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.quants)
    }

    /// The per-block f16 scales, in block order, then eight zero halves of padding.
    pub(crate) fn scale_halves(&self) -> &[u16] {
        bytemuck::cast_slice(&self.scales)
    }

    /// The per-block f16 minimums, in block order, then eight zero halves (empty for types without).
    pub(crate) fn min_halves(&self) -> &[u16] {
        bytemuck::cast_slice(&self.mins)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.tern.as_ref().map_or(0, TernMatrix::bytes) + 4 * (self.quants.len() + self.scales.len() + self.mins.len())
    }
}

pub(crate) fn check_cols(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape(op, format!("{what} has {got} columns, expected {want}")));
    }
    Ok(())
}
