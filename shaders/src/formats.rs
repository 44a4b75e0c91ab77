//! WGSL that reads one weight format: `load_block(row, block)` gives the 32 weights of a block, dequantized,
//! as 8 `vec4<f32>` in element order (`w[i]` holds elements `4i..4i+3`).
//!
//! A kernel multiplies a block with the activations' `vec4`s `8 * block .. 8 * block + 8` of a row. The matrix is
//! bound as four arrays, in `tern-core::MatrixView`'s layout: `quants` (binding 1, read as `vec4<u32>` so a
//! block's words come in 16-byte loads; the backend pads it to 16 bytes), `scales` (2: f16 block scales, or
//! tern's block codes), `mins` (3: f16 block minimums) and `row_units` (4: tern's per-row `D`, `M`). A format
//! that lacks a part reads nothing from it.

use tern_core::{TensorType, TernFormat};

/// The bindings and helpers every format shares.
const COMMON: &str = r#"
@group(0) @binding(1) var<storage, read> quants: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> mins: array<u32>;
@group(0) @binding(4) var<storage, read> row_units: array<f32>;

// Word `i` of the quants.
fn word(i: u32) -> u32 {
    return quants[i >> 2u][i & 3u];
}

// Block `i`'s f16 scale and minimum (packed in pairs, low half first).
fn scale_at(i: u32) -> f32 {
    let pair = unpack2x16float(scales[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}
fn min_at(i: u32) -> f32 {
    let pair = unpack2x16float(mins[i >> 1u]);
    return select(pair.x, pair.y, (i & 1u) == 1u);
}

// The four bytes of `w`, shifted right by `shift` and masked: four unsigned fields.
fn fields(w: u32, shift: u32, mask: u32) -> vec4<f32> {
    return vec4<f32>(vec4<u32>(w >> shift, w >> (shift + 8u), w >> (shift + 16u), w >> (shift + 24u)) & vec4<u32>(mask));
}

// The four bytes of `w` as signed integers.
fn signed_bytes(w: u32) -> vec4<f32> {
    let v = bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w)) >> vec4<u32>(24u);
    return vec4<f32>(v);
}
"#;

/// `load_block` for `ty`. `p.cols` is the row length and `g = r * nb + b` the block's index in the matrix.
fn load_block(ty: TensorType) -> String {
    let body = match ty {
        TensorType::F32 => "    for (var i = 0u; i < 8u; i++) {\n        w[i] = bitcast<vec4<f32>>(quants[g * 8u + i]);\n    }".to_string(),
        TensorType::F16 => "    for (var k = 0u; k < 4u; k++) {
        let q = quants[g * 4u + k];
        w[2u * k] = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
        w[2u * k + 1u] = vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w));
    }"
        .to_string(),
        TensorType::Bf16 => "    for (var k = 0u; k < 4u; k++) {
        let q = quants[g * 4u + k];
        let lo = bitcast<vec4<f32>>(q << vec4<u32>(16u));
        let hi = bitcast<vec4<f32>>(q & vec4<u32>(0xffff0000u));
        w[2u * k] = vec4<f32>(lo.x, hi.x, lo.y, hi.y);
        w[2u * k + 1u] = vec4<f32>(lo.z, hi.z, lo.w, hi.w);
    }"
        .to_string(),
        // Elements 0..15 are the low nibbles of the block's 16 bytes, 16..31 the high ones.
        TensorType::Q4_0 | TensorType::Q4_1 => {
            // Q4_0's `d * (q - 8)` exactly as the reference computes it.
            let (lo, hi) = if ty == TensorType::Q4_0 {
                ("d * (fields(q[i], 0u, 15u) - 8.0)", "d * (fields(q[i], 4u, 15u) - 8.0)")
            } else {
                ("d * fields(q[i], 0u, 15u) + m", "d * fields(q[i], 4u, 15u) + m")
            };
            let m = if ty == TensorType::Q4_1 { "\n    let m = min_at(g);" } else { "" };
            format!(
                "    let q = quants[g];
    let d = scale_at(g);{m}
    for (var i = 0u; i < 4u; i++) {{
        w[i] = {lo};
        w[i + 4u] = {hi};
    }}"
            )
        }
        TensorType::Q8_0 => "    let d = scale_at(g);
    let q0 = quants[2u * g];
    let q1 = quants[2u * g + 1u];
    for (var i = 0u; i < 4u; i++) {
        w[i] = d * signed_bytes(q0[i]);
        w[i + 4u] = d * signed_bytes(q1[i]);
    }"
        .to_string(),
        TensorType::T2 | TensorType::T3 | TensorType::T4 | TensorType::T8 => {
            let f = ty.tern_format().unwrap_or(TernFormat::T4);
            return tern_block(f);
        }
    };
    format!(
        "fn load_block(r: u32, b: u32) -> array<vec4<f32>, 8> {{
    let g = r * (p.cols / 32u) + b;
    var w: array<vec4<f32>, 8>;
{body}
    return w;
}}
"
    )
}

