//! Adapter discovery and device setup: what the machine offers, and a device that asks for what tern wants and
//! takes what the adapter has.

use std::sync::{Arc, Mutex};

use tern_core::{Error, Result};

/// One adapter as `tern info` lists it.
#[derive(Debug, Clone)]
pub struct AdapterReport {
    pub name: String,
    /// "vulkan", "metal", "dx12", ...
    pub api: String,
    /// "discrete GPU", "integrated GPU", "CPU", ...
    pub kind: &'static str,
    pub driver: String,
    /// Whether it is a hardware GPU (not a CPU rasterizer such as lavapipe or SwiftShader).
    pub is_gpu: bool,
    pub max_storage_binding_bytes: u64,
    pub max_buffer_bytes: u64,
    pub max_workgroup_invocations: u32,
    pub max_workgroup_storage_bytes: u32,
    pub shader_f16: bool,
    pub subgroups: bool,
    /// The subgroup size, when the adapter has subgroups of one fixed size (its minimum and maximum agree).
    pub subgroup_size: Option<u32>,
}

fn kind_name(t: wgpu::DeviceType) -> &'static str {
    match t {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "CPU",
        wgpu::DeviceType::Other => "other",
    }
}

fn is_gpu(t: wgpu::DeviceType) -> bool {
    matches!(t, wgpu::DeviceType::DiscreteGpu | wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::VirtualGpu)
}

impl AdapterReport {
    fn of(adapter: &wgpu::Adapter) -> Self {
        let info = adapter.get_info();
        let limits = adapter.limits();
        let features = adapter.features();
        AdapterReport {
            name: info.name,
            api: format!("{:?}", info.backend).to_lowercase(),
            kind: kind_name(info.device_type),
            driver: [info.driver, info.driver_info].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "),
            is_gpu: is_gpu(info.device_type),
            max_storage_binding_bytes: limits.max_storage_buffer_binding_size,
            max_buffer_bytes: limits.max_buffer_size,
            max_workgroup_invocations: limits.max_compute_invocations_per_workgroup,
            max_workgroup_storage_bytes: limits.max_compute_workgroup_storage_size,
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            subgroup_size: (features.contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size == info.subgroup_max_size)
                .then_some(info.subgroup_min_size),
        }
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu finds on this machine (Vulkan, Metal, DX12).
pub fn adapters() -> Vec<AdapterReport> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::PRIMARY)).iter().map(AdapterReport::of).collect()
}

/// Which adapters a backend may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterChoice {
    /// The best adapter there is, CPU rasterizers (lavapipe) included: what tests and `--backend webgpu` use.
    Any,
    /// Only a hardware GPU: what `--backend auto` tries before falling back to the CPU backend.
    GpuOnly,
}

/// A device and its queue, with the failures wgpu reports out of band collected for the next check.
pub(crate) struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub report: AdapterReport,
    pub limits: wgpu::Limits,
    /// Validation and internal errors not caught by an error scope, oldest first.
    pub errors: Arc<Mutex<Vec<String>>>,
    /// Why the device was lost, once it has been.
    pub lost: Arc<Mutex<Option<String>>>,
}

impl Gpu {
    pub(crate) fn new(choice: AdapterChoice) -> Result<Gpu> {
        let instance = instance();
        let mut candidates = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
        // Discrete before integrated before the rest; the first that qualifies wins.
        candidates.sort_by_key(|a| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Cpu => 3,
            wgpu::DeviceType::Other => 4,
        });
        let found: Vec<String> = candidates.iter().map(AdapterReport::of).map(|r| format!("{} ({})", r.name, r.kind)).collect();
        let adapter = candidates
            .into_iter()
            .find(|a| choice == AdapterChoice::Any || is_gpu(a.get_info().device_type))
            .ok_or_else(|| Error::NoDevice {
                detail: if found.is_empty() {
                    "wgpu found no Vulkan, Metal or DX12 adapter; install a GPU driver (or Mesa's lavapipe, \
                     `apt-get install mesa-vulkan-drivers`, for a CPU one), or use --backend cpu"
                        .into()
                } else {
                    format!(
                        "wgpu found only {}, which is not a GPU; use --backend webgpu to run on it anyway, or --backend cpu",
                        found.join(", ")
                    )
                },
            })?;
        let report = AdapterReport::of(&adapter);
        // Everything the adapter allows: models need large storage bindings, and asking for more than the adapter
        // has would fail.
        let limits = adapter.limits();
        // Subgroups where the adapter has them (decode products can sum with them), f16 in shaders (KV caches),
        // and timestamps inside passes for profiling; nothing else is needed.
        let wanted = wgpu::Features::SUBGROUP
            | wgpu::Features::SHADER_F16
            | wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let required_features = adapter.features() & wanted;
        let desc = wgpu::DeviceDescriptor {
            label: Some("tern"),
            required_features,
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| Error::NoDevice { detail: format!("{} ({}) refused a device: {e}", report.name, report.api) })?;
        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut v) = sink.lock() {
                v.push(e.to_string());
            }
        }));
        let lost = Arc::new(Mutex::new(None));
        let lost_sink = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut l) = lost_sink.lock() {
                *l = Some(format!("{reason:?}: {message}"));
            }
        });
        tracing::info!(adapter = %report.name, api = %report.api, kind = report.kind, "webgpu device ready");
        Ok(Gpu { device, queue, report, limits, errors, lost })
    }

    /// The first failure reported since the last check, as an error.
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(reason) = self.lost.lock().ok().and_then(|l| l.clone()) {
            return Err(Error::Device { detail: format!("the device was lost ({reason}); restart tern, or use --backend cpu") });
        }
        let first = self.errors.lock().ok().and_then(|mut v| (!v.is_empty()).then(|| v.drain(..).next()).flatten());
        match first {
            Some(e) => Err(Error::Device { detail: e }),
            None => Ok(()),
        }
    }
}
