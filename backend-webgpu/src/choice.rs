//! Which kernel family and specialization a [`crate::WebGpuBackend`] runs.

use tern_core::{Error, Result};
use tern_shaders::WORKGROUP;

use crate::device::AdapterReport;

/// Which matmul kernels a [`WebGpuBackend`] uses; [`KernelChoice::for_adapter`] picks them by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelChoice {
    /// Invocations sharing rows in decode products (a power of two up to 64).
    pub lanes: u32,
    /// Rows those invocations share in decode products (1 to 4): each activation loaded serves that many.
    pub rows: u32,
    /// With `tiled`: `vec4`s each lane of a decode product loads before using them (4, 8 or 16).
    pub unroll: u32,
    /// With `tiled`: invocations per workgroup of decode products (64, 128 or 256; `lanes` at most this).
    pub workgroup: u32,
    /// With `tiled`: decode products of the formats that have one take a quant word per lane at a time
    /// (`Kernel::MatvecSlots`, `unroll / 2` words per step) instead of a `vec4` of weights.
    pub slots: bool,
    /// The GPU kernels: products of several tokens tiled, decode products with lanes on consecutive `vec4`s
    /// (fast on GPUs; on a CPU rasterizer their barriers cost more than they save). With them, a token's
    /// products in a batch and alone may differ by float rounding.
    pub tiled: bool,
    /// With `tiled`: rows per invocation in prefill products (1 or 2; each staged activation serves them all).
    pub tiled_rows: u32,
    /// With `tiled`: decode products summed by subgroup operations, one row per subgroup of this size (the
    /// adapter's fixed subgroup size), in place of `lanes` and `rows`.
    pub subgroup_size: Option<u32>,
    /// Attention's per-tile maximum and sum, and RMSNorm's mean square, by subgroup operations (needs the
    /// adapter's subgroups).
    pub subgroup_reductions: bool,
    /// With `tiled` and no `subgroup_size`: products of the formats that have one take their activations
    /// quantized to int8 per block of 32 (as the CPU backend does) and multiply four quants at a time with
    /// integer dot products: decode by `Kernel::MatvecInt8` (`unroll / 4` blocks per step, in place of
    /// `slots`), prefill by `Kernel::MatmulTiledInt8`.
    pub int8: bool,
    /// f16 KV caches read and written as WGSL's `f16` type (needs the adapter's `shader-f16`), rather than as
    /// words of two halves through `pack2x16float`/`unpack2x16float`.
    pub shader_f16: bool,
}

impl KernelChoice {
    /// A GPU runs two rows on 32 lanes that meet in a tree, a quant word per lane at a time (or eight `vec4`s
    /// of weights in flight for formats without slots), and prefill tiled. A CPU rasterizer
    /// (lavapipe) runs the invocations of a workgroup one after another and pays dearly for every barrier:
    /// there each invocation takes a whole row.
    pub fn for_adapter(report: &AdapterReport) -> Self {
        let shader_f16 = report.shader_f16;
        if report.is_gpu {
            KernelChoice { subgroup_reductions: report.subgroups, shader_f16, ..Self::GPU }
        } else {
            KernelChoice { shader_f16, ..Self::CPU_RASTERIZER }
        }
    }

    /// The GPU family (`for_adapter` on a GPU, less the subgroup reductions it adds where the adapter has
    /// subgroups). The subgroup matvec measured no faster on an H100 (and slower on 4096x11008), so it is
    /// opt-in.
    pub const GPU: KernelChoice = KernelChoice {
        lanes: 32,
        rows: 2,
        unroll: 8,
        workgroup: 64,
        slots: true,
        tiled: true,
        tiled_rows: 2,
        subgroup_size: None,
        subgroup_reductions: false,
        int8: true,
        shader_f16: false,
    };

    /// The CPU-rasterizer family: a whole row per invocation, no barriers.
    pub const CPU_RASTERIZER: KernelChoice = KernelChoice {
        lanes: 1,
        rows: 1,
        unroll: 4,
        workgroup: 64,
        slots: false,
        tiled: false,
        tiled_rows: 1,
        subgroup_size: None,
        subgroup_reductions: false,
        int8: false,
        shader_f16: false,
    };

    /// An error unless the adapter `report` describes can run these kernels and their sizes are ones the
    /// kernels take.
    pub fn check(&self, report: &AdapterReport) -> Result<()> {
        if self.subgroup_reductions && !report.subgroups {
            return Err(Error::Device { detail: format!("subgroup reductions on {}, which has no subgroups", report.name) });
        }
        if self.shader_f16 && !report.shader_f16 {
            return Err(Error::Device { detail: format!("f16 kernels on {}, which has no shader-f16", report.name) });
        }
        if let Some(size) = self.subgroup_size
            && (report.subgroup_size != Some(size) || !WORKGROUP.is_multiple_of(size))
        {
            return Err(Error::Device {
                detail: format!(
                    "subgroups of {size}: the adapter's are {:?}, and {WORKGROUP} must be a multiple",
                    report.subgroup_size
                ),
            });
        }
        if !self.lanes.is_power_of_two()
            || ![64, 128, 256].contains(&self.workgroup)
            || self.lanes > self.workgroup
            || (!self.tiled && self.lanes > WORKGROUP)
            || !(1..=4).contains(&self.rows)
            || !(1..=2).contains(&self.tiled_rows)
            || ![4, 8, 16].contains(&self.unroll)
        {
            return Err(Error::Device {
                detail: format!(
                    "{} lanes on {} rows in workgroups of {}, unrolled {}: expected a power of two up to the workgroup \
                 (64, 128 or 256; 64 untiled) on 1 to 4 rows, unrolled 4, 8 or 16",
                    self.lanes, self.rows, self.workgroup, self.unroll
                ),
            });
        }
        Ok(())
    }
}
