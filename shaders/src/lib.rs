//! tern's WGSL kernels, generated per weight format and specialization.
//!
//! A [`Kernel`] is the typed key of one compiled pipeline: the op, the weight format it reads and its
//! specialization constants. [`Kernel::wgsl`] gives its source and [`Kernel::bindings`] the layout of its bind
//! group, which is always: binding 0 a 32-byte uniform block of parameters ([`Kernel::params`] names its eight
//! words), then the storage buffers in order, read-only ones first.
//!
//! Every kernel sizes its dispatch from the parameters alone, and folds workgroup counts past the per-dimension
//! limit into a second dimension (`groups_x` is the first dimension's count).

mod formats;
mod kernels;

use tern_core::TensorType;

/// Invocations per workgroup of the kernels that do not take a specialized size.
pub const WORKGROUP: u32 = 64;

/// Positions per tile of the attention kernel. A decode step of up to 128 positions takes one tile: tiles of
/// 128 rather than 64 made 7B decode on the H100 3% faster at 128 tokens and 6.5% at 512 (BENCHMARKS.md).
pub const ATTENTION_TILE: u32 = 128;

/// Invocations per workgroup of the attention kernel: two per position of a tile.
pub const ATTENTION_INVOCATIONS: u32 = 256;

/// The largest head the attention kernel takes (the merge of a split attention gives each of its 64 invocations
/// `head_dim / 64` output dimensions).
pub const MAX_HEAD_DIM: u32 = 256;

/// The most `vec4`s per invocation of the register-held RMSNorm ([`Kernel::RmsNorm`]): rows up to 8192 wide.
pub const MAX_NORM_QUADS: u32 = 8;

pub use kernels::NORM_PRODUCT_ROWS;

/// The workgroup memory [`Kernel::Attention`] declares for `rows` query rows over heads of `head_dim`
/// (without `int8`): each row's tile weights, reduction slots, partial dots and query, and the output sums.
pub fn attention_workgroup_bytes(head_dim: u32, rows: u32) -> u32 {
    4 * rows * (2 * ATTENTION_TILE + ATTENTION_INVOCATIONS) + 16 * (rows * head_dim / 4 + ATTENTION_INVOCATIONS)
}

/// Positions per workgroup of a split decode attention ([`Kernel::Attention`] with `split`). On the H100, 512
/// against 256 and 1024: 7B f16 at 4096 positions 293, 287 and 268 t/s; 1B 996, 991 and 893 (BENCHMARKS.md).
pub const ATTENTION_SPAN: u32 = 512;

/// Tokens one matmul workgroup multiplies each weight it reads by.
pub const MATMUL_TOKENS: u32 = 8;

/// Tokens per workgroup of the tiled prefill matmul.
pub const TILED_TOKENS: u32 = 16;

/// How the kernels that read or append to the KV cache ([`Kernel::Attention`], [`Kernel::RopeAppend`],
/// [`Kernel::MatvecInt8Rope`], [`Kernel::CacheWrite`]) hold its elements. Values are computed on in f32 either
/// way; an f16 cache rounds them (to nearest) as they are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvStore {
    /// f32.
    F32,
    /// f16, two to a 32-bit word, converted by `pack2x16float` and `unpack2x16float` (core WGSL: any adapter).
    F16Packed,
    /// f16 as WGSL's `f16` type (`enable f16`: adapters with the `shader-f16` feature).
    F16,
}

impl KvStore {
    /// Every way of storing the cache, for validation in tests.
    pub const ALL: [KvStore; 3] = [KvStore::F32, KvStore::F16Packed, KvStore::F16];
}

