//! Products of a weight matrix with activation rows: decode (one token) and prefill (a batch).

use tern_core::TensorType;

use super::{lines, workgroup_tree};
use crate::{TILED_TOKENS, WORKGROUP, formats};

/// The parameters, activation and output bindings every product kernel shares, `store`, then the format's
/// reader. The activations are binding 5: `x`, a row-major f32 matrix read as `vec4`s; or, with `int8`, `xq`, a
/// row quantized to int8 per block of 32, three `vec4<u32>` a block: its 32 quants packed four to a word, then
/// the f32 bits of its scale and of the scale times the sum of its quants. The outputs follow, from binding 6.
///
/// A product may run several matrices stored one after another (rows `row0..row0 + rows` of the bound
/// buffers) into `outputs` tensors: rows `0..rows_a` go to the first, the next `rows_b` to the second, the rest
/// to the third. `store(t, r, v)` puts row `r`'s product for token `t` where it belongs.
fn product_prelude(reader: &str, outputs: u32, int8: bool) -> String {
    let store = match outputs {
        1 => "out[t * p.rows + r] = v;".to_string(),
        2 => "if (r < p.rows_a) {
        out[t * p.rows_a + r] = v;
    } else {
        out1[t * (p.rows - p.rows_a) + r - p.rows_a] = v;
    }"
        .to_string(),
        _ => "if (r < p.rows_a) {
        out[t * p.rows_a + r] = v;
    } else if (r < p.rows_a + p.rows_b) {
        out1[t * p.rows_b + r - p.rows_a] = v;
    } else {
        out2[t * (p.rows - p.rows_a - p.rows_b) + r - p.rows_a - p.rows_b] = v;
    }"
        .to_string(),
    };
    let activations = if int8 {
        "@group(0) @binding(5) var<storage, read> xq: array<vec4<u32>>;"
    } else {
        "@group(0) @binding(5) var<storage, read> x: array<vec4<f32>>;"
    };
    let more =
        lines((1..outputs).map(|i| format!("@group(0) @binding({}) var<storage, read_write> out{i}: array<f32>;", 6 + i)), 0);
    format!(
        "struct Params {{ rows: u32, cols: u32, tokens: u32, groups_x: u32, row0: u32, rows_a: u32, rows_b: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
{activations}
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
{more}
fn store(t: u32, r: u32, v: f32) {{
    {store}
}}
{reader}"
    )
}

/// [`matvec_int8_rope`]'s parameters and bindings: the int8 activations (binding 5), then Q's output, the K and
/// V caches and RoPE's inverse frequencies; `store_pair(r, x0, x1)` rotates rows `r, r + 1` (`r` even: an
/// interleaved pair) when they are Q's or K's and within `rot_dim`, and writes them where they belong: Q's to
/// `out`, K's and V's to row `pos0` of their cache. Then the format's reader.
fn rope_prelude(reader: &str) -> String {
    format!(
        "struct Params {{ rows: u32, cols: u32, rope: u32, groups_x: u32, row0: u32, rows_a: u32, rows_b: u32, pos0: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(8) var<storage, read_write> v_cache: array<f32>;
@group(0) @binding(9) var<storage, read> inv_freq: array<f32>;
{}
fn store_pair(r: u32, x0: f32, x1: f32) {{
    let head_dim = p.rope & 0xffffu;
    let rot_dim = p.rope >> 16u;
    let qk = p.rows_a + p.rows_b;
    var y = vec2<f32>(x0, x1);
    let i = (r % head_dim) / 2u;
    if (r < qk && 2u * i < rot_dim) {{
        let cs = rotation(p.pos0, i);
        y = vec2<f32>(x0 * cs.x - x1 * cs.y, x0 * cs.y + x1 * cs.x);
    }}
    if (r < p.rows_a) {{
        out[r] = y.x;
        out[r + 1u] = y.y;
    }} else if (r < qk) {{
        let c = p.pos0 * p.rows_b + r - p.rows_a;
        k_cache[c] = y.x;
        k_cache[c + 1u] = y.y;
    }} else {{
        let c = p.pos0 * (p.rows - qk) + r - qk;
        v_cache[c] = y.x;
        v_cache[c + 1u] = y.y;
    }}
}}
{reader}",
        super::rows::ROTATION
    )
}

