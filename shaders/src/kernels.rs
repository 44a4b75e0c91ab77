//! The kernel sources. Each one's bindings and parameter words are listed in [`crate::Kernel`].

use tern_core::TensorType;

use crate::{ATTENTION_TILE, WORKGROUP, formats};

/// Lines of WGSL, one per item, each indented by `indent` spaces.
fn lines(items: impl IntoIterator<Item = String>, indent: usize) -> String {
    items.into_iter().map(|l| format!("{:indent$}{l}\n", "")).collect()
}

/// WGSL that folds `array[0..width]` into `array[0]` with `combine` (`+=`-style: "a = f(a, b)" given as a
/// format with `{a}` and `{b}`), in a tree over invocations `li` of the workgroup, with a barrier per level.
fn workgroup_tree(array: &str, width: u32, combine: &str, indent: usize) -> String {
    let step = combine.replace("{a}", &format!("{array}[li]")).replace("{b}", &format!("{array}[li + stride]"));
    let pad = " ".repeat(indent);
    format!(
        "{pad}for (var stride = {width}u / 2u; stride > 0u; stride >>= 1u) {{
{pad}    if (li < stride) {{
{pad}        {array}[li] = {step};
{pad}    }}
{pad}    workgroupBarrier();
{pad}}}
"
    )
}

/// The parameters, activation and output bindings every product kernel shares, `store`, then the format's
/// reader.
///
/// A product may run several matrices stored one after another (rows `row0..row0 + rows` of the bound
/// buffers) into `outputs` tensors: rows `0..rows_a` go to the first, the next `rows_b` to the second, the rest
/// to the third. `store(t, r, v)` puts row `r`'s product for token `t` where it belongs.
fn product_prelude(reader: &str, outputs: u32) -> String {
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
    let more =
        lines((1..outputs).map(|i| format!("@group(0) @binding({}) var<storage, read_write> out{i}: array<f32>;", 6 + i)), 0);
    format!(
        "struct Params {{ rows: u32, cols: u32, tokens: u32, groups_x: u32, row0: u32, rows_a: u32, rows_b: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
{more}
fn store(t: u32, r: u32, v: f32) {{
    {store}
}}
{reader}"
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
    let prelude = product_prelude(&formats::reader(ty), outputs);
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

/// The shape both decode-product kernels share: groups of `lanes` invocations take `rows` rows; lane `l`
/// walks the row's items (`vec4`s or quant words) `l, l + lanes, ...`, `unroll` of them per step, adding
/// `step(n)` (the WGSL of `n` items at `i, i + LANES, ...` for every row `r0 + j` into `acc{j}`); the lanes'
/// sums meet in a tree in workgroup memory. `items` is the WGSL count of items in a row.
fn decode_product(
    prelude: &str,
    workgroup: u32,
    lanes: u32,
    rows: u32,
    unroll: u32,
    items: &str,
    step: impl Fn(u32) -> String,
) -> String {
    let nr = rows as usize;
    let accs = lines((0..nr).map(|j| format!("var acc{j} = 0.0;")), 4);
    let (unrolled, single) = (step(unroll), step(1));
    let tree = lane_tree(&(0..nr).map(|j| format!("acc{j}")).collect::<Vec<_>>());
    let writes =
        lines((0..nr).map(|j| format!("if (r0 + {j}u < p.rows) {{ store(0u, r0 + {j}u, partial[{j}u * WG + li]); }}")), 8);
    let partial = workgroup * rows;
    let last = unroll - 1;
    format!(
        r#"{prelude}
const WG: u32 = {workgroup}u;
const LANES: u32 = {lanes}u;
const GROUPS: u32 = WG / LANES;
var<workgroup> partial: array<f32, {partial}>;

@compute @workgroup_size({workgroup})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let lane = li % LANES;
    let r0 = ((wid.x + wid.z * p.groups_x) * GROUPS + li / LANES) * {rows}u;
    let items = {items};
{accs}    if (r0 < p.rows) {{
        var i = lane;
        for (; i + {last}u * LANES < items; i += {unroll}u * LANES) {{
{unrolled}        }}
        for (; i < items; i += LANES) {{
{single}        }}
    }}
{tree}    if (lane == 0u) {{
{writes}    }}
}}
"#
    )
}

/// `if (r0 + j < p.rows) { acc{j} += term(j, 0) + term(j, 1) + ... }` for `rows` rows and `n` items.
fn row_sums(rows: u32, n: u32, term: impl Fn(u32, u32) -> String) -> String {
    lines(
        (0..rows).map(|j| {
            let terms: Vec<String> = (0..n).map(|u| term(j, u)).collect();
            format!("if (r0 + {j}u < p.rows) {{ acc{j} += {}; }}", terms.join(" + "))
        }),
        12,
    )
}

