use half::f16;
use half::slice::HalfFloatSliceExt;
use tern_core::{Error, MatrixView, Result, TensorType};
use tern_quant::TernMatrix;

use crate::groups::Groups;

/// An f32 activation matrix in host memory, row-major; or a KV cache stored as f16
/// ([`tern_core::Backend::zeros_cache`]), whose elements are in `halves` and whose `data` is empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuTensor {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pub(crate) halves: Option<Vec<f16>>,
}

impl CpuTensor {
    /// `rows x cols` f32 values.
    pub(crate) fn new(data: Vec<f32>, rows: usize, cols: usize) -> Self {
        CpuTensor { data, rows, cols, halves: None }
    }

    /// `rows x cols` zeros stored as f16.
    pub(crate) fn zeros_f16(rows: usize, cols: usize) -> Self {
        CpuTensor { data: Vec::new(), rows, cols, halves: Some(vec![f16::ZERO; rows * cols]) }
    }

    /// An error naming `op` unless the elements are f32: only the KV cache's ops take f16 tensors.
    pub(crate) fn f32_only(&self, op: &'static str) -> Result<()> {
        match self.halves {
            None => Ok(()),
            Some(_) => Err(Error::Unsupported { op, ty: TensorType::F16, backend: "cpu" }),
        }
    }

    /// Every element as f32, row-major.
    pub(crate) fn to_f32(&self) -> Vec<f32> {
        match &self.halves {
            None => self.data.clone(),
            Some(h) => h.to_f32_vec(),
        }
    }

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

/// A weight matrix in host memory, owned: float rows as they came, block formats interleaved for the kernels.
#[derive(Debug, Clone)]
pub struct CpuMatrix {
    pub rows: usize,
    pub cols: usize,
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Layout {
    /// F32, F16 or BF16 rows, row-major, as words.
    Float { ty: TensorType, words: Vec<u32> },
    /// A block format (tern's or GGUF's), its rows interleaved in groups of eight.
    Groups(Groups),
}

impl CpuMatrix {
    pub(crate) fn new(m: MatrixView<'_>) -> Result<Self> {
        m.validate()?;
        let layout = if m.ty.tern_format().is_some() {
            let bad = |e: tern_quant::Error| Error::BadMatrix { ty: m.ty, rows: m.rows, cols: m.cols, detail: e.to_string() };
            Layout::Groups(Groups::from_tern(&TernMatrix::from_view(&m).map_err(bad)?))
        } else if let Some(groups) = Groups::from_gguf(&m) {
            Layout::Groups(groups)
        } else {
            Layout::Float { ty: m.ty, words: m.quants.to_vec() }
        };
        Ok(CpuMatrix { rows: m.rows, cols: m.cols, layout })
    }

    /// The type of a float matrix (`None` for block formats).
    pub(crate) fn float_type(&self) -> Option<TensorType> {
        match &self.layout {
            Layout::Float { ty, .. } => Some(*ty),
            Layout::Groups(_) => None,
        }
    }

    /// The interleaved groups of a block-format matrix, whose products take int8 activations.
    pub(crate) fn groups(&self) -> Option<&Groups> {
        match &self.layout {
            Layout::Groups(g) => Some(g),
            Layout::Float { .. } => None,
        }
    }

    /// Row `r` as f32, by the reference dequantization of its format.
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match &self.layout {
            Layout::Float { ty, words } => {
                let view = MatrixView {
                    ty: *ty,
                    rows: self.rows,
                    cols: self.cols,
                    quants: words,
                    scales: &[],
                    mins: &[],
                    row_scales: &[],
                };
                tern_quant::dequantize_row(&view, r, out);
            }
            Layout::Groups(g) => g.dequantize_row(r, out),
        }
    }

    /// The bytes of a float matrix (words viewed as bytes: tern's layouts are little-endian).
    pub(crate) fn float_bytes(&self) -> &[u8] {
        match &self.layout {
            Layout::Float { words, .. } => bytemuck::cast_slice(words),
            Layout::Groups(_) => &[],
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.layout {
            Layout::Float { words, .. } => 4 * words.len(),
            Layout::Groups(g) => g.bytes(),
        }
    }
}

pub(crate) fn check_cols(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape(op, format!("{what} has {got} columns, expected {want}")));
    }
    Ok(())
}