/// The lanes' sums `accs` meeting in a tree in workgroup memory: sum `i` of invocation `li` sits at
/// `partial[i * WG + li]`, and afterwards the group's lane 0 holds the totals there.
fn lane_tree(accs: &[String]) -> String {
    let store = lines(accs.iter().enumerate().map(|(i, a)| format!("partial[{i}u * WG + li] = {a};")), 4);
    let add = lines((0..accs.len()).map(|i| format!("partial[{i}u * WG + li] += partial[{i}u * WG + li + s];")), 12);
    format!(
        "{store}    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {{
        if (lane < s) {{
{add}        }}
        workgroupBarrier();
    }}
"
    )
}

/// Products of a matrix with activation rows: `workgroup / lanes` groups of `lanes` invocations, each group
/// taking `rows` rows by up to `tokens` tokens.
///
/// Each of a group's `lanes` invocations walks every `lanes`-th block of 32 columns: it loads the activations of
/// the block once (for every token) and multiplies them with the block of each of its `rows` rows, dequantized
/// once; the lanes' partial sums meet in a tree in workgroup memory. A row's sum for a token is taken in the
/// same order whatever the batch, so products are batch invariant. Loops over rows and tokens are unrolled into
/// one accumulator each.
pub(crate) fn matmul(ty: TensorType, workgroup: u32, lanes: u32, rows: u32, tokens: u32, outputs: u32) -> String {
    let prelude = product_prelude(&formats::reader(ty), outputs, false);
    let partial = workgroup * tokens * rows;
    let (nr, nt) = (rows as usize, tokens as usize);
    let pairs: Vec<(usize, usize)> = (0..nr).flat_map(|j| (0..nt).map(move |t| (j, t))).collect();
    let accs = lines(pairs.iter().map(|(j, t)| format!("var acc{j}_{t} = 0.0;")), 4);
    let mut products = lines(
        (0..nt).flat_map(|t| {
            (0..8).map(move |i| {
                format!("var x{t}_{i} = vec4<f32>(0.0); if (nt > {t}u) {{ x{t}_{i} = x[xb + {t}u * cols4 + {i}u]; }}")
            })
        }),
        12,
    );
    for j in 0..nr {
        let sums = lines((0..nt).map(|t| format!("acc{j}_{t} += {};", formats::block_dot("w", |i| format!("x{t}_{i}")))), 16);
        products.push_str(&format!(
            "            if (r0 + {j}u < p.rows) {{\n                let w = load_block(p.row0 + r0 + {j}u, blk);\n{sums}            }}\n"
        ));
    }
    let reduce = if lanes > 1 {
        let names: Vec<String> = pairs.iter().map(|(j, t)| format!("acc{j}_{t}")).collect();
        let load = lines(names.iter().enumerate().map(|(i, a)| format!("{a} = partial[{i}u * WG + li];")), 4);
        lane_tree(&names) + &load
    } else {
        String::new()
    };
    let writes = lines(
        pairs.iter().map(|(j, t)| format!("if (nt > {t}u && r0 + {j}u < p.rows) {{ store(t0 + {t}u, r0 + {j}u, acc{j}_{t}); }}")),
        8,
    );
    let shared = if lanes > 1 { format!("var<workgroup> partial: array<f32, {partial}>;") } else { String::new() };
    format!(
        r#"{prelude}
const WG: u32 = {workgroup}u;
const LANES: u32 = {lanes}u;
const GROUPS: u32 = WG / LANES;
const TOKENS: u32 = {tokens}u;
{shared}

@compute @workgroup_size({workgroup})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let lane = li % LANES;
    let r0 = ((wid.x + wid.z * p.groups_x) * GROUPS + li / LANES) * {rows}u;
    let t0 = wid.y * TOKENS;
    let nt = min(TOKENS, p.tokens - t0);
    let cols4 = p.cols / 4u;
    let blocks = p.cols / 32u;
{accs}    if (r0 < p.rows) {{
        for (var blk = lane; blk < blocks; blk += LANES) {{
            let xb = t0 * cols4 + 8u * blk;
{products}        }}
    }}
{reduce}    if (lane == 0u) {{
{writes}    }}
}}
"#
    )
}

