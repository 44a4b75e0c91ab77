//! The backend's tensor and matrix types: GPU buffers with their shapes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tern_core::TensorType;

use crate::pool::BufferPool;

/// An f32 activation matrix in a GPU storage buffer, row-major (or a KV cache of f16 elements: `half`). The
/// buffer may be larger than the shape (it is reused as ops resize their outputs).
#[derive(Debug)]
pub struct GpuTensor {
    pub(crate) buf: wgpu::Buffer,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// The tensor quantized to int8 for decode products (`Kernel::MatvecInt8`'s layout), which the ops that can
    /// write it together with the tensor do; valid while `int8_ready`, which every other write clears.
    pub(crate) int8: Option<wgpu::Buffer>,
    pub(crate) int8_ready: bool,
    /// Whether both forms hold the row of an RMSNorm before its factor (`Kernel::MatvecInt8Norm`'s output):
    /// int8 products that take it so (`scaled`) apply the factor themselves, and every other use first applies
    /// it in place ([`crate::WebGpuBackend`]'s `settle`). Atomic because reads take the tensor shared.
    pub(crate) unscaled: AtomicBool,
    /// Whether the elements are f16, two to a word (a KV cache: `Backend::zeros_cache`), not f32.
    pub(crate) half: bool,
    /// Where the buffers go when the tensor is dropped.
    pub(crate) pool: Arc<BufferPool>,
}

impl GpuTensor {
    pub(crate) fn len(&self) -> usize {
        self.rows * self.cols
    }

    /// A tensor of `rows x cols` in `buf`, without an int8 form.
    pub(crate) fn new(buf: wgpu::Buffer, rows: usize, cols: usize, pool: Arc<BufferPool>) -> GpuTensor {
        GpuTensor { buf, rows, cols, int8: None, int8_ready: false, unscaled: AtomicBool::new(false), half: false, pool }
    }

    /// Marks the tensor written by an op that does not write its int8 form.
    pub(crate) fn written(&mut self) {
        self.int8_ready = false;
    }

    /// Whether the tensor waits for its RMS factor (see `unscaled`).
    pub(crate) fn is_unscaled(&self) -> bool {
        self.unscaled.load(Ordering::Acquire)
    }

    /// Sets whether the tensor waits for its RMS factor.
    pub(crate) fn set_unscaled(&self, unscaled: bool) {
        self.unscaled.store(unscaled, Ordering::Release);
    }
}

impl Drop for GpuTensor {
    fn drop(&mut self) {
        self.pool.give(self.buf.clone());
        if let Some(b) = self.int8.take() {
            self.pool.give(b);
        }
    }
}

/// A packed weight matrix: its four word arrays in GPU storage buffers (a shared empty one for absent parts).
/// Matrices uploaded together share their buffers, each from its own first row.
#[derive(Debug)]
pub struct GpuMatrix {
    pub(crate) ty: TensorType,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// The matrix's first row in the buffers.
    pub(crate) first_row: usize,
    /// quants, scales (tern: block codes), mins, row units.
    pub(crate) parts: [wgpu::Buffer; 4],
}

impl GpuMatrix {
    /// The matrix's first row in the buffers it shares with the matrices uploaded together with it (0 when it
    /// has buffers of its own).
    pub fn first_row(&self) -> usize {
        self.first_row
    }

    /// Whether `ws` lie one after another in the same buffers, so that one product kernel can run them all.
    pub(crate) fn stored_together(ws: &[&GpuMatrix]) -> bool {
        ws.windows(2).all(|p| {
            let (a, b) = (p[0], p[1]);
            a.parts[0] == b.parts[0] && a.ty == b.ty && a.cols == b.cols && a.first_row + a.rows == b.first_row
        })
    }
}

/// Bytes a tensor of `len` f32 takes: at least 16, a multiple of 16 (kernels read some as `vec4`).
pub(crate) fn tensor_bytes(len: usize) -> u64 {
    ((len as u64) * 4).max(16).next_multiple_of(16)
}
