//! The conformance suite (`tern-conformance`) on the WebGPU backend: on whatever adapter wgpu finds, Mesa's
//! lavapipe in CI (installed by `scripts/test.sh`).

use std::sync::{Arc, OnceLock};

use tern_backend_webgpu::{AdapterChoice, WebGpuBackend};

/// One device for the whole test binary: setting one up takes a while on lavapipe.
fn backends() -> Vec<(String, Arc<WebGpuBackend>)> {
    static BACKEND: OnceLock<Arc<WebGpuBackend>> = OnceLock::new();
    let be = BACKEND.get_or_init(|| match WebGpuBackend::new(AdapterChoice::Any) {
        Ok(be) => Arc::new(be),
        Err(e) => panic!("the WebGPU tests need a Vulkan adapter (scripts/test.sh installs lavapipe): {e}"),
    });
    vec![(format!("webgpu on {}", be.adapter().name), be.clone())]
}

tern_conformance::conformance_suite!(backends);
