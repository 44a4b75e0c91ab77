//! Buffers of dropped tensors are reused, and reuse never changes what work recorded before it computes.

use tern_backend_webgpu::{AdapterChoice, WebGpuBackend};
use tern_core::Backend;

#[test]
fn dropped_buffers_are_reused_after_the_work_recorded_on_them() {
    let be = WebGpuBackend::new(AdapterChoice::Any).unwrap();
    let before = be.idle_bytes();
    // `acc += a` is recorded but not submitted; then `a` is dropped and its buffer taken by a new tensor,
    // which is zeroed and added to: the recorded add must still see `a`'s values.
    let a = be.upload(&[3.0; 64], 8, 8).unwrap();
    let mut acc = be.upload(&[1.0; 64], 8, 8).unwrap();
    be.add(&mut acc, &a).unwrap();
    drop(a);
    assert!(be.idle_bytes() > before, "a dropped tensor's buffer is kept");
    let mut b = be.zeros(8, 8).unwrap();
    assert_eq!(be.idle_bytes(), before, "the next tensor of that size takes it");
    be.add(&mut b, &acc).unwrap();
    assert_eq!(be.read(&acc).unwrap(), vec![4.0; 64]);
    assert_eq!(be.read(&b).unwrap(), vec![4.0; 64], "a reused buffer starts as zeros");
}