/// Decode products (one token) a `vec4` of weights per lane at a time: lane `l` takes the `vec4`s
/// `l, l + lanes, ...` of the row, so that a group's activation and weight loads are contiguous, and each
/// activation `vec4` (loaded first, for every item of the step) serves all `rows` rows.
pub(crate) fn matvec(ty: TensorType, workgroup: u32, lanes: u32, rows: u32, unroll: u32, outputs: u32) -> String {
    let prelude = product_prelude(&formats::quad_reader(ty), outputs);
    decode_product(&prelude, workgroup, lanes, rows, unroll, "p.cols / 4u", |n| {
        let loads = lines((0..n).map(|u| format!("let xq{u} = x[i + {u}u * LANES];")), 12);
        loads + &row_sums(rows, n, |j, u| format!("dot(load_quad(p.row0 + r0 + {j}u, i + {u}u * LANES), xq{u})"))
    })
}

/// Decode products a quant word per lane at a time ([`formats::slot_reader`]): lane `l` takes the row's slots
/// `l, l + lanes, ...` (consecutive words, so a group's quant loads are contiguous). `None` for a format
/// without a slot reader.
pub(crate) fn matvec_slots(ty: TensorType, workgroup: u32, lanes: u32, rows: u32, unroll: u32, outputs: u32) -> Option<String> {
    let (reader, slots) = formats::slot_reader(ty)?;
    let prelude = product_prelude(&reader, outputs);
    let items = format!("(p.cols / 32u) * {slots}u");
    Some(decode_product(&prelude, workgroup, lanes, rows, unroll, &items, |n| {
        row_sums(rows, n, |j, u| format!("slot_dot(p.row0 + r0 + {j}u, i + {u}u * LANES)"))
    }))
}

/// Decode products on subgroups (for wgpu's native backends, which take subgroup builtins without WGSL's
/// `enable subgroups;`, a directive naga does not parse yet; a browser build must add it): each subgroup of the
/// workgroup takes one row, its invocations the row's `vec4`s
/// `i, i + size, ...`, and `subgroupAdd` sums them: no workgroup memory and no barriers. The host must know the
/// subgroup size (the adapter's minimum and maximum agree) to size the dispatch: `WG / size` rows per workgroup.
pub(crate) fn matvec_subgroups(ty: TensorType, workgroup: u32, outputs: u32) -> String {
    let prelude = product_prelude(&formats::quad_reader(ty), outputs);
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
    let prelude = product_prelude(&formats::reader(ty), outputs);
    let staged = tokens * 8;
    let (nt, nr) = (tokens as usize, rows as usize);
    let accs = lines((0..nr).flat_map(|j| (0..nt).map(move |t| format!("var acc{j}_{t} = 0.0;"))), 4);
    // Each staged activation vec4 is read once and serves all the invocation's rows.
    let blocks_in =
        lines((0..nr).map(|j| format!("var w{j}: Block; if (r{j} < p.rows) {{ w{j} = load_block(p.row0 + r{j}, blk); }}")), 8);
    let mut products = String::new();
    for t in 0..nt {
        products += &lines((0..8).map(|i| format!("let x{t}_{i} = xs[{}u];", 8 * t + i)), 8);
        products += &lines(
            (0..nr).map(|j| format!("acc{j}_{t} += {};", formats::block_dot(&format!("w{j}"), |i| format!("x{t}_{i}")))),
            8,
        );
    }
    let rows_of = lines((0..nr).map(|j| format!("let r{j} = base + {}u + li;", j as u32 * WORKGROUP)), 4);
    let writes = lines(
        (0..nr).flat_map(|j| {
            (0..nt).map(move |t| format!("if (nt > {t}u && r{j} < p.rows) {{ store(t0 + {t}u, r{j}, acc{j}_{t}); }}"))
        }),
        4,
    );
    format!(
        r#"{prelude}
const WG: u32 = {WORKGROUP}u;
const TOKENS: u32 = {tokens}u;
var<workgroup> xs: array<vec4<f32>, {staged}>;

@compute @workgroup_size({WORKGROUP})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let base = (wid.x + wid.z * p.groups_x) * WG * {rows}u;
{rows_of}    let t0 = wid.y * TOKENS;
    let nt = min(TOKENS, p.tokens - t0);
    let cols4 = p.cols / 4u;
    let blocks = p.cols / 32u;
{accs}    for (var blk = 0u; blk < blocks; blk++) {{
        for (var j = li; j < TOKENS * 8u; j += WG) {{
            let t = j / 8u;
            var v = vec4<f32>(0.0);
            if (t < nt) {{
                v = x[(t0 + t) * cols4 + 8u * blk + j % 8u];
            }}
            xs[j] = v;
        }}
        workgroupBarrier();
{blocks_in}{products}        workgroupBarrier();
    }}
{writes}}}
"#
    )
}

