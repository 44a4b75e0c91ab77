//! One set of op tests for every tern backend. Each check runs an op on a backend and compares it with a plain
//! scalar f64 reference written here, with shapes that hit the tails of kernels' tiling (rows not a multiple of
//! the workgroup's, token counts not a multiple of the tile).
//!
//! A backend's test file instantiates the whole suite with [`conformance_suite!`], given a function that
//! returns the backends to test, each with a label for messages:
//!
//! ```ignore
//! fn backends() -> Vec<(String, Arc<CpuBackend>)> { ... }
//! tern_conformance::conformance_suite!(backends);
//! ```
//!
//! This is test code in a crate of its own (`publish = false`, only ever a dev-dependency): its `unwrap`s and
//! assertions are test failures, and nothing from a file, a socket or a user reaches them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod attention;
mod fused;
mod products;
mod reference;
mod rows;
mod sampling;

pub use attention::*;
pub use fused::*;
pub use products::*;
pub use reference::*;
pub use rows::*;
pub use sampling::*;

use tern_quant::TernFormat;

pub use proptest;

/// Instantiates every conformance test for the backends `$backends()` returns (`Vec<(String, Arc<B>)>`: a
/// label for messages and the backend, shared so that a backend that is slow to set up can be made once).
#[macro_export]
macro_rules! conformance_suite {
    ($backends:ident) => {
        mod conformance {
            use $crate::proptest::prelude::*;

            $crate::__conformance_each!(super::$backends;
                matmul_model_sized_shapes,
                matmul_rejects_wrong_width,
                embed_gathers_dequantized_rows,
                sample_matches_reference,
                embed_sampled_takes_the_picked_row,
                rms_norm_matches_reference,
                rope_matches_reference,
                rope_and_append_matches_reference,
                attention_inputs_equal_products_then_rope,
                matmul_add_rms_norm_equals_product_then_add_norm,
                ops_on_a_fused_norm_row_see_its_values,
                matmul_silu_mul_equals_products_then_silu_mul,
                add_rms_norm_matches_reference,
                attention_matches_reference,
                attention_rejects_positions_past_the_cache,
                f16_caches_round_and_stay_caches,
                elementwise_ops_match_reference,
                row_copies,
                products_of_op_outputs_match_fresh_uploads,
                matmul_many_equals_separate_products,
                matrices_uploaded_together_multiply_as_apart,
                matmul_is_batch_invariant,
                tern_model_shapes_embedding_and_batch_invariance,
                inconsistent_tern_matrices_are_refused,
            );

            proptest! {
                #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

                #[test]
                fn matmul_matches_reference(ty in 0..$crate::TYPES.len(), rows in 1usize..40, blocks in 1usize..6, tokens in 1usize..10, seed in any::<u64>()) {
                    for (label, be) in super::$backends() {
                        $crate::check_matmul(&*be, &label, $crate::TYPES[ty], rows, blocks * 32, tokens, seed);
                    }
                }

                #[test]
                fn tern_products_match_reference(f in 0usize..7, rows in 1usize..20, blocks in 1usize..20, tokens in 1usize..10, seed in any::<u64>()) {
                    let f = $crate::proptest_tern_format(f);
                    for (label, be) in super::$backends() {
                        $crate::check_tern(&*be, &label, f, rows, blocks * f.row_multiple(), tokens, seed);
                    }
                }
            }
        }
    };
}

/// One `#[test]` per check, each running it on every backend.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_each {
    ($backends:path; $($check:ident),* $(,)?) => {$(
        #[test]
        fn $check() {
            for (label, be) in $backends() {
                $crate::$check(&*be, &label);
            }
        }
    )*};
}

/// Format `i` of [`TernFormat::ALL`], for the suite's property tests.
pub fn proptest_tern_format(i: usize) -> TernFormat {
    TernFormat::ALL[i % TernFormat::ALL.len()]
}
