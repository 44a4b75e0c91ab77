//! The backend an engine runs on, chosen at run time: [`AnyBackend`] is the CPU or the WebGPU backend behind
//! one [`Backend`] implementation, so the model code is compiled once for both.

use std::str::FromStr;

use tern_backend_cpu::{CpuBackend, CpuMatrix, CpuTensor};
#[cfg(feature = "webgpu")]
use tern_backend_webgpu::{AdapterChoice, GpuMatrix, GpuReading, GpuTensor, WebGpuBackend};
use tern_core::{AttentionParams, Backend, Error, MatrixView, Result, RopeParams, TensorType, TokenSampling};

/// Which backend to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The multi-threaded CPU backend.
    Cpu,
    /// WebGPU on the best adapter there is, a CPU rasterizer such as lavapipe included.
    WebGpu,
    /// WebGPU on a hardware GPU when there is one, otherwise the CPU backend.
    #[default]
    Auto,
}

impl FromStr for BackendChoice {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(BackendChoice::Cpu),
            "webgpu" => Ok(BackendChoice::WebGpu),
            "auto" => Ok(BackendChoice::Auto),
            other => Err(format!("unknown backend {other:?}: expected cpu, webgpu or auto")),
        }
    }
}

/// The CPU or the WebGPU backend.
#[derive(Debug)]
pub enum AnyBackend {
    Cpu(CpuBackend),
    #[cfg(feature = "webgpu")]
    WebGpu(Box<WebGpuBackend>),
}

/// A tensor of an [`AnyBackend`].
#[derive(Debug)]
pub enum AnyTensor {
    Cpu(CpuTensor),
    #[cfg(feature = "webgpu")]
    WebGpu(GpuTensor),
}

/// A reading of an [`AnyBackend`] ([`Backend::read_begin`]).
#[derive(Debug)]
pub enum AnyReading {
    Cpu(Vec<f32>),
    #[cfg(feature = "webgpu")]
    WebGpu(GpuReading),
}

/// A weight matrix of an [`AnyBackend`].
#[derive(Debug)]
pub enum AnyMatrix {
    Cpu(CpuMatrix),
    #[cfg(feature = "webgpu")]
    WebGpu(GpuMatrix),
}

impl AnyBackend {
    /// The backend `choice` asks for; `threads` is for the CPU backend (0: one per core).
    pub fn new(choice: BackendChoice, threads: usize) -> Result<Self> {
        match choice {
            BackendChoice::Cpu => Ok(AnyBackend::Cpu(CpuBackend::new(threads)?)),
            #[cfg(feature = "webgpu")]
            BackendChoice::WebGpu => Ok(AnyBackend::WebGpu(Box::new(WebGpuBackend::new(AdapterChoice::Any)?))),
            #[cfg(feature = "webgpu")]
            BackendChoice::Auto => match WebGpuBackend::new(AdapterChoice::GpuOnly) {
                Ok(be) => Ok(AnyBackend::WebGpu(Box::new(be))),
                Err(_) => Ok(AnyBackend::Cpu(CpuBackend::new(threads)?)),
            },
            #[cfg(not(feature = "webgpu"))]
            BackendChoice::WebGpu => {
                Err(Error::NoDevice { detail: "this build of tern has no WebGPU backend (feature `webgpu`)".into() })
            }
            #[cfg(not(feature = "webgpu"))]
            BackendChoice::Auto => Ok(AnyBackend::Cpu(CpuBackend::new(threads)?)),
        }
    }

    /// Runs `f` where this backend wants a whole forward pass to run (the CPU backend's thread pool).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match self {
            AnyBackend::Cpu(be) => be.install(f),
            #[cfg(feature = "webgpu")]
            AnyBackend::WebGpu(_) => f(),
        }
    }

    /// What the backend runs on, for messages ("cpu (avx2, 2 threads)", "webgpu (NVIDIA H100, vulkan)").
    pub fn describe(&self) -> String {
        match self {
            AnyBackend::Cpu(be) => format!("cpu ({}, {} threads)", be.level().name(), be.threads()),
            #[cfg(feature = "webgpu")]
            AnyBackend::WebGpu(be) => {
                format!("webgpu ({}, {})", be.adapter().name, be.adapter().api)
            }
        }
    }
}

fn mixed(op: &'static str) -> Error {
    Error::shape(op, "operands belong to different backends")
}