/// How a decode product's group takes its rows and writes them.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pairing {
    /// Rows `r0, r0 + 1, ...`, written one by one through the prelude's `store(t, r, v)`.
    None,
    /// Rows `r0, r0 + 1, ...` (an even count), written two at a time through `store_pair(r, a, b)`.
    Adjacent,
    /// Row `r0 + j` of the first matrix (`p.rows_a` rows) and of the second (stored after it) for each `j` of
    /// half the group's rows, written as `store_pair(r0 + j, first, second)`.
    Halves,
}

/// The shape both decode-product kernels share: groups of `lanes` invocations take `rows` rows (`row{j}`, with
/// `live{j}` whether it is one of the matrix's, laid out by `pairing`); lane `l` walks the row's items (`vec4`s
/// or quant words) `l, l + lanes, ...`, `unroll` of them per step, adding `step(n)` (the WGSL of `n` items at
/// `i, i + LANES, ...` for every row into `acc{j}`); the lanes' sums meet in a tree in workgroup memory.
/// `items` is the WGSL count of items in a row.
#[allow(clippy::too_many_arguments)]
fn decode_product(
    prelude: &str,
    workgroup: u32,
    lanes: u32,
    rows: u32,
    unroll: u32,
    items: &str,
    step: impl Fn(u32) -> String,
    pairing: Pairing,
    scaled: bool,
    (prologue, epilogue): (&str, &str),
    subgroup_sums: bool,
) -> String {
    let nr = rows as usize;
    let half = rows / 2;
    let per_group = if pairing == Pairing::Halves { half } else { rows };
    let row_defs = lines(
        (0..rows).map(|j| {
            let (at, live) = match pairing {
                Pairing::Halves if j >= half => {
                    (format!("r0 + {}u + p.rows_a", j - half), format!("r0 + {}u < p.rows_a", j - half))
                }
                Pairing::Halves => (format!("r0 + {j}u"), format!("r0 + {j}u < p.rows_a")),
                _ => (format!("r0 + {j}u"), format!("r0 + {j}u < p.rows")),
            };
            format!("let row{j} = {at};\n    let live{j} = {live};")
        }),
        4,
    );
    let mut sums: Vec<String> = (0..nr).map(|j| format!("acc{j}")).collect();
    if scaled {
        sums.push("accn".into());
    }
    let accs = lines(sums.iter().map(|a| format!("var {a} = 0.0;")), 4);
    let (unrolled, single) = (step(unroll), step(1));
    // The lanes' sums meet in a tree in workgroup memory, or (`subgroup_sums`: a group of lanes is one
    // subgroup) by `subgroupAdd`, in uniform control flow, with no barriers.
    let tree = if subgroup_sums {
        lines(sums.iter().enumerate().map(|(i, a)| format!("let total{i} = subgroupAdd({a});")), 4)
    } else {
        lane_tree(&sums)
    };
    let total = |i: usize| if subgroup_sums { format!("total{i}") } else { format!("partial[{i}u * WG + li]") };
    // A scaled row's RMS factor, from its blocks' sums of squares (summed in the tree as `accn`) and `eps`
    // (loaded first, so that its latency hides behind the row's).
    let (prologue, factor, times) = if scaled {
        (
            format!("    let eps = bitcast<f32>(xq[2u].w);\n{prologue}"),
            lines([format!("let f = inverseSqrt({} / f32(p.cols) + eps);", total(nr))], 8),
            "f * ",
        )
    } else {
        (prologue.to_string(), String::new(), "")
    };
    let pair = |j: u32, k: u32| {
        let (a, b) = (total(j as usize), total(k as usize));
        format!("if (live{j}) {{ store_pair(row{j}, {times}{a}, {times}{b}); }}")
    };
    let writes = match pairing {
        Pairing::Adjacent => lines((0..rows).step_by(2).map(|j| pair(j, j + 1)), 8),
        Pairing::Halves => lines((0..half).map(|j| pair(j, j + half)), 8),
        Pairing::None => lines((0..nr).map(|j| format!("if (live{j}) {{ store(0u, row{j}, {times}{}); }}", total(j))), 8),
    };
    let writes = factor + &writes;
    // Workgroup memory for the tree (none with subgroup sums).
    let partial = if subgroup_sums {
        String::new()
    } else {
        format!("var<workgroup> partial: array<f32, {}>;", workgroup * sums.len() as u32)
    };
    let last = unroll - 1;
    format!(
        r#"{prelude}
const WG: u32 = {workgroup}u;
const LANES: u32 = {lanes}u;
const GROUPS: u32 = WG / LANES;
{partial}

@compute @workgroup_size({workgroup})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let lane = li % LANES;
    let r0 = ((wid.x + wid.z * p.groups_x) * GROUPS + li / LANES) * {per_group}u;
{row_defs}    let items = {items};
{prologue}{accs}    if (live0) {{
        var i = lane;
        for (; i + {last}u * LANES < items; i += {unroll}u * LANES) {{
{unrolled}        }}
        for (; i < items; i += LANES) {{
{single}        }}
    }}
{tree}    if (lane == 0u) {{
{writes}    }}
{epilogue}}}
"#
    )
}

