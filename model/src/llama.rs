//! The Llama-family forward pass, written once against [`Backend`].

use tern_core::{AttentionParams, Backend, MatrixView, RopeParams, TensorType, TokenSampling};
use tern_loader::{LoadProgress, ModelSource, TensorData};
use tern_quant::{PackedMatrix, TernMatrix, dequantize_gguf};

use crate::{Error, KvCache, LlamaConfig, Result};

#[derive(Debug)]
pub(crate) struct Layer<B: Backend> {
    pub(crate) attn_norm: B::Tensor,
    pub(crate) wq: B::Matrix,
    pub(crate) wk: B::Matrix,
    pub(crate) wv: B::Matrix,
    pub(crate) wo: B::Matrix,
    pub(crate) ffn_norm: B::Tensor,
    pub(crate) gate: B::Matrix,
    pub(crate) up: B::Matrix,
    pub(crate) down: B::Matrix,
}

/// Sees the input of weight-matrix products during [`Llama::forward_observed`]: the names of the matrices
/// that take it, and the activations (`tokens x cols`).
pub type Observer<'a, B> = &'a mut dyn FnMut(&[String], &<B as Backend>::Tensor) -> Result<()>;

/// What a forward step runs.
#[derive(Debug, Clone, Copy)]
pub enum StepInput<'a> {
    /// These tokens, the next positions of the sequence.
    Tokens(&'a [u32]),
    /// The token the previous [`Llama::forward_sample`] picked, still on the device.
    Sampled,
}

/// How KV caches store their elements unless told otherwise ([`Llama::set_cache_type`]): f16, as llama.cpp's do.
pub const DEFAULT_CACHE_TYPE: TensorType = TensorType::F16;

/// A Llama-family model whose weights live on backend `B`.
#[derive(Debug)]
pub struct Llama<B: Backend> {
    pub config: LlamaConfig,
    backend: B,
    embed: B::Matrix,
    /// The LM head, or `None` when it is tied to the embedding table.
    output: Option<B::Matrix>,
    output_norm: B::Tensor,
    layers: Vec<Layer<B>>,
    /// Bytes of weights held on the backend.
    pub weight_bytes: usize,
    /// Bytes of the embedding table (of which a decode step reads one row, unless it is also the head).
    pub(crate) embed_bytes: usize,
    /// How [`Llama::new_cache`] stores K and V.
    cache_type: TensorType,
}

/// Reusable activation buffers for forward passes, so that decode steps allocate nothing.
#[derive(Debug)]
pub struct Scratch<B: Backend> {
    x: B::Tensor,
    xn: B::Tensor,
    q: B::Tensor,
    k: B::Tensor,
    v: B::Tensor,
    att: B::Tensor,
    gate: B::Tensor,
    up: B::Tensor,
    hidden: B::Tensor,
    /// A product added back into the residual stream (attention output, FFN down).
    proj: B::Tensor,
    last: B::Tensor,
    logits: B::Tensor,
    /// The token the last [`Llama::forward_sample`] picked, on the device.
    token: B::Tensor,
}

impl<B: Backend> Scratch<B> {
    /// Empty buffers; ops size them on first use.
    pub fn new(backend: &B) -> Result<Self> {
        let z = || backend.zeros(0, 0);
        Ok(Scratch {
            x: z()?,
            xn: z()?,
            q: z()?,
            k: z()?,
            v: z()?,
            att: z()?,
            gate: z()?,
            up: z()?,
            hidden: z()?,
            proj: z()?,
            last: z()?,
            logits: z()?,
            token: z()?,
        })
    }
}

/// A weight matrix read from the file, in tern's layout, before it goes to the backend.
enum Packed {
    Gguf(PackedMatrix),
    Tern(TernMatrix),
}

impl Packed {
    fn view(&self) -> MatrixView<'_> {
        match self {
            Packed::Gguf(m) => m.view(),
            Packed::Tern(m) => m.view(),
        }
    }
}

struct WeightLoader<'a, B: Backend> {
    src: &'a ModelSource,
    backend: &'a B,
    progress: &'a mut dyn FnMut(LoadProgress),
    done: u64,
    total: u64,
    bytes: usize,
}

