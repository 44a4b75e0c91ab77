use crate::{MatrixView, Result, TensorType, TokenSampling};

/// How RoPE pairs up the elements of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i + 1)`: GGUF's Llama layout (its Q/K weights are stored permuted for this).
    Interleaved,
    /// Halves `(i, i + d/2)`: GPT-NeoX, Qwen2 and Hugging Face's unpermuted Llama weights.
    Halves,
}

/// Rotary position embedding applied to `n_heads` heads of `head_dim` elements in every row; row `t` is at
/// position `pos0 + t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeParams {
    pub n_heads: usize,
    pub head_dim: usize,
    /// Rotated elements per head (`head_dim` unless the model rotates only part of each head).
    pub rot_dim: usize,
    /// Base of the rotation frequencies, `theta_i = pos * base^(-2i / rot_dim)`.
    pub freq_base: f32,
    pub style: RopeStyle,
    pub pos0: usize,
}

/// Causal grouped-query attention of `q` rows at positions `pos0..pos0 + rows` over cached K/V rows
/// `0..pos0 + rows`. Query head `h` reads KV head `h / (n_heads / n_kv_heads)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub pos0: usize,
    /// Multiplies `q·k` before the softmax; usually `1 / sqrt(head_dim)`.
    pub scale: f32,
}

impl AttentionParams {
    /// Checks the shapes (rows, columns) of the query rows and the K and V caches against these parameters:
    /// heads that share KV heads evenly, widths of whole heads, and caches that hold every position attended.
    pub fn check(&self, q: (usize, usize), k: (usize, usize), v: (usize, usize)) -> crate::Result<()> {
        let (hd, kv_cols) = (self.head_dim, self.n_kv_heads * self.head_dim);
        if self.n_kv_heads == 0 || !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return Err(crate::Error::shape(
                "attention",
                format!("{} heads cannot share {} KV heads", self.n_heads, self.n_kv_heads),
            ));
        }
        if q.1 != self.n_heads * hd || k.1 != kv_cols || v.1 != kv_cols {
            return Err(crate::Error::shape(
                "attention",
                format!(
                    "q {} / k {} / v {} columns for {} heads, {} KV heads of {hd}",
                    q.1, k.1, v.1, self.n_heads, self.n_kv_heads
                ),
            ));
        }
        let len = self.pos0 + q.0;
        if len > k.0 || len > v.0 {
            return Err(crate::Error::ContextFull { pos: len - 1, capacity: k.0.min(v.0) });
        }
        Ok(())
    }
}

/// The op contract every backend implements. The model code is written once against it.
///
/// Tensors are row-major f32 matrices living on the backend's device: a row per token. Matrices are packed
/// weights, `rows` output features by `cols` input features. Unless stated, an op writes a separate `out` that
/// it resizes to the shape it produces, so a caller can keep reusing the same scratch tensors.
pub trait Backend: Send + Sync {
    /// An f32 activation matrix on the device.
    type Tensor: Send + Sync;
    /// A packed weight matrix on the device.
    type Matrix: Send + Sync;
    /// A copy of a tensor on its way back to the host ([`Backend::read_begin`]).
    type Reading: Send;

    /// A short name for messages ("cpu", "webgpu").
    fn name(&self) -> &'static str;