/// `load_block` for a tern format: `x = D * sc * q - M * mn` (docs/FORMATS.md).
fn tern_block(f: TernFormat) -> String {
    let code_bits = f.code_bits();
    // The block's scale and minimum codes.
    let codes = match f {
        TernFormat::T2 => "let sc = f32(code & 15u); let mn = f32((code >> 4u) & 15u);",
        TernFormat::T3 | TernFormat::T4 => "let sc = f32(code & 255u); let mn = f32((code >> 8u) & 255u);",
        TernFormat::T8 => "let sc = f32(code & 255u); let mn = 0.0;",
    };
    // The quants, in element order, from the block's words.
    let quants = match f {
        // Elements 8k..8k+7 are bit plane k of the block's 8 bytes (words 0 and 1).
        TernFormat::T2 => "    let w0 = word(2u * g);
    let w1 = word(2u * g + 1u);
    for (var k = 0u; k < 4u; k++) {
        w[2u * k] = scale * fields(w0, 2u * k, 3u) - offset;
        w[2u * k + 1u] = scale * fields(w1, 2u * k, 3u) - offset;
    }",
        // T2's planes, plus bit i of word 2 as element i's high bit.
        TernFormat::T3 => "    let w0 = word(3u * g);
    let w1 = word(3u * g + 1u);
    let hi = word(3u * g + 2u);
    for (var k = 0u; k < 4u; k++) {
        let h = hi >> (8u * k);
        let ha = vec4<f32>(vec4<u32>(h, h >> 1u, h >> 2u, h >> 3u) & vec4<u32>(1u));
        let hb = vec4<f32>(vec4<u32>(h >> 4u, h >> 5u, h >> 6u, h >> 7u) & vec4<u32>(1u));
        w[2u * k] = scale * (fields(w0, 2u * k, 3u) + 4.0 * ha) - offset;
        w[2u * k + 1u] = scale * (fields(w1, 2u * k, 3u) + 4.0 * hb) - offset;
    }",
        // As Q4_0: low nibbles of the 16 bytes, then the high ones.
        TernFormat::T4 => "    let q = quants[g];
    for (var i = 0u; i < 4u; i++) {
        w[i] = scale * fields(q[i], 0u, 15u) - offset;
        w[i + 4u] = scale * fields(q[i], 4u, 15u) - offset;
    }",
        TernFormat::T8 => "    let q0 = quants[2u * g];
    let q1 = quants[2u * g + 1u];
    for (var i = 0u; i < 4u; i++) {
        w[i] = scale * signed_bytes(q0[i]);
        w[i + 4u] = scale * signed_bytes(q1[i]);
    }",
    };
    format!(
        r#"fn load_block(r: u32, b: u32) -> array<vec4<f32>, 8> {{
    let nb = p.cols / 32u;
    let g = r * nb + b;
    let code_words = (nb * {code_bits}u + 31u) / 32u;
    let bit = b * {code_bits}u;
    let code = scales[r * code_words + bit / 32u] >> (bit % 32u);
    {codes}
    let scale = row_units[2u * r] * sc;
    let offset = row_units[2u * r + 1u] * mn;
    var w: array<vec4<f32>, 8>;
{quants}
    return w;
}}
"#
    )
}

/// The WGSL that reads `ty`: the matrix bindings and `load_block`.
pub fn reader(ty: TensorType) -> String {
    format!("{COMMON}\n{}", load_block(ty))
}