/// One compiled pipeline: an op and everything its source is specialized on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `out[t, r] = w[r] · x[t]` for a matrix of type `ty`. `lanes` invocations (a power of two dividing
    /// `workgroup`; 1 when each invocation takes whole rows) share `rows` rows, so every activation they load
    /// serves `rows` rows; each workgroup takes `workgroup / lanes * rows` rows by up to `tokens` tokens, so
    /// every weight it reads serves `tokens` products.
    ///
    /// Every product kernel takes `outputs` (1 to 3) matrices stored one after another in the same buffers
    /// (Q, K and V, say) and writes each one's rows to a tensor of its own: one dispatch for all of them.
    Matmul { ty: TensorType, workgroup: u32, lanes: u32, rows: u32, tokens: u32, outputs: u32 },
    /// Decode products (one token) on a GPU, `workgroup` invocations per workgroup: groups of `lanes`
    /// invocations share `rows` rows, lane `l` taking
    /// the row's `vec4`s `l, l + lanes, ...`, so loads are contiguous across lanes; each lane issues the loads
    /// of `unroll` `vec4`s before it uses them.
    Matvec { ty: TensorType, workgroup: u32, lanes: u32, rows: u32, unroll: u32, outputs: u32 },
    /// Decode products on a GPU that give each lane one quant word (8 to 16 weights) at a time, its block's
    /// scale decoded once for all of them; for the formats with a slot reader (Q4_0, Q4_1, T2, T3, T4).
    /// Otherwise as [`Kernel::Matvec`].
    MatvecSlots { ty: TensorType, workgroup: u32, lanes: u32, rows: u32, unroll: u32, outputs: u32 },
    /// Decode products on a GPU on activations quantized to int8 ([`Kernel::QuantizeRows`]), for the formats
    /// with an int8 reader (Q4_0, Q4_1, Q8_0 and tern's): lane `l` takes blocks `l, l + lanes, ...` of the row,
    /// `unroll` blocks per step, and multiplies quants and activations four at a time (`dot4I8Packed`).
    /// Only for formats where [`Kernel::has_int8`] (for others its source has no entry point and fails to
    /// build). With `scaled`, the activations are [`Kernel::MatvecInt8Norm`]'s output, whose RMS factor the
    /// kernel finds from its blocks and applies to every sum.
    /// With `subgroups` (subgroups of exactly `lanes` invocations), the lanes' sums meet by `subgroupAdd`.
    MatvecInt8 { ty: TensorType, workgroup: u32, lanes: u32, rows: u32, unroll: u32, outputs: u32, scaled: bool, subgroups: bool },
    /// A decode step's attention inputs in one pass: [`Kernel::MatvecInt8`] over Q, K and V stored together,
    /// with RoPE (interleaved pairs, so `rows` is even: a group holds both rows of a pair) applied to Q's and
    /// K's rows as they are written, Q's to their tensor and K's and V's straight to row `pos0` of the caches.
    /// `scaled` and `subgroups` as for [`Kernel::MatvecInt8`]; the caches are stored as `kv`.
    MatvecInt8Rope {
        ty: TensorType,
        workgroup: u32,
        lanes: u32,
        rows: u32,
        unroll: u32,
        scaled: bool,
        subgroups: bool,
        kv: KvStore,
    },
    /// [`Kernel::MatvecInt8`] of one matrix, [`NORM_PRODUCT_ROWS`] rows a workgroup (one per group of `lanes`),
    /// its rows added to the residual row as they are written; then each workgroup writes its block of the
    /// row's RMSNorm before the row's factor (`x * weight`), in f32 and in int8, with the block's sum of
    /// squares and `eps` in the int8 block's header. Products with `scaled` take that form as it is;
    /// [`Kernel::NormScale`] applies the factor for everything else.
    /// With `subgroups` (subgroups of exactly `lanes` invocations), the lanes' sums and the block's reductions
    /// are subgroup operations.
    MatvecInt8Norm { ty: TensorType, lanes: u32, unroll: u32, subgroups: bool },
    /// A feed-forward step's first half in one pass: [`Kernel::MatvecInt8`] over the gate and up matrices stored
    /// together, each workgroup taking one block of [`NORM_PRODUCT_ROWS`] outputs (`pairs` gate rows and their
    /// up rows per group of `lanes`), and writing `silu(gate) * up` for its block in f32 and int8 as
    /// [`Kernel::SiluMul`] does. `scaled` and `subgroups` as for [`Kernel::MatvecInt8`].
    MatvecInt8SiluMul { ty: TensorType, lanes: u32, pairs: u32, unroll: u32, scaled: bool, subgroups: bool },
    /// Applies the RMS factor to a row [`Kernel::MatvecInt8Norm`] wrote, in place, in f32 and int8 (requantized
    /// from the scaled values): one invocation per `vec4` (`len` counts them).
    NormScale,
    /// Activation rows quantized to int8 per block of 32, as the CPU backend quantizes them, for
    /// [`Kernel::MatvecInt8`]: one invocation per `vec4` (`len` counts them), eight to a block.
    QuantizeRows,
    /// Decode products on a GPU with subgroup operations: one row per subgroup, summed by `subgroupAdd`.
    MatvecSubgroups { ty: TensorType, outputs: u32 },
    /// Prefill products on a GPU: one row per invocation, `tokens` tokens per workgroup, the activations staged
    /// in workgroup memory a block at a time.
    MatmulTiled { ty: TensorType, tokens: u32, rows: u32, outputs: u32 },
    /// Prefill products on a GPU on activations quantized to int8 ([`Kernel::QuantizeRows`]), for the formats
    /// with an int8 reader: as [`Kernel::MatmulTiled`] ([`TILED_TOKENS`] tokens a workgroup), the tokens' int8
    /// blocks staged in workgroup memory and each weight block's quants multiplied with them four at a time.
    MatmulTiledInt8 { ty: TensorType, rows: u32, outputs: u32 },
    /// `out[t] = table[ids[t]]`, dequantized.
    Embed { ty: TensorType },
    /// `out[t] = x[t] / rms(x[t]) * weight`, one workgroup per row; with `residual`, `x += y` first (written
    /// back). With `quads` (1 to [`MAX_NORM_QUADS`]), each invocation holds that many `vec4`s of the row in
    /// registers, all loaded before any store (rows of up to `quads * 1024` elements, a multiple of 4); with
    /// 0, any row length, element by element.
    ///
    /// With `int8` (only with `quads`), the output is also written quantized to int8 for [`Kernel::MatvecInt8`];
    /// with `subgroups` (only with `quads`), the mean square is summed by subgroup operations.
    RmsNorm { residual: bool, quads: u32, int8: bool, subgroups: bool },
    /// Rotary position embedding, in place.
    Rope,
    /// RoPE on `q` and `k` in place, and `k` and `v` appended to the KV caches, stored as `kv` (f16 caches
    /// need heads and rotated dimensions that are multiples of 4).
    RopeAppend { kv: KvStore },
    /// f32 rows appended to an f16 KV cache (`kv` is not [`KvStore::F32`]): one invocation per pair of
    /// values (`len` counts them), from pair `offset` of the cache.
    CacheWrite { kv: KvStore },
    /// Causal grouped-query attention over heads of `head_dim` (a multiple of 4 up to [`MAX_HEAD_DIM`]), one
    /// workgroup per (head, `rows` query rows: see [`Kernel::attention_rows`]), online softmax over tiles of
    /// [`ATTENTION_TILE`] positions. With `split`
    /// (decode only), one workgroup per (head, span of positions), each writing a partial result that
    /// [`Kernel::AttentionCombine`] merges.
    /// With `subgroups`, the tiles' maximum and sum are reduced with subgroup operations. With `int8` (not
    /// with `split`; one query row, heads of whole blocks of 32), the output is also written quantized to int8
    /// for [`Kernel::MatvecInt8`]. K and V are stored as `kv`. With `wide_k` (an f16 `kv`, heads of multiples
    /// of 8), K is read eight values a load instead of four: faster for many query rows and long contexts (on
    /// the H100, 7B f16 prefill at 512 tokens 2880 against 2706 t/s, decode at 4096 positions 293 against
    /// 280), slower for one row over a short context (decode at 128 positions 445 against 450).
    Attention { head_dim: u32, rows: u32, split: bool, subgroups: bool, int8: bool, kv: KvStore, wide_k: bool },
    /// Merges the partials of a split attention, one workgroup per head; with `int8` (heads of whole blocks of
    /// 32), the output is also written quantized to int8 for [`Kernel::MatvecInt8`].
    AttentionCombine { head_dim: u32, int8: bool },
    /// `out = silu(gate) * up`. With `int8`, one invocation per `vec4` (`len` counts them), and the row also
    /// written quantized to int8 for [`Kernel::MatvecInt8`].
    SiluMul { int8: bool },
    /// `x += y`.
    Add,
    /// A token picked from a row of logits (tern's sampling rule: greedy, or top-k, temperature, top-p and a
    /// draw), written as its id; or, for a long row, one of the two passes that do it ([`SamplePass`]).
    Sample { pass: SamplePass },
}

