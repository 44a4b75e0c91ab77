//! WGSL that reads one weight format: `load_block(row, block)` gives the 32 weights of a block, dequantized,
//! as a `Block` of 8 `vec4<f32>` in element order (`w{i}` holds elements `4i..4i+3`).
//!
//! The code is generated fully unrolled, with no arrays indexed at run time: GPU compilers keep such arrays in
//! slow per-thread memory.
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

struct Block {
    w0: vec4<f32>, w1: vec4<f32>, w2: vec4<f32>, w3: vec4<f32>,
    w4: vec4<f32>, w5: vec4<f32>, w6: vec4<f32>, w7: vec4<f32>,
}

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

// The trellis formats' codebook value of the 12-bit window at bit `s` (< 32) of `lo`, continued in `hi`: an
// LCG step of the state, masked to four 7-bit bytes, their sum less 254 (docs/FORMATS.md).
fn trellis_code(lo: u32, hi: u32, s: u32) -> f32 {
    let state = ((lo >> s) | ((hi << 1u) << (31u - s))) & 0xfffu;
    let c = (state * 34038481u + 76625530u) & 0x7f7f7f7fu;
    return f32((c & 0x7fu) + ((c >> 8u) & 0x7fu) + ((c >> 16u) & 0x7fu) + (c >> 24u)) - 254.0;
}

// The four bytes of `w` as signed integers.
fn signed_bytes(w: u32) -> vec4<f32> {
    let v = bitcast<vec4<i32>>(vec4<u32>(w << 24u, w << 16u, w << 8u, w)) >> vec4<u32>(24u);
    return vec4<f32>(v);
}
"#;

/// Appends `l` to `body` as one indented line of a function body.
fn push_line(body: &mut String, l: &str) {
    body.push_str("    ");
    body.push_str(l);
    body.push('\n');
}

/// The components of a `vec4`, by index.
pub(crate) const LANE: [&str; 4] = ["x", "y", "z", "w"];

/// `load_block` for `ty`. `p.cols` is the row length and `g = r * nb + b` the block's index in the matrix.
fn load_block(ty: TensorType) -> String {
    let mut body = String::new();
    let mut line = |l: String| push_line(&mut body, &l);
    match ty {
        TensorType::F32 => {
            for i in 0..8 {
                line(format!("o.w{i} = bitcast<vec4<f32>>(quants[g * 8u + {i}u]);"));
            }
        }
        TensorType::F16 => {
            for k in 0..4 {
                line(format!("let q{k} = quants[g * 4u + {k}u];"));
                line(format!("o.w{} = vec4<f32>(unpack2x16float(q{k}.x), unpack2x16float(q{k}.y));", 2 * k));
                line(format!("o.w{} = vec4<f32>(unpack2x16float(q{k}.z), unpack2x16float(q{k}.w));", 2 * k + 1));
            }
        }
        TensorType::Bf16 => {
            for k in 0..4 {
                line(format!("let q{k} = quants[g * 4u + {k}u];"));
                line(format!("let lo{k} = bitcast<vec4<f32>>(q{k} << vec4<u32>(16u));"));
                line(format!("let hi{k} = bitcast<vec4<f32>>(q{k} & vec4<u32>(0xffff0000u));"));
                line(format!("o.w{} = vec4<f32>(lo{k}.x, hi{k}.x, lo{k}.y, hi{k}.y);", 2 * k));
                line(format!("o.w{} = vec4<f32>(lo{k}.z, hi{k}.z, lo{k}.w, hi{k}.w);", 2 * k + 1));
            }
        }
        // Elements 0..15 are the low nibbles of the block's 16 bytes, 16..31 the high ones. Q4_0 is computed
        // as `d * (q - 8)`, exactly as the reference does.
        TensorType::Q4_0 | TensorType::Q4_1 => {
            line("let q = quants[g];".into());
            line("let d = scale_at(g);".into());
            if ty == TensorType::Q4_1 {
                line("let m = min_at(g);".into());
            }
            for (i, c) in LANE.iter().enumerate() {
                for (half, shift) in [(0, 0), (4, 4)] {
                    let f = format!("fields(q.{c}, {shift}u, 15u)");
                    let v = if ty == TensorType::Q4_0 { format!("d * ({f} - 8.0)") } else { format!("d * {f} + m") };
                    line(format!("o.w{} = {v};", i + half));
                }
            }
        }
        TensorType::Q8_0 => {
            line("let d = scale_at(g);".into());
            line("let q0 = quants[2u * g];".into());
            line("let q1 = quants[2u * g + 1u];".into());
            for (i, c) in LANE.iter().enumerate() {
                line(format!("o.w{i} = d * signed_bytes(q0.{c});"));
                line(format!("o.w{} = d * signed_bytes(q1.{c});", i + 4));
            }
        }
        TensorType::T2 | TensorType::T3 | TensorType::T4 | TensorType::T8 => {
            let f = ty.tern_format().unwrap_or(TernFormat::T4);
            return tern_block(f);
        }
        TensorType::TR2 | TensorType::TR3 | TensorType::TR4 => return trellis_block(ty.quant_bits()),
    }
    format!(
        "fn load_block(r: u32, b: u32) -> Block {{
    let g = r * (p.cols / 32u) + b;
    var o: Block;
{body}    return o;
}}
"
    )
}

