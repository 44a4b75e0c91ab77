//! Decode products that finish the op after them in the same pass: the residual add and RMSNorm after the
//! output and down products, and SiLU·mul after gate/up. Each workgroup holds one whole block of 32 outputs,
//! so it quantizes its block for the next product without waiting for another workgroup.

use tern_core::TensorType;

use super::products::{Pairing, int8_product};
use super::quantize::{ROUND_I8, elementwise_quantized};
use super::workgroup_tree;
use crate::formats;

/// Rows per workgroup of [`crate::Kernel::MatvecInt8Norm`]: one block of 32 activations of its output.
pub const NORM_PRODUCT_ROWS: u32 = 32;

/// `matvec_int8` (one matrix) whose rows are added to the residual row `xv` as they are written, and which
/// writes the RMSNorm of that row in the form a scaled product (`matvec_int8` with `scaled`) takes: each
/// workgroup of [`NORM_PRODUCT_ROWS`] groups of `lanes` invocations, one row a group, holds one whole block of
/// the residual, so it needs no other workgroup. It writes `y = x * nw` for its block into `hout` and, quantized
/// to int8 by the CPU backend's rule, into `hq`, whose block header also carries the block's sum of squares
/// of `x` (word 2) and `eps` (word 3). The row's factor `1 / sqrt(mean(x²) + eps)` needs every block; the
/// products that take the row find it themselves, and any other use of the row first applies it
/// ([`norm_scale`]). `None` for a format without an int8 reader.
pub(crate) fn matvec_int8_norm(ty: TensorType, lanes: u32, unroll: u32, subgroups: bool) -> Option<String> {
    let reader = formats::int8_reader(ty)?;
    let prelude = format!(
        "struct Params {{ rows: u32, cols: u32, eps: f32, groups_x: u32, row0: u32, _p5: u32, _p6: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> xv: array<f32>;
@group(0) @binding(7) var<storage, read> nw: array<f32>;
@group(0) @binding(8) var<storage, read_write> hout: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> hq: array<vec4<u32>>;
var<workgroup> held: array<f32, {NORM_PRODUCT_ROWS}>;
var<workgroup> weighted: array<f32, {NORM_PRODUCT_ROWS}>;
var<private> residual: f32;
var<private> weight: f32;
{ROUND_I8}
fn store(t: u32, r: u32, v: f32) {{
    let x = residual + v;
    xv[r] = x;
    held[r % {NORM_PRODUCT_ROWS}u] = x;
    weighted[r % {NORM_PRODUCT_ROWS}u] = x * weight;
}}
{reader}"
    );
    // The row's residual and norm weight are loaded before the product, so that their latency hides behind it.
    let prologue = "    if (lane == 0u && live0) {
        residual = xv[r0];
        weight = nw[r0];
    }
";
    let epilogue = block_epilogue(subgroups, true, "p.rows");
    Some(int8_product(
        &prelude,
        NORM_PRODUCT_ROWS * lanes,
        lanes,
        1,
        unroll,
        Pairing::None,
        false,
        (prologue, &epilogue),
        subgroups,
    ))
}

