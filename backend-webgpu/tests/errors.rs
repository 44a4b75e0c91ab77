//! Failures on the WebGPU backend are errors that say what went wrong and what to do, never panics.

use tern_backend_webgpu::{AdapterChoice, WebGpuBackend};
use tern_core::{Backend, Error, MatrixView, TensorType};

fn backend() -> WebGpuBackend {
    WebGpuBackend::new(AdapterChoice::Any)
        .unwrap_or_else(|e| panic!("the WebGPU tests need a Vulkan adapter (scripts/test.sh installs lavapipe): {e}"))
}

#[test]
fn a_tensor_past_the_binding_limit_is_a_clear_error() {
    let be = backend();
    let limit = be.adapter().max_storage_binding_bytes;
    let rows = (limit / 4 / 1024 + 1) as usize;
    let err = be.zeros(rows, 1024).err().expect("a tensor past the limit is refused");
    assert!(matches!(err, Error::BufferLimit { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("{rows}x1024")) && text.contains("--backend cpu"), "{text}");
}

#[test]
fn inconsistent_matrices_and_shapes_are_refused() {
    let be = backend();
    let quants = vec![0u32; 4];
    let view = MatrixView { ty: TensorType::Q4_0, rows: 2, cols: 32, quants: &quants, scales: &[0], mins: &[], row_scales: &[] };
    let err = be.upload_matrix(view).err().expect("2 rows of Q4_0 need 8 quant words");
    assert!(err.to_string().contains("quants hold 4 words, expected 8"), "{err}");
    let x = be.upload(&[1.0; 4], 2, 2).unwrap();
    assert!(be.upload(&[1.0; 3], 2, 2).is_err(), "3 values cannot fill 2x2");
    let mut out = be.zeros(0, 0).unwrap();
    let weight = be.upload(&[1.0; 3], 1, 3).unwrap();
    assert!(matches!(be.rms_norm(&x, &weight, 1e-5, &mut out), Err(Error::Shape { .. })));
}

#[test]
fn a_cpu_rasterizer_is_not_taken_as_a_gpu() {
    let be = backend();
    if be.adapter().is_gpu {
        return; // a machine with a real GPU: nothing to check here
    }
    let err = WebGpuBackend::new(AdapterChoice::GpuOnly).err().expect("lavapipe is not a GPU");
    assert!(matches!(err, Error::NoDevice { .. }), "{err}");
    assert!(err.to_string().contains("--backend"), "{err}");
}
