//! Kernels over activation rows: the embedding lookup, RMSNorm, RoPE (with the KV append) and the
//! elementwise ops.

use tern_core::TensorType;

use super::{lines, workgroup_tree};
use crate::{KvStore, WORKGROUP, formats};

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
pub(crate) const NORM: u32 = 256;

/// An RMSNorm kernel: one workgroup of 256 per row (`row`), the bindings of [`norm_bindings`], and `body`; with
/// `int8_items` (quantizing that many `vec4`s per invocation at a time), the int8 output and its arrays.
fn norm_kernel(residual: bool, int8_items: usize, subgroups: bool, element: &str, body: &str) -> String {
    let int8 = int8_items > 0;
    let builtins = if subgroups {
        ",
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) sg_count: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32"
    } else {
        ""
    };
    let bindings = norm_bindings(residual, int8, element);
    let shared = if int8 { super::quantize::quantize_shared(int8_items) } else { String::new() };
    format!(
        r#"struct Params {{ rows: u32, cols: u32, eps: f32, groups_x: u32, _p4: u32, _p5: u32, _p6: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
{bindings}
var<workgroup> sums: array<f32, {NORM}>;
{shared}

@compute @workgroup_size({NORM})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>{builtins}) {{
    let row = wid.x + wid.y * p.groups_x;
    if (row >= p.rows) {{
        return;
    }}
{body}}}
"#
    )
}

/// The bindings of the RMSNorm kernels, over arrays of `element`: x and the weight (and with `residual`, y
/// first, and x written back), then the output (and with `int8`, the output quantized for decode products).
fn norm_bindings(residual: bool, int8: bool, element: &str) -> String {
    let names: &[(&str, &str)] = if residual {
        &[("y", "read"), ("weight", "read"), ("x", "read_write"), ("out", "read_write")]
    } else {
        &[("x", "read"), ("weight", "read"), ("out", "read_write")]
    };
    let decls = names
        .iter()
        .enumerate()
        .map(|(i, (name, access))| format!("@group(0) @binding({}) var<storage, {access}> {name}: array<{element}>;", i + 1));
    let mut decls = decls.collect::<Vec<_>>();
    if int8 {
        decls.push(format!("@group(0) @binding({}) var<storage, read_write> xq: array<vec4<u32>>;", names.len() + 1));
    }
    decls.join("\n")
}

/// One workgroup per row, each invocation holding `quads` `vec4`s of it in registers: every load (and with
/// `residual`, the sum `x + y` written back) comes before the mean square's tree, so a row costs one round of
/// memory latency instead of one per element. With `int8` (rows of whole blocks of 32), the output is also
/// written quantized to int8 for decode products, by the invocations holding each block
/// ([`super::quantize::quantize_quads`]). With `subgroups`, the mean square is summed by `subgroupAdd` and the
/// subgroups' sums through workgroup memory: one barrier instead of one per tree level.
fn rms_norm_held(residual: bool, quads: u32, int8: bool, subgroups: bool) -> String {
    let names = HeldNorm {
        x: "x",
        residual: residual.then_some("y"),
        weight: "weight",
        out: "out",
        int8: int8.then_some("xq"),
        cols: "p.cols",
        eps: "p.eps",
        base: "row * n4",
        sums: "sums",
        subgroups,
    };
    let body = held_norm_body(&names, quads, 4);
    let items = if int8 { (quads as usize).min(super::quantize::QUANTIZE_MAX_QUADS) } else { 0 };
    norm_kernel(residual, items, subgroups, "vec4<f32>", &body)
}

/// What [`held_norm_body`] reads and writes: WGSL names and expressions.
pub(crate) struct HeldNorm<'a> {
    /// The row, an `array<vec4<f32>>` (written back with `residual`).
    pub x: &'a str,
    /// The array added to the row first, if any: the residual connection.
    pub residual: Option<&'a str>,
    /// The norm's weight, the normed row, and its int8 form (as [`super::quantize::quantize_quads`] writes it).
    pub weight: &'a str,
    pub out: &'a str,
    pub int8: Option<&'a str>,
    /// The row's width in elements, the norm's epsilon, and the index of the row's first `vec4` in `x`.
    pub cols: &'a str,
    pub eps: &'a str,
    pub base: &'a str,
    /// A workgroup array of [`NORM`] floats for the mean square; with `subgroups`, summed by `subgroupAdd`
    /// first (needs the `sg`, `sg_count` and `sg_lane` builtins).
    pub sums: &'a str,
    pub subgroups: bool,
}

