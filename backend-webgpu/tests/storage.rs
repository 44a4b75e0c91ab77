//! How the WebGPU backend stores things: buffers of dropped tensors are reused without changing what work
//! recorded before computes, and matrices uploaded together share buffers when they can.

use tern_backend_webgpu::{AdapterChoice, WebGpuBackend};
use tern_core::{Backend, TensorType};
use tern_quant::PackedMatrix;

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

#[test]
fn matrices_are_stored_together_only_when_their_parts_join_cleanly() {
    let be = WebGpuBackend::new(AdapterChoice::Any).unwrap();
    let packed = |ty, rows, cols| PackedMatrix::from_f32(ty, rows, cols, &vec![0.5; rows * cols]).unwrap();
    let first_rows = |ms: &[PackedMatrix]| -> Vec<usize> {
        let views: Vec<_> = ms.iter().map(|m| m.view()).collect();
        be.upload_matrices(&views).unwrap().iter().map(|m| m.first_row()).collect()
    };
    let qkv = [packed(TensorType::Q4_0, 40, 64), packed(TensorType::Q4_0, 8, 64), packed(TensorType::Q4_0, 8, 64)];
    assert_eq!(first_rows(&qkv), [0, 40, 48]);
    // Three blocks of f16 scales end mid-word: stored apart.
    let odd = [packed(TensorType::Q4_1, 3, 32), packed(TensorType::Q4_1, 5, 32)];
    assert_eq!(first_rows(&odd), [0, 0]);
    let mixed = [packed(TensorType::Q4_0, 8, 64), packed(TensorType::Q8_0, 8, 64)];
    assert_eq!(first_rows(&mixed), [0, 0]);
}

#[test]
fn a_table_stored_after_another_gathers_its_own_rows() {
    let be = WebGpuBackend::new(AdapterChoice::Any).unwrap();
    let values = |n: usize, k: f32| (0..n).map(|i| ((i % 17) as f32 - 8.0) * k).collect::<Vec<f32>>();
    let a = PackedMatrix::from_f32(TensorType::Q8_0, 8, 64, &values(8 * 64, 0.01)).unwrap();
    let b = PackedMatrix::from_f32(TensorType::Q8_0, 8, 64, &values(8 * 64, 0.03)).unwrap();
    let both = be.upload_matrices(&[a.view(), b.view()]).unwrap();
    assert_eq!(both[1].first_row(), 8);
    let mut out = be.zeros(0, 0).unwrap();
    be.embed(&both[1], &[3], &mut out).unwrap();
    let mut want = vec![0f32; 64];
    b.dequantize_row(3, &mut want);
    assert_eq!(be.read(&out).unwrap(), want);
}
