//! Round trips and RMSE bounds for every format, against the scalar GGUF-encoding reference.

use proptest::prelude::*;
use tern_quant::{PackedMatrix, TensorType, dequantize_gguf, quantize_gguf};

fn rmse(a: &[f32], b: &[f32]) -> f32 {
    (a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f32>() / a.len() as f32).sqrt()
}

fn rms(a: &[f32]) -> f32 {
    (a.iter().map(|x| x * x).sum::<f32>() / a.len() as f32).sqrt()
}

/// Relative RMSE bound per type for Gaussian-like data: Q4 has 16 levels across the block's range (about
/// ±2.5 sigma for 32 samples), so its uniform-rounding error is near 5/16/sqrt(12) ~ 0.09 of sigma, Q8 about
/// sixteen times smaller; bf16 keeps 8 mantissa bits, f16 11.
fn bound(ty: TensorType) -> f32 {
    match ty {
        TensorType::F32 => 0.0,
        TensorType::F16 => 1e-3,
        TensorType::Bf16 => 5e-3,
        TensorType::Q8_0 => 0.01,
        TensorType::Q4_0 => 0.15,
        TensorType::Q4_1 => 0.12,
        other => unreachable!("{other} is not a GGUF type"),
    }
}

fn values() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (1usize..5, 1usize..6).prop_flat_map(|(rows, blocks)| {
        let n = rows * blocks * 32;
        (Just(rows), Just(blocks * 32), prop::collection::vec(-4.0f32..4.0, n))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn packed_rows_equal_gguf_reference((rows, cols, data) in values()) {
        for ty in TensorType::ALL {
            let bytes = quantize_gguf(ty, &data).unwrap();
            let mut reference = vec![0f32; data.len()];
            dequantize_gguf(ty, &bytes, &mut reference).unwrap();
            let packed = PackedMatrix::from_gguf(ty, rows, cols, &bytes).unwrap();
            packed.view().validate().unwrap();
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                packed.dequantize_row(r, &mut row);
                prop_assert_eq!(&row[..], &reference[r * cols..(r + 1) * cols], "{} row {}", ty, r);
            }
            let err = rmse(&data, &reference);
            prop_assert!(err <= bound(ty) * rms(&data).max(1e-3) + 1e-6, "{} rmse {} rms {}", ty, err, rms(&data));
        }
    }
}

#[test]
fn rmse_bounds_on_gaussian_like_data() {
    // A deterministic bell-shaped sample (sum of uniforms), 64 rows of 576 like SmolLM2's width.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let data: Vec<f32> = (0..64 * 576).map(|_| (0..4).map(|_| uniform()).sum::<f32>() * 0.05).collect();
    for ty in TensorType::ALL {
        let bytes = quantize_gguf(ty, &data).unwrap();
        let mut back = vec![0f32; data.len()];
        dequantize_gguf(ty, &bytes, &mut back).unwrap();
        let rel = rmse(&data, &back) / rms(&data);
        assert!(rel <= bound(ty), "{ty}: relative rmse {rel} above {}", bound(ty));
        if ty.is_quantized() {
            assert!(rel > 0.0, "{ty}: lossy format reproduced data exactly, suspicious");
        }
    }
}

#[test]
fn wrong_lengths_are_errors() {
    let err = dequantize_gguf(TensorType::Q4_1, &[0u8; 19], &mut [0f32; 32]).unwrap_err();
    assert!(err.to_string().contains("must be 20 bytes, got 19"), "{err}");
    let err = PackedMatrix::from_gguf(TensorType::Q8_0, 1, 48, &[0u8; 51]).unwrap_err();
    assert!(err.to_string().contains("multiple of 32"), "{err}");
    assert!(dequantize_gguf(TensorType::Q4_0, &[0u8; 18], &mut [0f32; 31]).is_err());
}

#[test]
fn bits_per_weight_are_exact() {
    assert_eq!(TensorType::Q4_0.bits_per_weight(576), 4.5);
    assert_eq!(TensorType::Q4_1.bits_per_weight(576), 5.0);
    assert_eq!(TensorType::Q8_0.bits_per_weight(576), 8.5);
    let m = PackedMatrix::from_f32(TensorType::Q4_1, 2, 64, &[0.5; 128]).unwrap();
    assert_eq!(m.bytes() * 8, 2 * 64 * 5);
}
