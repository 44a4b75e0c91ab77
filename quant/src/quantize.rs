//! Reference quantizers into GGUF's block encodings (round-to-nearest, the same rules as GGUF's reference
//! implementation), used to build test matrices and to convert float weights.

use half::{bf16, f16};
use tern_core::TensorType;

use crate::gguf_blocks::gguf_bytes;
use crate::{Error, Result};

/// Encodes `data` as `ty` in GGUF's byte layout.
pub fn quantize_gguf(ty: TensorType, data: &[f32]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(gguf_bytes(ty, data.len())?);
    match ty {
        TensorType::F32 => data.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        TensorType::F16 => data.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        TensorType::Bf16 => data.iter().for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        TensorType::Q8_0 => {
            for x in data.chunks_exact(32) {
                let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        TensorType::Q4_0 => {
            for x in data.chunks_exact(32) {
                // The value of largest magnitude maps to -8, so its sign is kept exactly.
                let max = x.iter().fold(0f32, |a, v| if v.abs() > a.abs() { *v } else { a });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(x[j]) | q(x[j + 16]) << 4));
            }
        }
        TensorType::T2
        | TensorType::T3
        | TensorType::T4
        | TensorType::T8
        | TensorType::TR2
        | TensorType::TR3
        | TensorType::TR4 => {
            return Err(Error::Unsupported { op: "GGUF encoding (tern formats quantize through TernMatrix)", ty });
        }
        TensorType::Q4_1 => {
            for x in data.chunks_exact(32) {
                let min = x.iter().copied().fold(f32::INFINITY, f32::min);
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(x[j]) | q(x[j + 16]) << 4));
            }
        }
    }
    Ok(out)
}