/// One invocation per block of 32 output elements: the table's rows for `ids`, dequantized.
pub(crate) fn embed(ty: TensorType) -> String {
    let reader = formats::reader(ty);
    let writes = lines((0..8).map(|k| format!("out[base + {k}u] = w.w{k};")), 4);
    format!(
        r#"struct Params {{ cols: u32, tokens: u32, groups_x: u32, row0: u32, _p4: u32, _p5: u32, _p6: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(5) var<storage, read> ids: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>;
{reader}
@compute @workgroup_size({WORKGROUP})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let i = (wid.x + wid.y * p.groups_x) * {WORKGROUP}u + li;
    let blocks = p.cols / 32u;
    let t = i / blocks;
    if (t >= p.tokens) {{
        return;
    }}
    let b = i % blocks;
    let w = load_block(p.row0 + ids[t], b);
    let base = t * (p.cols / 4u) + 8u * b;
{writes}}}
"#
    )
}

/// Invocations per workgroup of RMSNorm (one workgroup per row).
const NORM: u32 = 256;

/// An RMSNorm kernel: one workgroup of 256 per row (`row`), the bindings of [`norm_bindings`], and `body`.
fn norm_kernel(residual: bool, element: &str, body: &str) -> String {
    let bindings = norm_bindings(residual, element);
    format!(
        r#"struct Params {{ rows: u32, cols: u32, eps: f32, groups_x: u32, _p4: u32, _p5: u32, _p6: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
{bindings}
var<workgroup> sums: array<f32, {NORM}>;

@compute @workgroup_size({NORM})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let row = wid.x + wid.y * p.groups_x;
    if (row >= p.rows) {{
        return;
    }}
{body}}}
"#
    )
}

/// The bindings of the RMSNorm kernels, over arrays of `element`: x and the weight (and with `residual`, y
/// first, and x written back), then the output.
fn norm_bindings(residual: bool, element: &str) -> String {
    let names: &[(&str, &str)] = if residual {
        &[("y", "read"), ("weight", "read"), ("x", "read_write"), ("out", "read_write")]
    } else {
        &[("x", "read"), ("weight", "read"), ("out", "read_write")]
    };
    let decls = names
        .iter()
        .enumerate()
        .map(|(i, (name, access))| format!("@group(0) @binding({}) var<storage, {access}> {name}: array<{element}>;", i + 1));
    decls.collect::<Vec<_>>().join("\n")
}

/// One workgroup per row, each invocation holding `quads` `vec4`s of it in registers: every load (and with
/// `residual`, the sum `x + y` written back) comes before the mean square's tree, so a row costs one round of
/// memory latency instead of one per element.
fn rms_norm_held(residual: bool, quads: u32) -> String {
    let tree = workgroup_tree("sums", NORM, "{a} + {b}", 4);
    let k = 0..quads;
    let at = |k: u32| format!("li + {}u", k * NORM);
    let loads = lines(
        k.clone().map(|k| {
            let i = at(k);
            let add = if residual { format!(" + y[base + {i}]") } else { String::new() };
            format!("var v{k} = vec4<f32>(0.0); if ({i} < n4) {{ v{k} = x[base + {i}]{add}; }}")
        }),
        4,
    );
    let write_back = if residual {
        lines(k.clone().map(|k| format!("if ({0} < n4) {{ x[base + {0}] = v{k}; }}", at(k))), 4)
    } else {
        String::new()
    };
    let squares = k.clone().map(|k| format!("dot(v{k}, v{k})")).collect::<Vec<_>>().join(" + ");
    let writes = lines(k.map(|k| format!("if ({0} < n4) {{ out[base + {0}] = v{k} * inv * weight[{0}]; }}", at(k))), 4);
    let body = format!(
        "    let n4 = p.cols / 4u;
    let base = row * n4;
{loads}{write_back}    sums[li] = {squares};
    workgroupBarrier();
{tree}    let inv = inverseSqrt(sums[0] / f32(p.cols) + p.eps);
{writes}"
    );
    norm_kernel(residual, "vec4<f32>", &body)
}