/// The end of a decode product whose workgroup holds one block of [`NORM_PRODUCT_ROWS`] outputs in the
/// workgroup array `weighted` (and, with `norm`, the residual they came from in `held`): the workgroup's block
/// goes to `hout` in f32 and to `hq` quantized to int8 by the CPU backend's rule, where the row (`len` values,
/// WGSL) has it. The int8 header's last two words hold, with `norm`, the block's sum of squares of `held` and
/// `p.eps` ([`matvec_int8_norm`]), and otherwise zeros.
///
/// Eight invocations take a `vec4` of the block each; each finds the block's scale and quant sum itself from
/// all 32 values in workgroup memory, so no more barriers are needed. With `subgroups` (of `lanes`, 32), every
/// subgroup reduces the block, one value per invocation, and the first writes it.
fn block_epilogue(subgroups: bool, norm: bool, len: &str) -> String {
    let tail = if norm { "bitcast<u32>(squares), bitcast<u32>(p.eps)" } else { "0u, 0u" };
    if subgroups {
        let squares = if norm { "    let xk = held[lane];\n    let squares = subgroupAdd(xk * xk);\n" } else { "" };
        format!(
            "    workgroupBarrier();
    let nb = wid.x + wid.z * p.groups_x;
    let yk = weighted[lane];
    let d = subgroupMax(abs(yk)) / 127.0;
    let id = select(0.0, 1.0 / d, d != 0.0);
    let qk = round_i8(vec4<f32>(yk), id).x;
    let total = subgroupAdd(qk);
{squares}    let quad = vec4<i32>(qk, subgroupShuffle(qk, lane + 1u), subgroupShuffle(qk, lane + 2u), subgroupShuffle(qk, lane + 3u));
    if (li < {NORM_PRODUCT_ROWS}u && nb * {NORM_PRODUCT_ROWS}u < {len}) {{
        hout[8u * nb + li / 4u][li % 4u] = yk;
        if (li % 4u == 0u) {{
            hq[3u * nb + li / 16u][(li / 4u) % 4u] = pack4xI8(quad);
        }}
        if (li == 0u) {{
            hq[3u * nb + 2u] = vec4<u32>(bitcast<u32>(d), bitcast<u32>(d * f32(total)), {tail});
        }}
    }}
"
        )
    } else {
        let (squares, add) = if norm {
            (
                "        var squares = 0.0;\n",
                "            let x = vec4<f32>(held[k], held[k + 1u], held[k + 2u], held[k + 3u]);\n            squares += dot(x, x);\n",
            )
        } else {
            ("", "")
        };
        format!(
            "    workgroupBarrier();
    let nb = wid.x + wid.z * p.groups_x;
    if (li < 8u && nb * {NORM_PRODUCT_ROWS}u < {len}) {{
        var amax = 0.0;
{squares}        for (var k = 0u; k < 32u; k += 4u) {{
{add}            let y = vec4<f32>(weighted[k], weighted[k + 1u], weighted[k + 2u], weighted[k + 3u]);
            amax = max(amax, max(max(abs(y.x), abs(y.y)), max(abs(y.z), abs(y.w))));
        }}
        let d = amax / 127.0;
        let id = select(0.0, 1.0 / d, d != 0.0);
        var total = 0;
        for (var k = 0u; k < 32u; k += 4u) {{
            let q = round_i8(vec4<f32>(weighted[k], weighted[k + 1u], weighted[k + 2u], weighted[k + 3u]), id);
            total += q.x + q.y + q.z + q.w;
        }}
        let k = 4u * li;
        let y = vec4<f32>(weighted[k], weighted[k + 1u], weighted[k + 2u], weighted[k + 3u]);
        hout[8u * nb + li] = y;
        hq[3u * nb + li / 4u][li % 4u] = pack4xI8(round_i8(y, id));
        if (li == 0u) {{
            hq[3u * nb + 2u] = vec4<u32>(bitcast<u32>(d), bitcast<u32>(d * f32(total)), {tail});
        }}
    }}
"
        )
    }
}

/// The first half of a feed-forward step in one pass: `matvec_int8` over the gate and up matrices stored
/// together (`p.rows_a` rows each), whose outputs meet as `silu(gate) * up` (the separate kernel's expression)
/// without leaving the workgroup. Each workgroup of `32 / pairs` groups of `lanes` invocations takes one block
/// of [`NORM_PRODUCT_ROWS`] outputs, each group `pairs` of them (a gate row and its up row each), so it holds
/// the whole block and writes it in f32 to `hout` and in int8 to `hq` ([`block_epilogue`]). `scaled` as for
/// `matvec_int8`. `None` for a format without an int8 reader.
pub(crate) fn matvec_int8_silu(
    ty: TensorType,
    lanes: u32,
    pairs: u32,
    unroll: u32,
    (scaled, subgroups): (bool, bool),
) -> Option<String> {
    let reader = formats::int8_reader(ty)?;
    let prelude = format!(
        "struct Params {{ rows: u32, cols: u32, _p2: u32, groups_x: u32, row0: u32, rows_a: u32, _p6: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> hout: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> hq: array<vec4<u32>>;
var<workgroup> weighted: array<f32, {NORM_PRODUCT_ROWS}>;
{ROUND_I8}
fn store_pair(r: u32, g: f32, u: f32) {{
    weighted[r % {NORM_PRODUCT_ROWS}u] = g / (1.0 + exp(-g)) * u;
}}
{reader}"
    );
    let epilogue = block_epilogue(subgroups, false, "p.rows_a");
    let workgroup = NORM_PRODUCT_ROWS / pairs * lanes;
    Some(int8_product(&prelude, workgroup, lanes, 2 * pairs, unroll, Pairing::Halves, scaled, ("", &epilogue), subgroups))
}

/// A row written by [`matvec_int8_norm`] given its RMS factor in place, in f32 (`x`) and int8 (`xq`,
/// quantized afresh from the scaled values, as `quantize_rows` would): one invocation per `vec4` (`len`
/// counts them), each workgroup summing the blocks' squares itself.
pub(crate) fn norm_scale() -> String {
    let tree = workgroup_tree("squares", 256, "{a} + {b}", 4);
    elementwise_quantized(
        &format!(
            "@group(0) @binding(1) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> xq: array<vec4<u32>>;
var<workgroup> squares: array<f32, 256>;
var<workgroup> factor: f32;
fn row_factor(li: u32) -> f32 {{
    var s = 0.0;
    for (var b = li; b < p.len / 8u; b += 256u) {{
        s += bitcast<f32>(xq[3u * b + 2u].z);
    }}
    squares[li] = s;
    workgroupBarrier();
{tree}    if (li == 0u) {{
        factor = inverseSqrt(squares[0] / f32(4u * p.len) + bitcast<f32>(xq[2u].w));
    }}
    return workgroupUniformLoad(&factor);
}}"
        ),
        "let f = row_factor(li);",
        "v = x[i] * f;\n        x[i] = v;",
        true,
    )
}