/// `if (live{j}) { acc{j} += term(j, 0) + term(j, 1) + ... }` for `rows` rows and `n` items.
fn row_sums(rows: u32, n: u32, term: impl Fn(u32, u32) -> String) -> String {
    lines(
        (0..rows).map(|j| {
            let terms: Vec<String> = (0..n).map(|u| term(j, u)).collect();
            format!("if (live{j}) {{ acc{j} += {}; }}", terms.join(" + "))
        }),
        12,
    )
}

/// Decode products (one token) a `vec4` of weights per lane at a time: lane `l` takes the `vec4`s
/// `l, l + lanes, ...` of the row, so that a group's activation and weight loads are contiguous, and each
/// activation `vec4` (loaded first, for every item of the step) serves all `rows` rows.
pub(crate) fn matvec(ty: TensorType, workgroup: u32, lanes: u32, rows: u32, unroll: u32, outputs: u32) -> String {
    let prelude = product_prelude(&formats::quad_reader(ty), outputs, false);
    decode_product(
        &prelude,
        workgroup,
        lanes,
        rows,
        unroll,
        "p.cols / 4u",
        |n| {
            let loads = lines((0..n).map(|u| format!("let xq{u} = x[i + {u}u * LANES];")), 12);
            loads + &row_sums(rows, n, |j, u| format!("dot(load_quad(p.row0 + row{j}, i + {u}u * LANES), xq{u})"))
        },
        Pairing::None,
        false,
        ("", ""),
        false,
    )
}

/// Decode products a quant word per lane at a time ([`formats::slot_reader`]): lane `l` takes the row's slots
/// `l, l + lanes, ...` (consecutive words, so a group's quant loads are contiguous). `None` for a format
/// without a slot reader.
pub(crate) fn matvec_slots(ty: TensorType, workgroup: u32, lanes: u32, rows: u32, unroll: u32, outputs: u32) -> Option<String> {
    let (reader, slots) = formats::slot_reader(ty)?;
    let prelude = product_prelude(&reader, outputs, false);
    let items = format!("(p.cols / 32u) * {slots}u");
    Some(decode_product(
        &prelude,
        workgroup,
        lanes,
        rows,
        unroll,
        &items,
        |n| row_sums(rows, n, |j, u| format!("slot_dot(p.row0 + row{j}, i + {u}u * LANES)")),
        Pairing::None,
        false,
        ("", ""),
        false,
    ))
}

/// Decode products on int8 activations ([`formats::int8_reader`]): lane `l` takes the row's blocks
/// `l, l + lanes, ...`, loading each block's activations once (for all `rows` rows) and its quants in one
/// 16-byte load (4-bit formats). With `scaled`, the activations are a row before its RMS factor
/// ([`matvec_int8_norm`]'s output), which the kernel finds from the blocks and applies to each sum. `None` for a
/// format without an int8 reader.
pub(crate) fn matvec_int8(
    ty: TensorType,
    workgroup: u32,
    lanes: u32,
    rows: u32,
    unroll: u32,
    outputs: u32,
    (scaled, subgroups): (bool, bool),
) -> Option<String> {
    let prelude = product_prelude(&formats::int8_reader(ty)?, outputs, true);
    Some(int8_product(&prelude, workgroup, lanes, rows, unroll, Pairing::None, scaled, ("", ""), subgroups))
}

