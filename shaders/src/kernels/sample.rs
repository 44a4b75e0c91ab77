//! Picking a token from a row of logits on the GPU.

use super::lines;
use crate::SamplePass;

/// Logits each invocation of the sampling kernel loads before it uses them.
const SCAN_UNROLL: u32 = 8;

/// WGSL that runs `body` (over `i`, a candidate's token id, and `key`, its key) for the entries `first..stop`
/// of the kernel's source ([`SamplePass`]), in position order for each invocation: with `strided`, positions
/// `first + li, first + li + WG, ...`; otherwise the invocation's contiguous run `lo..hi`. Entries without a
/// token (`NONE`, a chunk's unused candidate slots) are skipped. The loads of [`SCAN_UNROLL`] entries (at
/// clamped, always valid positions) come before any is used, so they are in flight together.
fn logit_scan(strided: bool, body: &str, indent: usize) -> String {
    let (start, stop, step, at) = if strided { ("first + li", "stop", "WG", " * WG") } else { ("lo", "hi", "1u", "") };
    let loads = lines((0..SCAN_UNROLL).map(|u| format!("let e{u} = entry(min(i0 + {u}u{at}, {stop} - 1u));")), indent + 4);
    let bodies = lines(
        (0..SCAN_UNROLL)
            .map(|u| format!("if (i0 + {u}u{at} < {stop} && e{u}.y != NONE) {{ let i = e{u}.y; let key = e{u}.x; {body} }}")),
        indent + 4,
    );
    let pad = " ".repeat(indent);
    format!("{pad}for (var i0 = {start}; i0 < {stop}; i0 += {SCAN_UNROLL}u * {step}) {{\n{loads}{bodies}{pad}}}\n")
}

/// WGSL that turns `scan[0..WG]` (in workgroup memory) into its inclusive prefix sums, in uniform control flow.
fn prefix_sum(indent: usize) -> String {
    lines(
        [
            "for (var off = 1u; off < WG; off <<= 1u) {",
            "    var v = 0u;",
            "    if (li >= off) {",
            "        v = scan[li - off];",
            "    }",
            "    workgroupBarrier();",
            "    scan[li] += v;",
            "    workgroupBarrier();",
            "}",
        ]
        .map(String::from),
        indent,
    )
}

/// Invocations of the sampling kernel, and the radix of its selection (one histogram bin per invocation).
const SAMPLE_WG: u32 = 256;
/// Candidates the sampling kernel sorts: `top_k`, at most `tern_core::MAX_SAMPLED_TOP_K`. The bitonic sort
/// takes a power of two, one pair per invocation.
const SAMPLE_CAP: u32 = tern_core::MAX_SAMPLED_TOP_K as u32;
const _: () = assert!(SAMPLE_CAP.is_power_of_two() && SAMPLE_CAP <= 2 * SAMPLE_WG);

