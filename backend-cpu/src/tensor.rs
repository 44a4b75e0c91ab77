use half::f16;
use half::slice::HalfFloatSliceExt;
use tern_core::{Error, MatrixView, Result, TensorType};
use tern_quant::TernMatrix;

use crate::tern_groups::TernGroups;

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

/// A weight matrix in host memory: tern's structure-of-arrays words, owned.
#[derive(Debug, Clone)]
pub struct CpuMatrix {
    pub rows: usize,
    pub cols: usize,
    layout: Layout,
}

#[derive(Debug, Clone)]
enum Layout {
    /// A GGUF type repacked ([`tern_quant::PackedMatrix`]); `scales` and `mins` (when present) end with eight
    /// zero halves so that kernels may load eight blocks' scales from any block.
    Packed { ty: TensorType, quants: Vec<u32>, scales: Vec<u32>, mins: Vec<u32> },
    /// One of tern's formats, its rows interleaved for the kernels.
    Tern(TernGroups),
}

/// Words of f16 pairs followed by eight zero halves (lanes past a row are masked off by the kernels).
fn padded(halves: &[u32]) -> Vec<u32> {
    let mut v = Vec::with_capacity(halves.len() + PAD_WORDS);
    v.extend_from_slice(halves);
    v.resize(halves.len() + PAD_WORDS, 0);
    v
}

const PAD_WORDS: usize = 4;

fn unpad(v: &[u32]) -> &[u32] {
    if v.is_empty() { v } else { &v[..v.len() - PAD_WORDS] }
}

impl CpuMatrix {
    pub(crate) fn new(m: MatrixView<'_>) -> Result<Self> {
        m.validate()?;
        if m.ty.tern_format().is_some() {
            let bad = |e: tern_quant::Error| Error::BadMatrix { ty: m.ty, rows: m.rows, cols: m.cols, detail: e.to_string() };
            let tern = TernGroups::new(&TernMatrix::from_view(&m).map_err(bad)?);
            return Ok(CpuMatrix { rows: m.rows, cols: m.cols, layout: Layout::Tern(tern) });
        }
        let layout = Layout::Packed {
            ty: m.ty,
            quants: m.quants.to_vec(),
            scales: padded(m.scales),
            mins: if m.mins.is_empty() { Vec::new() } else { padded(m.mins) },
        };
        Ok(CpuMatrix { rows: m.rows, cols: m.cols, layout })
    }

    /// The GGUF type of a packed matrix (`None` for tern's formats).
    pub(crate) fn packed_type(&self) -> Option<TensorType> {
        match &self.layout {
            Layout::Packed { ty, .. } => Some(*ty),
            Layout::Tern(_) => None,
        }
    }

    /// The interleaved groups of a tern-format matrix.
    pub(crate) fn tern_groups(&self) -> Option<&TernGroups> {
        match &self.layout {
            Layout::Tern(t) => Some(t),
            Layout::Packed { .. } => None,
        }
    }

    /// Whether products with this matrix take int8 activations (GGUF block types and tern's formats).
    pub(crate) fn takes_int8(&self) -> bool {
        self.packed_type().is_none_or(TensorType::is_quantized)
    }

    /// Row `r` as f32, by the reference dequantization of its format.
    pub(crate) fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match &self.layout {
            Layout::Packed { ty, quants, scales, mins } => {
                let view = MatrixView {
                    ty: *ty,
                    rows: self.rows,
                    cols: self.cols,
                    quants,
                    scales: unpad(scales),
                    mins: unpad(mins),
                    row_scales: &[],
                };
                tern_quant::dequantize_row(&view, r, out);
            }
            Layout::Tern(t) => t.dequantize_row(r, out),
        }
    }

    fn packed_arrays(&self) -> (&[u32], &[u32], &[u32]) {
        match &self.layout {
            Layout::Packed { quants, scales, mins, .. } => (quants, scales, mins),
            Layout::Tern(_) => (&[], &[], &[]),
        }
    }

    /// The quant bytes of a packed matrix (words viewed as bytes: tern's layouts are little-endian).
    pub(crate) fn quant_bytes(&self) -> &[u8] {
        bytemuck::cast_slice(self.packed_arrays().0)
    }

    /// The per-block f16 scales of a packed matrix, in block order, then eight zero halves of padding.
    pub(crate) fn scale_halves(&self) -> &[u16] {
        bytemuck::cast_slice(self.packed_arrays().1)
    }

    /// The per-block f16 minimums, in block order, then eight zero halves (empty for types without).
    pub(crate) fn min_halves(&self) -> &[u16] {
        bytemuck::cast_slice(self.packed_arrays().2)
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.layout {
            Layout::Packed { quants, scales, mins, .. } => 4 * (quants.len() + scales.len() + mins.len()),
            Layout::Tern(t) => t.bytes(),
        }
    }
}

pub(crate) fn check_cols(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape(op, format!("{what} has {got} columns, expected {want}")));
    }
    Ok(())
}
