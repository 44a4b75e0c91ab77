//! Picking a token from a row of logits on the GPU.

use super::lines;

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