/// A token picked from a row of logits by tern's sampling rule (`tern_core::TokenSampling`), in one workgroup
/// ([`SamplePass::Whole`]) or, for a long row, in two passes: a workgroup per [`crate::SAMPLE_CHUNK`] logits
/// (greedy: [`crate::GREEDY_CHUNK`]) keeps its chunk's candidates ([`SamplePass::Chunks`]) and one workgroup
/// picks among them ([`SamplePass::Merge`]).
///
/// Logits become `u32` keys that order as `f32::total_cmp` does. Greedy is an argmax tree over (key, id).
/// Otherwise a radix selection (four passes of 8 bits, a histogram in workgroup memory) finds the key of the
/// `top_k`-th largest entry; the entries above it, and as many equal to it as make `top_k` (the lowest ids),
/// are gathered and sorted by (key descending, id ascending) in a bitonic network. A chunk writes those (its
/// best entry when greedy) as its candidates; since chunks follow the row's order and each chunk's candidates
/// are sorted, equal keys among all the candidates stand in id order, so the merge's selection over them ties
/// as the whole row's would. Picking, one invocation walks the sorted candidates for the softmax, the `top_p`
/// prefix and the draw, summing in the same order as the CPU reference.
pub(crate) fn sample(pass: SamplePass) -> String {
    let greedy_scan = logit_scan(true, "if (before(key, i, bk, bi)) { bk = key; bi = i; }", 8);
    // Counted in runs of one bin, so that an invocation whose entries share a bin (the top byte of logits of
    // one sign and similar size is the same) adds once, not once an entry.
    let histogram_scan = logit_scan(
        true,
        "if ((key & mask) == prefix) { let bin = (key >> shift) & 255u; \
         if (bin != run_bin) { if (run > 0u) { atomicAdd(&hist[run_bin], run); } run_bin = bin; run = 0u; } run++; }",
        8,
    );
    let greater_scan = logit_scan(
        true,
        "if (key > prefix) { let slot = atomicAdd(&count, 1u); if (slot < CAP) { keys[slot] = key; ids[slot] = i; } }",
        4,
    );
    let ties_count = logit_scan(false, "ties += u32(key == prefix);", 4);
    let ties_write = logit_scan(false, "if (key == prefix && slot < k) { keys[slot] = prefix; ids[slot] = i; slot++; }", 4);
    let bins_scan = prefix_sum(8);
    let ties_scan = prefix_sum(4);
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
    let (bindings, entry, range, greedy_out, finish) = match pass {
        SamplePass::Whole | SamplePass::Merge => {
            let (source, entry, range) = if pass == SamplePass::Whole {
                (
                    "logits: array<f32>",
                    "return vec2<u32>(key_of(logits[p.row * p.cols + i]), i);",
                    "let first = 0u;\n    let stop = p.cols;\n    let entries = p.cols;",
                )
            } else {
                ("cand: array<vec2<u32>>", "return cand[i];", "let first = 0u;\n    let stop = p.cols;\n    let entries = p.valid;")
            };
            let bindings = format!(
                "@group(0) @binding(1) var<storage, read> {source};\n@group(0) @binding(2) var<storage, read_write> out: array<u32>;"
            );
            (bindings, entry, range, "            out[0] = select(best_id[0], 0u, best_id[0] == NONE);", PICK.to_string())
        }
        SamplePass::Chunks => (
            "@group(0) @binding(1) var<storage, read> logits: array<f32>;\n\
             @group(0) @binding(2) var<storage, read_write> cand: array<vec2<u32>>;"
                .to_string(),
            "return vec2<u32>(key_of(logits[p.row * p.cols + i]), i);",
            "let first = wid.x * p.chunk;\n    let stop = min(first + p.chunk, p.cols);\n    let entries = stop - first;",
            "            cand[wid.x] = vec2<u32>(best_key[0], best_id[0]);",
            "    for (var j = li; j < p.valid; j += WG) {\n        cand[wid.x * p.valid + j] = vec2<u32>(keys[j], ids[j]);\n    }\n"
                .to_string(),
        ),
    };
    format!(
        r#"struct Params {{ cols: u32, row: u32, top_k: u32, temperature: f32, top_p: f32, draw: f32, chunk: u32, valid: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
{bindings}
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

// The (key, id) of the source's entry at position `i`.
fn entry(i: u32) -> vec2<u32> {{
    {entry}
}}

@compute @workgroup_size({SAMPLE_WG})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    // This workgroup's positions, and how many candidates it takes.
    {range}
    if (p.temperature <= 0.0) {{
        var bk = 0u;
        var bi = NONE;
{greedy_scan}        best_key[li] = bk;
        best_id[li] = bi;
        workgroupBarrier();
{argmax_tree}        if (li == 0u) {{
{greedy_out}
        }}
        return;
    }}
    let k = min(p.top_k, entries);
    // The key of the k-th largest logit, 8 bits a pass; `remaining` ends as how many equal to it are taken.
    var prefix = 0u;
    var mask = 0u;
    var remaining = k;
    for (var digit = 0u; digit < 4u; digit++) {{
        let shift = 24u - 8u * digit;
        atomicStore(&hist[li], 0u);
        workgroupBarrier();
        var run_bin = 0u;
        var run = 0u;
{histogram_scan}        if (run > 0u) {{
            atomicAdd(&hist[run_bin], run);
        }}
        workgroupBarrier();
        // The bin where the count from the top reaches `remaining` (bin 0 if none does): invocation `li` holds
        // bin `255 - li`, and a prefix sum gives each its count from the top.
        let b = 255u - li;
        let h = atomicLoad(&hist[b]);
        scan[li] = h;
        workgroupBarrier();
{bins_scan}        let above = scan[li] - h;
        if ((above < remaining && above + h >= remaining) || (li == WG - 1u && above + h < remaining)) {{
            chosen = vec2<u32>(b, remaining - min(above, remaining));
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
    let run = (stop - first + WG - 1u) / WG;
    let lo = min(first + li * run, stop);
    let hi = min(lo + run, stop);
    var ties = 0u;
{ties_count}
    scan[li] = ties;
    workgroupBarrier();
{ties_scan}    var slot = k - remaining + scan[li] - ties;
{ties_write}
    workgroupBarrier();
    // Bitonic sort of the first `n` slots (`n` the power of two from `k`: the rest hold no candidate), one
    // compare-exchange per invocation per stage.
    var n = 2u;
    while (n < k) {{
        n <<= 1u;
    }}
    for (var size = 2u; size <= n; size <<= 1u) {{
        for (var stride = size / 2u; stride > 0u; stride >>= 1u) {{
            if (li < n / 2u) {{
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
{finish}}}
"#
    )
}

/// The pick from the sorted candidates `keys`/`ids` (`k` of them): the softmax at the temperature, the `top_p`
/// prefix, and the draw walked through it, by one invocation.
const PICK: &str = "    if (li == 0u) {
        let max = value_of(keys[0]);
        var sum = 0.0;
        for (var i = 0u; i < k; i++) {
            let e = exp((value_of(keys[i]) - max) / p.temperature);
            probs[i] = e;
            sum += e;
        }
        var cum = 0.0;
        var keep = k;
        for (var i = 0u; i < k; i++) {
            probs[i] /= sum;
            cum += probs[i];
            if (cum >= p.top_p && keep == k) {
                keep = i + 1u;
            }
        }
        var total = 0.0;
        for (var i = 0u; i < keep; i++) {
            total += probs[i];
        }
        var r = p.draw * total;
        var pick = ids[keep - 1u];
        for (var i = 0u; i < keep; i++) {
            r -= probs[i];
            if (r <= 0.0) {
                pick = ids[i];
                break;
            }
        }
        out[0] = pick;
    }
";