/// One workgroup per row: the mean square in a tree, then the scaled row. With `residual`, the row is first
/// `x += y` (written back), the residual connection before the norm.
pub(crate) fn rms_norm(residual: bool, quads: u32) -> String {
    if quads > 0 {
        return rms_norm_held(residual, quads);
    }
    let tree = workgroup_tree("sums", NORM, "{a} + {b}", 4);
    let load = if residual { "let v = x[base + c] + y[base + c];\n        x[base + c] = v;" } else { "let v = x[base + c];" };
    let body = format!(
        "    let base = row * p.cols;
    var s = 0.0;
    for (var c = li; c < p.cols; c += {NORM}u) {{
        {load}
        s += v * v;
    }}
    sums[li] = s;
    workgroupBarrier();
{tree}    let inv = inverseSqrt(sums[0] / f32(p.cols) + p.eps);
    for (var c = li; c < p.cols; c += {NORM}u) {{
        out[base + c] = x[base + c] * inv * weight[c];
    }}
"
    );
    norm_kernel(residual, "f32", &body)
}

/// `(cos, sin)` of pair `i`'s angle at position `pos`, as [`rope`] describes.
const ROTATION: &str = "
fn rotation(pos: u32, i: u32) -> vec2<f32> {
    let angle = f32(pos) * inv_freq[i];
    let k = round(angle * 0.15915494309189535);
    let reduced = (angle - k * 6.28125) - k * 0.0019353071795864769;
    return vec2<f32>(cos(reduced), sin(reduced));
}
";

/// One step's attention inputs in one pass: one invocation per pair of elements of every head of `q`, `k` and
/// `v`. Pairs of `q` and `k` within `rot_dim` are rotated as [`rope`] does, in place; `k`'s pairs (rotated or
/// not) and `v`'s are also written to the caches' rows `pos0 + t`. Pairs past `rot_dim` are the elements
/// `rot_dim + 2j, rot_dim + 2j + 1` in both layouts.
pub(crate) fn rope_append() -> String {
    format!(
        r#"struct Params {{ rows: u32, n_heads: u32, n_kv_heads: u32, head_dim: u32, rot_dim: u32, interleaved: u32, pos0: u32, groups_x: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> k: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<f32>;
{ROTATION}
@compute @workgroup_size({WORKGROUP})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let g = (wid.x + wid.y * p.groups_x) * {WORKGROUP}u + li;
    let half = p.head_dim / 2u;
    let half_rot = p.rot_dim / 2u;
    let per_row = (p.n_heads + 2u * p.n_kv_heads) * half;
    let t = g / per_row;
    if (t >= p.rows) {{
        return;
    }}
    let head = (g % per_row) / half;
    let i = g % half;
    var a = p.rot_dim + 2u * (i - min(i, half_rot));
    var b = a + 1u;
    if (i < half_rot) {{
        a = i;
        b = i + half_rot;
        if (p.interleaved == 1u) {{
            a = 2u * i;
            b = a + 1u;
        }}
    }}
    var cs = vec2<f32>(1.0, 0.0);
    if (i < half_rot) {{
        cs = rotation(p.pos0 + t, i);
    }}
    let kv_cols = p.n_kv_heads * p.head_dim;
    if (head < p.n_heads) {{
        let base = (t * p.n_heads + head) * p.head_dim;
        if (i < half_rot) {{
            let x0 = q[base + a];
            let x1 = q[base + b];
            q[base + a] = x0 * cs.x - x1 * cs.y;
            q[base + b] = x0 * cs.y + x1 * cs.x;
        }}
        return;
    }}
    let kh = (head - p.n_heads) % p.n_kv_heads;
    let base = t * kv_cols + kh * p.head_dim;
    let cached = (p.pos0 + t) * kv_cols + kh * p.head_dim;
    if (head < p.n_heads + p.n_kv_heads) {{
        let x0 = k[base + a];
        let x1 = k[base + b];
        let y0 = x0 * cs.x - x1 * cs.y;
        let y1 = x0 * cs.y + x1 * cs.x;
        k[base + a] = y0;
        k[base + b] = y1;
        k_cache[cached + a] = y0;
        k_cache[cached + b] = y1;
    }} else {{
        v_cache[cached + a] = v[base + a];
        v_cache[cached + b] = v[base + b];
    }}
}}
"#
    )
}

/// One invocation per rotated pair. The angles are `pos * inv_freq[i]` in f32, as on the CPU, reduced to
/// `[-pi, pi]` (Cody-Waite, two-part 2 pi) before `sin`/`cos`, whose precision GPUs only promise there.
pub(crate) fn rope() -> String {
    format!(
        r#"struct Params {{ rows: u32, n_heads: u32, head_dim: u32, rot_dim: u32, interleaved: u32, pos0: u32, groups_x: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;
{ROTATION}
@compute @workgroup_size({WORKGROUP})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let g = (wid.x + wid.y * p.groups_x) * {WORKGROUP}u + li;
    let half_rot = p.rot_dim / 2u;
    let per_row = p.n_heads * half_rot;
    let t = g / per_row;
    if (t >= p.rows) {{
        return;
    }}
    let h = (g % per_row) / half_rot;
    let i = g % half_rot;
    let cs = rotation(p.pos0 + t, i);
    let c = cs.x;
    let s = cs.y;
    let base = (t * p.n_heads + h) * p.head_dim;
    var a = base + i;
    var b = base + i + half_rot;
    if (p.interleaved == 1u) {{
        a = base + 2u * i;
        b = a + 1u;
    }}
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}}
"#
    )
}

