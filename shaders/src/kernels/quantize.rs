//! Activations quantized to int8 per block of 32 for the int8 products, by the CPU backend's rule: in a pass
//! of their own, or at the end of the op that produces them.

use super::lines;

/// Rounds `a * id` to the nearest integer, half away from zero, as the CPU backend quantizes activations to
/// int8 (without adding 0.5, which rounds 0.49999997 up: the fraction decides).
pub(super) const ROUND_I8: &str = "fn round_i8(v: vec4<f32>, id: f32) -> vec4<i32> {
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
/// barriers), that quantize `vec4`s to int8 for `matvec_int8` as the CPU backend quantizes activations: per
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
/// with `value` (statements, run where `i < p.len`) and writes the row quantized to int8 for `matvec_int8`
/// ([`quantize_quads`]); `bindings` declare the kernel's buffers, `xq` among them.
pub(crate) fn quantizing_elementwise(bindings: &str, value: &str) -> String {
    elementwise_quantized(bindings, "", value, false)
}

/// [`quantizing_elementwise`] with `prologue` (statements run by every invocation first, in uniform control
/// flow) and, with `keep_zw`, block headers whose last two words are kept ([`quantize_quads_into`]).
pub(super) fn elementwise_quantized(bindings: &str, prologue: &str, value: &str, keep_zw: bool) -> String {
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

/// Activation rows quantized to int8 per block of 32 for `matvec_int8`, one invocation per `vec4`.
pub(crate) fn quantize_rows() -> String {
    quantizing_elementwise(
        "@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> xq: array<vec4<u32>>;",
        "v = x[i];",
    )
}
