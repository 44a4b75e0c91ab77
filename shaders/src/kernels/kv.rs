//! How kernels hold the KV cache's elements ([`KvStore`]), and the kernel that appends f32 rows to an f16 cache.

use crate::{KvStore, WORKGROUP};

impl KvStore {
    /// The directive a module that declares the cache needs first.
    pub(super) fn enable(self) -> &'static str {
        match self {
            KvStore::F16 => "enable f16;\n",
            KvStore::F32 | KvStore::F16Packed => "",
        }
    }

    /// The element type of a cache read four values at a time (`k[i]` is values `4i..4i + 4`).
    pub(super) fn quad_type(self) -> &'static str {
        match self {
            KvStore::F32 => "vec4<f32>",
            KvStore::F16Packed => "vec2<u32>",
            KvStore::F16 => "vec4<f16>",
        }
    }

    /// WGSL: `kv4(w)` turns an element of `quad_type` into a `vec4<f32>`.
    pub(super) fn quad_reader(self) -> String {
        let body = match self {
            KvStore::F32 => "w",
            KvStore::F16Packed => "vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y))",
            KvStore::F16 => "vec4<f32>(w)",
        };
        format!("fn kv4(w: {}) -> vec4<f32> {{\n    return {body};\n}}\n", self.quad_type())
    }

    /// The element type of a cache written two values at a time (f32 caches are written a value at a time).
    pub(super) fn pair_type(self) -> &'static str {
        match self {
            KvStore::F32 => "f32",
            KvStore::F16Packed => "u32",
            KvStore::F16 => "vec2<f16>",
        }
    }

    /// WGSL statements that store `y` (a `vec2<f32>`) as values `at, at + 1` of `cache` (`at` even).
    pub(super) fn store_pair(self, cache: &str, at: &str, y: &str) -> String {
        match self {
            KvStore::F32 => format!("{cache}[{at}] = {y}.x; {cache}[{at} + 1u] = {y}.y;"),
            KvStore::F16Packed => format!("{cache}[({at}) / 2u] = pack2x16float({y});"),
            KvStore::F16 => format!("{cache}[({at}) / 2u] = vec2<f16>({y});"),
        }
    }
}

/// `len` pairs of f32 values from `src` stored as f16 from pair `offset` of `dst`: rows appended to an f16 KV
/// cache. One invocation per pair.
pub(crate) fn cache_write(kv: KvStore) -> String {
    let store = kv.store_pair("dst", "2u * (p.offset + g)", "src[g]");
    format!(
        r#"{enable}struct Params {{ len: u32, groups_x: u32, offset: u32, _p3: u32, _p4: u32, _p5: u32, _p6: u32, _p7: u32 }}
@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<{pair}>;

@compute @workgroup_size({WORKGROUP})
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {{
    let g = (wid.x + wid.y * p.groups_x) * {WORKGROUP}u + li;
    if (g < p.len) {{
        {store}
    }}
}}
"#,
        enable = kv.enable(),
        pair = kv.pair_type()
    )
}