/// One workgroup per (query row, head). Each tile of positions: every invocation scores one position, the
/// tile's maximum rescales the running sums (online softmax), and each invocation accumulates its own output
/// dimensions over the tile.
///
/// With `split`, the kernel takes one query row (decode) and workgroup (head, split) covers only positions
/// `split * span..(split + 1) * span`: long contexts then keep many workgroups busy. Each writes its running
/// maximum, sum and unnormalized output to `out` as a partial, `[m, l, acc; head_dim]` at
/// `(split * n_heads + head) * (head_dim + 2)`, and [`attention_combine`] merges the splits.
///
/// With `subgroups`, each tile's maximum and sum are taken by `subgroupMax`/`subgroupAdd` and the subgroups'
/// results combined through workgroup memory: two barriers a reduction instead of one per tree level.
pub(crate) fn attention(head_dim: u32, split: bool, subgroups: bool) -> String {
    let tile = ATTENTION_TILE;
    let quads = head_dim / 4;
    // The weighted sum of V: invocation `li` owns `vec4` chunk `li % CHUNKS` of the head for the positions
    // `li / CHUNKS, + GROUPS, ...` of each tile, eight loads in flight; the groups' sums meet at the end.
    let v_step = |n: u32| {
        let loads = lines((0..n).map(|u| format!("let v{u} = v[((j0 + i + {u}u * GROUPS) * kv_cols + kvh * HD) / 4u + c];")), 16);
        let adds = lines((0..n).map(|u| format!("acc += weights[i + {u}u * GROUPS] * v{u};")), 16);
        loads + &adds
    };
    let (v8, v1) = (v_step(8), v_step(1));
    let store = |at: &str, value: &str| {
        lines(formats::LANE.iter().enumerate().map(|(i, c)| format!("out[{at} + 4u * li + {i}u] = {value}.{c};")), 8)
    };
    let writes = if split {
        format!(
            "    let pb = (wid.y * p.n_heads + h) * (HD + 2u);
    if (li == 0u) {{
        out[pb] = m;
        out[pb + 1u] = l;
    }}
    if (li < CHUNKS) {{
{}    }}
",
            store("pb + 2u", "sum")
        )
    } else {
        format!("    if (li < CHUNKS) {{\n        let o = sum / l;\n{}    }}\n", store("qbase", "o"))
    };
    let range = if split {
        "let t = 0u;
    let first = wid.y * p.span;
    let visible = min(p.pos0 + 1u, first + p.span);"
    } else {
        "let t = wid.y;
    let first = 0u;
    let visible = p.pos0 + t + 1u;"
    };
    // The tile's maximum of `s` into `tile_max` and sum of `e` into `tile_sum`, for every invocation.
    let (reduce_max, reduce_sum, builtins) = if subgroups {
        let across = |value: &str, op: &str, into: &str, combine: &str| {
            format!(
                "        let {into}_sg = {op}({value});
        if (sg_lane == 0u) {{
            red[sg] = {into}_sg;
        }}
        workgroupBarrier();
        var {into} = red[0];
        for (var i = 1u; i < sg_count; i++) {{
            {into} = {combine};
        }}
"
            )
        };
        (
            across("s", "subgroupMax", "tile_max", "max(tile_max, red[i])"),
            across("e", "subgroupAdd", "tile_sum", "tile_sum + red[i]"),
            ",
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) sg_count: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32",
        )
    } else {
        (
            format!(
                "        red[li] = s;\n        workgroupBarrier();\n{}        let tile_max = red[0];\n",
                workgroup_tree("red", tile, "max({a}, {b})", 8)
            ),
            format!(
                "        red[li] = e;\n        workgroupBarrier();\n{}        let tile_sum = red[0];\n",
                workgroup_tree("red", tile, "{a} + {b}", 8)
            ),
            "",
        )
    };
    format!(
        r#"struct Params {{ rows: u32, n_heads: u32, n_kv_heads: u32, head_dim: u32, pos0: u32, scale: f32, span: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
const HD: u32 = {head_dim}u;
const CHUNKS: u32 = HD / 4u;
const GROUPS: u32 = {tile}u / CHUNKS;
var<workgroup> weights: array<f32, {tile}>;
var<workgroup> red: array<f32, {tile}>;
var<workgroup> qs: array<vec4<f32>, {quads}>;
var<workgroup> sums: array<vec4<f32>, {tile}>;
const NONE: f32 = -3.0e38;

@compute @workgroup_size({tile})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>{builtins}) {{
    let h = wid.x;
    {range}
    let kvh = h / (p.n_heads / p.n_kv_heads);
    let kv_cols = p.n_kv_heads * HD;
    let qbase = (t * p.n_heads + h) * HD;
    for (var d = li; d < HD / 4u; d += {tile}u) {{
        qs[d] = vec4<f32>(q[qbase + 4u * d], q[qbase + 4u * d + 1u], q[qbase + 4u * d + 2u], q[qbase + 4u * d + 3u]);
    }}
    workgroupBarrier();
    let c = li % CHUNKS;
    let g = li / CHUNKS;
    var m = NONE;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var j0 = first; j0 < visible; j0 += {tile}u) {{
        let j = j0 + li;
        var s = NONE;
        if (j < visible) {{
            let kb = (j * kv_cols + kvh * HD) / 4u;
            var dotp = 0.0;
            for (var d = 0u; d < HD / 4u; d++) {{
                dotp += dot(qs[d], k[kb + d]);
            }}
            s = dotp * p.scale;
        }}
        // The tile's maximum and sum.
{reduce_max}        let m_new = max(m, tile_max);
        let correction = exp(m - m_new);
        let e = select(0.0, exp(s - m_new), j < visible);
        workgroupBarrier();
        weights[li] = e;
{reduce_sum}        l = l * correction + tile_sum;
        acc *= correction;
        let n = min({tile}u, visible - j0);
        if (g < GROUPS) {{
            var i = g;
            for (; i + 7u * GROUPS < n; i += 8u * GROUPS) {{
{v8}            }}
            for (; i < n; i += GROUPS) {{
{v1}            }}
        }}
        m = m_new;
        workgroupBarrier();
    }}
    sums[li] = acc;
    workgroupBarrier();
    var sum = vec4<f32>(0.0);
    if (li < CHUNKS) {{
        for (var gi = 0u; gi < GROUPS; gi++) {{
            sum += sums[li + gi * CHUNKS];
        }}
    }}
{writes}}}
"#
    )
}

