//! Times each op of a SmolLM2-sized decode step on the WebGPU backend (one op per submit, read back):
//! `cargo run --release -p tern-backend-webgpu --example op_speed [REPEATS] [sample]` (`sample`: only the
//! sampling kernels).

use std::time::Instant;

use tern_backend_webgpu::{AdapterChoice, KernelChoice, WebGpuBackend};
use tern_core::{AttentionParams, Backend, RopeParams, RopeStyle, TensorType};
use tern_quant::PackedMatrix;

/// Values spread over [-1, 1), the same every run.
fn spread_values(n: usize) -> Vec<f32> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let repeats: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    let be = WebGpuBackend::new(AdapterChoice::Any)?;
    println!("adapter: {} ({})", be.adapter().name, be.adapter().api);
    if std::env::args().nth(2).as_deref() == Some("sample") {
        return sampling(&be);
    }
    let time = |name: &str, f: &mut dyn FnMut() -> tern_core::Result<()>| -> tern_core::Result<()> {
        f()?;
        let t = Instant::now();
        for _ in 0..repeats {
            f()?;
        }
        println!("{name:<32} {:>10.1} us", t.elapsed().as_secs_f64() * 1e6 / repeats as f64);
        Ok(())
    };
    let x = be.upload(&vec![0.5f32; 576], 1, 576)?;
    let mut out = be.zeros(0, 0)?;
    time("empty read", &mut || be.read(&x).map(|_| ()))?;
    for (rows, cols) in [(576, 576), (1536, 576), (576, 1536), (49152, 576)] {
        let w = PackedMatrix::from_f32(TensorType::Q4_1, rows, cols, &vec![0.25f32; rows * cols])?;
        let m = be.upload_matrix(w.view())?;
        let xin = be.upload(&vec![0.5f32; cols], 1, cols)?;
        time(&format!("matmul q4_1 {rows}x{cols}"), &mut || {
            be.matmul(&m, &xin, &mut out)?;
            be.read(&out).map(|_| ())
        })?;
    }
    let weight = be.upload(&vec![1.0f32; 576], 1, 576)?;
    time("rms_norm 576", &mut || {
        be.rms_norm(&x, &weight, 1e-5, &mut out)?;
        be.read(&out).map(|_| ())
    })?;
    let mut q = be.upload(&vec![0.5f32; 576], 1, 576)?;
    let p = RopeParams { n_heads: 9, head_dim: 64, rot_dim: 64, freq_base: 10000.0, style: RopeStyle::Interleaved, pos0: 10 };
    time("rope 9x64", &mut || {
        be.rope(&mut q, &p)?;
        be.read(&q).map(|_| ())
    })?;
    let kv = be.upload(&vec![0.1f32; 256 * 192], 256, 192)?;
    for pos0 in [10, 200] {
        let a = AttentionParams { n_heads: 9, n_kv_heads: 3, head_dim: 64, pos0, scale: 0.125 };
        time(&format!("attention at {pos0}"), &mut || {
            be.attention(&q, &kv, &kv, &a, &mut out)?;
            be.read(&out).map(|_| ())
        })?;
    }
    let g = be.upload(&vec![0.5f32; 1536], 1, 1536)?;
    time("silu_mul 1536", &mut || {
        be.silu_mul(&g, &g, &mut out)?;
        be.read(&out).map(|_| ())
    })?;
    // The small ops of one 7B decode step (Llama 2 7B: width 4096, 32 heads of 128, FFN 11008), 100 of each
    // per submit so that the readback does not count.
    {
        let per = |name: &str, f: &mut dyn FnMut() -> tern_core::Result<()>| -> tern_core::Result<()> {
            f()?;
            be.read(&x)?;
            let t = Instant::now();
            for _ in 0..100 {
                f()?;
            }
            be.read(&x)?;
            println!("7b {name:<28} {:>8.1} us", t.elapsed().as_secs_f64() * 1e6 / 100.0);
            Ok(())
        };
        let h = be.upload(&vec![0.5f32; 4096], 1, 4096)?;
        let g = be.upload(&vec![1.0f32; 4096], 1, 4096)?;
        let mut o = be.zeros(0, 0)?;
        per("rms_norm 4096", &mut || be.rms_norm(&h, &g, 1e-5, &mut o))?;
        let mut q = be.upload(&vec![0.5f32; 4096], 1, 4096)?;
        let rp =
            RopeParams { n_heads: 32, head_dim: 128, rot_dim: 128, freq_base: 10000.0, style: RopeStyle::Interleaved, pos0: 64 };
        per("rope 32x128", &mut || be.rope(&mut q, &rp))?;
        let mut cache = be.zeros(512, 4096)?;
        per("write_rows 4096", &mut || be.write_rows(&h, &mut cache, 64))?;
        for pos0 in [64, 448] {
            let a = AttentionParams { n_heads: 32, n_kv_heads: 32, head_dim: 128, pos0, scale: 0.088 };
            per(&format!("attention 32x128 at {pos0}"), &mut || be.attention(&q, &cache, &cache, &a, &mut o))?;
        }
        let f = be.upload(&vec![0.5f32; 11008], 1, 11008)?;
        per("silu_mul 11008", &mut || be.silu_mul(&f, &f, &mut o))?;
        let mut acc = be.upload(&vec![0.0f32; 4096], 1, 4096)?;
        per("add 4096", &mut || be.add(&mut acc, &h))?;
    }
    // Attention with the tiles' reductions in workgroup-memory trees, and by subgroup operations.
    for reductions in [false, true] {
        if reductions && !be.adapter().subgroups {
            continue;
        }
        let mut k = KernelChoice::for_adapter(be.adapter());
        k.subgroup_reductions = reductions;
        let b = WebGpuBackend::with_kernels(AdapterChoice::Any, Some(k))?;
        let q = b.upload(&vec![0.5f32; 4096], 1, 4096)?;
        let cache = b.upload(&spread_values(512 * 4096), 512, 4096)?;
        let mut o = b.zeros(0, 0)?;
        for pos0 in [64, 448] {
            let a = AttentionParams { n_heads: 32, n_kv_heads: 32, head_dim: 128, pos0, scale: 0.088 };
            b.attention(&q, &cache, &cache, &a, &mut o)?;
            b.read(&o)?;
            let t = Instant::now();
            for _ in 0..100 {
                b.attention(&q, &cache, &cache, &a, &mut o)?;
            }
            b.read(&o)?;
            println!(
                "7b attention 32x128 at {pos0}, subgroup reductions {reductions}: {:.1} us",
                t.elapsed().as_secs_f64() * 1e4
            );
        }
    }
    sampling(&be)?;
    let small = be.upload(&[1.0f32; 16], 1, 16)?;
    let mut acc = be.upload(&[0.0f32; 16], 1, 16)?;
    time("1000 adds of 16, one read", &mut || {
        for _ in 0..1000 {
            be.add(&mut acc, &small)?;
        }
        be.read(&acc).map(|_| ())
    })?;
    let t = Instant::now();
    for _ in 0..1000 {
        be.add(&mut acc, &small)?;
    }
    let recorded = t.elapsed();
    // `read_begin` ends the pass and submits: wgpu checks and encodes the recorded dispatches there, on the CPU.
    let reading = be.read_begin(&acc)?;
    let submitted = t.elapsed();
    be.read_finish(reading)?;
    println!(
        "{:<32} {:>10.1} us (recording: {:.1} us per op; ending the pass and submitting: {:.1} us per op)",
        "1000 adds",
        t.elapsed().as_secs_f64() * 1e6,
        recorded.as_secs_f64() * 1e3,
        (submitted - recorded).as_secs_f64() * 1e3
    );
    // Decode kernel variants: (workgroup, lanes, rows, unroll, slots, int8, subgroup size).
    let mut choices = vec![
        (64, 32, 2, 8, true, false, None),
        (64, 32, 2, 8, false, true, None),
        (128, 32, 2, 8, false, true, None),
        (128, 64, 2, 8, false, true, None),
        (256, 64, 2, 8, false, true, None),
        (256, 64, 2, 16, false, true, None),
        (256, 64, 4, 8, false, true, None),
        (256, 64, 1, 8, false, true, None),
        (256, 128, 2, 8, false, true, None),
        (256, 32, 4, 8, false, true, None),
        (256, 256, 4, 4, false, true, None),
    ];
    if let Some(size) = be.adapter().subgroup_size {
        choices.push((64, size, 1, 4, false, false, Some(size)));
    }
    // The matrices, packed once.
    let shapes = [(4096, 4096), (11008, 4096), (4096, 11008)];
    let q4: Vec<PackedMatrix> = shapes
        .iter()
        .map(|&(r, c)| PackedMatrix::from_f32(TensorType::Q4_0, r, c, &vec![0.25f32; r * c]))
        .collect::<Result<_, _>>()?;
    let tern: Vec<tern_quant::TernMatrix> = [tern_core::TernFormat::T4, tern_core::TernFormat::T2]
        .iter()
        .flat_map(|&f| shapes.iter().map(move |&(r, c)| tern_quant::TernMatrix::quantize(f, r, c, &spread_values(r * c), None)))
        .collect::<Result<_, _>>()?;
    let packed: Vec<(tern_core::MatrixView<'_>, usize)> =
        q4.iter().map(|m| (m.view(), m.bytes())).chain(tern.iter().map(|m| (m.view(), m.bytes()))).collect();
    for &(workgroup, lanes, rows, unroll, slots, int8, subgroup_size) in &choices {
        let k = KernelChoice {
            lanes,
            rows,
            unroll,
            workgroup,
            slots,
            tiled: true,
            tiled_rows: 2,
            subgroup_size,
            subgroup_reductions: false,
            int8,
            shader_f16: false,
        };
        let be = WebGpuBackend::with_kernels(AdapterChoice::Any, Some(k))?;
        println!(
            "decode kernels: workgroups of {workgroup}, {lanes} lanes on {rows} rows, unrolled {unroll}, slots {slots}, \
             int8 {int8}, subgroups {subgroup_size:?}"
        );
        let mut out = be.zeros(0, 0)?;
        for (view, bytes) in &packed {
            let (ty, r, c) = (view.ty, view.rows, view.cols);
            let m = be.upload_matrix(*view)?;
            let xin = be.upload(&vec![0.5f32; c], 1, c)?;
            for _ in 0..3 {
                be.matmul(&m, &xin, &mut out)?;
            }
            be.read(&out)?;
            let n = 100;
            let t = Instant::now();
            for _ in 0..n {
                be.matmul(&m, &xin, &mut out)?;
            }
            be.read(&out)?;
            let s = t.elapsed().as_secs_f64();
            // The product kernel's own time on the GPU, from timestamps (where the adapter has them).
            let gpu = if be.start_profiling().is_ok() {
                for _ in 0..n {
                    be.matmul(&m, &xin, &mut out)?;
                }
                be.read(&out)?;
                let p = be.stop_profiling()?;
                p.kernels.iter().find(|k| k.label.starts_with("matvec")).map(|k| k.total_us / k.calls as f64)
            } else {
                None
            };
            let gpu = gpu.map_or(String::new(), |us| format!("; kernel {us:.1} us, {:.0} GB/s", *bytes as f64 / us / 1e3));
            println!("  {ty} {r}x{c}: {:.1} us, {:.0} GB/s{gpu}", s * 1e6 / n as f64, *bytes as f64 * n as f64 / s / 1e9);
        }
    }
    // Prefill products of 512 tokens.
    {
        let mut out = be.zeros(0, 0)?;
        for (view, _) in &packed {
            let (ty, r, c) = (view.ty, view.rows, view.cols);
            let m = be.upload_matrix(*view)?;
            let xin = be.upload(&spread_values(512 * c), 512, c)?;
            be.matmul(&m, &xin, &mut out)?;
            be.read(&out)?;
            let n = 10;
            let t = Instant::now();
            for _ in 0..n {
                be.matmul(&m, &xin, &mut out)?;
            }
            be.read(&out)?;
            let s = t.elapsed().as_secs_f64() / n as f64;
            println!(
                "prefill {ty} {r}x{c} by 512 tokens: {:.1} us, {:.1} TFLOP/s",
                s * 1e6,
                2.0 * (r * c * 512) as f64 / s / 1e12
            );
        }
    }
    for (rows, cols) in [(4096, 4096), (11008, 4096), (4096, 11008)] {
        for ty in [TensorType::Q4_0, TensorType::Q8_0] {
            let w = PackedMatrix::from_f32(ty, rows, cols, &vec![0.25f32; rows * cols])?;
            let m = be.upload_matrix(w.view())?;
            let xin = be.upload(&vec![0.5f32; cols], 1, cols)?;
            let n = 20;
            time(&format!("{n} matmuls {ty} {rows}x{cols}"), &mut || {
                for _ in 0..n {
                    be.matmul(&m, &xin, &mut out)?;
                }
                be.read(&out).map(|_| ())
            })?;
            let bytes = w.bytes() as f64 * n as f64;
            let t = Instant::now();
            for _ in 0..n {
                be.matmul(&m, &xin, &mut out)?;
            }
            be.read(&out)?;
            println!("{:<32} {:>10.1} GB/s", "  weights read", bytes / t.elapsed().as_secs_f64() / 1e9);
        }
    }
    let w = PackedMatrix::from_f32(TensorType::Q4_1, 576, 576, &vec![0.25f32; 576 * 576])?;
    let m = be.upload_matrix(w.view())?;
    time("100 matmuls 576x576, one read", &mut || {
        for _ in 0..100 {
            be.matmul(&m, &x, &mut out)?;
        }
        be.read(&out).map(|_| ())
    })?;
    Ok(())
}

/// Sampling a token from a row of logits: greedy, and top-k 40 at temperature 0.8.
fn sampling(be: &WebGpuBackend) -> Result<(), Box<dyn std::error::Error>> {
    for vocab in [32000, 128256] {
        let logits = be.upload(&spread_values(vocab), 1, vocab)?;
        let mut token = be.zeros(0, 0)?;
        for (name, s) in [
            ("greedy", tern_core::TokenSampling::GREEDY),
            ("top-k 40", tern_core::TokenSampling { temperature: 0.8, top_k: 40, top_p: 0.95, draw: 0.5 }),
        ] {
            be.sample(&logits, &s, &mut token)?;
            be.read(&token)?;
            let t = Instant::now();
            for _ in 0..100 {
                be.sample(&logits, &s, &mut token)?;
            }
            be.read(&token)?;
            println!("sample {name} of {vocab}: {:.1} us", t.elapsed().as_secs_f64() * 1e4);
        }
    }
    Ok(())
}