impl<B: Backend> WeightLoader<'_, B> {
    fn report(&mut self, t: &TensorData<'_>) {
        self.done += t.bytes.len() as u64;
        (self.progress)(LoadProgress { tensor: t.info.name.clone(), done_bytes: self.done, total_bytes: self.total });
    }

    fn matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<B::Matrix> {
        let m = self.packed(name, rows, cols)?;
        Ok(self.backend.upload_matrix(m.view())?)
    }

    /// Matrices that take the same input, uploaded together so that the backend may multiply them in one go.
    fn matrices<const N: usize>(&mut self, parts: [(&str, usize, usize); N]) -> Result<[B::Matrix; N]> {
        let packed = parts.iter().map(|&(name, rows, cols)| self.packed(name, rows, cols)).collect::<Result<Vec<_>>>()?;
        let views: Vec<MatrixView<'_>> = packed.iter().map(Packed::view).collect();
        let uploaded = self.backend.upload_matrices(&views)?;
        uploaded.try_into().map_err(|v: Vec<B::Matrix>| Error::Config {
            path: self.src.path().into(),
            detail: format!("the backend uploaded {} of {N} matrices", v.len()),
        })
    }

    /// Tensor `name`, checked to be `rows x cols`, unpacked into tern's layout.
    fn packed(&mut self, name: &str, rows: usize, cols: usize) -> Result<Packed> {
        let t = self.src.tensor(name)?;
        let (r, c) = t.info.matrix_shape();
        if (r, c) != (rows, cols) || t.info.dims.len() != 2 {
            return Err(Error::Config {
                path: self.src.path().into(),
                detail: format!("tensor {name:?} has dimensions {:?}, expected [{cols}, {rows}]", t.info.dims),
            });
        }
        let weights = |source| Error::Weights { path: self.src.path().into(), tensor: name.into(), source };
        let m = match t.info.ty.tern_format() {
            Some(format) => {
                let tern = TernMatrix::from_bytes(format, rows, cols, t.bytes).map_err(weights)?;
                self.bytes += tern.bytes();
                Packed::Tern(tern)
            }
            None => {
                let packed = PackedMatrix::from_gguf(t.info.ty, rows, cols, t.bytes).map_err(weights)?;
                self.bytes += packed.bytes();
                Packed::Gguf(packed)
            }
        };
        self.report(&t);
        Ok(m)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<B::Tensor> {
        let t = self.src.tensor(name)?;
        if t.info.elements() != len {
            return Err(Error::Config {
                path: self.src.path().into(),
                detail: format!("tensor {name:?} has dimensions {:?}, expected [{len}]", t.info.dims),
            });
        }
        let mut v = vec![0f32; len];
        dequantize_gguf(t.info.ty, t.bytes, &mut v).map_err(|source| Error::Weights {
            path: self.src.path().into(),
            tensor: name.into(),
            source,
        })?;
        let out = self.backend.upload(&v, 1, len)?;
        self.bytes += 4 * len;
        self.report(&t);
        Ok(out)
    }
}

