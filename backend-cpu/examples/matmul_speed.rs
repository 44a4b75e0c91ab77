//! Speed of the quantized matrix products on this CPU, for kernel work: the model's shapes, one token (decode)
//! and 64 tokens (prefill), with weights streamed from memory.
//! Run: cargo run --release -p tern-backend-cpu --example matmul_speed [threads] [scalar|avx2|avx512-vnni]
//! (the level defaults to the best this CPU has).

use std::time::Instant;

use tern_backend_cpu::{CpuBackend, CpuMatrix, SimdLevel};
use tern_core::{Backend, TensorType};
use tern_quant::{PackedMatrix, TernFormat, TernMatrix};

type Error = Box<dyn std::error::Error>;

fn data(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect()
}

/// Times products with a `rows x cols` matrix of `name` taking `bytes`; `upload` makes one copy of it. Enough
/// copies are cycled through to stream 128 MiB, as a forward pass streams its weights from memory, not cache.
fn measure(
    be: &CpuBackend,
    name: &str,
    rows: usize,
    cols: usize,
    bytes: usize,
    upload: impl Fn() -> Result<CpuMatrix, Error>,
) -> Result<(), Error> {
    let copies = ((128 << 20) / bytes).max(1);
    let ws = (0..copies).map(|_| upload()).collect::<Result<Vec<_>, _>>()?;
    let x = data(64, cols);
    for tokens in [1, 64] {
        let x = be.upload(&x[..tokens * cols], tokens, cols)?;
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
            "{:>6} {name:>4} {rows:>5}x{cols:<5} {tokens:>3} tok: {:>8.1} us  {:>6.2} GB/s weights  {:>7.1} GMAC/s",
            be.level().name(),
            best * 1e6,
            bytes as f64 / best / 1e9,
            (rows * cols * tokens) as f64 / best / 1e9
        );
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let threads: usize = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let be = match std::env::args().nth(2) {
        None => CpuBackend::new(threads)?,
        Some(name) => {
            let level = SimdLevel::available().into_iter().find(|l| l.name() == name);
            let level = level.ok_or_else(|| format!("unknown or unavailable SIMD level {name:?} on this CPU"))?;
            CpuBackend::with_level(threads, level)?
        }
    };
    for (ty, rows, cols) in [(TensorType::Q4_1, 1536, 576), (TensorType::Q4_1, 576, 1536), (TensorType::Q8_0, 49152, 576)] {
        let packed = PackedMatrix::from_f32(ty, rows, cols, &data(rows, cols))?;
        measure(&be, &ty.to_string(), rows, cols, packed.bytes(), || Ok(be.upload_matrix(packed.view())?))?;
    }
    for f in TernFormat::ALL {
        let (rows, cols) = (1536, 576);
        let t = TernMatrix::quantize(f, rows, cols, &data(rows, cols), None)?;
        measure(&be, f.name(), rows, cols, t.bytes(), || Ok(be.upload_matrix(t.view())?))?;
    }
    Ok(())
}