/// The trellis formats' scale of block `b` of row `r` (`nb` blocks a row): `D` times the code of its 64 weights.
const TRELLIS_SCALE: &str = "let code_words = (nb * 4u + 31u) / 32u;
    let bit = (b / 2u) * 8u;
    let scale = row_units[2u * r] * f32((scales[r * code_words + bit / 32u] >> (bit % 32u)) & 255u);";

/// `load_block` for a trellis format of `k` bits per weight: element `i`'s state is the 12-bit window at bit
/// `k i` of the block's `k` words and the next one, all loaded once.
fn trellis_block(k: usize) -> String {
    let mut body = String::new();
    let mut line = |l: String| push_line(&mut body, &l);
    for j in 0..=k {
        line(format!("let v{j} = word(base + {j}u);"));
    }
    for quad in 0..8 {
        let codes: Vec<String> = (4 * quad..4 * quad + 4)
            .map(|i| {
                let (j, s) = (k * i / 32, k * i % 32);
                format!("trellis_code(v{j}, v{}, {s}u)", j + 1)
            })
            .collect();
        line(format!("o.w{quad} = scale * vec4<f32>({});", codes.join(", ")));
    }
    format!(
        "fn load_block(r: u32, b: u32) -> Block {{
    let nb = p.cols / 32u;
    {TRELLIS_SCALE}
    let base = r * (nb * {k}u + 1u) + b * {k}u;
    var o: Block;
{body}    return o;
}}
"
    )
}

/// `load_block` for a tern format: `x = D * sc * q - M * mn` (docs/FORMATS.md).
fn tern_block(f: TernFormat) -> String {
    let code_bits = f.code_bits();
    let mut body = String::new();
    let mut line = |l: String| push_line(&mut body, &l);
    // The block's scale and minimum codes.
    match f {
        TernFormat::T2 => line("let sc = f32(code & 15u); let mn = f32((code >> 4u) & 15u);".into()),
        TernFormat::T3 | TernFormat::T4 => line("let sc = f32(code & 255u); let mn = f32((code >> 8u) & 255u);".into()),
        TernFormat::T8 => line("let sc = f32(code & 255u);".into()),
        TernFormat::TR2 | TernFormat::TR3 | TernFormat::TR4 => return trellis_block(f.quant_bits()),
    }
    line("let scale = row_units[2u * r] * sc;".into());
    if f != TernFormat::T8 {
        line("let offset = row_units[2u * r + 1u] * mn;".into());
    }
    match f {
        // Elements 8k..8k+7 are bit plane k of the block's 8 bytes (words 0 and 1); T3 adds bit i of word 2
        // as element i's high bit.
        TernFormat::T2 | TernFormat::T3 => {
            let qw = f.quant_words();
            line(format!("let a = word({qw}u * g);"));
            line(format!("let b1 = word({qw}u * g + 1u);"));
            if f == TernFormat::T3 {
                line("let hi = word(3u * g + 2u);".into());
            }
            for k in 0..4 {
                for (part, src) in [(0, "a"), (1, "b1")] {
                    let mut q = format!("fields({src}, {}u, 3u)", 2 * k);
                    if f == TernFormat::T3 {
                        let s0 = 8 * k + 4 * part;
                        q = format!(
                            "({q} + 4.0 * vec4<f32>(vec4<u32>(hi >> {}u, hi >> {}u, hi >> {}u, hi >> {}u) & vec4<u32>(1u)))",
                            s0,
                            s0 + 1,
                            s0 + 2,
                            s0 + 3
                        );
                    }
                    line(format!("o.w{} = scale * {q} - offset;", 2 * k + part));
                }
            }
        }
        // As Q4_0: low nibbles of the 16 bytes, then the high ones.
        TernFormat::T4 => {
            line("let q = quants[g];".into());
            for (i, c) in LANE.iter().enumerate() {
                line(format!("o.w{i} = scale * fields(q.{c}, 0u, 15u) - offset;"));
                line(format!("o.w{} = scale * fields(q.{c}, 4u, 15u) - offset;", i + 4));
            }
        }
        TernFormat::T8 => {
            line("let q0 = quants[2u * g];".into());
            line("let q1 = quants[2u * g + 1u];".into());
            for (i, c) in LANE.iter().enumerate() {
                line(format!("o.w{i} = scale * signed_bytes(q0.{c});"));
                line(format!("o.w{} = scale * signed_bytes(q1.{c});", i + 4));
            }
        }
        TernFormat::TR2 | TernFormat::TR3 | TernFormat::TR4 => return trellis_block(f.quant_bits()),
    }
    format!(
        "fn load_block(r: u32, b: u32) -> Block {{
    let nb = p.cols / 32u;
    let g = r * nb + b;
    let code_words = (nb * {code_bits}u + 31u) / 32u;
    let bit = b * {code_bits}u;
    let code = scales[r * code_words + bit / 32u] >> (bit % 32u);
    var o: Block;
{body}    return o;
}}
"
    )
}