impl<B: Backend> Llama<B> {
    /// Builds the model from `src` onto `backend`, calling `progress` after every tensor.
    pub fn load(src: &ModelSource, backend: B, progress: &mut dyn FnMut(LoadProgress)) -> Result<Self> {
        let config = LlamaConfig::from_metadata(src.metadata())?;
        let c = &config;
        let total = src.tensors().iter().map(|t| t.size as u64).sum();
        let mut w = WeightLoader { src, backend: &backend, progress, done: 0, total, bytes: 0 };
        let embed = w.matrix("token_embd.weight", c.vocab_size, c.dim)?;
        let embed_bytes = w.bytes;
        let output = match src.get("output.weight") {
            Some(_) => Some(w.matrix("output.weight", c.vocab_size, c.dim)?),
            None => None,
        };
        let output_norm = w.vector("output_norm.weight", c.dim)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |part: &str| format!("blk.{i}.{part}.weight");
            let attn_norm = w.vector(&n("attn_norm"), c.dim)?;
            let [wq, wk, wv] = w.matrices([
                (&n("attn_q"), c.n_heads * c.head_dim, c.dim),
                (&n("attn_k"), c.kv_dim(), c.dim),
                (&n("attn_v"), c.kv_dim(), c.dim),
            ])?;
            let wo = w.matrix(&n("attn_output"), c.dim, c.n_heads * c.head_dim)?;
            let ffn_norm = w.vector(&n("ffn_norm"), c.dim)?;
            let [gate, up] = w.matrices([(&n("ffn_gate"), c.ffn_dim, c.dim), (&n("ffn_up"), c.ffn_dim, c.dim)])?;
            let down = w.matrix(&n("ffn_down"), c.dim, c.ffn_dim)?;
            layers.push(Layer { attn_norm, wq, wk, wv, wo, ffn_norm, gate, up, down });
        }
        let weight_bytes = w.bytes;
        Ok(Llama {
            config,
            backend,
            embed,
            output,
            output_norm,
            layers,
            weight_bytes,
            embed_bytes,
            cache_type: DEFAULT_CACHE_TYPE,
        })
    }

    /// Builds a model from its parts (see `synthetic.rs`).
    pub(crate) fn from_parts(
        config: LlamaConfig,
        backend: B,
        embed: B::Matrix,
        output: Option<B::Matrix>,
        output_norm: B::Tensor,
        layers: Vec<Layer<B>>,
        sizes: (usize, usize),
    ) -> Self {
        let (weight_bytes, embed_bytes) = sizes;
        Llama { config, backend, embed, output, output_norm, layers, weight_bytes, embed_bytes, cache_type: DEFAULT_CACHE_TYPE }
    }

    /// Bytes one decode step at `position` reads: every weight matrix (one row of the embedding table, unless
    /// it is the head too), the norms, and the KV cache of the positions it attends to.
    pub fn decode_bytes(&self, position: usize) -> usize {
        let embed_read = if self.output.is_some() { self.embed_bytes / self.config.vocab_size.max(1) } else { self.embed_bytes };
        self.weight_bytes - self.embed_bytes + embed_read + self.config.kv_cache_bytes(position + 1, self.cache_type)
    }

    /// How new KV caches store their elements: F16 (the default, as llama.cpp's) or F32. An error for other
    /// types, or where the backend cannot store `ty`.
    pub fn set_cache_type(&mut self, ty: TensorType) -> Result<()> {
        // A one-position cache: the backend's own check of the type.
        KvCache::new(&self.backend, &self.config, 1, ty)?;
        self.cache_type = ty;
        Ok(())
    }

    /// How new KV caches store their elements.
    pub fn cache_type(&self) -> TensorType {
        self.cache_type
    }

    /// The backend the weights live on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// A KV cache for `capacity` positions (at most the model's context length).
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache<B>> {
        KvCache::new(&self.backend, &self.config, capacity.min(self.config.context_length), self.cache_type)
    }

    /// Runs `tokens` (the next positions of the sequence in `cache`) through the model and appends their K/V
    /// to the cache. Returns logits for the last token, or for every token when `all_logits`
    /// (`tokens.len() x vocab`, row-major).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache<B>, s: &mut Scratch<B>, all_logits: bool) -> Result<Vec<f32>> {
        self.forward_observed(tokens, cache, s, all_logits, None)
    }

    /// [`Llama::forward`], showing `observe` the input of every weight-matrix product together with the names
    /// of the matrices that take it (for activation statistics: `tern imatrix`).
    pub fn forward_observed(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<B>,
        s: &mut Scratch<B>,
        all_logits: bool,
        observe: Option<Observer<'_, B>>,
    ) -> Result<Vec<f32>> {
        self.run(StepInput::Tokens(tokens), cache, s, all_logits, observe)?;
        Ok(self.backend.read(&s.logits)?)
    }

    /// Runs one step and picks the next token on the device by `sampling` (which must pass
    /// [`TokenSampling::check`]): the token stays in the scratch for a next step of [`StepInput::Sampled`], and
    /// the returned reading brings it to the host (`f32::to_bits` of its one value). On a backend that
    /// [queues work](Backend::queues_work), a caller can run the next step before it finishes this reading, so
    /// the device never waits for the host.
    pub fn forward_sample(
        &self,
        input: StepInput<'_>,
        cache: &mut KvCache<B>,
        s: &mut Scratch<B>,
        sampling: &TokenSampling,
    ) -> Result<B::Reading> {
        sampling.check()?;
        self.run(input, cache, s, false, None)?;
        let be = &self.backend;
        be.sample(&s.logits, sampling, &mut s.token)?;
        Ok(be.read_begin(&s.token)?)
    }

    /// The forward pass: leaves the logits in `s.logits`.
    fn run(
        &self,
        input: StepInput<'_>,
        cache: &mut KvCache<B>,
        s: &mut Scratch<B>,
        all_logits: bool,
        mut observe: Option<Observer<'_, B>>,
    ) -> Result<()> {
        let mut seen = |names: &[&str], layer: Option<usize>, x: &B::Tensor| -> Result<()> {
            if let Some(o) = observe.as_mut() {
                let names: Vec<String> = match layer {
                    Some(l) => names.iter().map(|n| format!("blk.{l}.{n}.weight")).collect(),
                    None => names.iter().map(|n| n.to_string()).collect(),
                };
                o(&names, x)?;
            }
            Ok(())
        };
        let (be, c) = (&self.backend, &self.config);
        let n = match input {
            StepInput::Tokens(tokens) => tokens.len(),
            StepInput::Sampled => 1,
        };
        let pos0 = cache.len();
        if n == 0 {
            return Err(Error::Config { path: "forward".into(), detail: "no tokens to run".into() });
        }
        if pos0 + n > cache.capacity() {
            return Err(tern_core::Error::ContextFull { pos: pos0 + n - 1, capacity: cache.capacity() }.into());
        }
        if let StepInput::Tokens(tokens) = input
            && let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size)
        {
            return Err(Error::Tokenizer(format!("token id {bad} is outside the vocabulary of {}", c.vocab_size)));
        }
        let rope = |heads| RopeParams {
            n_heads: heads,
            head_dim: c.head_dim,
            rot_dim: c.rot_dim,
            freq_base: c.rope_base,
            style: c.rope_style,
            pos0,
        };
        let attn = AttentionParams {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            pos0,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
        };
        match input {
            StepInput::Tokens(tokens) => be.embed(&self.embed, tokens, &mut s.x)?,
            StepInput::Sampled => be.embed_sampled(&self.embed, &s.token, &mut s.x)?,
        }
        // Each residual add is fused with the norm that follows it.
        let mut normed = false;
        if let Some(first) = self.layers.first() {
            be.rms_norm(&s.x, &first.attn_norm, c.rms_eps, &mut s.xn)?;
        }
        for (l, layer) in self.layers.iter().enumerate() {
            seen(&["attn_q", "attn_k", "attn_v"], Some(l), &s.xn)?;
            be.attention_inputs(
                [&layer.wq, &layer.wk, &layer.wv],
                &s.xn,
                &rope(c.n_heads),
                c.n_kv_heads,
                (&mut s.q, &mut s.k, &mut s.v),
                (&mut cache.k[l], &mut cache.v[l]),
            )?;
            be.attention(&s.q, &cache.k[l], &cache.v[l], &attn, &mut s.att)?;
            seen(&["attn_output"], Some(l), &s.att)?;
            be.matmul_add_rms_norm(&layer.wo, &s.att, &mut s.proj, &mut s.x, &layer.ffn_norm, c.rms_eps, &mut s.xn)?;
            seen(&["ffn_gate", "ffn_up"], Some(l), &s.xn)?;
            be.matmul_silu_mul((&layer.gate, &layer.up), &s.xn, (&mut s.gate, &mut s.up), &mut s.hidden)?;
            seen(&["ffn_down"], Some(l), &s.hidden)?;
            // The last residual add goes with the output norm when every row goes to the head (always in decode).
            let norm = match self.layers.get(l + 1) {
                Some(next) => Some(&next.attn_norm),
                None if all_logits || n == 1 => {
                    normed = true;
                    Some(&self.output_norm)
                }
                None => None,
            };
            match norm {
                Some(norm) => {
                    be.matmul_add_rms_norm(&layer.down, &s.hidden, &mut s.proj, &mut s.x, norm, c.rms_eps, &mut s.xn)?
                }
                None => {
                    be.matmul(&layer.down, &s.hidden, &mut s.proj)?;
                    be.add(&mut s.x, &s.proj)?
                }
            }
        }
        cache.advance(n);
        let head = self.output.as_ref().unwrap_or(&self.embed);
        if !normed && all_logits {
            be.rms_norm(&s.x, &self.output_norm, c.rms_eps, &mut s.xn)?;
        } else if !normed {
            be.slice_rows(&s.x, n - 1, 1, &mut s.last)?;
            be.rms_norm(&s.last, &self.output_norm, c.rms_eps, &mut s.xn)?;
        }
        seen(&[self.head_name()], None, &s.xn)?;
        be.matmul(head, &s.xn, &mut s.logits)?;
        Ok(())
    }

    /// The name of the LM head's matrix: `output.weight`, or `token_embd.weight` when the head is tied to the
    /// embedding table.
    pub fn head_name(&self) -> &'static str {
        if self.output.is_some() { "output.weight" } else { "token_embd.weight" }
    }

    /// The weight matrix called `name` (GGUF's tensor names), for swapping one out: the quantizer measures how
    /// much each matrix alone matters by replacing it.
    pub fn matrix_mut(&mut self, name: &str) -> Option<&mut B::Matrix> {
        match name {
            "token_embd.weight" => return Some(&mut self.embed),
            "output.weight" => return self.output.as_mut(),
            _ => {}
        }
        let (layer, part) = name.strip_prefix("blk.")?.strip_suffix(".weight")?.split_once('.')?;
        let layer = self.layers.get_mut(layer.parse::<usize>().ok()?)?;
        Some(match part {
            "attn_q" => &mut layer.wq,
            "attn_k" => &mut layer.wk,
            "attn_v" => &mut layer.wv,
            "attn_output" => &mut layer.wo,
            "ffn_gate" => &mut layer.gate,
            "ffn_up" => &mut layer.up,
            "ffn_down" => &mut layer.down,
            _ => return None,
        })
    }

    /// The types of the weight matrices, for reports.
    pub fn describe_types(src: &ModelSource) -> Vec<(TensorType, usize)> {
        let mut counts: Vec<(TensorType, usize)> = Vec::new();
        for t in src.tensors() {
            match counts.iter_mut().find(|(ty, _)| *ty == t.ty) {
                Some((_, n)) => *n += 1,
                None => counts.push((t.ty, 1)),
            }
        }
        counts
    }
}