/// One workgroup per head merges the partials of a split [`attention`]: each split's sums are rescaled to the
/// largest maximum, added, and the output divided by the total.
pub(crate) fn attention_combine(head_dim: u32) -> String {
    let tile = ATTENTION_TILE;
    let dims = head_dim.div_ceil(tile) as usize;
    let accs = lines((0..dims).map(|e| format!("var acc{e} = 0.0;")), 4);
    let adds = lines(
        (0..dims).map(|e| format!("if (li + {0}u < HD) {{ acc{e} += w * parts[pb + 2u + li + {0}u]; }}", e as u32 * tile)),
        8,
    );
    let writes =
        lines((0..dims).map(|e| format!("if (li + {0}u < HD) {{ out[h * HD + li + {0}u] = acc{e} / l; }}", e as u32 * tile)), 4);
    format!(
        r#"struct Params {{ n_heads: u32, splits: u32, _p2: u32, _p3: u32, _p4: u32, _p5: u32, _p6: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> parts: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
const HD: u32 = {head_dim}u;

@compute @workgroup_size({tile})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let h = wid.x;
    var m = -3.0e38;
    for (var s = 0u; s < p.splits; s++) {{
        m = max(m, parts[(s * p.n_heads + h) * (HD + 2u)]);
    }}
    var l = 0.0;
{accs}    for (var s = 0u; s < p.splits; s++) {{
        let pb = (s * p.n_heads + h) * (HD + 2u);
        let w = exp(parts[pb] - m);
        l += w * parts[pb + 1u];
{adds}    }}
{writes}}}
"#
    )
}

/// A 1-D elementwise kernel over `p.len` elements, 256 per workgroup, with `body` run for index `i`.
fn elementwise(bindings: &str, body: &str) -> String {
    format!(
        r#"struct Params {{ len: u32, groups_x: u32, _p2: u32, _p3: u32, _p4: u32, _p5: u32, _p6: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
{bindings}
@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let i = (wid.x + wid.y * p.groups_x) * 256u + li;
    if (i >= p.len) {{
        return;
    }}
    {body}
}}
"#
    )
}

pub(crate) fn silu_mul() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;",
        "let g = gate[i];
    out[i] = g / (1.0 + exp(-g)) * up[i];",
    )
}

pub(crate) fn add() -> String {
    elementwise(
        "@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read_write> x: array<f32>;",
        "x[i] += y[i];",
    )
}

/// Logits each invocation of the sampling kernel loads before it uses them.
const SCAN_UNROLL: u32 = 8;