/// `load_quad(r, q)`: weights `4q..4q+3` of row `r`, for decode products whose lanes take consecutive `vec4`s
/// (so that their activation loads are contiguous).
fn load_quad(ty: TensorType) -> String {
    let body = match ty {
        TensorType::F32 => "return bitcast<vec4<f32>>(quants[r * (p.cols / 4u) + q]);".to_string(),
        TensorType::F16 => "let i = (r * p.cols) / 2u + 2u * q;
    return vec4<f32>(unpack2x16float(word(i)), unpack2x16float(word(i + 1u)));"
            .to_string(),
        TensorType::Bf16 => "let i = (r * p.cols) / 2u + 2u * q;
    let a = word(i);
    let c = word(i + 1u);
    return bitcast<vec4<f32>>(vec4<u32>(a << 16u, a & 0xffff0000u, c << 16u, c & 0xffff0000u));"
            .to_string(),
        // vec4 i of a block: the low (i < 4) or high nibbles of word i % 4.
        TensorType::Q4_0 | TensorType::Q4_1 => {
            let v = if ty == TensorType::Q4_0 { "d * (f - 8.0)" } else { "d * f + min_at(g)" };
            format!(
                "let g = r * (p.cols / 32u) + q / 8u;
    let i = q % 8u;
    let d = scale_at(g);
    let f = fields(quants[g][i % 4u], 4u * (i / 4u), 15u);
    return {v};"
            )
        }
        TensorType::Q8_0 => "let g = r * (p.cols / 32u) + q / 8u;
    let i = q % 8u;
    return scale_at(g) * signed_bytes(quants[2u * g + i / 4u][i % 4u]);"
            .to_string(),
        // Elements 4q..4q+3: windows at bits 4kq.. of the row's stream.
        TensorType::TR2 | TensorType::TR3 | TensorType::TR4 => {
            let k = ty.quant_bits();
            format!(
                "let nb = p.cols / 32u;
    let b = q / 8u;
    {TRELLIS_SCALE}
    let base = r * (nb * {k}u + 1u);
    var v: vec4<f32>;
    for (var t = 0u; t < 4u; t++) {{
        let bit = {k}u * (4u * q + t);
        let j = base + bit / 32u;
        v[t] = trellis_code(word(j), word(j + 1u), bit % 32u);
    }}
    return scale * v;"
            )
        }
        TensorType::T2 | TensorType::T3 | TensorType::T4 | TensorType::T8 => {
            let f = ty.tern_format().unwrap_or(TernFormat::T4);
            let code_bits = f.code_bits();
            let codes = match f {
                TernFormat::T2 => "let sc = f32(code & 15u); let mn = f32((code >> 4u) & 15u);",
                TernFormat::T3 | TernFormat::T4 => "let sc = f32(code & 255u); let mn = f32((code >> 8u) & 255u);",
                _ => "let sc = f32(code & 255u); let mn = 0.0;",
            };
            // vec4 i of the block: elements 4i..4i+3.
            let quants = match f {
                // Plane i / 2 of bytes 4(i % 2)..4(i % 2)+3, that is of word i % 2.
                TernFormat::T2 => "let v = fields(word(2u * g + i % 2u), 2u * (i / 2u), 3u);".to_string(),
                TernFormat::T3 => "let h = word(3u * g + 2u) >> (4u * i);
    let v = fields(word(3u * g + i % 2u), 2u * (i / 2u), 3u) + 4.0 * vec4<f32>(vec4<u32>(h, h >> 1u, h >> 2u, h >> 3u) & vec4<u32>(1u));"
                    .to_string(),
                TernFormat::T4 => "let v = fields(quants[g][i % 4u], 4u * (i / 4u), 15u);".to_string(),
                _ => "let v = signed_bytes(quants[2u * g + i / 4u][i % 4u]);".to_string(),
            };
            format!(
                "let nb = p.cols / 32u;
    let b = q / 8u;
    let g = r * nb + b;
    let i = q % 8u;
    let code_words = (nb * {code_bits}u + 31u) / 32u;
    let bit = b * {code_bits}u;
    let code = scales[r * code_words + bit / 32u] >> (bit % 32u);
    {codes}
    {quants}
    return row_units[2u * r] * sc * v - row_units[2u * r + 1u] * mn;"
            )
        }
    };
    format!("fn load_quad(r: u32, q: u32) -> vec4<f32> {{\n    {body}\n}}\n")
}