/// Rows per workgroup of [`matvec_int8_norm`]: one block of 32 activations of its output.
pub const NORM_PRODUCT_ROWS: u32 = 32;

/// [`matvec_int8`] (one matrix) whose rows are added to the residual row `xv` as they are written, and which
/// writes the RMSNorm of that row in the form a scaled product ([`matvec_int8`] with `scaled`) takes: each
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

/// The first half of a feed-forward step in one pass: [`matvec_int8`] over the gate and up matrices stored
/// together (`p.rows_a` rows each), whose outputs meet as `silu(gate) * up` (the separate kernel's expression)
/// without leaving the workgroup. Each workgroup of `32 / pairs` groups of `lanes` invocations takes one block
/// of [`NORM_PRODUCT_ROWS`] outputs, each group `pairs` of them (a gate row and its up row each), so it holds
/// the whole block and writes it in f32 to `hout` and in int8 to `hq` ([`block_epilogue`]). `scaled` as for
/// [`matvec_int8`]. `None` for a format without an int8 reader.
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
/// quantized afresh from the scaled values, as [`quantize_rows`] would): one invocation per `vec4` (`len`
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

/// [`matvec_int8`] for Q, K and V stored together, with RoPE (interleaved pairs: `rows` must be even) applied to
/// Q's and K's rows as they are written, and K's and V's rows written straight to the caches' row `pos0`
/// ([`rope_prelude`]). `None` for a format without an int8 reader.
pub(crate) fn matvec_int8_rope(
    ty: TensorType,
    workgroup: u32,
    lanes: u32,
    rows: u32,
    unroll: u32,
    (scaled, subgroups): (bool, bool),
) -> Option<String> {
    let prelude = rope_prelude(&formats::int8_reader(ty)?);
    Some(int8_product(&prelude, workgroup, lanes, rows, unroll, Pairing::Adjacent, scaled, ("", ""), subgroups))
}

#[allow(clippy::too_many_arguments)]
fn int8_product(
    prelude: &str,
    workgroup: u32,
    lanes: u32,
    rows: u32,
    unroll: u32,
    pairing: Pairing,
    scaled: bool,
    ends: (&str, &str),
    subgroup_sums: bool,
) -> String {
    decode_product(
        prelude,
        workgroup,
        lanes,
        rows,
        unroll,
        "p.cols / 32u",
        |n| {
            let loads = lines(
                (0..n).map(|u| {
                    let head = if scaled {
                        format!("let xh{u} = xq[3u * b{u} + 2u]; let xs{u} = bitcast<vec2<f32>>(xh{u}.xy); accn += bitcast<f32>(xh{u}.z);")
                    } else {
                        format!("let xs{u} = bitcast<vec2<f32>>(xq[3u * b{u} + 2u].xy);")
                    };
                    format!("let b{u} = i + {u}u * LANES; let xa{u} = xq[3u * b{u}]; let xb{u} = xq[3u * b{u} + 1u]; {head}")
                }),
                12,
            );
            loads + &row_sums(rows, n, |j, u| format!("block_i8(p.row0 + row{j}, b{u}, xa{u}, xb{u}, xs{u})"))
        },
        pairing,
        scaled,
        ends,
        subgroup_sums,
    )
}

/// Rounds `a * id` to the nearest integer, half away from zero, as the CPU backend quantizes activations to
/// int8 (without adding 0.5, which rounds 0.49999997 up: the fraction decides).
const ROUND_I8: &str = "fn round_i8(v: vec4<f32>, id: f32) -> vec4<i32> {
    let a = abs(v) * id;
    let t = trunc(a);
    return vec4<i32>(sign(v) * (t + select(vec4<f32>(0.0), vec4<f32>(1.0), a - t >= vec4<f32>(0.5))));
}";

/// The most `vec4`s per invocation one [`quantize_quads`] takes.
pub(crate) const QUANTIZE_MAX_QUADS: usize = 4;

