//! The conformance suite (`tern-conformance`) on the WebGPU backend: on whatever adapter wgpu finds, Mesa's
//! lavapipe in CI (installed by `scripts/test.sh`).

use std::sync::{Arc, OnceLock};

use tern_backend_webgpu::{AdapterChoice, KernelChoice, WebGpuBackend};

/// The adapter's own kernels, and the other family (the hardware-GPU kernels, on lavapipe in CI), so that
/// every kernel runs. One device each for the whole test binary: setting one up takes a while on lavapipe.
fn backends() -> Vec<(String, Arc<WebGpuBackend>)> {
    static BACKENDS: OnceLock<Vec<(String, Arc<WebGpuBackend>)>> = OnceLock::new();
    BACKENDS
        .get_or_init(|| {
            let make = |k: Option<KernelChoice>| match WebGpuBackend::with_kernels(AdapterChoice::Any, k) {
                Ok(be) => Arc::new(be),
                Err(e) => panic!("the WebGPU tests need a Vulkan adapter (scripts/test.sh installs lavapipe): {e}"),
            };
            let native = make(None);
            let own = KernelChoice::for_adapter(native.adapter());
            let other = if own.tiled { KernelChoice::CPU_RASTERIZER } else { KernelChoice::GPU };
            let name = native.adapter().name.clone();
            let mut all = vec![
                (format!("webgpu on {name} ({own:?})"), native.clone()),
                (format!("webgpu on {name} ({other:?})"), make(Some(other))),
            ];
            // Decode products on float activations (a quant word per lane) in workgroups of 256, their lanes
            // meeting across subgroups, and attention reduced by subgroup operations where the adapter has them
            // (lavapipe does).
            let wide = KernelChoice {
                lanes: 128,
                workgroup: 256,
                slots: true,
                int8: false,
                subgroup_reductions: native.adapter().subgroups,
                ..KernelChoice::GPU
            };
            all.push((format!("webgpu on {name} ({wide:?})"), make(Some(wide))));
            // The subgroup decode kernel too, where the adapter has subgroups of one size.
            if let Some(size) = native.adapter().subgroup_size.filter(|s| 64 % s == 0) {
                let k = KernelChoice {
                    rows: 1,
                    unroll: 4,
                    slots: false,
                    tiled_rows: 1,
                    subgroup_size: Some(size),
                    ..KernelChoice::GPU
                };
                all.push((format!("webgpu on {name} ({k:?})"), make(Some(k))));
            }
            all
        })
        .clone()
}

tern_conformance::conformance_suite!(backends);
