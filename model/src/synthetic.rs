//! Llama shapes with random weights, for measuring speed and memory on shapes whose models are not at hand
//! (`tern bench --synthetic 7b`): a kernel's speed does not depend on the values it reads.

use tern_core::{BLOCK_LEN, Backend, MatrixView, RopeStyle, TensorType};

use crate::llama::Layer;
use crate::{Error, Llama, LlamaConfig, Result};

impl LlamaConfig {
    /// A named Llama shape: "135m" (SmolLM2-135M), "1b" (Llama 3.2 1B: 16 layers of 2048, GQA 32/8, vocabulary
    /// 128256) or "7b" (Llama 2 7B: 32 layers of 4096, 32 heads, vocabulary 32000). Shapes from the models'
    /// published configurations.
    pub fn preset(name: &str) -> Option<LlamaConfig> {
        let (n_layers, dim, ffn_dim, n_heads, n_kv_heads, vocab_size, rope_base) = match name {
            "135m" => (30, 576, 1536, 9, 3, 49152, 100000.0),
            "1b" => (16, 2048, 8192, 32, 8, 128256, 500000.0),
            "7b" => (32, 4096, 11008, 32, 32, 32000, 10000.0),
            _ => return None,
        };
        let head_dim = dim / n_heads;
        Some(LlamaConfig {
            architecture: "llama".into(),
            n_layers,
            dim,
            ffn_dim,
            n_heads,
            n_kv_heads,
            head_dim,
            rot_dim: head_dim,
            vocab_size,
            context_length: 4096,
            rms_eps: 1e-5,
            rope_base,
            rope_style: RopeStyle::Interleaved,
        })
    }

    /// The names [`LlamaConfig::preset`] knows.
    pub const PRESETS: [&'static str; 3] = ["135m", "1b", "7b"];
}

/// xorshift64: random words for weights nobody reads for their values.
struct Words(u64);

impl Words {
    fn fill(&mut self, n: usize) -> Vec<u32> {
        (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 32) as u32
            })
            .collect()
    }
}

/// f16 bits of 0.01 and -0.08, twice per word: block scales and minimums that keep activations finite.
const F16_SCALES: u32 = 0x211F_211F;
const F16_MINS: u32 = 0xAD1F_AD1F;

/// The parts of a random `rows x cols` matrix of type `ty`, in `MatrixView`'s layout.
fn random_parts(ty: TensorType, rows: usize, cols: usize, rng: &mut Words) -> Result<[Vec<u32>; 4]> {
    let quants = rng.fill(rows * ty.tern_format().map_or(cols * ty.quant_bits() / 32, |f| f.stream_words(cols)));
    Ok(match ty.tern_format() {
        Some(f) => {
            let codes = rng.fill(rows * f.code_words(cols));
            // Row units D = M = 1/1024: codes up to 255 and quants up to 15 stay within a few units.
            let units = [(1.0f32 / 1024.0).to_bits(); 2].repeat(rows);
            [quants, codes, Vec::new(), units]
        }
        None if matches!(ty, TensorType::Q4_0 | TensorType::Q4_1 | TensorType::Q8_0) => {
            let halves = (rows * cols / BLOCK_LEN).div_ceil(2);
            let mins = if ty.has_mins() { vec![F16_MINS; halves] } else { Vec::new() };
            [quants, vec![F16_SCALES; halves], mins, Vec::new()]
        }
        None => {
            return Err(Error::Config {
                path: "synthetic".into(),
                detail: format!("synthetic weights come in quantized types (Q4_0, Q4_1, Q8_0, T2-T8, TR2-TR4), not {ty}"),
            });
        }
    })
}

/// The `N` matrices a backend returned for `N` uploaded.
fn exactly<M, const N: usize>(v: Vec<M>) -> Result<[M; N]> {
    v.try_into().map_err(|v: Vec<M>| Error::Config {
        path: "synthetic".into(),
        detail: format!("{} matrices came back for {N}", v.len()),
    })
}

impl<B: Backend> Llama<B> {
    /// A model of shape `config` whose every matrix is random data of type `ty` (norms are ones), on `backend`.
    /// The head is untied, as in the 1B and 7B shapes.
    pub fn synthetic(config: LlamaConfig, ty: TensorType, backend: B, seed: u64) -> Result<Self> {
        let c = &config;
        if !c.dim.is_multiple_of(BLOCK_LEN) || !c.ffn_dim.is_multiple_of(BLOCK_LEN) {
            return Err(Error::Config {
                path: "synthetic".into(),
                detail: format!("widths {} and {} are not multiples of 32", c.dim, c.ffn_dim),
            });
        }
        let mut rng = Words(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut bytes = 0usize;
        // Matrices that take the same input (Q, K, V; gate, up) are uploaded together, as `Llama::load` does.
        let mut matrices = |shapes: &[(usize, usize)]| -> Result<Vec<B::Matrix>> {
            let parts = shapes.iter().map(|&(rows, cols)| random_parts(ty, rows, cols, &mut rng)).collect::<Result<Vec<_>>>()?;
            let views: Vec<MatrixView<'_>> = parts
                .iter()
                .zip(shapes)
                .map(|([quants, scales, mins, row_scales], &(rows, cols))| {
                    bytes += 4 * (quants.len() + scales.len() + mins.len() + row_scales.len());
                    MatrixView { ty, rows, cols, quants, scales, mins, row_scales }
                })
                .collect();
            Ok(backend.upload_matrices(&views)?)
        };
        let [embed] = exactly(matrices(&[(c.vocab_size, c.dim)])?)?;
        let [output] = exactly(matrices(&[(c.vocab_size, c.dim)])?)?;
        let ones = |len: usize| backend.upload(&vec![1.0; len], 1, len);
        let mut layers = Vec::with_capacity(c.n_layers);
        let (q_rows, kv_rows) = (c.n_heads * c.head_dim, c.kv_dim());
        for _ in 0..c.n_layers {
            let [wq, wk, wv] = exactly(matrices(&[(q_rows, c.dim), (kv_rows, c.dim), (kv_rows, c.dim)])?)?;
            let [wo] = exactly(matrices(&[(c.dim, q_rows)])?)?;
            let [gate, up] = exactly(matrices(&[(c.ffn_dim, c.dim), (c.ffn_dim, c.dim)])?)?;
            let [down] = exactly(matrices(&[(c.dim, c.ffn_dim)])?)?;
            let (attn_norm, ffn_norm) = (ones(c.dim)?, ones(c.dim)?);
            layers.push(Layer { attn_norm, wq, wk, wv, wo, ffn_norm, gate, up, down });
        }
        let output_norm = ones(c.dim)?;
        let norms = 4 * c.dim * (2 * c.n_layers + 1);
        let table = ty.data_bytes(c.vocab_size, c.dim).unwrap_or(0);
        Ok(Llama::from_parts(config, backend, embed, Some(output), output_norm, layers, (bytes + norms, table)))
    }
}
