//! Products of a weight matrix with activation rows: decode (one token) and prefill (a batch).

use tern_core::TensorType;

use super::lines;
use crate::{KvStore, TILED_TOKENS, WORKGROUP, formats};

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
/// `out`, K's and V's to row `pos0` of their cache, as `kv` stores it. Then the format's reader.
fn rope_prelude(reader: &str, kv: KvStore) -> String {
    format!(
        "struct Params {{ rows: u32, cols: u32, rope: u32, groups_x: u32, row0: u32, rows_a: u32, rows_b: u32, pos0: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read_write> k_cache: array<{pair}>;
@group(0) @binding(8) var<storage, read_write> v_cache: array<{pair}>;
@group(0) @binding(9) var<storage, read> inv_freq: array<f32>;
{rotation}
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
        {k_store}
    }} else {{
        let c = p.pos0 * (p.rows - qk) + r - qk;
        {v_store}
    }}
}}
{reader}",
        pair = kv.pair_type(),
        rotation = super::rows::ROTATION,
        k_store = kv.store_pair("k_cache", "c", "y"),
        v_store = kv.store_pair("v_cache", "c", "y"),
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
pub(super) enum Pairing {
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
/// (`matvec_int8_norm`'s output), which the kernel finds from the blocks and applies to each sum. `None` for a
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

/// [`matvec_int8`] for Q, K and V stored together, with RoPE (interleaved pairs: `rows` must be even) applied to
/// Q's and K's rows as they are written, and K's and V's rows written straight to the caches' row `pos0`
/// ([`rope_prelude`]), stored as `kv`. `None` for a format without an int8 reader.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matvec_int8_rope(
    ty: TensorType,
    workgroup: u32,
    lanes: u32,
    rows: u32,
    unroll: u32,
    (scaled, subgroups): (bool, bool),
    kv: KvStore,
) -> Option<String> {
    let prelude = rope_prelude(&formats::int8_reader(ty)?, kv);
    let product = int8_product(&prelude, workgroup, lanes, rows, unroll, Pairing::Adjacent, scaled, ("", ""), subgroups);
    Some(format!("{}{product}", kv.enable()))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn int8_product(
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