/// How a [`Kernel::Sample`] dispatch takes its part in picking a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SamplePass {
    /// One workgroup over the whole row of logits picks the token.
    Whole,
    /// A workgroup per `chunk` logits of the row (parameter `chunk`: [`SAMPLE_CHUNK`], or [`GREEDY_CHUNK`]) writes its
    /// chunk's candidates, `valid` of them (`top_k`, or 1 when greedy; unused slots have id `u32::MAX`),
    /// sorted, as (key, id) pairs.
    Chunks,
    /// One workgroup picks the token from the chunks' candidates (`cols` of them; `valid` is the row's length).
    Merge,
}

/// Logits per workgroup of [`SamplePass::Chunks`]; rows longer than this are sampled in two passes.
pub const SAMPLE_CHUNK: u32 = 4096;

/// Logits per workgroup of [`SamplePass::Chunks`] for a greedy pick: one an invocation, so that the chunks'
/// pass is one load deep and the merge has few candidates (125 for 32000 logits). Rows longer than this are
/// picked in two passes.
pub const GREEDY_CHUNK: u32 = 256;

/// What a binding holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// The 32-byte parameter block.
    Params,
    /// A storage buffer the kernel only reads.
    Read,
    /// A storage buffer the kernel writes.
    ReadWrite,
}