/// WGSL that runs `body` (over `i`, a logit's id, and `key`, its key) for the logits of the row, in id order
/// for each invocation: with `strided`, ids `li, li + WG, ...`; otherwise the invocation's contiguous run
/// `lo..hi`. The loads of [`SCAN_UNROLL`] logits (at clamped, always valid ids) come before any is used, so
/// they are in flight together.
fn logit_scan(strided: bool, body: &str, indent: usize) -> String {
    let (start, stop, step, at) = if strided { ("li", "p.cols", "WG", " * WG") } else { ("lo", "hi", "1u", "") };
    let loads = lines(
        (0..SCAN_UNROLL).map(|u| format!("let key{u} = key_of(logits[base + min(i0 + {u}u{at}, {stop} - 1u)]);")),
        indent + 4,
    );
    let bodies = lines(
        (0..SCAN_UNROLL).map(|u| format!("if (i0 + {u}u{at} < {stop}) {{ let i = i0 + {u}u{at}; let key = key{u}; {body} }}")),
        indent + 4,
    );
    let pad = " ".repeat(indent);
    format!("{pad}for (var i0 = {start}; i0 < {stop}; i0 += {SCAN_UNROLL}u * {step}) {{\n{loads}{bodies}{pad}}}\n")
}

/// Invocations of the sampling kernel, and the radix of its selection (one histogram bin per invocation).
const SAMPLE_WG: u32 = 256;
/// Candidates the sampling kernel sorts: `top_k`, at most `tern_core::MAX_SAMPLED_TOP_K`. The bitonic sort
/// takes a power of two, one pair per invocation.
const SAMPLE_CAP: u32 = tern_core::MAX_SAMPLED_TOP_K as u32;
const _: () = assert!(SAMPLE_CAP.is_power_of_two() && SAMPLE_CAP <= 2 * SAMPLE_WG);

