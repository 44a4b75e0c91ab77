//! GGUF's array-of-structures block encodings, decoded directly: the reference for everything else.

use half::{bf16, f16};
use tern_core::TensorType;

use crate::{Error, Result};

/// Bytes that `elements` elements of `ty` take in a GGUF file.
pub(crate) fn gguf_bytes(ty: TensorType, elements: usize) -> Result<usize> {
    let block = ty.block_len();
    let block_bytes = ty.gguf_block_bytes().ok_or(Error::Unsupported { op: "GGUF encoding", ty })?;
    if !elements.is_multiple_of(block) {
        return Err(Error::RowLength { ty, cols: elements, block });
    }
    Ok(elements / block * block_bytes)
}

pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Decodes `out.len()` elements of `ty` from GGUF-encoded `bytes` into f32.
pub fn dequantize_gguf(ty: TensorType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let expected = gguf_bytes(ty, out.len())?;
    if bytes.len() != expected {
        return Err(Error::Length { ty, elements: out.len(), expected, actual: bytes.len() });
    }
    match ty {
        TensorType::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        TensorType::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        TensorType::Bf16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        TensorType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    o[j] = d * ((b[2 + j] & 0x0f) as i32 - 8) as f32;
                    o[j + 16] = d * ((b[2 + j] >> 4) as i32 - 8) as f32;
                }
            }
        }
        TensorType::T2
        | TensorType::T3
        | TensorType::T4
        | TensorType::T8
        | TensorType::TR2
        | TensorType::TR3
        | TensorType::TR4 => {
            return Err(Error::Unsupported { op: "GGUF decoding (tern formats load as TernMatrix)", ty });
        }
        TensorType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    o[j] = d * (b[4 + j] & 0x0f) as f32 + m;
                    o[j + 16] = d * (b[4 + j] >> 4) as f32 + m;
                }
            }
        }
        TensorType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    o[j] = d * (b[2 + j] as i8) as f32;
                }
            }
        }
    }
    Ok(())
}
