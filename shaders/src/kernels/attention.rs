//! Causal attention over the KV cache, and the merge of a split decode attention.

use super::{lines, workgroup_tree};
use crate::{ATTENTION_INVOCATIONS, ATTENTION_TILE, KvStore, formats};

/// One workgroup of [`ATTENTION_INVOCATIONS`] per (head, `rows` query rows). Each tile of [`ATTENTION_TILE`]
/// positions: `ATTENTION_INVOCATIONS / ATTENTION_TILE` invocations score each position for every row of the
/// workgroup (a share of the head's dimensions each, so that a score costs loads in flight instead of a chain
/// of them), the tile's maximum rescales each row's running sums (online softmax), and each invocation
/// accumulates a `vec4` of each row's output over an eighth (for heads of 128) of the tile's positions. The
/// rows share each tile's K and V: a prefill reads the cache once per `rows` rows, not once per row.
///
/// With `split` (one query row: decode), workgroup (head, split) covers only positions
/// `split * span..(split + 1) * span`: long contexts then keep many workgroups busy. Each writes its running
/// maximum, sum and unnormalized output to `out` as a partial, `[m, l, acc; head_dim]` at
/// `(split * n_heads + head) * (head_dim + 2)`, and [`attention_combine`] merges the splits.
///
/// With `subgroups`, each tile's maxima and sums are taken by `subgroupMax`/`subgroupAdd` and the subgroups'
/// results combined through workgroup memory: two barriers a tile instead of one per tree level.
///
/// With `int8` (not with `split`; heads of whole blocks of 32, one query row), the output is also written
/// quantized to int8 for decode products ([`super::quantize::quantize_quads`]).
///
/// K and V are read as `kv` stores them (four values a load; with `wide_k`, an f16 K eight) and computed on in
/// f32.
pub(crate) fn attention(head_dim: u32, rows: u32, split: bool, subgroups: bool, int8: bool, kv: KvStore, wide_k: bool) -> String {
    let (tile, wg) = (ATTENTION_TILE, ATTENTION_INVOCATIONS);
    let quads = head_dim / 4;
    assert!(rows >= 1 && rows * quads <= wg, "attention: {rows} rows of {head_dim} in a workgroup of {wg}");
    assert!(rows == 1 || !(split || int8), "attention: split and int8 take one row");
    let each_row = |f: &dyn Fn(u32) -> String| (0..rows).map(f).collect::<Vec<_>>();
    // The weighted sum of V: invocation `li` owns `vec4` chunk `li % CHUNKS` of the head for the positions
    // `li / CHUNKS, + GROUPS, ...` of each tile; the groups' sums meet at the end. Every load of a tile is
    // issued before its first use, so that a tile costs one trip to memory: a position's K `vec4`s (dimensions
    // `part, part + PARTS, ...`), an invocation's V `vec4`s (positions `g, g + GROUPS, ...` of the tile) and,
    // in the first tile, the queries go out together, before the scores' reductions.
    //
    // With `wide_k`, an f16 K is read eight values a load (a `vec4<u32>` of halves), so that the two
    // invocations of a position take a whole 32-byte sector of its row each load, as an f32 K's four values a
    // load do.
    let groups = wg / quads;
    let octets = wide_k && kv != KvStore::F32 && head_dim.is_multiple_of(8);
    let (k_type, k_width) = if octets { ("vec4<u32>", 8) } else { (kv.quad_type(), 4) };
    let k_loads = (head_dim / k_width).div_ceil(wg / tile);
    let v_loads = tile.div_ceil(groups);
    let k_fetch = lines(
        (0..k_loads).map(|u| {
            let d = format!("part + {u}u * PARTS");
            if octets {
                format!("var k{u} = vec4<u32>(0u);\n        if (jq < visible && {d} < KLOADS) {{ k{u} = k[kb + {d}]; }}")
            } else {
                format!("var k{u} = vec4<f32>(0.0);\n        if (jq < visible && {d} < KLOADS) {{ k{u} = kv4(k[kb + {d}]); }}")
            }
        }),
        8,
    );
    // Each K load's share of every row's score.
    let k_dots = lines(
        (0..k_loads).map(|u| {
            let d = format!("part + {u}u * PARTS");
            let dots = each_row(&|r| {
                let q = |i: &str| format!("qs[{}u + {i}]", r * quads);
                if octets {
                    format!(
                        "pd{r} += dot({}, vec4<f32>(unpack2x16float(k{u}.x), unpack2x16float(k{u}.y))) + dot({}, vec4<f32>(unpack2x16float(k{u}.z), unpack2x16float(k{u}.w)));",
                        q(&format!("2u * ({d})")),
                        q(&format!("2u * ({d}) + 1u"))
                    )
                } else {
                    format!("pd{r} += dot({}, k{u});", q(&d))
                }
            });
            format!("if ({d} < KLOADS) {{ {} }}", dots.join(" "))
        }),
        8,
    );
    let v_fetch = lines(
        (0..v_loads).map(|u| {
            format!(
                "var v{u} = vec4<f32>(0.0);\n        if (g < GROUPS && g + {u}u * GROUPS < n) {{ v{u} = kv4(v[((j0 + g + {u}u * GROUPS) * kv_cols + kvh * HD) / 4u + c]); }}"
            )
        }),
        8,
    );
    let v_adds = lines(
        (0..v_loads).map(|u| {
            let adds = each_row(&|r| format!("acc{r} += weights[{}u + g + {u}u * GROUPS] * v{u};", r * tile));
            format!("if (g < GROUPS && g + {u}u * GROUPS < n) {{ {} }}", adds.join(" "))
        }),
        8,
    );
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
    } else if int8 {
        format!(
            "    var o = vec4<f32>(0.0);\n    if (li < CHUNKS) {{\n        o = sum / l;\n{}    }}\n{}",
            store("qbase", "o"),
            super::quantize::quantize_quads(&[super::quantize::quad("o", "(qbase / 4u + li) / 8u", "li < CHUNKS")], 4)
        )
    } else {
        format!("    if (li < CHUNKS && t < p.rows) {{\n        let o = sum / l;\n{}    }}\n", store("qbase", "o"))
    };
    // Row `r`'s output: the groups' sums meet, then `writes` (with `t`, `qbase`, `sum`, `m` and `l` of the row).
    let finish = each_row(&|r| {
        let indented = writes.lines().map(|l| format!("    {l}\n")).collect::<String>();
        format!(
            "    {{
        let t = t0 + {r}u;
        let qbase = (t * p.n_heads + h) * HD;
        let m = m{r};
        let l = l{r};
        sums[li] = acc{r};
        workgroupBarrier();
        var sum = vec4<f32>(0.0);
        if (li < CHUNKS) {{
            for (var gi = 0u; gi < GROUPS; gi++) {{
                sum += sums[li + gi * CHUNKS];
            }}
        }}
        workgroupBarrier();
{indented}    }}
"
        )
    })
    .concat();
    let int8_decls = if int8 {
        format!("@group(0) @binding(5) var<storage, read_write> xq: array<vec4<u32>>;\n{}", super::quantize::quantize_shared(1))
    } else {
        String::new()
    };
    let range = if split {
        "let t0 = 0u;
    let first = wid.y * p.span;
    let visible = min(p.pos0 + 1u, first + p.span);"
    } else {
        "let t0 = wid.y * R;
    let first = 0u;
    let visible = p.pos0 + min(t0 + R, p.rows);"
    };
    // The tile's maximum of each row's `s{r}` into `tile_max{r}` and sum of `e{r}` into `tile_sum{r}`, for
    // every invocation; row `r` works in `red[r * TILE..]`.
    let reduce = |value: &str, op: &str, into: &str, combine: &str| {
        let at = |r: u32, i: &str| format!("red[{}u + {i}]", r * tile);
        if subgroups {
            format!(
                "{}        if (sg_lane == 0u) {{\n{}        }}\n        workgroupBarrier();\n{}        for (var i = 1u; i < sg_count; i++) {{\n{}        }}\n",
                lines(each_row(&|r| format!("let {into}{r}_sg = {op}({value}{r});")), 8),
                lines(each_row(&|r| format!("{} = {into}{r}_sg;", at(r, "sg"))), 12),
                lines(each_row(&|r| format!("var {into}{r} = {};", at(r, "0u"))), 8),
                lines(
                    each_row(&|r| {
                        format!("{into}{r} = {};", combine.replace("{a}", &format!("{into}{r}")).replace("{b}", &at(r, "i")))
                    }),
                    12
                ),
            )
        } else {
            format!(
                "        if (li < TILE) {{\n{}        }}\n        workgroupBarrier();
        for (var stride = TILE / 2u; stride > 0u; stride >>= 1u) {{
            if (li < stride) {{\n{}            }}
            workgroupBarrier();
        }}\n{}",
                lines(each_row(&|r| format!("{} = {value}{r};", at(r, "li"))), 12),
                lines(
                    each_row(&|r| format!(
                        "{} = {};",
                        at(r, "li"),
                        combine.replace("{a}", &at(r, "li")).replace("{b}", &at(r, "li + stride"))
                    )),
                    16
                ),
                lines(each_row(&|r| format!("let {into}{r} = {};", at(r, "0u"))), 8),
            )
        }
    };
    let builtins = if subgroups {
        ",
    @builtin(subgroup_id) sg: u32,
    @builtin(num_subgroups) sg_count: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32"
    } else {
        ""
    };
    let q_load = lines(
        each_row(&|r| {
            format!(
                "if (li >= {lo}u && li < {hi}u && t0 + {r}u < p.rows) {{ let qb = ((t0 + {r}u) * p.n_heads + h) * HD + 4u * (li - {lo}u); qv = vec4<f32>(q[qb], q[qb + 1u], q[qb + 2u], q[qb + 3u]); }}",
                lo = r * quads,
                hi = (r + 1) * quads
            )
        }),
        4,
    );
    let row_state = lines(each_row(&|r| format!("var m{r} = NONE;\n    var l{r} = 0.0;\n    var acc{r} = vec4<f32>(0.0);")), 4);
    let scores = lines(
        each_row(&|r| {
            format!(
                "let mine{r} = li < TILE && j < p.pos0 + t0 + {r}u + 1u && j < visible;
        var s{r} = NONE;
        if (mine{r}) {{
            var dotp = 0.0;
            for (var i = 0u; i < PARTS; i++) {{
                dotp += dots[{}u + PARTS * li + i];
            }}
            s{r} = dotp * p.scale;
        }}",
                r * wg
            )
        }),
        8,
    );
    let rescale = lines(
        each_row(&|r| {
            format!(
                "let m_new{r} = max(m{r}, tile_max{r});\n        let correction{r} = exp(m{r} - m_new{r});\n        let e{r} = select(0.0, exp(s{r} - m_new{r}), mine{r});"
            )
        }),
        8,
    );
    format!(
        r#"{enable}struct Params {{ rows: u32, n_heads: u32, n_kv_heads: u32, head_dim: u32, pos0: u32, scale: f32, span: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<{k_type}>;
@group(0) @binding(3) var<storage, read> v: array<{quad}>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
{int8_decls}
const HD: u32 = {head_dim}u;
const CHUNKS: u32 = HD / 4u;
// K is read KWIDTH values a load.
const KWIDTH: u32 = {k_width}u;
const KLOADS: u32 = HD / KWIDTH;
const TILE: u32 = {tile}u;
const WG: u32 = {wg}u;
const PARTS: u32 = WG / TILE;
const GROUPS: u32 = WG / CHUNKS;
// Query rows per workgroup.
const R: u32 = {rows}u;
var<workgroup> weights: array<f32, {rows_tile}>;
var<workgroup> red: array<f32, {rows_tile}>;
var<workgroup> dots: array<f32, {rows_wg}>;
var<workgroup> qs: array<vec4<f32>, {rows_quads}>;
var<workgroup> sums: array<vec4<f32>, {wg}>;
const NONE: f32 = -3.0e38;
{reader}
@compute @workgroup_size({wg})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>{builtins}) {{
    let h = wid.x;
    {range}
    let kvh = h / (p.n_heads / p.n_kv_heads);
    let kv_cols = p.n_kv_heads * HD;
    // The queries are loaded with the first tile's K and V: one trip to memory, not two.
    var qv = vec4<f32>(0.0);
{q_load}    let c = li % CHUNKS;
    let g = li / CHUNKS;
{row_state}    for (var j0 = first; j0 < visible; j0 += TILE) {{
        // Position `li / PARTS` of the tile, K loads `part, part + PARTS, ...` of its row.
        let jq = j0 + li / PARTS;
        let part = li % PARTS;
        let n = min(TILE, visible - j0);
        let kb = (jq * kv_cols + kvh * HD) / KWIDTH;
{k_fetch}{v_fetch}        if (j0 == first && li < R * CHUNKS) {{
            qs[li] = qv;
        }}
        workgroupBarrier();
{pd_decl}{k_dots}{dots_store}        workgroupBarrier();
        // Invocation `li < TILE` holds position `j0 + li`'s score for each row.
        let j = j0 + li;
{scores}        // The tile's maxima and sums.
{reduce_max}{rescale}        workgroupBarrier();
        if (li < TILE) {{
{weights_store}        }}
{reduce_sum}{update}{v_adds}{m_update}        workgroupBarrier();
    }}
{finish}}}
"#,
        enable = kv.enable(),
        quad = kv.quad_type(),
        reader = kv.quad_reader(),
        rows_tile = rows * tile,
        rows_wg = rows * wg,
        rows_quads = rows * quads,
        pd_decl = lines(each_row(&|r| format!("var pd{r} = 0.0;")), 8),
        dots_store = lines(each_row(&|r| format!("dots[{}u + li] = pd{r};", r * wg)), 8),
        reduce_max = reduce("s", "subgroupMax", "tile_max", "max({a}, {b})"),
        reduce_sum = reduce("e", "subgroupAdd", "tile_sum", "{a} + {b}"),
        weights_store = lines(each_row(&|r| format!("weights[{}u + li] = e{r};", r * tile)), 12),
        update = lines(each_row(&|r| format!("l{r} = l{r} * correction{r} + tile_sum{r};\n        acc{r} *= correction{r};")), 8),
        m_update = lines(each_row(&|r| format!("m{r} = m_new{r};")), 8),
    )
}