/// WGSL for a tern format's block codes: `sc` and `mn` (as f32) of block `b` of row `r`, with `nb` blocks per
/// row, then `scale` (`D * sc`) and `offset` (`M * mn`; 0 for T8).
fn tern_codes(f: TernFormat) -> String {
    let codes = match f {
        TernFormat::T2 => "let sc = f32(code & 15u); let mn = f32((code >> 4u) & 15u);",
        TernFormat::T3 | TernFormat::T4 => "let sc = f32(code & 255u); let mn = f32((code >> 8u) & 255u);",
        TernFormat::T8 | TernFormat::TR2 | TernFormat::TR3 | TernFormat::TR4 => "let sc = f32(code & 255u); let mn = 0.0;",
    };
    if f.is_trellis() {
        return format!("{TRELLIS_SCALE}\n    let offset = 0.0;");
    }
    format!(
        "let code_words = (nb * {bits}u + 31u) / 32u;
    let bit = b * {bits}u;
    let code = scales[r * code_words + bit / 32u] >> (bit % 32u);
    {codes}
    let scale = row_units[2u * r] * sc;
    let offset = row_units[2u * r + 1u] * mn;",
        bits = f.code_bits()
    )
}

/// `slot_dot(r, s)` for decode products that give each lane one quant word at a time: slot `s` of row `r` is
/// word `s % SLOTS` of block `s / SLOTS`, and `slot_dot` is its weights' dot product with the matching elements
/// of the activation row `x` (one token). Each slot decodes its block's scale once for all the weights of its
/// word (8 of a 4-bit format, 16 of a 2- or 3-bit one), so a lane issues one quant load and a few activation
/// loads per word. The formats with such a reader, and their slots per block.
pub fn slot_reader(ty: TensorType) -> Option<(String, u32)> {
    let (slots, prologue, quads): (u32, String, Vec<(String, String)>) = match ty {
        TensorType::Q4_0 | TensorType::Q4_1 => {
            let v = |shift| {
                let f = format!("fields(q, {shift}u, 15u)");
                if ty == TensorType::Q4_0 { format!("d * ({f} - 8.0)") } else { format!("d * {f} + min_at(g)") }
            };
            let prologue = "let d = scale_at(g);\n    let q = word(4u * g + w);".to_string();
            (4, prologue, vec![("w".into(), v(0)), ("w + 4u".into(), v(4))])
        }
        TensorType::T4 => {
            let prologue = format!("{}\n    let q = word(4u * g + w);", tern_codes(TernFormat::T4));
            let v = |shift| format!("scale * fields(q, {shift}u, 15u) - offset");
            (4, prologue, vec![("w".into(), v(0)), ("w + 4u".into(), v(4))])
        }
        // Word w of a block holds bit plane k of bytes 4w..4w+3 at bits 2k: quads 2k + w.
        TensorType::T2 | TensorType::T3 => {
            let f = ty.tern_format().unwrap_or(TernFormat::T2);
            let qw = f.quant_words();
            let mut prologue = format!("{}\n    let q = word({qw}u * g + w);", tern_codes(f));
            if f == TernFormat::T3 {
                prologue += "\n    let hi = word(3u * g + 2u);";
            }
            let quads = (0..4)
                .map(|k| {
                    let mut v = format!("fields(q, {}u, 3u)", 2 * k);
                    if f == TernFormat::T3 {
                        // Element e's high bit is bit e of the third word: quad 2k + w starts at element 8k + 4w.
                        v = format!(
                            "({v} + 4.0 * vec4<f32>((vec4<u32>(hi) >> (vec4<u32>({0}u, {1}u, {2}u, {3}u) + 4u * w)) & vec4<u32>(1u)))",
                            8 * k,
                            8 * k + 1,
                            8 * k + 2,
                            8 * k + 3
                        );
                    }
                    (format!("{}u + w", 2 * k), format!("scale * {v} - offset"))
                })
                .collect();
            (2, prologue, quads)
        }
        _ => return None,
    };
    let terms: Vec<String> = quads.iter().map(|(quad, v)| format!("dot({v}, x[8u * b + {quad}])")).collect();
    let body = format!(
        "fn slot_dot(r: u32, s: u32) -> f32 {{
    let nb = p.cols / 32u;
    let b = s / {slots}u;
    let w = s % {slots}u;
    let g = r * nb + b;
    {prologue}
    return {};
}}
",
        terms.join(" + ")
    );
    Some((format!("{COMMON}\n{body}"), slots))
}