/// The statements of a register-held RMSNorm of one row by a workgroup of [`NORM`] invocations (`li`), each
/// holding `quads` `vec4`s of it: every load (and with a residual, the sum written back) before the mean
/// square's reduction, then the scaled row, and its int8 form by the invocations holding each block. In uniform
/// control flow: they hold barriers.
pub(crate) fn held_norm_body(n: &HeldNorm<'_>, quads: u32, indent: usize) -> String {
    let (x, weight, out, sums) = (n.x, n.weight, n.out, n.sums);
    let total = if n.subgroups {
        [
            "let sg_sum = subgroupAdd(squares);".to_string(),
            "if (sg_lane == 0u) {".into(),
            format!("    {sums}[sg] = sg_sum;"),
            "}".into(),
            "workgroupBarrier();".into(),
            "var total = 0.0;".into(),
            "for (var i = 0u; i < sg_count; i++) {".into(),
            format!("    total += {sums}[i];"),
            "}".into(),
        ]
        .to_vec()
    } else {
        vec![format!("{sums}[li] = squares;"), "workgroupBarrier();".into()]
    };
    let total = lines(total, indent)
        + &if n.subgroups {
            String::new()
        } else {
            workgroup_tree(sums, NORM, "{a} + {b}", indent) + &lines([format!("let total = {sums}[0];")], indent)
        };
    let k = 0..quads;
    let at = |k: u32| format!("li + {}u", k * NORM);
    let loads = lines(
        k.clone().map(|k| {
            let i = at(k);
            let add = n.residual.map_or_else(String::new, |y| format!(" + {y}[base + {i}]"));
            // The weight is loaded with the row, not after the mean square's barriers.
            format!(
                "var v{k} = vec4<f32>(0.0); var w{k} = vec4<f32>(0.0); if ({i} < n4) {{ v{k} = {x}[base + {i}]{add}; w{k} = {weight}[{i}]; }}"
            )
        }),
        indent,
    );
    let write_back = if n.residual.is_some() {
        lines(k.clone().map(|k| format!("if ({0} < n4) {{ {x}[base + {0}] = v{k}; }}", at(k))), indent)
    } else {
        String::new()
    };
    let squares = k.clone().map(|k| format!("dot(v{k}, v{k})")).collect::<Vec<_>>().join(" + ");
    let writes = lines(
        k.clone().map(|k| {
            format!("var o{k} = vec4<f32>(0.0); if ({0} < n4) {{ o{k} = v{k} * inv * w{k}; {out}[base + {0}] = o{k}; }}", at(k))
        }),
        indent,
    );
    let quantize = match n.int8 {
        Some(target) => {
            let items: Vec<_> = k
                .map(|k| super::quantize::quad(&format!("o{k}"), &format!("(base + {}) / 8u", at(k)), &format!("{} < n4", at(k))))
                .collect();
            items
                .chunks(super::quantize::QUANTIZE_MAX_QUADS)
                .map(|c| super::quantize::quantize_quads_to(target, c, indent))
                .collect()
        }
        None => String::new(),
    };
    let (cols, eps, base) = (n.cols, n.eps, n.base);
    lines([format!("let n4 = {cols} / 4u;"), format!("let base = {base};")], indent)
        + &loads
        + &write_back
        + &lines([format!("let squares = {squares};")], indent)
        + &total
        + &lines([format!("let inv = inverseSqrt(total / f32({cols}) + {eps});")], indent)
        + &writes
        + &quantize
}