/// Runs `$body` with `$be` and every `$arg` unwrapped to the same backend's types, or fails with `mixed`.
macro_rules! dispatch {
    ($self:ident, $op:literal, |$be:ident $(, $arg:ident : $kind:ident)*| $body:expr) => {
        match $self {
            AnyBackend::Cpu($be) => {
                $( let $arg = match $arg { $kind::Cpu(v) => v, #[allow(unreachable_patterns)] _ => return Err(mixed($op)) }; )*
                $body
            }
            #[cfg(feature = "webgpu")]
            AnyBackend::WebGpu($be) => {
                $( let $arg = match $arg { $kind::WebGpu(v) => v, _ => return Err(mixed($op)) }; )*
                $body
            }
        }
    };
}

impl Backend for AnyBackend {
    type Tensor = AnyTensor;
    type Matrix = AnyMatrix;
    type Reading = AnyReading;

    fn name(&self) -> &'static str {
        match self {
            AnyBackend::Cpu(be) => be.name(),
            #[cfg(feature = "webgpu")]
            AnyBackend::WebGpu(be) => be.name(),
        }
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<AnyTensor> {
        match self {
            AnyBackend::Cpu(be) => be.zeros(rows, cols).map(AnyTensor::Cpu),
            #[cfg(feature = "webgpu")]
            AnyBackend::WebGpu(be) => be.zeros(rows, cols).map(AnyTensor::WebGpu),
        }
    }

    fn zeros_cache(&self, rows: usize, cols: usize, ty: TensorType) -> Result<AnyTensor> {
        match self {
            AnyBackend::Cpu(be) => be.zeros_cache(rows, cols, ty).map(AnyTensor::Cpu),
            #[cfg(feature = "webgpu")]
            AnyBackend::WebGpu(be) => be.zeros_cache(rows, cols, ty).map(AnyTensor::WebGpu),
        }
    }

    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<AnyTensor> {
        match self {
            AnyBackend::Cpu(be) => be.upload(data, rows, cols).map(AnyTensor::Cpu),
            #[cfg(feature = "webgpu")]
            AnyBackend::WebGpu(be) => be.upload(data, rows, cols).map(AnyTensor::WebGpu),
        }
    }

    fn read(&self, t: &AnyTensor) -> Result<Vec<f32>> {
        dispatch!(self, "read", |be, t: AnyTensor| be.read(t))
    }

    fn read_begin(&self, t: &AnyTensor) -> Result<AnyReading> {
        match (self, t) {
            (AnyBackend::Cpu(be), AnyTensor::Cpu(t)) => be.read_begin(t).map(AnyReading::Cpu),
            #[cfg(feature = "webgpu")]
            (AnyBackend::WebGpu(be), AnyTensor::WebGpu(t)) => be.read_begin(t).map(AnyReading::WebGpu),
            #[cfg(feature = "webgpu")]
            _ => Err(mixed("read_begin")),
        }
    }

    fn read_finish(&self, r: AnyReading) -> Result<Vec<f32>> {
        dispatch!(self, "read_finish", |be, r: AnyReading| be.read_finish(r))
    }

    fn queues_work(&self) -> bool {
        match self {
            AnyBackend::Cpu(be) => be.queues_work(),
            #[cfg(feature = "webgpu")]
            AnyBackend::WebGpu(be) => be.queues_work(),
        }
    }

    fn shape(&self, t: &AnyTensor) -> (usize, usize) {
        match (self, t) {
            (AnyBackend::Cpu(be), AnyTensor::Cpu(t)) => be.shape(t),
            #[cfg(feature = "webgpu")]
            (AnyBackend::WebGpu(be), AnyTensor::WebGpu(t)) => be.shape(t),
            #[cfg(feature = "webgpu")]
            _ => (0, 0),
        }
    }

    fn upload_matrix(&self, m: MatrixView<'_>) -> Result<AnyMatrix> {
        match self {
            AnyBackend::Cpu(be) => be.upload_matrix(m).map(AnyMatrix::Cpu),
            #[cfg(feature = "webgpu")]
            AnyBackend::WebGpu(be) => be.upload_matrix(m).map(AnyMatrix::WebGpu),
        }
    }

    fn upload_matrices(&self, ms: &[MatrixView<'_>]) -> Result<Vec<AnyMatrix>> {
        match self {
            AnyBackend::Cpu(be) => Ok(be.upload_matrices(ms)?.into_iter().map(AnyMatrix::Cpu).collect()),
            #[cfg(feature = "webgpu")]
            AnyBackend::WebGpu(be) => Ok(be.upload_matrices(ms)?.into_iter().map(AnyMatrix::WebGpu).collect()),
        }
    }

    fn matrix_shape(&self, m: &AnyMatrix) -> (usize, usize) {
        match (self, m) {
            (AnyBackend::Cpu(be), AnyMatrix::Cpu(m)) => be.matrix_shape(m),
            #[cfg(feature = "webgpu")]
            (AnyBackend::WebGpu(be), AnyMatrix::WebGpu(m)) => be.matrix_shape(m),
            #[cfg(feature = "webgpu")]
            _ => (0, 0),
        }
    }

    fn embed(&self, table: &AnyMatrix, ids: &[u32], out: &mut AnyTensor) -> Result<()> {
        dispatch!(self, "embed", |be, table: AnyMatrix, out: AnyTensor| be.embed(table, ids, out))
    }

    fn embed_sampled(&self, table: &AnyMatrix, id: &AnyTensor, out: &mut AnyTensor) -> Result<()> {
        dispatch!(self, "embed_sampled", |be, table: AnyMatrix, id: AnyTensor, out: AnyTensor| be.embed_sampled(table, id, out))
    }

    fn sample(&self, logits: &AnyTensor, s: &TokenSampling, out: &mut AnyTensor) -> Result<()> {
        dispatch!(self, "sample", |be, logits: AnyTensor, out: AnyTensor| be.sample(logits, s, out))
    }

    fn matmul(&self, w: &AnyMatrix, x: &AnyTensor, out: &mut AnyTensor) -> Result<()> {
        dispatch!(self, "matmul", |be, w: AnyMatrix, x: AnyTensor, out: AnyTensor| be.matmul(w, x, out))
    }

    fn matmul_many(&self, ws: &[&AnyMatrix], x: &AnyTensor, outs: &mut [&mut AnyTensor]) -> Result<()> {
        match (self, x) {
            (AnyBackend::Cpu(be), AnyTensor::Cpu(x)) => {
                let ws: Option<Vec<&CpuMatrix>> = ws
                    .iter()
                    .map(|w| match w {
                        AnyMatrix::Cpu(m) => Some(m),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    })
                    .collect();
                let outs: Option<Vec<&mut CpuTensor>> = outs
                    .iter_mut()
                    .map(|o| match &mut **o {
                        AnyTensor::Cpu(t) => Some(t),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    })
                    .collect();
                match (ws, outs) {
                    (Some(ws), Some(mut outs)) => be.matmul_many(&ws, x, &mut outs),
                    _ => Err(mixed("matmul_many")),
                }
            }
            #[cfg(feature = "webgpu")]
            (AnyBackend::WebGpu(be), AnyTensor::WebGpu(x)) => {
                let ws: Option<Vec<&GpuMatrix>> = ws
                    .iter()
                    .map(|w| match w {
                        AnyMatrix::WebGpu(m) => Some(m),
                        _ => None,
                    })
                    .collect();
                let outs: Option<Vec<&mut GpuTensor>> = outs
                    .iter_mut()
                    .map(|o| match &mut **o {
                        AnyTensor::WebGpu(t) => Some(t),
                        _ => None,
                    })
                    .collect();
                match (ws, outs) {
                    (Some(ws), Some(mut outs)) => be.matmul_many(&ws, x, &mut outs),
                    _ => Err(mixed("matmul_many")),
                }
            }
            #[cfg(feature = "webgpu")]
            _ => Err(mixed("matmul_many")),
        }
    }

    fn rms_norm(&self, x: &AnyTensor, weight: &AnyTensor, eps: f32, out: &mut AnyTensor) -> Result<()> {
        dispatch!(self, "rms_norm", |be, x: AnyTensor, weight: AnyTensor, out: AnyTensor| be.rms_norm(x, weight, eps, out))
    }

    fn add_rms_norm(&self, x: &mut AnyTensor, y: &AnyTensor, weight: &AnyTensor, eps: f32, out: &mut AnyTensor) -> Result<()> {
        dispatch!(self, "add_rms_norm", |be, x: AnyTensor, y: AnyTensor, weight: AnyTensor, out: AnyTensor| be
            .add_rms_norm(x, y, weight, eps, out))
    }

    fn matmul_add_rms_norm(
        &self,
        w: &AnyMatrix,
        a: &AnyTensor,
        y: &mut AnyTensor,
        x: &mut AnyTensor,
        weight: &AnyTensor,
        eps: f32,
        out: &mut AnyTensor,
    ) -> Result<()> {
        dispatch!(self, "matmul_add_rms_norm", |be,
                                                w: AnyMatrix,
                                                a: AnyTensor,
                                                y: AnyTensor,
                                                x: AnyTensor,
                                                weight: AnyTensor,
                                                out: AnyTensor| be
            .matmul_add_rms_norm(w, a, y, x, weight, eps, out))
    }

    fn rope_and_append(
        &self,
        q: &mut AnyTensor,
        k: &mut AnyTensor,
        v: &AnyTensor,
        rope: &RopeParams,
        n_kv_heads: usize,
        (k_cache, v_cache): (&mut AnyTensor, &mut AnyTensor),
    ) -> Result<()> {
        dispatch!(self, "rope_and_append", |be,
                                            q: AnyTensor,
                                            k: AnyTensor,
                                            v: AnyTensor,
                                            k_cache: AnyTensor,
                                            v_cache: AnyTensor| be.rope_and_append(
            q,
            k,
            v,
            rope,
            n_kv_heads,
            (k_cache, v_cache)
        ))
    }

    fn attention_inputs(
        &self,
        [wq, wk, wv]: [&AnyMatrix; 3],
        x: &AnyTensor,
        rope: &RopeParams,
        n_kv_heads: usize,
        (q, k, v): (&mut AnyTensor, &mut AnyTensor, &mut AnyTensor),
        (k_cache, v_cache): (&mut AnyTensor, &mut AnyTensor),
    ) -> Result<()> {
        dispatch!(self, "attention_inputs", |be,
                                             wq: AnyMatrix,
                                             wk: AnyMatrix,
                                             wv: AnyMatrix,
                                             x: AnyTensor,
                                             q: AnyTensor,
                                             k: AnyTensor,
                                             v: AnyTensor,
                                             k_cache: AnyTensor,
                                             v_cache: AnyTensor| be.attention_inputs(
            [wq, wk, wv],
            x,
            rope,
            n_kv_heads,
            (q, k, v),
            (k_cache, v_cache)
        ))
    }

    fn rope(&self, x: &mut AnyTensor, p: &RopeParams) -> Result<()> {
        dispatch!(self, "rope", |be, x: AnyTensor| be.rope(x, p))
    }

    fn write_rows(&self, src: &AnyTensor, dst: &mut AnyTensor, row: usize) -> Result<()> {
        dispatch!(self, "write_rows", |be, src: AnyTensor, dst: AnyTensor| be.write_rows(src, dst, row))
    }

    fn slice_rows(&self, src: &AnyTensor, first: usize, count: usize, out: &mut AnyTensor) -> Result<()> {
        dispatch!(self, "slice_rows", |be, src: AnyTensor, out: AnyTensor| be.slice_rows(src, first, count, out))
    }

    fn attention(&self, q: &AnyTensor, k: &AnyTensor, v: &AnyTensor, p: &AttentionParams, out: &mut AnyTensor) -> Result<()> {
        dispatch!(self, "attention", |be, q: AnyTensor, k: AnyTensor, v: AnyTensor, out: AnyTensor| be.attention(q, k, v, p, out))
    }

    fn silu_mul(&self, gate: &AnyTensor, up: &AnyTensor, out: &mut AnyTensor) -> Result<()> {
        dispatch!(self, "silu_mul", |be, gate: AnyTensor, up: AnyTensor, out: AnyTensor| be.silu_mul(gate, up, out))
    }

    fn matmul_silu_mul(
        &self,
        (gate, up): (&AnyMatrix, &AnyMatrix),
        x: &AnyTensor,
        (g, u): (&mut AnyTensor, &mut AnyTensor),
        out: &mut AnyTensor,
    ) -> Result<()> {
        dispatch!(self, "matmul_silu_mul", |be,
                                            gate: AnyMatrix,
                                            up: AnyMatrix,
                                            x: AnyTensor,
                                            g: AnyTensor,
                                            u: AnyTensor,
                                            out: AnyTensor| be.matmul_silu_mul(
            (gate, up),
            x,
            (g, u),
            out
        ))
    }

    fn add(&self, x: &mut AnyTensor, y: &AnyTensor) -> Result<()> {
        dispatch!(self, "add", |be, x: AnyTensor, y: AnyTensor| be.add(x, y))
    }
}