/// `block_i8(r, b, xa, xb, xs)` for decode products on int8 activations: block `b` of row `r` times the same
/// block of a row quantized to int8 (`xa` holds its elements 0..15 packed four to a word, `xb` 16..31, `xs` its
/// scale `d` and `d` times the sum of its quants, as the CPU backend quantizes activations). The quants meet the
/// activations four at a time in `dot4I8Packed` (one instruction where the adapter has integer dot products),
/// and the block's scale (and minimum or offset, through `xs.y`) apply once to the integer sum. `None` for a
/// format without one (the float formats).
pub fn int8_reader(ty: TensorType) -> Option<String> {
    let (prologue, sum) = int8_parts(ty)?;
    let (hoist, combine) = int8_combine(ty);
    let body = format!(
        "fn block_i8(r: u32, b: u32, xa: vec4<u32>, xb: vec4<u32>, xs: vec2<f32>) -> f32 {{
    let nb = p.cols / 32u;
    let g = r * nb + b;
    {prologue}
    let sumi = {};
    {hoist}
    return {combine};
}}
",
        sum.join("\n        + ")
    );
    Some(format!("{COMMON}\n{body}"))
}

/// The WGSL that reads `ty` for prefill products on int8 activations: the matrix bindings and
/// `block_i8_tile(r, b)`, block `b` of row `r` times the same block of each of [`crate::TILED_TOKENS`] tokens
/// staged in the workgroup array `staged` (three `vec4<u32>` a token, as [`int8_reader`] takes them), returned as a
/// `Tile` (`t0`, `t1`, ...). The weights are loaded and their scale decoded once for all the tokens. `None` for
/// a format without an int8 reader.
pub fn int8_tile_reader(ty: TensorType) -> Option<String> {
    let (prologue, sum) = int8_parts(ty)?;
    let (hoist, combine) = int8_combine(ty);
    Some(format!("{COMMON}\n{}", int8_tile(&prologue, &sum, &hoist, &combine)))
}

