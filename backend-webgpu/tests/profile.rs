//! Kernel timing: every dispatch while profiling is on is counted under its kernel, and nothing after.

use tern_backend_webgpu::{AdapterChoice, WebGpuBackend};
use tern_core::Backend;

#[test]
fn profiling_counts_every_dispatch_by_kernel() {
    let be = WebGpuBackend::new(AdapterChoice::Any).unwrap();
    if let Err(e) = be.start_profiling() {
        // An adapter without timestamps inside passes says so.
        assert!(e.to_string().contains("cannot time kernels"), "{e}");
        return;
    }
    let mut acc = be.upload(&[0.0; 64], 1, 64).unwrap();
    let one = be.upload(&[1.0; 64], 1, 64).unwrap();
    for _ in 0..5 {
        be.add(&mut acc, &one).unwrap();
    }
    let mut out = be.zeros(0, 0).unwrap();
    be.silu_mul(&acc, &one, &mut out).unwrap();
    assert_eq!(be.read(&acc).unwrap(), vec![5.0; 64]);
    let p = be.stop_profiling().unwrap();
    let calls = |label: &str| p.kernels.iter().find(|k| k.label == label).map_or(0, |k| k.calls);
    assert_eq!((calls("add"), calls("silumul")), (5, 1), "{p:?}");
    assert!(p.kernels.iter().all(|k| k.total_us >= 0.0) && p.submits >= 1);
    be.add(&mut acc, &one).unwrap();
    be.read(&acc).unwrap();
    assert_eq!(be.stop_profiling().unwrap().kernels.len(), 0, "nothing is timed once profiling stops");
}