    /// A tensor of `rows x cols` zeros.
    fn zeros(&self, rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// A KV cache tensor of `rows x cols` zeros whose elements are stored as `ty`: [`TensorType::F32`], or
    /// [`TensorType::F16`] (half the memory, and half the bytes attention reads; values are rounded to nearest
    /// even as they are appended). Only the cache's ops take an F16 tensor: [`Backend::write_rows`],
    /// [`Backend::rope_and_append`] and [`Backend::attention_inputs`] write it, [`Backend::attention`] reads it
    /// as K or V, and [`Backend::read`] gives its values as f32; every other op rejects it. This default makes
    /// F32 caches only.
    fn zeros_cache(&self, rows: usize, cols: usize, ty: TensorType) -> Result<Self::Tensor> {
        match ty {
            TensorType::F32 => self.zeros(rows, cols),
            _ => Err(crate::Error::Unsupported { op: "KV cache", ty, backend: self.name() }),
        }
    }
    /// A tensor holding `data` as `rows x cols`.
    fn upload(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor>;
    /// The tensor's contents, row-major.
    fn read(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// Starts copying the tensor's contents back: everything recorded so far goes to the device, and
    /// [`Backend::read_finish`] waits for the copy. Ops recorded in between run meanwhile, so a caller can queue
    /// the next step before it reads this one's result.
    fn read_begin(&self, t: &Self::Tensor) -> Result<Self::Reading>;
    /// The contents of a tensor as they were when [`Backend::read_begin`] was called, row-major.
    fn read_finish(&self, r: Self::Reading) -> Result<Vec<f32>>;
    /// Whether ops run after they are recorded (a GPU's queue) rather than as they are called: only then does
    /// queueing a step before reading the last one's result overlap them.
    fn queues_work(&self) -> bool {
        false
    }
    /// The tensor's `(rows, cols)`.
    fn shape(&self, t: &Self::Tensor) -> (usize, usize);
    /// Moves a packed weight matrix to the device.
    fn upload_matrix(&self, m: MatrixView<'_>) -> Result<Self::Matrix>;
    /// Moves several packed matrices to the device. A backend may store them together, so that
    /// [`Backend::matmul_many`] over them, in this order, runs as one product; this default uploads them one
    /// by one.
    fn upload_matrices(&self, ms: &[MatrixView<'_>]) -> Result<Vec<Self::Matrix>> {
        ms.iter().map(|m| self.upload_matrix(*m)).collect()
    }
    /// A matrix's `(rows, cols)`.
    fn matrix_shape(&self, m: &Self::Matrix) -> (usize, usize);

    /// `out[t] = table[ids[t]]`, dequantized: an embedding lookup.
    fn embed(&self, table: &Self::Matrix, ids: &[u32], out: &mut Self::Tensor) -> Result<()>;
    /// `out = table[id]` (one row) for the token [`Backend::sample`] left in `id`, without the host seeing it.
    fn embed_sampled(&self, table: &Self::Matrix, id: &Self::Tensor, out: &mut Self::Tensor) -> Result<()>;
    /// Picks a token from the last row of `logits` by the rule of [`TokenSampling`] (whose settings must pass
    /// [`TokenSampling::check`]) and leaves it in `out` (`1 x 1`, the id's bits: `f32::from_bits(id)`), where
    /// [`Backend::embed_sampled`] takes it for the next step and a reading brings it to the host.
    fn sample(&self, logits: &Self::Tensor, s: &TokenSampling, out: &mut Self::Tensor) -> Result<()>;
    /// `out[t, r] = sum_c w[r, c] * x[t, c]`: every row of `x` through the matrix.
    fn matmul(&self, w: &Self::Matrix, x: &Self::Tensor, out: &mut Self::Tensor) -> Result<()>;
    /// `outs[i] = ws[i] x`: the same input through several matrices (Q, K and V; gate and up). Backends can
    /// prepare `x` once and run all the products in one dispatch; this default runs them one by one.
    fn matmul_many(&self, ws: &[&Self::Matrix], x: &Self::Tensor, outs: &mut [&mut Self::Tensor]) -> Result<()> {
        if ws.len() != outs.len() {
            return Err(crate::Error::shape("matmul_many", format!("{} matrices but {} outputs", ws.len(), outs.len())));
        }
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(w, x, out)?;
        }
        Ok(())
    }
    /// `out[t] = x[t] / rms(x[t]) * weight`, with `weight` a `1 x cols` tensor.
    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Tensor, eps: f32, out: &mut Self::Tensor) -> Result<()>;
    /// `x += y`, then `out = rms_norm(x)`: a residual connection and the norm after it, which a backend can
    /// do in one pass. This default runs [`Backend::add`] and [`Backend::rms_norm`].
    fn add_rms_norm(
        &self,
        x: &mut Self::Tensor,
        y: &Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        self.add(x, y)?;
        self.rms_norm(x, weight, eps, out)
    }
    /// `x += w a`, then `out = rms_norm(x)`: a product whose result joins the residual, and the norm after it
    /// (the attention output's and the FFN's last product), which a backend can do in one pass. `y` is scratch
    /// for the product; this default runs [`Backend::matmul`] into it and then [`Backend::add_rms_norm`].
    #[allow(clippy::too_many_arguments)]
    fn matmul_add_rms_norm(
        &self,
        w: &Self::Matrix,
        a: &Self::Tensor,
        y: &mut Self::Tensor,
        x: &mut Self::Tensor,
        weight: &Self::Tensor,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        self.matmul(w, a, y)?;
        self.add_rms_norm(x, y, weight, eps, out)
    }
    /// Rotates `x` in place (see [`RopeParams`]).
    fn rope(&self, x: &mut Self::Tensor, p: &RopeParams) -> Result<()>;
    /// A step's attention inputs made ready: `q` and `k` rotated in place by `rope` (its `n_heads` is `q`'s;
    /// `k` has `n_kv_heads`), then `k` and `v` appended to the caches (K, V) from row `rope.pos0`. A backend can do it
    /// all in one pass; this default runs [`Backend::rope`] twice and [`Backend::write_rows`] twice.
    fn rope_and_append(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        v: &Self::Tensor,
        rope: &RopeParams,
        n_kv_heads: usize,
        (k_cache, v_cache): (&mut Self::Tensor, &mut Self::Tensor),
    ) -> Result<()> {
        self.rope(q, rope)?;
        self.rope(k, &RopeParams { n_heads: n_kv_heads, ..*rope })?;
        self.write_rows(k, k_cache, rope.pos0)?;
        self.write_rows(v, v_cache, rope.pos0)
    }
    /// A step's attention inputs from the normed activations `x`: `q`, `k` and `v` are the products with `wq`,
    /// `wk` and `wv`, then [`Backend::rope_and_append`] rotates `q` and appends `k` and `v` to the caches. `k` and
    /// `v` are scratch: a backend that writes them straight to the caches leaves them unspecified. This default
    /// runs [`Backend::matmul_many`] and [`Backend::rope_and_append`].
    #[allow(clippy::too_many_arguments)]
    fn attention_inputs(
        &self,
        [wq, wk, wv]: [&Self::Matrix; 3],
        x: &Self::Tensor,
        rope: &RopeParams,
        n_kv_heads: usize,
        (q, k, v): (&mut Self::Tensor, &mut Self::Tensor, &mut Self::Tensor),
        caches: (&mut Self::Tensor, &mut Self::Tensor),
    ) -> Result<()> {
        self.matmul_many(&[wq, wk, wv], x, &mut [&mut *q, &mut *k, &mut *v])?;
        self.rope_and_append(q, k, v, rope, n_kv_heads, caches)
    }
    /// Copies all rows of `src` into `dst` starting at row `row`: appends new K/V rows to a cache.
    fn write_rows(&self, src: &Self::Tensor, dst: &mut Self::Tensor, row: usize) -> Result<()>;
    /// Copies rows `first..first + count` of `src` into `out`.
    fn slice_rows(&self, src: &Self::Tensor, first: usize, count: usize, out: &mut Self::Tensor) -> Result<()>;
    /// Causal grouped-query attention (see [`AttentionParams`]); `k` and `v` are the caches, one row per
    /// position, `n_kv_heads * head_dim` wide.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        p: &AttentionParams,
        out: &mut Self::Tensor,
    ) -> Result<()>;
    /// `out = silu(gate) * up`, elementwise.
    fn silu_mul(&self, gate: &Self::Tensor, up: &Self::Tensor, out: &mut Self::Tensor) -> Result<()>;
    /// A feed-forward step's first half: `out = silu(gate x) * (up x)`, with `g` and `u` holding the two
    /// products where the backend needs them. A backend can do it in one pass; this default runs
    /// [`Backend::matmul_many`] and [`Backend::silu_mul`].
    fn matmul_silu_mul(
        &self,
        (gate, up): (&Self::Matrix, &Self::Matrix),
        x: &Self::Tensor,
        (g, u): (&mut Self::Tensor, &mut Self::Tensor),
        out: &mut Self::Tensor,
    ) -> Result<()> {
        self.matmul_many(&[gate, up], x, &mut [&mut *g, &mut *u])?;
        self.silu_mul(g, u, out)
    }
    /// `x += y`, elementwise, in place: the residual connection.
    fn add(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()>;
}
