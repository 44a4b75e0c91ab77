//! The kernel sources, by concern. Each one's bindings and parameter words are listed in [`crate::Kernel`].

mod attention;
mod fused;
mod kv;
mod products;
mod quantize;
mod rows;
mod sample;

pub(crate) use attention::{attention, attention_combine};
pub use fused::NORM_PRODUCT_ROWS;
pub(crate) use fused::{matvec_int8_norm, matvec_int8_silu, norm_scale};
pub(crate) use kv::cache_write;
pub(crate) use products::{
    matmul, matmul_tiled, matmul_tiled_int8, matvec, matvec_int8, matvec_int8_rope, matvec_slots, matvec_subgroups,
};
pub(crate) use quantize::quantize_rows;
pub(crate) use rows::{add, embed, rms_norm, rope, rope_append, silu_mul};
pub(crate) use sample::sample;

/// Lines of WGSL, one per item, each indented by `indent` spaces.
pub(super) fn lines(items: impl IntoIterator<Item = String>, indent: usize) -> String {
    items.into_iter().map(|l| format!("{:indent$}{l}\n", "")).collect()
}

/// WGSL that folds `array[0..width]` into `array[0]` with `combine` (`+=`-style: "a = f(a, b)" given as a
/// format with `{a}` and `{b}`), in a tree over invocations `li` of the workgroup, with a barrier per level.
pub(super) fn workgroup_tree(array: &str, width: u32, combine: &str, indent: usize) -> String {
    let step = combine.replace("{a}", &format!("{array}[li]")).replace("{b}", &format!("{array}[li + stride]"));
    let pad = " ".repeat(indent);
    format!(
        "{pad}for (var stride = {width}u / 2u; stride > 0u; stride >>= 1u) {{
{pad}    if (li < stride) {{
{pad}        {array}[li] = {step};
{pad}    }}
{pad}    workgroupBarrier();
{pad}}}
"
    )
}