/// The workgroup arrays [`quantize_quads`] uses, for workgroups of up to 256 and up to `items` items at a time
/// (2 KiB an item).
pub(crate) fn quantize_shared(items: usize) -> String {
    let n = 256 * items.clamp(1, QUANTIZE_MAX_QUADS);
    format!("var<workgroup> qmax: array<f32, {n}>;\nvar<workgroup> qsum: array<i32, {n}>;\n{ROUND_I8}")
}

/// WGSL statements, for every invocation `li` of a workgroup of up to 256 (in uniform control flow: they hold
/// barriers), that quantize `vec4`s to int8 for [`matvec_int8`] as the CPU backend quantizes activations: per
/// block of 32, the scale `d = max |x| / 127` and quants `x / d` rounded half away from zero. For each of the
/// (up to [`QUANTIZE_MAX_QUADS`]) items `(v, block, active)`, invocations `8j..8j + 7` hold the eight `vec4`s of
/// one block, in order, in `v` (zeros where `active` is false), and the block goes to block `block` of `xq` (an
/// `array<vec4<u32>>`, three words a block: the quants, then the f32 bits of `d` and of `d` times the quants'
/// sum). All items share three barriers. Needs [`quantize_shared`] for as many items.
pub(crate) fn quantize_quads(items: &[(String, String, String)], indent: usize) -> String {
    quantize_quads_to("xq", items, indent)
}

/// [`quantize_quads`] into the array `target` instead of `xq`.
pub(crate) fn quantize_quads_to(target: &str, items: &[(String, String, String)], indent: usize) -> String {
    quantize_quads_into(target, items, false, indent)
}

/// [`quantize_quads_to`]; with `keep_zw`, each block header's last two words are left as they are (only the
/// scale and scaled sum are stored), for a kernel whose other workgroups still read them.
fn quantize_quads_into(target: &str, items: &[(String, String, String)], keep_zw: bool, indent: usize) -> String {
    let mut body = vec!["{".to_string(), "    let g8 = li & ~7u;".to_string()];
    for (k, (v, _, _)) in items.iter().enumerate() {
        body.push(format!("    let qv{k} = {v};"));
        body.push(format!(
            "    qmax[{}u + li] = max(max(abs(qv{k}.x), abs(qv{k}.y)), max(abs(qv{k}.z), abs(qv{k}.w)));",
            256 * k
        ));
    }
    body.push("    workgroupBarrier();".into());
    for k in 0..items.len() {
        let at = |j: usize| format!("qmax[{}u + g8 + {j}u]", 256 * k);
        let group_max = (1..8).fold(at(0), |a, j| format!("max({a}, {})", at(j)));
        body.push(format!("    let d{k} = {group_max} / 127.0;"));
        body.push(format!("    let id{k} = select(0.0, 1.0 / d{k}, d{k} != 0.0);"));
        body.push(format!("    let q{k} = round_i8(qv{k}, id{k});"));
        body.push(format!("    qsum[{}u + li] = q{k}.x + q{k}.y + q{k}.z + q{k}.w;", 256 * k));
    }
    body.push("    workgroupBarrier();".into());
    for (k, (_, block, active)) in items.iter().enumerate() {
        let group_sum = (1..8).fold(format!("qsum[{}u + g8]", 256 * k), |a, j| format!("{a} + qsum[{}u + g8 + {j}u]", 256 * k));
        let (d, scaled_sum) = (format!("bitcast<u32>(d{k})"), format!("bitcast<u32>(d{k} * f32({group_sum}))"));
        let header = if keep_zw {
            format!("{target}[3u * b + 2u].x = {d};\n            {target}[3u * b + 2u].y = {scaled_sum};")
        } else {
            format!("{target}[3u * b + 2u] = vec4<u32>({d}, {scaled_sum}, 0u, 0u);")
        };
        body.push(format!(
            "    if ({active}) {{
        let b = {block};
        {target}[3u * b + (li & 7u) / 4u][li & 3u] = pack4xI8(q{k});
        if ((li & 7u) == 0u) {{
            {header}
        }}
    }}"
        ));
    }
    body.push("    workgroupBarrier();".into());
    body.push("}".into());
    lines(body.join("\n").lines().map(str::to_string), indent)
}

/// One item for [`quantize_quads`].
pub(crate) fn quad(v: &str, block: &str, active: &str) -> (String, String, String) {
    (v.to_string(), block.to_string(), active.to_string())
}

