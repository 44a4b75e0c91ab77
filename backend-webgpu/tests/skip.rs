//! The timing aid `TERN_WEBGPU_SKIP`: the dispatches of the named kernels are dropped, and no others. (Each
//! test binary runs in a process of its own, so the variable set here reaches no other test.)

use tern_backend_webgpu::{AdapterChoice, WebGpuBackend};
use tern_core::Backend;

#[test]
fn skipped_kernels_are_not_dispatched() {
    // SAFETY: set before any other thread of this test binary reads the environment.
    unsafe { std::env::set_var("TERN_WEBGPU_SKIP", "add") };
    let be = WebGpuBackend::new(AdapterChoice::Any).unwrap();
    let mut acc = be.upload(&[1.0; 16], 1, 16).unwrap();
    let two = be.upload(&[2.0; 16], 1, 16).unwrap();
    be.add(&mut acc, &two).unwrap();
    assert_eq!(be.read(&acc).unwrap(), vec![1.0; 16], "the add was skipped");
    let mut out = be.zeros(0, 0).unwrap();
    be.silu_mul(&acc, &two, &mut out).unwrap();
    let want = 2.0 / (1.0 + (-1.0f32).exp());
    assert!(be.read(&out).unwrap().iter().all(|v| (v - want).abs() < 1e-5), "other kernels still run");
}
