//! Speed of the quantized matrix products on this CPU, for kernel work: the model's shapes, one token (decode)
//! and 64 tokens (prefill), with weights streamed from memory. Run: cargo run --release -p tern-backend-cpu --example matmul_speed [threads]

use std::time::Instant;

use tern_backend_cpu::{CpuBackend, SimdLevel};
use tern_core::{Backend, TensorType};
use tern_quant::{PackedMatrix, TernFormat, TernMatrix};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let threads: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let shapes = [(TensorType::Q4_1, 1536, 576), (TensorType::Q4_1, 576, 1536), (TensorType::Q8_0, 49152, 576)];
    let tern_shapes = [(TernFormat::T2, 1536, 576), (TernFormat::T3, 1536, 576), (TernFormat::T4, 1536, 576), (TernFormat::T8, 1536, 576)];
    for level in SimdLevel::available().into_iter().rev().take(1) {
        let be = CpuBackend::with_level(threads, level)?;
        for (ty, rows, cols) in shapes {
            let data: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
            let packed = PackedMatrix::from_f32(ty, rows, cols, &data)?;
            // Enough copies to stream 128 MiB, as a forward pass streams its weights from memory, not cache.
            let copies = ((128 << 20) / packed.bytes()).max(1);
            let ws = (0..copies).map(|_| be.upload_matrix(packed.view())).collect::<Result<Vec<_>, _>>()?;
            for tokens in [1, 64] {
                let x = be.upload(&data[..tokens * cols], tokens, cols)?;
                let mut out = be.zeros(0, 0)?;
                let bytes = rows * cols * ty.gguf_block_bytes() / ty.block_len();
                let reps = (2_000_000_000 / (rows * cols * tokens)).clamp(3, 2000);
                let mut best = f64::MAX;
                for _ in 0..5 {
                    let t = Instant::now();
                    for i in 0..reps {
                        be.install(|| be.matmul(&ws[i % copies], &x, &mut out))?;
                    }
                    best = best.min(t.elapsed().as_secs_f64() / reps as f64);
                }
                println!(
                    "{:>6} {ty:?} {rows:>5}x{cols:<5} {tokens:>3} tok: {:>8.1} us  {:>6.2} GB/s weights  {:>7.1} GMAC/s",
                    level.name(),
                    best * 1e6,
                    bytes as f64 / best / 1e9,
                    (rows * cols * tokens) as f64 / best / 1e9
                );
            }
        }
    }
    // tern's formats, the same way.
    let be = CpuBackend::new(threads)?;
    for (f, rows, cols) in tern_shapes {
        let data: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let t = TernMatrix::quantize(f, rows, cols, &data, None)?;
        let copies = ((128 << 20) / t.bytes()).max(1);
        let ws = (0..copies).map(|_| be.upload_tern(&t)).collect::<Result<Vec<_>, _>>()?;
        for tokens in [1, 64] {
            let x = be.upload(&data[..tokens * cols], tokens, cols)?;
            let mut out = be.zeros(0, 0)?;
            let reps = (2_000_000_000 / (rows * cols * tokens)).clamp(3, 2000);
            let mut best = f64::MAX;
            for _ in 0..5 {
                let start = Instant::now();
                for i in 0..reps {
                    be.install(|| be.matmul(&ws[i % copies], &x, &mut out))?;
                }
                best = best.min(start.elapsed().as_secs_f64() / reps as f64);
            }
            println!(
                "{:>6} {:>4} {rows:>5}x{cols:<5} {tokens:>3} tok: {:>8.1} us  {:>6.2} GB/s weights  {:>7.1} GMAC/s",
                be.level().name(),
                f.name(),
                best * 1e6,
                t.bytes() as f64 / best / 1e9,
                (rows * cols * tokens) as f64 / best / 1e9
            );
        }
    }
    Ok(())
}
