//! One op family per file.

pub(crate) mod attention;
pub(crate) mod elementwise;
pub(crate) mod matmul;
pub(crate) mod qdot;
pub(crate) mod quantize_rows;
pub(crate) mod rms_norm;
pub(crate) mod rope;