/// A kernel of one invocation per `vec4` (`p.len` counts them, 256 per workgroup) that sets `v` for index `i`
/// with `value` (statements, run where `i < p.len`) and writes the row quantized to int8 for [`matvec_int8`]
/// ([`quantize_quads`]); `bindings` declare the kernel's buffers, `xq` among them.
pub(crate) fn quantizing_elementwise(bindings: &str, value: &str) -> String {
    elementwise_quantized(bindings, "", value, false)
}

/// [`quantizing_elementwise`] with `prologue` (statements run by every invocation first, in uniform control
/// flow) and, with `keep_zw`, block headers whose last two words are kept ([`quantize_quads_into`]).
fn elementwise_quantized(bindings: &str, prologue: &str, value: &str, keep_zw: bool) -> String {
    let quantize = quantize_quads_into("xq", &[quad("v", "i / 8u", "i < p.len")], keep_zw, 4);
    format!(
        r#"{}
{bindings}
{}

{}
    {prologue}
    var v = vec4<f32>(0.0);
    if (i < p.len) {{
        {value}
    }}
{quantize}}}
"#,
        super::rows::ELEMENTWISE_PARAMS,
        quantize_shared(1),
        super::rows::ELEMENTWISE_MAIN
    )
}

/// Activation rows quantized to int8 per block of 32 for [`matvec_int8`], one invocation per `vec4`.
pub(crate) fn quantize_rows() -> String {
    quantizing_elementwise(
        "@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> xq: array<vec4<u32>>;",
        "v = x[i];",
    )
}

/// Decode products on subgroups (for wgpu's native backends, which take subgroup builtins without WGSL's
/// `enable subgroups;`, a directive naga does not parse yet; a browser build must add it): each subgroup of the
/// workgroup takes one row, its invocations the row's `vec4`s
/// `i, i + size, ...`, and `subgroupAdd` sums them: no workgroup memory and no barriers. The host must know the
/// subgroup size (the adapter's minimum and maximum agree) to size the dispatch: `WG / size` rows per workgroup.
pub(crate) fn matvec_subgroups(ty: TensorType, workgroup: u32, outputs: u32) -> String {
    let prelude = product_prelude(&formats::quad_reader(ty), outputs, false);
    let four = lines((0..4).map(|u| format!("let xq{u} = x[q + {u}u * sg_size];")), 12)
        + &lines(
            [format!(
                "acc += {};",
                (0..4).map(|u| format!("dot(load_quad(p.row0 + r, q + {u}u * sg_size), xq{u})")).collect::<Vec<_>>().join(" + ")
            )],
            12,
        );
    format!(
        r#"{prelude}
@compute @workgroup_size({workgroup})
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) sg_count: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sg_size: u32,
) {{
    let r = (wid.x + wid.z * p.groups_x) * sg_count + sg;
    let quads = p.cols / 4u;
    var acc = 0.0;
    if (r < p.rows) {{
        var q = lane;
        for (; q + 3u * sg_size < quads; q += 4u * sg_size) {{
{four}        }}
        for (; q < quads; q += sg_size) {{
            acc += dot(load_quad(p.row0 + r, q), x[q]);
        }}
    }}
    let total = subgroupAdd(acc);
    if (lane == 0u && r < p.rows) {{
        store(0u, r, total);
    }}
}}
"#
    )
}

/// Prefill products: each of the workgroup's invocations owns `rows` rows (spaced a workgroup apart) and
/// `tokens` sums per row. Block by block, the
/// workgroup stages the tokens' 32 activations in workgroup memory, and every invocation dequantizes its row's
/// block once and multiplies it with all of them: weights are read once per `tokens` tokens and activations
/// once per workgroup of rows.
pub(crate) fn matmul_tiled(ty: TensorType, tokens: u32, rows: u32, outputs: u32) -> String {
    let prelude = product_prelude(&formats::reader(ty), outputs, false);
    let nr = rows as usize;
    // Each staged activation vec4 is read once and serves all the invocation's rows.
    let mut products =
        lines((0..nr).map(|j| format!("var w{j}: Block; if (r{j} < p.rows) {{ w{j} = load_block(p.row0 + r{j}, blk); }}")), 8);
    for t in 0..tokens as usize {
        products += &lines((0..8).map(|i| format!("let x{t}_{i} = staged[{}u];", 8 * t + i)), 8);
        products += &lines(
            (0..nr).map(|j| format!("acc{j}_{t} += {};", formats::block_dot(&format!("w{j}"), |i| format!("x{t}_{i}")))),
            8,
        );
    }
    let staging =
        Staging { element: "vec4<f32>", per_token: 8, zero: "vec4<f32>(0.0)", load: "x[(t0 + t) * cols4 + 8u * blk + j % 8u]" };
    tiled_product(&prelude, tokens, rows, &staging, &products)
}