impl Kernel {
    /// Every variant the backend builds for `ty`'s products and lookups, for validation in tests.
    pub fn all_for(ty: TensorType) -> Vec<Kernel> {
        let mut v = vec![Kernel::Embed { ty }];
        for outputs in 1..=3 {
            for lanes in [1, 8, 16, 32, 64] {
                for tokens in [1, MATMUL_TOKENS] {
                    v.push(Kernel::Matmul { ty, workgroup: 64, lanes, rows: 1, tokens, outputs });
                }
            }
            for rows in [2, 4] {
                v.push(Kernel::Matmul { ty, workgroup: 64, lanes: 32, rows, tokens: 1, outputs });
            }
            for rows in [1, 2] {
                v.push(Kernel::MatmulTiled { ty, tokens: TILED_TOKENS, rows, outputs });
                if Kernel::has_int8(ty) {
                    v.push(Kernel::MatmulTiledInt8 { ty, rows, outputs });
                }
            }
            for rows in [1, 2, 4] {
                for unroll in [4, 8, 16] {
                    v.push(Kernel::Matvec { ty, workgroup: 64, lanes: 32, rows, unroll, outputs });
                }
            }
            for (workgroup, lanes) in [(64, 64), (128, 32), (128, 128), (256, 32), (256, 64), (256, 256)] {
                v.push(Kernel::Matvec { ty, workgroup, lanes, rows: 2, unroll: 8, outputs });
            }
            v.push(Kernel::MatvecSubgroups { ty, outputs });
            if Kernel::has_slots(ty) {
                for rows in [1, 2, 4] {
                    for unroll in [2, 4, 8] {
                        v.push(Kernel::MatvecSlots { ty, workgroup: 64, lanes: 32, rows, unroll, outputs });
                    }
                }
            }
            if Kernel::has_int8(ty) {
                for (workgroup, lanes) in [(64, 32), (64, 16), (128, 32), (256, 32)] {
                    for rows in [1, 2, 4] {
                        for unroll in [1, 2, 4] {
                            for (scaled, subgroups) in [(false, false), (true, false), (false, true), (true, true)] {
                                v.push(Kernel::MatvecInt8 { ty, workgroup, lanes, rows, unroll, outputs, scaled, subgroups });
                                if outputs == 3 && rows % 2 == 0 {
                                    for kv in KvStore::ALL {
                                        v.push(Kernel::MatvecInt8Rope {
                                            ty,
                                            workgroup,
                                            lanes,
                                            rows,
                                            unroll,
                                            scaled,
                                            subgroups,
                                            kv,
                                        });
                                    }
                                }
                            }
                            if outputs == 1 && workgroup == 64 && rows == 1 {
                                v.push(Kernel::MatvecInt8Norm { ty, lanes, unroll, subgroups: false });
                                v.push(Kernel::MatvecInt8Norm { ty, lanes, unroll, subgroups: true });
                                for pairs in [1, 2, 4] {
                                    for (scaled, subgroups) in [(false, false), (true, false), (false, true), (true, true)] {
                                        v.push(Kernel::MatvecInt8SiluMul { ty, lanes, pairs, unroll, scaled, subgroups });
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        v
    }

    /// Every kernel that does not depend on a weight format.
    pub fn elementwise() -> Vec<Kernel> {
        let mut v = vec![
            Kernel::Rope,
            Kernel::SiluMul { int8: false },
            Kernel::SiluMul { int8: true },
            Kernel::Add,
            Kernel::Sample { pass: SamplePass::Whole },
            Kernel::Sample { pass: SamplePass::Chunks },
            Kernel::Sample { pass: SamplePass::Merge },
            Kernel::QuantizeRows,
            Kernel::NormScale,
        ];
        for residual in [false, true] {
            v.push(Kernel::RmsNorm { residual, quads: 0, int8: false, subgroups: false });
            for quads in 1..=MAX_NORM_QUADS {
                for (int8, subgroups) in [(false, false), (true, false), (false, true), (true, true)] {
                    v.push(Kernel::RmsNorm { residual, quads, int8, subgroups });
                }
            }
        }
        for kv in KvStore::ALL {
            v.push(Kernel::RopeAppend { kv });
            if kv != KvStore::F32 {
                v.push(Kernel::CacheWrite { kv });
            }
        }
        for head_dim in [32, 64, 128, 256] {
            for subgroups in [false, true] {
                for kv in KvStore::ALL {
                    for wide_k in [false, true].into_iter().filter(|&w| !w || kv != KvStore::F32) {
                        // The prefill's rows on WebGPU's default 16 KiB of workgroup memory, and on 48 KiB.
                        let mut rows = vec![1, Kernel::attention_rows(head_dim, 16384), Kernel::attention_rows(head_dim, 49152)];
                        rows.dedup();
                        v.extend(rows.into_iter().map(|rows| Kernel::Attention {
                            head_dim,
                            rows,
                            split: false,
                            subgroups,
                            int8: false,
                            kv,
                            wide_k,
                        }));
                        v.extend([
                            Kernel::Attention { head_dim, rows: 1, split: false, subgroups, int8: true, kv, wide_k },
                            Kernel::Attention { head_dim, rows: 1, split: true, subgroups, int8: false, kv, wide_k },
                        ]);
                    }
                }
            }
            v.extend([Kernel::AttentionCombine { head_dim, int8: false }, Kernel::AttentionCombine { head_dim, int8: true }]);
        }
        v
    }

    /// A short label for the pipeline and error messages.
    pub fn label(&self) -> String {
        match self {
            Kernel::Matmul { ty, workgroup, lanes, rows, tokens, outputs } => {
                format!("matmul {ty} wg{workgroup} lanes{lanes} rows{rows} tokens{tokens} outputs{outputs}")
            }
            Kernel::MatmulTiled { ty, tokens, rows, outputs } => {
                format!("matmul tiled {ty} tokens{tokens} rows{rows} outputs{outputs}")
            }
            Kernel::MatmulTiledInt8 { ty, rows, outputs } => format!("matmul tiled int8 {ty} rows{rows} outputs{outputs}"),
            Kernel::Matvec { ty, workgroup, lanes, rows, unroll, outputs } => {
                format!("matvec {ty} wg{workgroup} lanes{lanes} rows{rows} unroll{unroll} outputs{outputs}")
            }
            Kernel::MatvecSubgroups { ty, outputs } => format!("matvec {ty} subgroups outputs{outputs}"),
            Kernel::MatvecInt8 { ty, workgroup, lanes, rows, unroll, outputs, scaled, subgroups } => {
                let scaled = if *scaled { " scaled" } else { "" };
                let subgroups = if *subgroups { " subgroups" } else { "" };
                format!(
                    "matvec int8 {ty} wg{workgroup} lanes{lanes} rows{rows} unroll{unroll} outputs{outputs}{scaled}{subgroups}"
                )
            }
            Kernel::MatvecInt8Rope { ty, workgroup, lanes, rows, unroll, scaled, subgroups, kv } => {
                let scaled = if *scaled { " scaled" } else { "" };
                let subgroups = if *subgroups { " subgroups" } else { "" };
                format!("matvec int8 rope {ty} wg{workgroup} lanes{lanes} rows{rows} unroll{unroll}{scaled}{subgroups} kv {kv:?}")
            }
            Kernel::MatvecInt8SiluMul { ty, lanes, pairs, unroll, scaled, subgroups } => {
                let scaled = if *scaled { " scaled" } else { "" };
                let subgroups = if *subgroups { " subgroups" } else { "" };
                format!("matvec int8 silu {ty} lanes{lanes} pairs{pairs} unroll{unroll}{scaled}{subgroups}")
            }
            Kernel::MatvecSlots { ty, workgroup, lanes, rows, unroll, outputs } => {
                format!("matvec slots {ty} wg{workgroup} lanes{lanes} rows{rows} unroll{unroll} outputs{outputs}")
            }
            Kernel::Embed { ty } => format!("embed {ty}"),
            Kernel::SiluMul { int8 } => if *int8 { "silumul int8" } else { "silumul" }.to_string(),
            Kernel::Sample { pass } => format!("sample {pass:?}").to_lowercase(),
            other => format!("{other:?}").to_lowercase(),
        }
    }

    /// The bind group layout, binding 0 first.
    pub fn bindings(&self) -> &'static [Binding] {
        use Binding::*;
        match self {
            // quants, scales, mins, row units, x (MatvecInt8: x quantized) | outputs
            Kernel::Matmul { outputs, .. }
            | Kernel::MatmulTiled { outputs, .. }
            | Kernel::MatmulTiledInt8 { outputs, .. }
            | Kernel::Matvec { outputs, .. }
            | Kernel::MatvecSlots { outputs, .. }
            | Kernel::MatvecSubgroups { outputs, .. }
            | Kernel::MatvecInt8 { outputs, .. } => match outputs {
                1 => &[Params, Read, Read, Read, Read, Read, ReadWrite],
                2 => &[Params, Read, Read, Read, Read, Read, ReadWrite, ReadWrite],
                _ => &[Params, Read, Read, Read, Read, Read, ReadWrite, ReadWrite, ReadWrite],
            },
            // quants, scales, mins, row units, x quantized | q, k cache, v cache | inverse frequencies
            Kernel::MatvecInt8Rope { .. } => &[Params, Read, Read, Read, Read, Read, ReadWrite, ReadWrite, ReadWrite, Read],
            // quants, scales, mins, row units, x quantized | residual | norm weight | out, int8 out
            Kernel::MatvecInt8Norm { .. } => &[Params, Read, Read, Read, Read, Read, ReadWrite, Read, ReadWrite, ReadWrite],
            // quants, scales, mins, row units, x quantized | out, int8 out
            Kernel::MatvecInt8SiluMul { .. } => &[Params, Read, Read, Read, Read, Read, ReadWrite, ReadWrite],
            // x | int8 blocks
            Kernel::QuantizeRows => &[Params, Read, ReadWrite],
            // | x, int8 blocks
            Kernel::NormScale => &[Params, ReadWrite, ReadWrite],
            // quants, scales, mins, row units, ids | out
            Kernel::Embed { .. } => &[Params, Read, Read, Read, Read, Read, ReadWrite],
            // x, weight | out (, int8 out)
            Kernel::RmsNorm { residual: false, int8: true, quads, .. } if *quads > 0 => {
                &[Params, Read, Read, ReadWrite, ReadWrite]
            }
            Kernel::RmsNorm { residual: false, .. } => &[Params, Read, Read, ReadWrite],
            // y, weight | x, out
            Kernel::RmsNorm { residual: true, int8: true, quads, .. } if *quads > 0 => {
                &[Params, Read, Read, ReadWrite, ReadWrite, ReadWrite]
            }
            Kernel::RmsNorm { residual: true, .. } => &[Params, Read, Read, ReadWrite, ReadWrite],
            // inverse frequencies | x
            Kernel::Rope => &[Params, Read, ReadWrite],
            // inverse frequencies, v | q, k, k cache, v cache
            Kernel::RopeAppend { .. } => &[Params, Read, Read, ReadWrite, ReadWrite, ReadWrite, ReadWrite],
            // f32 rows | cache
            Kernel::CacheWrite { .. } => &[Params, Read, ReadWrite],
            // q, k, v | out, int8 out
            Kernel::Attention { int8: true, split: false, .. } => &[Params, Read, Read, Read, ReadWrite, ReadWrite],
            // q, k, v | out (or partials)
            Kernel::Attention { .. } => &[Params, Read, Read, Read, ReadWrite],
            // partials | out (, int8 out)
            Kernel::AttentionCombine { int8: false, .. } => &[Params, Read, ReadWrite],
            Kernel::AttentionCombine { int8: true, .. } => &[Params, Read, ReadWrite, ReadWrite],
            // gate, up | out
            Kernel::SiluMul { int8: false } => &[Params, Read, Read, ReadWrite],
            // gate, up | out, int8 out
            Kernel::SiluMul { int8: true } => &[Params, Read, Read, ReadWrite, ReadWrite],
            // y | x
            Kernel::Add => &[Params, Read, ReadWrite],
            // logits | token id; logits | candidates; candidates | token id
            Kernel::Sample { .. } => &[Params, Read, ReadWrite],
        }
    }

    /// The names of the eight parameter words, in order (unused words are `_`).
    pub fn params(&self) -> [&'static str; 8] {
        match self {
            Kernel::Matmul { .. }
            | Kernel::MatmulTiled { .. }
            | Kernel::MatmulTiledInt8 { .. }
            | Kernel::Matvec { .. }
            | Kernel::MatvecSlots { .. }
            | Kernel::MatvecSubgroups { .. }
            | Kernel::MatvecInt8 { .. } => ["rows", "cols", "tokens", "groups_x", "row0", "rows_a", "rows_b", "_"],
            Kernel::MatvecInt8Rope { .. } => {
                ["rows", "cols", "rope (head_dim | rot_dim << 16)", "groups_x", "row0", "rows_a", "rows_b", "pos0"]
            }
            Kernel::MatvecInt8Norm { .. } => ["rows", "cols", "eps (f32)", "groups_x", "row0", "_", "_", "_"],
            Kernel::MatvecInt8SiluMul { .. } => ["rows", "cols", "_", "groups_x", "row0", "rows_a", "_", "_"],
            Kernel::Embed { .. } => ["cols", "tokens", "groups_x", "row0", "_", "_", "_", "_"],
            Kernel::RmsNorm { .. } => ["rows", "cols", "eps (f32)", "groups_x", "_", "_", "_", "_"],
            Kernel::RopeAppend { .. } => {
                ["rows", "n_heads", "n_kv_heads", "head_dim", "rot_dim", "interleaved (0/1)", "pos0", "groups_x"]
            }
            Kernel::CacheWrite { .. } => ["len", "groups_x", "offset", "_", "_", "_", "_", "_"],
            Kernel::Rope => ["rows", "n_heads", "head_dim", "rot_dim", "interleaved (0/1)", "pos0", "groups_x", "_"],
            Kernel::Attention { .. } => ["rows", "n_heads", "n_kv_heads", "head_dim", "pos0", "scale (f32)", "span", "_"],
            Kernel::AttentionCombine { .. } => ["n_heads", "splits", "_", "_", "_", "_", "_", "_"],
            Kernel::SiluMul { .. } | Kernel::Add => ["len", "groups_x", "_", "_", "_", "_", "_", "_"],
            Kernel::QuantizeRows | Kernel::NormScale => ["len", "groups_x", "_", "_", "_", "_", "_", "_"],
            Kernel::Sample { .. } => ["cols", "row", "top_k", "temperature (f32)", "top_p (f32)", "draw (f32)", "chunk", "valid"],
        }
    }

    /// The kernel's WGSL source; its entry point is `main`.
    pub fn wgsl(&self) -> String {
        match *self {
            Kernel::Matmul { ty, workgroup, lanes, rows, tokens, outputs } => {
                kernels::matmul(ty, workgroup, lanes, rows, tokens, outputs)
            }
            Kernel::MatmulTiled { ty, tokens, rows, outputs } => kernels::matmul_tiled(ty, tokens, rows, outputs),
            Kernel::MatmulTiledInt8 { ty, rows, outputs } => kernels::matmul_tiled_int8(ty, rows, outputs)
                .unwrap_or_else(|| format!("// {ty} has no int8 reader: see Kernel::has_int8\n")),
            Kernel::Matvec { ty, workgroup, lanes, rows, unroll, outputs } => {
                kernels::matvec(ty, workgroup, lanes, rows, unroll, outputs)
            }
            Kernel::MatvecSubgroups { ty, outputs } => kernels::matvec_subgroups(ty, WORKGROUP, outputs),
            Kernel::MatvecSlots { ty, workgroup, lanes, rows, unroll, outputs } => {
                kernels::matvec_slots(ty, workgroup, lanes, rows, unroll, outputs)
                    .unwrap_or_else(|| kernels::matvec(ty, workgroup, lanes, rows, unroll, outputs))
            }
            Kernel::MatvecInt8 { ty, workgroup, lanes, rows, unroll, outputs, scaled, subgroups } => {
                // Without an int8 reader there is no kernel: a source with no entry point, which fails to build.
                kernels::matvec_int8(ty, workgroup, lanes, rows, unroll, outputs, (scaled, subgroups))
                    .unwrap_or_else(|| format!("// {ty} has no int8 reader: see Kernel::has_int8\n"))
            }
            Kernel::MatvecInt8Rope { ty, workgroup, lanes, rows, unroll, scaled, subgroups, kv } => {
                kernels::matvec_int8_rope(ty, workgroup, lanes, rows, unroll, (scaled, subgroups), kv)
                    .unwrap_or_else(|| format!("// {ty} has no int8 reader: see Kernel::has_int8\n"))
            }
            Kernel::MatvecInt8Norm { ty, lanes, unroll, subgroups } => kernels::matvec_int8_norm(ty, lanes, unroll, subgroups)
                .unwrap_or_else(|| format!("// {ty} has no int8 reader: see Kernel::has_int8\n")),
            Kernel::MatvecInt8SiluMul { ty, lanes, pairs, unroll, scaled, subgroups } => {
                kernels::matvec_int8_silu(ty, lanes, pairs, unroll, (scaled, subgroups))
                    .unwrap_or_else(|| format!("// {ty} has no int8 reader: see Kernel::has_int8\n"))
            }
            Kernel::QuantizeRows => kernels::quantize_rows(),
            Kernel::NormScale => kernels::norm_scale(),
            Kernel::Embed { ty } => kernels::embed(ty),
            Kernel::RmsNorm { residual, quads, int8, subgroups } => kernels::rms_norm(residual, quads, int8, subgroups),
            Kernel::Rope => kernels::rope(),
            Kernel::RopeAppend { kv } => kernels::rope_append(kv),
            Kernel::CacheWrite { kv } => kernels::cache_write(kv),
            Kernel::Attention { head_dim, rows, split, subgroups, int8, kv, wide_k } => {
                kernels::attention(head_dim, rows, split, subgroups, int8, kv, wide_k)
            }
            Kernel::AttentionCombine { head_dim, int8 } => kernels::attention_combine(head_dim, int8),
            Kernel::SiluMul { int8 } => kernels::silu_mul(int8),
            Kernel::Add => kernels::add(),
            Kernel::Sample { pass } => kernels::sample(pass),
        }
    }

    /// Whether `ty` has a slot reader for [`Kernel::MatvecSlots`].
    pub fn has_slots(ty: TensorType) -> bool {
        formats::slot_reader(ty).is_some()
    }

    /// Whether `ty` has an int8 reader for [`Kernel::MatvecInt8`].
    pub fn has_int8(ty: TensorType) -> bool {
        formats::int8_reader(ty).is_some()
    }

    /// Whether the kernel needs the device's subgroup feature.
    pub fn needs_subgroups(&self) -> bool {
        matches!(
            self,
            Kernel::MatvecSubgroups { .. }
                | Kernel::Attention { subgroups: true, .. }
                | Kernel::RmsNorm { subgroups: true, quads: 1.., .. }
                | Kernel::MatvecInt8Norm { subgroups: true, .. }
                | Kernel::MatvecInt8SiluMul { subgroups: true, .. }
                | Kernel::MatvecInt8 { subgroups: true, .. }
                | Kernel::MatvecInt8Rope { subgroups: true, .. }
        )
    }

    /// Whether the kernel needs the device's `shader-f16` feature.
    pub fn needs_f16(&self) -> bool {
        matches!(
            self,
            Kernel::Attention { kv: KvStore::F16, .. }
                | Kernel::RopeAppend { kv: KvStore::F16 }
                | Kernel::CacheWrite { kv: KvStore::F16 }
                | Kernel::MatvecInt8Rope { kv: KvStore::F16, .. }
        )
    }

    /// The query rows a [`Kernel::Attention`] workgroup takes for a prefill over heads of `head_dim` on a
    /// device with `workgroup_bytes` of workgroup memory: they share each tile of K and V, so the cache is
    /// read once per so many rows. The most of 8, 4 and 2 that fit ([`attention_workgroup_bytes`]). On the
    /// H100, 7B f16 prefill at 4096 positions: 1653 t/s with 8 rows, 1458 with 4, 1412 with 2, 1061 with 1.
    pub fn attention_rows(head_dim: u32, workgroup_bytes: u32) -> u32 {
        [8, 4, 2]
            .into_iter()
            .find(|&r| r * head_dim / 4 <= ATTENTION_INVOCATIONS && attention_workgroup_bytes(head_dim, r) <= workgroup_bytes)
            .unwrap_or(1)
    }

    /// The workgroup size the source declares.
    pub fn workgroup_size(&self) -> u32 {
        match *self {
            Kernel::Matmul { workgroup, .. }
            | Kernel::Matvec { workgroup, .. }
            | Kernel::MatvecSlots { workgroup, .. }
            | Kernel::MatvecInt8 { workgroup, .. }
            | Kernel::MatvecInt8Rope { workgroup, .. } => workgroup,
            Kernel::MatvecInt8Norm { lanes, .. } => NORM_PRODUCT_ROWS * lanes,
            Kernel::MatvecInt8SiluMul { lanes, pairs, .. } => NORM_PRODUCT_ROWS / pairs * lanes,
            Kernel::Attention { .. } | Kernel::AttentionCombine { .. } => ATTENTION_INVOCATIONS,
            Kernel::SiluMul { .. }
            | Kernel::Add
            | Kernel::RmsNorm { .. }
            | Kernel::Sample { .. }
            | Kernel::QuantizeRows
            | Kernel::NormScale => 256,
            _ => WORKGROUP,
        }
    }
}

/// Every weight format the kernels read.
pub const FORMATS: [TensorType; 13] = [
    TensorType::F32,
    TensorType::F16,
    TensorType::Bf16,
    TensorType::Q4_0,
    TensorType::Q4_1,
    TensorType::Q8_0,
    TensorType::T2,
    TensorType::T3,
    TensorType::T4,
    TensorType::T8,
    TensorType::TR2,
    TensorType::TR3,
    TensorType::TR4,
];