/// One workgroup per row: the mean square in a tree, then the scaled row. With `residual`, the row is first
/// `x += y` (written back), the residual connection before the norm.
pub(crate) fn rms_norm(residual: bool, quads: u32, int8: bool, subgroups: bool) -> String {
    if quads > 0 {
        return rms_norm_held(residual, quads, int8, subgroups);
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
    norm_kernel(residual, 0, false, "f32", &body)
}

/// `(cos, sin)` of pair `i`'s angle at position `pos`, as [`rope`] describes.
/// `rotation(pos, i)`: the cosine and sine of pair `i`'s angle at position `pos` (needs `inv_freq`).
pub(crate) const ROTATION: &str = "
fn rotation(pos: u32, i: u32) -> vec2<f32> {
    let angle = f32(pos) * inv_freq[i];
    let k = round(angle * 0.15915494309189535);
    let reduced = (angle - k * 6.28125) - k * 0.0019353071795864769;
    return vec2<f32>(cos(reduced), sin(reduced));
}
";

/// One step's attention inputs in one pass: one invocation per `P` consecutive pairs of elements of every head
/// of `q`, `k` and `v`. Pairs of `q` and `k` within `rot_dim` are rotated as [`rope`] does, in place; `k`'s
/// pairs (rotated or not) and `v`'s are also written to the caches' rows `pos0 + t`, stored as `kv`. Pair `i`
/// past `rot_dim / 2` holds the elements `rot_dim + 2j, rot_dim + 2j + 1` (`j = i - rot_dim / 2`) in both
/// layouts.
///
/// An f32 cache takes one pair an invocation (`P = 1`), written a value at a time. An f16 cache is written two
/// adjacent values (a 32-bit word) at a time, so each invocation takes two pairs (`P = 2`, heads and rotated
/// dimensions multiples of 4): pairs `i, i + 1` (`i` even) of interleaved RoPE, and those past `rot_dim`, are
/// the four values from `a_i`; those of split-half RoPE are values `i, i + 1` and `b_i, b_i + 1`.
pub(crate) fn rope_append(kv: KvStore) -> String {
    let pairs: u32 = if kv == KvStore::F32 { 1 } else { 2 };
    let per_pair = |f: &dyn Fn(u32) -> String| lines((0..pairs).map(f), 4);
    let ends = per_pair(&|u| {
        format!(
            "let e{u} = ends(i0 + {u}u);
    let cs{u} = turn(i0 + {u}u, p.pos0 + t);"
        )
    });
    let q_turns = per_pair(&|u| {
        format!(
            "if (i0 + {u}u < half_rot) {{
        let x0 = q[base + e{u}.x];
        let x1 = q[base + e{u}.y];
        q[base + e{u}.x] = x0 * cs{u}.x - x1 * cs{u}.y;
        q[base + e{u}.y] = x0 * cs{u}.y + x1 * cs{u}.x;
    }}"
        )
    });
    let k_turns = per_pair(&|u| {
        format!(
            "let x0_{u} = k[base + e{u}.x];
    let x1_{u} = k[base + e{u}.y];
    let y{u} = vec2<f32>(x0_{u} * cs{u}.x - x1_{u} * cs{u}.y, x0_{u} * cs{u}.y + x1_{u} * cs{u}.x);
    k[base + e{u}.x] = y{u}.x;
    k[base + e{u}.y] = y{u}.y;"
        )
    });
    let v_reads = per_pair(&|u| format!("let y{u} = vec2<f32>(v[base + e{u}.x], v[base + e{u}.y]);"));
    let stores = |cache: &str| {
        if pairs == 1 {
            format!(
                "{cache}[cached + e0.x] = y0.x;
        {cache}[cached + e0.y] = y0.y;"
            )
        } else {
            format!(
                "if (e1.x == e0.x + 1u) {{
            {}
            {}
        }} else {{
            {}
            {}
        }}",
                kv.store_pair(cache, "cached + e0.x", "vec2<f32>(y0.x, y1.x)"),
                kv.store_pair(cache, "cached + e0.y", "vec2<f32>(y0.y, y1.y)"),
                kv.store_pair(cache, "cached + e0.x", "y0"),
                kv.store_pair(cache, "cached + e1.x", "y1"),
            )
        }
    };
    format!(
        r#"{enable}struct Params {{ rows: u32, n_heads: u32, n_kv_heads: u32, head_dim: u32, rot_dim: u32, interleaved: u32, pos0: u32, groups_x: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> k: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<{pair}>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<{pair}>;
{ROTATION}
// The two elements of pair `i` of a head.
fn ends(i: u32) -> vec2<u32> {{
    let half_rot = p.rot_dim / 2u;
    if (i >= half_rot) {{
        let a = p.rot_dim + 2u * (i - half_rot);
        return vec2<u32>(a, a + 1u);
    }}
    if (p.interleaved == 1u) {{
        return vec2<u32>(2u * i, 2u * i + 1u);
    }}
    return vec2<u32>(i, i + half_rot);
}}

// Pair `i`'s rotation at position `pos` (none past `rot_dim`).
fn turn(i: u32, pos: u32) -> vec2<f32> {{
    if (i < p.rot_dim / 2u) {{
        return rotation(pos, i);
    }}
    return vec2<f32>(1.0, 0.0);
}}

@compute @workgroup_size({WORKGROUP})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let g = (wid.x + wid.y * p.groups_x) * {WORKGROUP}u + li;
    let units = p.head_dim / (2u * {pairs}u);
    let half_rot = p.rot_dim / 2u;
    let per_row = (p.n_heads + 2u * p.n_kv_heads) * units;
    let t = g / per_row;
    if (t >= p.rows) {{
        return;
    }}
    let head = (g % per_row) / units;
    let i0 = {pairs}u * (g % units);
{ends}    let kv_cols = p.n_kv_heads * p.head_dim;
    if (head < p.n_heads) {{
        let base = (t * p.n_heads + head) * p.head_dim;
{q_turns}        return;
    }}
    let kh = (head - p.n_heads) % p.n_kv_heads;
    let base = t * kv_cols + kh * p.head_dim;
    let cached = (p.pos0 + t) * kv_cols + kh * p.head_dim;
    if (head < p.n_heads + p.n_kv_heads) {{
{k_turns}        {k_stores}
    }} else {{
{v_reads}        {v_stores}
    }}
}}
"#,
        enable = kv.enable(),
        pair = kv.pair_type(),
        k_stores = stores("k_cache"),
        v_stores = stores("v_cache"),
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