/// Prefill products on int8 activations ([`formats::int8_tile_reader`]): as [`matmul_tiled`] ([`TILED_TOKENS`]
/// tokens), with the tokens' int8 blocks (three `vec4<u32>` each) staged in workgroup memory a block at a time
/// and each weight block loaded and its scale decoded once for all of them. `None` for a format without an
/// int8 reader.
pub(crate) fn matmul_tiled_int8(ty: TensorType, rows: u32, outputs: u32) -> Option<String> {
    let prelude = product_prelude(&formats::int8_tile_reader(ty)?, outputs, true);
    let products = lines(
        (0..rows).map(|j| {
            let adds: String = (0..TILED_TOKENS).map(|t| format!(" acc{j}_{t} += d.t{t};")).collect();
            format!("if (r{j} < p.rows) {{ let d = block_i8_tile(p.row0 + r{j}, blk);{adds} }}")
        }),
        8,
    );
    let staging = Staging {
        element: "vec4<u32>",
        per_token: 3,
        zero: "vec4<u32>(0u)",
        load: "xq[((t0 + t) * blocks + blk) * 3u + j % 3u]",
    };
    Some(tiled_product(&prelude, TILED_TOKENS, rows, &staging, &products))
}

/// What a tiled prefill product stages of each token's block in the workgroup array `staged`: `per_token`
/// elements of type `element`, element `j % per_token` of token `t` loaded by `load` (zero past the tokens).
struct Staging {
    element: &'static str,
    per_token: u32,
    zero: &'static str,
    load: &'static str,
}

/// The shape both tiled prefill products share: workgroups of [`WORKGROUP`] invocations, each owning `rows`
/// rows by `tokens` tokens (`acc{j}_{t}`); block by block, the tokens' activations are staged in `staged` and then
/// `products` (WGSL over `blk`, `r{j}` and the staged block) adds to the sums.
fn tiled_product(prelude: &str, tokens: u32, rows: u32, staging: &Staging, products: &str) -> String {
    let (nt, nr) = (tokens as usize, rows as usize);
    let accs = lines((0..nr).flat_map(|j| (0..nt).map(move |t| format!("var acc{j}_{t} = 0.0;"))), 4);
    let rows_of = lines((0..nr).map(|j| format!("let r{j} = base + {}u + li;", j as u32 * WORKGROUP)), 4);
    let writes = lines(
        (0..nr).flat_map(|j| {
            (0..nt).map(move |t| format!("if (nt > {t}u && r{j} < p.rows) {{ store(t0 + {t}u, r{j}, acc{j}_{t}); }}"))
        }),
        4,
    );
    let Staging { element, per_token, zero, load } = staging;
    format!(
        r#"{prelude}
const WG: u32 = {WORKGROUP}u;
const TOKENS: u32 = {tokens}u;
var<workgroup> staged: array<{element}, {}>;

@compute @workgroup_size({WORKGROUP})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let base = (wid.x + wid.z * p.groups_x) * WG * {rows}u;
{rows_of}    let t0 = wid.y * TOKENS;
    let nt = min(TOKENS, p.tokens - t0);
    let cols4 = p.cols / 4u;
    let blocks = p.cols / 32u;
{accs}    for (var blk = 0u; blk < blocks; blk++) {{
        for (var j = li; j < TOKENS * {per_token}u; j += WG) {{
            let t = j / {per_token}u;
            var v = {zero};
            if (t < nt) {{
                v = {load};
            }}
            staged[j] = v;
        }}
        workgroupBarrier();
{products}        workgroupBarrier();
    }}
{writes}}}
"#,
        tokens * per_token
    )
}