/// The statements that load block `g`'s quants for [`int8_reader`], and the `dot4I8Packed` terms of its integer
/// dot product with activation words `xa` and `xb`.
fn int8_parts(ty: TensorType) -> Option<(String, Vec<String>)> {
    // The (quant word, activation word) pairs of the block, as WGSL over words of u32 fields that are small
    // non-negative (or, for 8-bit formats, signed) bytes.
    let act = |i: usize| if i < 4 { format!("xa.{}", LANE[i]) } else { format!("xb.{}", LANE[i - 4]) };
    let mut prologue = String::new();
    let mut pairs: Vec<(String, String)> = Vec::new();
    match ty {
        // Word c: low nibbles are elements 4c..4c+3, high nibbles 16 + 4c...
        TensorType::Q4_0 | TensorType::Q4_1 | TensorType::T4 => {
            prologue += "let q = quants[g];\n    let lo = q & vec4<u32>(0x0f0f0f0fu);\n    let hi = (q >> vec4<u32>(4u)) & vec4<u32>(0x0f0f0f0fu);";
            for (i, c) in LANE.iter().enumerate() {
                pairs.push((format!("lo.{c}"), act(i)));
            }
            for (i, c) in LANE.iter().enumerate() {
                pairs.push((format!("hi.{c}"), act(i + 4)));
            }
        }
        TensorType::Q8_0 | TensorType::T8 => {
            prologue += "let q0 = quants[2u * g];\n    let q1 = quants[2u * g + 1u];";
            for (i, c) in LANE.iter().enumerate() {
                pairs.push((format!("q0.{c}"), act(i)));
                pairs.push((format!("q1.{c}"), act(i + 4)));
            }
        }
        // Word w's bit plane k holds elements 8k + 4w..8k + 4w + 3, one per byte; T3's high bits for them are
        // bits 8k + 4w.. of the third word, spread one to a byte by a multiply.
        TensorType::T2 | TensorType::T3 => {
            let qw = if ty == TensorType::T2 { 2 } else { 3 };
            prologue += &format!("let a = word({qw}u * g);\n    let a1 = word({qw}u * g + 1u);");
            if ty == TensorType::T3 {
                prologue += "\n    let hi = word(3u * g + 2u);";
            }
            for k in 0..4 {
                for (w, src) in ["a", "a1"].iter().enumerate() {
                    let mut q = format!("((({src}) >> {}u) & 0x03030303u)", 2 * k);
                    if ty == TensorType::T3 {
                        q = format!("({q} | (((((hi >> {}u) & 15u) * 0x00204081u) & 0x01010101u) << 2u))", 8 * k + 4 * w);
                    }
                    pairs.push((q, act(2 * k + w)));
                }
            }
        }
        _ => return None,
    }
    Some((prologue, pairs.iter().map(|(q, x)| format!("dot4I8Packed({q}, {x})")).collect()))
}

/// The statements that decode block `g`'s scale (and minimum or offset) for [`int8_reader`], and the block's
/// value as an expression of `sumi` (the integer dot product) and `xs` (the activations' scale and scaled sum).
fn int8_combine(ty: TensorType) -> (String, String) {
    match ty {
        TensorType::Q4_0 => ("let d = scale_at(g);".into(), "d * (xs.x * f32(sumi) - 8.0 * xs.y)".into()),
        TensorType::Q4_1 => ("let d = scale_at(g);\n    let m = min_at(g);".into(), "d * xs.x * f32(sumi) + m * xs.y".into()),
        TensorType::Q8_0 => ("let d = scale_at(g);".into(), "d * xs.x * f32(sumi)".into()),
        _ => {
            let f = ty.tern_format().unwrap_or(TernFormat::T4);
            (tern_codes(f), "scale * xs.x * f32(sumi) - offset * xs.y".into())
        }
    }
}

/// `block_i8_tile` of [`int8_tile_reader`], from [`int8_parts`] and [`int8_combine`].
fn int8_tile(prologue: &str, sum: &[String], hoist: &str, combine: &str) -> String {
    let tokens = crate::TILED_TOKENS;
    let fields: Vec<String> = (0..tokens).map(|t| format!("t{t}: f32")).collect();
    let per_token: String = (0..tokens)
        .map(|t| {
            format!(
                "    {{
        let xa = staged[{a}u];
        let xb = staged[{b}u];
        let xs = bitcast<vec2<f32>>(staged[{c}u].xy);
        let sumi = {sum};
        o.t{t} = {combine};
    }}
",
                a = 3 * t,
                b = 3 * t + 1,
                c = 3 * t + 2,
                sum = sum.join(" + ")
            )
        })
        .collect();
    format!(
        "struct Tile {{ {} }}
fn block_i8_tile(r: u32, b: u32) -> Tile {{
    let nb = p.cols / 32u;
    let g = r * nb + b;
    {prologue}
    {hoist}
    var o: Tile;
{per_token}    return o;
}}
",
        fields.join(", ")
    )
}

/// The WGSL that reads `ty`: the matrix bindings, `Block` and `load_block`.
pub fn reader(ty: TensorType) -> String {
    format!("{COMMON}\n{}", load_block(ty))
}

/// The WGSL that reads `ty` a `vec4` at a time: the matrix bindings and `load_quad`.
pub fn quad_reader(ty: TensorType) -> String {
    format!("{COMMON}\n{}", load_quad(ty))
}

/// `dot(block, x[base + 0..8])` as one expression summed left to right, the same in every kernel.
pub(crate) fn block_dot(block: &str, x: impl Fn(usize) -> String) -> String {
    (0..8).map(|i| format!("dot({block}.w{i}, {})", x(i))).collect::<Vec<_>>().join(" + ")
}