/// One workgroup picks a token from a row of logits by tern's sampling rule (`tern_core::TokenSampling`).
///
/// Logits become `u32` keys that order as `f32::total_cmp` does. Greedy is an argmax tree over (key, id).
/// Otherwise a radix selection (four passes of 8 bits, a histogram in workgroup memory) finds the key of the
/// `top_k`-th largest logit; the logits above it, and as many equal to it as make `top_k` (the lowest ids),
/// are gathered and sorted by (key descending, id ascending) in a bitonic network; and one invocation walks
/// them in order for the softmax, the `top_p` prefix and the draw, summing in the same order as the CPU
/// reference.
pub(crate) fn sample() -> String {
    let greedy_scan = logit_scan(true, "if (before(key, i, bk, bi)) { bk = key; bi = i; }", 8);
    let histogram_scan = logit_scan(true, "if ((key & mask) == prefix) { atomicAdd(&hist[(key >> shift) & 255u], 1u); }", 8);
    let greater_scan = logit_scan(
        true,
        "if (key > prefix) { let slot = atomicAdd(&count, 1u); if (slot < CAP) { keys[slot] = key; ids[slot] = i; } }",
        4,
    );
    let ties_count = logit_scan(false, "ties += u32(key == prefix);", 4);
    let ties_write = logit_scan(false, "if (key == prefix && slot < k) { keys[slot] = prefix; ids[slot] = i; slot++; }", 4);
    let argmax_tree = lines(
        [
            "for (var s = WG / 2u; s > 0u; s >>= 1u) {",
            "    if (li < s && before(best_key[li + s], best_id[li + s], best_key[li], best_id[li])) {",
            "        best_key[li] = best_key[li + s];",
            "        best_id[li] = best_id[li + s];",
            "    }",
            "    workgroupBarrier();",
            "}",
        ]
        .map(String::from),
        8,
    );
    format!(
        r#"struct Params {{ cols: u32, row: u32, top_k: u32, temperature: f32, top_p: f32, draw: f32, _p6: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
const WG: u32 = {SAMPLE_WG}u;
const CAP: u32 = {SAMPLE_CAP}u;
const NONE: u32 = 0xffffffffu;
var<workgroup> hist: array<atomic<u32>, {SAMPLE_WG}>;
var<workgroup> count: atomic<u32>;
var<workgroup> chosen: vec2<u32>;
var<workgroup> best_key: array<u32, {SAMPLE_WG}>;
var<workgroup> best_id: array<u32, {SAMPLE_WG}>;
var<workgroup> keys: array<u32, {SAMPLE_CAP}>;
var<workgroup> ids: array<u32, {SAMPLE_CAP}>;
var<workgroup> probs: array<f32, {SAMPLE_CAP}>;
var<workgroup> scan: array<u32, {SAMPLE_WG}>;

// Orders as f32::total_cmp: negative values reversed below the positive ones.
fn key_of(v: f32) -> u32 {{
    let b = bitcast<u32>(v);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}}

fn value_of(k: u32) -> f32 {{
    return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}}

// Whether candidate (ka, ia) comes before (kb, ib): the larger key, then the lower id; no id comes last.
fn before(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {{
    if (ia == NONE) {{
        return false;
    }}
    return ib == NONE || ka > kb || (ka == kb && ia < ib);
}}

@compute @workgroup_size({SAMPLE_WG})
fn main(@builtin(local_invocation_index) li: u32) {{
    let base = p.row * p.cols;
    if (p.temperature <= 0.0) {{
        var bk = 0u;
        var bi = NONE;
{greedy_scan}        best_key[li] = bk;
        best_id[li] = bi;
        workgroupBarrier();
{argmax_tree}        if (li == 0u) {{
            out[0] = select(best_id[0], 0u, best_id[0] == NONE);
        }}
        return;
    }}
    let k = min(p.top_k, p.cols);
    // The key of the k-th largest logit, 8 bits a pass; `remaining` ends as how many equal to it are taken.
    var prefix = 0u;
    var mask = 0u;
    var remaining = k;
    for (var digit = 0u; digit < 4u; digit++) {{
        let shift = 24u - 8u * digit;
        atomicStore(&hist[li], 0u);
        workgroupBarrier();
{histogram_scan}
        workgroupBarrier();
        if (li == 0u) {{
            var cum = 0u;
            var b = 255u;
            loop {{
                let h = atomicLoad(&hist[b]);
                if (cum + h >= remaining || b == 0u) {{
                    chosen = vec2<u32>(b, remaining - min(cum, remaining));
                    break;
                }}
                cum += h;
                b -= 1u;
            }}
        }}
        workgroupBarrier();
        let c = chosen;
        prefix |= c.x << shift;
        mask |= 255u << shift;
        remaining = c.y;
        workgroupBarrier();
    }}
    // The candidates: the keys above the threshold (k - remaining of them, in any order), then the first
    // `remaining` keys equal to it by id. For those each invocation scans a contiguous run of ids, and a prefix
    // sum over the runs gives every tie its slot.
    for (var j = li; j < CAP; j += WG) {{
        keys[j] = 0u;
        ids[j] = NONE;
    }}
    if (li == 0u) {{
        atomicStore(&count, 0u);
    }}
    workgroupBarrier();
{greater_scan}
    let run = (p.cols + WG - 1u) / WG;
    let lo = li * run;
    let hi = min(lo + run, p.cols);
    var ties = 0u;
{ties_count}
    scan[li] = ties;
    workgroupBarrier();
    for (var off = 1u; off < WG; off <<= 1u) {{
        var v = 0u;
        if (li >= off) {{
            v = scan[li - off];
        }}
        workgroupBarrier();
        scan[li] += v;
        workgroupBarrier();
    }}
    var slot = k - remaining + scan[li] - ties;
{ties_write}
    workgroupBarrier();
    // Bitonic sort of the CAP slots, one compare-exchange per invocation per stage.
    for (var size = 2u; size <= CAP; size <<= 1u) {{
        for (var stride = size / 2u; stride > 0u; stride >>= 1u) {{
            if (li < CAP / 2u) {{
                let a = 2u * stride * (li / stride) + li % stride;
                let b = a + stride;
                let ka = keys[a];
                let ia = ids[a];
                let kb = keys[b];
                let ib = ids[b];
                var swap = before(kb, ib, ka, ia);
                if ((a & size) != 0u) {{
                    swap = before(ka, ia, kb, ib);
                }}
                if (swap) {{
                    keys[a] = kb;
                    ids[a] = ib;
                    keys[b] = ka;
                    ids[b] = ia;
                }}
            }}
            workgroupBarrier();
        }}
    }}
    if (li == 0u) {{
        let max = value_of(keys[0]);
        var sum = 0.0;
        for (var i = 0u; i < k; i++) {{
            let e = exp((value_of(keys[i]) - max) / p.temperature);
            probs[i] = e;
            sum += e;
        }}
        var cum = 0.0;
        var keep = k;
        for (var i = 0u; i < k; i++) {{
            probs[i] /= sum;
            cum += probs[i];
            if (cum >= p.top_p && keep == k) {{
                keep = i + 1u;
            }}
        }}
        var total = 0.0;
        for (var i = 0u; i < keep; i++) {{
            total += probs[i];
        }}
        var r = p.draw * total;
        var pick = ids[keep - 1u];
        for (var i = 0u; i < keep; i++) {{
            r -= probs[i];
            if (r <= 0.0) {{
                pick = ids[i];
                break;
            }}
        }}
        out[0] = pick;
    }}
}}
"#
    )
}
