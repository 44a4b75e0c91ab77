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
            let other = if own.tiled {
                KernelChoice { lanes: 1, rows: 1, tiled: false }
            } else {
                KernelChoice { lanes: 32, rows: 2, tiled: true }
            };
            let name = native.adapter().name.clone();
            vec![(format!("webgpu on {name} ({own:?})"), native), (format!("webgpu on {name} ({other:?})"), make(Some(other)))]
        })
        .clone()
}

tern_conformance::conformance_suite!(backends);
