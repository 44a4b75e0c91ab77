//! WGSL that reads one weight format: `load_chunk(row, chunk)` gives 8 weights of a row, dequantized, as two
//! `vec4<f32>` and the `vec4` indices (within the row) of the activations they multiply.
//!
//! Every format is cut into chunks of 8 weights, 4 per block of 32 (which 8 depends on the packing), so one kernel body serves them all. The
//! matrix is bound as four word arrays, in `tern-core::MatrixView`'s layout: `quants` (binding 1), `scales`
//! (2: f16 block scales, or tern's block codes), `mins` (3: f16 block minimums) and `row_units` (4: tern's
//! per-row `D`, `M`). A format that lacks a part reads nothing from it.

use tern_core::{TensorType, TernFormat};

/// The bindings and helpers every format shares.
const COMMON: &str = r#"
@group(0) @binding(1) var<storage, read> quants: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> mins: array<u32>;
@group(0) @binding(4) var<storage, read> row_units: array<f32>;

struct Chunk {
    a: vec4<f32>,
    b: vec4<f32>,
    // vec4 indices within the row of the activations `a` and `b` multiply.
    ia: u32,
    ib: u32,
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

/// `load_chunk` for `ty`. `cols` is the row length, passed as the kernel's `p.cols`.
fn load_chunk(ty: TensorType) -> String {
    let body = match ty {
        TensorType::F32 => r#"
    let base = r * p.cols + 8u * c;
    let a = vec4<f32>(bitcast<f32>(quants[base]), bitcast<f32>(quants[base + 1u]), bitcast<f32>(quants[base + 2u]), bitcast<f32>(quants[base + 3u]));
    let b = vec4<f32>(bitcast<f32>(quants[base + 4u]), bitcast<f32>(quants[base + 5u]), bitcast<f32>(quants[base + 6u]), bitcast<f32>(quants[base + 7u]));
    return Chunk(a, b, 2u * c, 2u * c + 1u);"#
            .to_string(),
        TensorType::F16 => r#"
    let base = (r * p.cols + 8u * c) / 2u;
    let a = vec4<f32>(unpack2x16float(quants[base]), unpack2x16float(quants[base + 1u]));
    let b = vec4<f32>(unpack2x16float(quants[base + 2u]), unpack2x16float(quants[base + 3u]));
    return Chunk(a, b, 2u * c, 2u * c + 1u);"#
            .to_string(),
        TensorType::Bf16 => r#"
    let base = (r * p.cols + 8u * c) / 2u;
    let w = vec4<u32>(quants[base], quants[base + 1u], quants[base + 2u], quants[base + 3u]);
    let lo = bitcast<vec4<f32>>(w << vec4<u32>(16u));
    let hi = bitcast<vec4<f32>>(w & vec4<u32>(0xffff0000u));
    return Chunk(vec4<f32>(lo.x, hi.x, lo.y, hi.y), vec4<f32>(lo.z, hi.z, lo.w, hi.w), 2u * c, 2u * c + 1u);"#
            .to_string(),
        // Chunk k of a block reads its word k: the low nibbles are elements 4k..4k+3, the high ones 16+4k..16+4k+3.
        TensorType::Q4_0 | TensorType::Q4_1 => {
            let weight = |q: &str| if ty == TensorType::Q4_0 { format!("d * ({q} - 8.0)") } else { format!("d * {q} + min_at(blk)") };
            let (a, b) = (weight("fields(word, 0u, 15u)"), weight("fields(word, 4u, 15u)"));
            format!(
                r#"
    let blk = r * (p.cols / 32u) + c / 4u;
    let word = quants[blk * 4u + c % 4u];
    let d = scale_at(blk);
    let first = c / 4u * 8u + c % 4u;
    return Chunk({a}, {b}, first, first + 4u);"#
            )
        }
        TensorType::Q8_0 => r#"
    let blk = r * (p.cols / 32u) + c / 4u;
    let w = blk * 8u + 2u * (c % 4u);
    let d = scale_at(blk);
    return Chunk(d * signed_bytes(quants[w]), d * signed_bytes(quants[w + 1u]), 2u * c, 2u * c + 1u);"#
            .to_string(),
        TensorType::T2 | TensorType::T3 | TensorType::T4 | TensorType::T8 => {
            let f = ty.tern_format().unwrap_or(TernFormat::T4);
            return tern_chunk(f);
        }
    };
    format!("fn load_chunk(r: u32, c: u32) -> Chunk {{{body}\n}}\n")
}

/// `load_chunk` for a tern format: `x = D * sc * q - M * mn` (docs/FORMATS.md).
fn tern_chunk(f: TernFormat) -> String {
    let qw = f.quant_words();
    let code_bits = f.code_bits();
    // The block's scale and minimum codes.
    let codes = match f {
        TernFormat::T2 => "let sc = f32(code & 15u); let mn = f32((code >> 4u) & 15u);",
        TernFormat::T3 | TernFormat::T4 => "let sc = f32(code & 255u); let mn = f32((code >> 8u) & 255u);",
        TernFormat::T8 => "let sc = f32(code & 255u); let mn = 0.0;",
    };
    // The quants of chunk k (elements 8k..8k+7 of the block) from the block's words at `w`.
    let quants = match f {
        // Bit plane k of the block's 8 bytes.
        TernFormat::T2 => "let qa = fields(quants[w], 2u * k, 3u); let qb = fields(quants[w + 1u], 2u * k, 3u);",
        // T2's planes, plus bits 8k..8k+7 of word 2 as the high bit.
        TernFormat::T3 => {
            "let hi = quants[w + 2u] >> (8u * k);
    let qa = fields(quants[w], 2u * k, 3u) + 4.0 * vec4<f32>(vec4<u32>(hi, hi >> 1u, hi >> 2u, hi >> 3u) & vec4<u32>(1u));
    let qb = fields(quants[w + 1u], 2u * k, 3u) + 4.0 * vec4<f32>(vec4<u32>(hi >> 4u, hi >> 5u, hi >> 6u, hi >> 7u) & vec4<u32>(1u));"
        }
        // As Q4_0: word k's low nibbles are elements 4k..4k+3, its high ones 16+4k..16+4k+3.
        TernFormat::T4 => "let qa = fields(quants[w + k], 0u, 15u); let qb = fields(quants[w + k], 4u, 15u);",
        TernFormat::T8 => "let qa = signed_bytes(quants[w + 2u * k]); let qb = signed_bytes(quants[w + 2u * k + 1u]);",
    };
    // Where the chunk's two groups of four sit in the row, in vec4s.
    let (first, second) = match f {
        TernFormat::T4 => ("let first = b * 8u + k;", 4),
        _ => ("let first = b * 8u + 2u * k;", 1),
    };
    format!(
        r#"fn load_chunk(r: u32, c: u32) -> Chunk {{
    let nb = p.cols / 32u;
    let b = c / 4u;
    let k = c % 4u;
    let code_words = (nb * {code_bits}u + 31u) / 32u;
    let bit = b * {code_bits}u;
    let code = scales[r * code_words + bit / 32u] >> (bit % 32u);
    {codes}
    let scale = row_units[2u * r] * sc;
    let offset = row_units[2u * r + 1u] * mn;
    let w = (r * nb + b) * {qw}u;
    {quants}
    {first}
    return Chunk(scale * qa - offset, scale * qb - offset, first, first + {second}u);
}}
"#
    )
}

/// The WGSL that reads `ty`: the matrix bindings, `Chunk` and `load_chunk`.
pub fn reader(ty: TensorType) -> String {
    format!("{COMMON}\n{}", load_chunk(ty))
}