/// One workgroup of [`ATTENTION_INVOCATIONS`] per head merges the partials of a split [`attention`]: the
/// splits' largest maximum and their rescaled sums are each taken by all invocations at once (a split each,
/// then a tree), and each dimension's output by `ATTENTION_INVOCATIONS / head_dim` invocations, each adding
/// every so many splits four at a time (four loads in flight, not a chain of them), so that many splits cost
/// a few trips to memory. With `int8` (heads of whole blocks of 32), the output is also written quantized to
/// int8 for decode products ([`super::quantize::quantize_quads`]).
pub(crate) fn attention_combine(head_dim: u32, int8: bool) -> String {
    let wg = ATTENTION_INVOCATIONS;
    let int8_decls = if int8 {
        format!("@group(0) @binding(3) var<storage, read_write> xq: array<vec4<u32>>;\n{}", super::quantize::quantize_shared(1))
    } else {
        String::new()
    };
    let quantize = if int8 {
        super::quantize::quantize_quads(&[super::quantize::quad("o", "(h * HD / 4u + li) / 8u", "li < HD / 4u")], 4)
    } else {
        String::new()
    };
    let (max_tree, sum_tree) = (workgroup_tree("red", wg, "max({a}, {b})", 4), workgroup_tree("red", wg, "{a} + {b}", 4));
    let split_terms = |indent: usize, count: u32| {
        let loads = (0..count).map(|u| {
            format!("let pb{u} = base + (s + {u}u * R) * stride;\nlet m{u} = parts[pb{u}];\nlet v{u} = parts[pb{u} + 2u + d];")
        });
        let adds = (0..count).map(|u| format!("acc += exp(m{u} - m) * v{u};"));
        lines(loads.chain(adds).flat_map(|l| l.lines().map(str::to_string).collect::<Vec<_>>()), indent)
    };
    format!(
        r#"struct Params {{ n_heads: u32, splits: u32, _p2: u32, _p3: u32, _p4: u32, _p5: u32, _p6: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> parts: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
{int8_decls}
const HD: u32 = {head_dim}u;
const WG: u32 = {wg}u;
// Invocations `r * HD + d` add dimension `d` of splits `r, r + R, ...`.
const R: u32 = WG / HD;
var<workgroup> red: array<f32, WG>;
var<workgroup> accs: array<f32, WG>;

@compute @workgroup_size({wg})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let h = wid.x;
    let stride = p.n_heads * (HD + 2u);
    let base = h * (HD + 2u);
    var mm = -3.0e38;
    for (var s = li; s < p.splits; s += WG) {{
        mm = max(mm, parts[base + s * stride]);
    }}
    red[li] = mm;
    workgroupBarrier();
{max_tree}    let m = red[0];
    workgroupBarrier();
    var ll = 0.0;
    for (var s = li; s < p.splits; s += WG) {{
        let pb = base + s * stride;
        ll += exp(parts[pb] - m) * parts[pb + 1u];
    }}
    red[li] = ll;
    workgroupBarrier();
{sum_tree}    let l = red[0];
    let d = li % HD;
    let r = li / HD;
    var acc = 0.0;
    if (r < R) {{
        var s = r;
        for (; s + 3u * R < p.splits; s += 4u * R) {{
{four}        }}
        for (; s < p.splits; s += R) {{
{one}        }}
    }}
    accs[li] = acc;
    workgroupBarrier();
    var o = vec4<f32>(0.0);
    if (li < HD / 4u) {{
        for (var k = 0u; k < R; k++) {{
            let a = k * HD + 4u * li;
            o += vec4<f32>(accs[a], accs[a + 1u], accs[a + 2u], accs[a + 3u]);
        }}
        o /= l;
        let b = h * HD + 4u * li;
        out[b] = o.x;
        out[b + 1u] = o.y;
        out[b + 2u] = o.z;
        out[b + 3u] = o.w;
    }}
{quantize}}}
"#,
        four = split_terms(12, 4),
        one = split_terms(12, 1),
    )
}