/// The parameter block of the 1-D kernels: `len` items, `groups_x` workgroups in the grid's first dimension.
pub(super) const ELEMENTWISE_PARAMS: &str =
    "struct Params { len: u32, groups_x: u32, _p2: u32, _p3: u32, _p4: u32, _p5: u32, _p6: u32, _p7: u32 }
@group(0) @binding(0) var<uniform> p: Params;";

/// The entry point of the 1-D kernels, up to the item index `i` (256 invocations per workgroup).
pub(super) const ELEMENTWISE_MAIN: &str = "@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = (wid.x + wid.y * p.groups_x) * 256u + li;";

/// A 1-D elementwise kernel over `p.len` elements, 256 per workgroup, with `body` run for index `i`.
pub(super) fn elementwise(bindings: &str, body: &str) -> String {
    format!(
        r#"{ELEMENTWISE_PARAMS}
{bindings}
{ELEMENTWISE_MAIN}
    if (i >= p.len) {{
        return;
    }}
    {body}
}}
"#
    )
}

/// `out = silu(gate) * up`; with `int8`, one invocation per `vec4` (`p.len` counts them), which also writes
/// the row quantized to int8 for decode products ([`super::quantize::quantize_quads`]).
pub(crate) fn silu_mul(int8: bool) -> String {
    if int8 {
        return super::quantize::quantizing_elementwise(
            "@group(0) @binding(1) var<storage, read> gate: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> up: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> xq: array<vec4<u32>>;",
            "let g = gate[i];
        v = g / (1.0 + exp(-g)) * up[i];
        out[i] = v;",
        );
    }
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
