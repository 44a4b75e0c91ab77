//! Recording: every op appends its dispatches to one command encoder, and nothing is submitted until a result is
//! read. A model's whole forward step therefore goes to the GPU as one command buffer in one submit.
//!
//! Each dispatch's 32 bytes of parameters take the next 256-byte slot of a uniform ring buffer, bound with a
//! dynamic offset. The slots are gathered on the CPU and written with one `Queue::write_buffer` just before the
//! submit (queue writes land before the submitted commands run); the ring restarts at every submit, and a step
//! that runs out of slots submits early.
//!
//! Bind groups are cached per kernel and buffers, so a decode step, which binds the same buffers every time,
//! creates none. An entry not used by the last two submits is dropped, so buffers freed by their owner (a
//! finished session's KV cache, say) do not stay alive in the cache.

use std::collections::HashMap;
use std::sync::Mutex;

use tern_core::{Error, Result};
use tern_shaders::{Binding, Kernel};

use crate::device::Gpu;
use crate::profile::{Profile, Profiler};

/// Storage buffers a kernel binds, at most.
const MAX_BUFFERS: usize = 9;

/// The storage buffers of one dispatch, in binding order: a bind group's cache key, with no allocation.
type BufferSet = [Option<wgpu::Buffer>; MAX_BUFFERS];

/// Bytes of parameters per dispatch.
const PARAM_BYTES: u64 = 32;
/// Dispatches one submit can hold before the ring wraps.
const RING_SLOTS: u64 = 2048;

/// A compiled kernel and the layout of its bind group.
#[derive(Clone)]
struct Pipeline {
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
}

/// Commands not yet submitted.
struct Pending {
    encoder: Option<wgpu::CommandEncoder>,
    /// The open compute pass of `encoder` (closed before a copy or a submit).
    pass: Option<wgpu::ComputePass<'static>>,
    /// The parameter slots of the recorded dispatches, in ring order.
    params: Vec<u8>,
    next_slot: u64,
    /// Mappable buffers that readings copy results into, returned when a reading finishes.
    staging: Vec<wgpu::Buffer>,
    /// Bind groups by kernel and buffers, with the submit that last used them.
    bind_groups: HashMap<(Kernel, BufferSet), (wgpu::BindGroup, u64)>,
    /// Submits so far.
    submits: u64,
    /// Times every dispatch while profiling is on.
    profiler: Option<Profiler>,
}

pub(crate) struct Recorder {
    pipelines: Mutex<HashMap<Kernel, Pipeline>>,
    pending: Mutex<Pending>,
    ring: wgpu::Buffer,
    slot_bytes: u64,
    /// Label fragments of kernels not to dispatch ([`SKIP_VARIABLE`]): empty but when measuring.
    skipped: Vec<String>,
}

/// A timing aid: `TERN_WEBGPU_SKIP=fragment,fragment` drops every dispatch whose kernel label contains one of
/// them, so that a benchmark measures what those kernels cost in the real pipelined step. The results are then
/// wrong; the backend warns when it is set.
pub(crate) const SKIP_VARIABLE: &str = "TERN_WEBGPU_SKIP";

fn lock_failed() -> Error {
    Error::Device { detail: "a thread panicked while recording GPU work; the backend cannot be used any more".into() }
}

/// The label fragments of [`SKIP_VARIABLE`], with a warning when there are any.
fn skipped_kernels() -> Vec<String> {
    let skipped: Vec<String> =
        std::env::var(SKIP_VARIABLE).unwrap_or_default().split(',').filter(|s| !s.is_empty()).map(String::from).collect();
    if !skipped.is_empty() {
        tracing::warn!("{SKIP_VARIABLE} is set: kernels labelled with {skipped:?} are not run, and results are wrong");
    }
    skipped
}

impl Recorder {
    pub(crate) fn new(gpu: &Gpu) -> Recorder {
        let slot_bytes = (gpu.limits.min_uniform_buffer_offset_alignment as u64).max(PARAM_BYTES);
        let ring = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tern kernel parameters"),
            size: slot_bytes * RING_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Recorder {
            pipelines: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending {
                encoder: None,
                pass: None,
                params: Vec::new(),
                next_slot: 0,
                staging: Vec::new(),
                bind_groups: HashMap::new(),
                submits: 0,
                profiler: None,
            }),
            ring,
            slot_bytes,
            skipped: skipped_kernels(),
        }
    }

    /// The pipeline for `kernel`, compiled on first use. A kernel the device rejects is an error naming it.
    fn pipeline(&self, gpu: &Gpu, kernel: Kernel) -> Result<Pipeline> {
        let mut cache = self.pipelines.lock().map_err(|_| lock_failed())?;
        if let Some(p) = cache.get(&kernel) {
            return Ok(p.clone());
        }
        let label = kernel.label();
        let size = kernel.workgroup_size();
        if size > gpu.limits.max_compute_invocations_per_workgroup || size > gpu.limits.max_compute_workgroup_size_x {
            return Err(Error::Device {
                detail: format!("kernel {label} needs workgroups of {size}, past this adapter's limit"),
            });
        }
        let device = &gpu.device;
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let entries: Vec<wgpu::BindGroupLayoutEntry> = kernel
            .bindings()
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Binding::Params => wgpu::BufferBindingType::Uniform,
                        Binding::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: *b == Binding::Params,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(&label), entries: &entries });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(&label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(&label),
            source: wgpu::ShaderSource::Wgsl(kernel.wgsl().into()),
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&label),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some("main"),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Device { detail: format!("kernel {label} does not compile on {}: {e}", gpu.report.name) });
        }
        let p = Pipeline { pipeline, layout };
        cache.insert(kernel, p.clone());
        Ok(p)
    }

    /// Records one dispatch of `kernel` with parameter words `params` over `buffers` (bindings 1, 2, ...) in
    /// `grid` workgroups.
    pub(crate) fn dispatch(
        &self,
        gpu: &Gpu,
        kernel: Kernel,
        params: [u32; 8],
        buffers: &[&wgpu::Buffer],
        grid: Grid,
    ) -> Result<()> {
        let pipeline = self.pipeline(gpu, kernel)?;
        if !self.skipped.is_empty() && self.skipped.iter().any(|s| kernel.label().contains(s.as_str())) {
            return Ok(());
        }
        let (x, y, z) = grid.dims;
        if x == 0 || y == 0 || z == 0 {
            return Ok(());
        }
        let max = gpu.limits.max_compute_workgroups_per_dimension;
        if x > max || y > max || z > max {
            return Err(Error::Device {
                detail: format!("{} needs {x}x{y}x{z} workgroups, past this adapter's {max} per dimension", kernel.label()),
            });
        }
        let mut pending = self.pending.lock().map_err(|_| lock_failed())?;
        if pending.next_slot == RING_SLOTS || pending.profiler.as_ref().is_some_and(|p| !p.has_room()) {
            self.submit(gpu, &mut pending)?;
        }
        let offset = pending.next_slot * self.slot_bytes;
        pending.next_slot += 1;
        pending.params.resize(offset as usize, 0);
        pending.params.extend(params.iter().flat_map(|w| w.to_le_bytes()));
        let submits = pending.submits;
        if buffers.len() > MAX_BUFFERS {
            return Err(Error::Device {
                detail: format!("{} binds {} buffers, past {MAX_BUFFERS}", kernel.label(), buffers.len()),
            });
        }
        let key = (kernel, std::array::from_fn(|i| buffers.get(i).map(|&b| b.clone())));
        let bind_group = match pending.bind_groups.get_mut(&key) {
            Some((group, used)) => {
                *used = submits;
                group.clone()
            }
            None => {
                let mut entries = vec![wgpu::BindGroupEntry {
                    binding: 0,
                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: &self.ring,
                        offset: 0,
                        size: wgpu::BufferSize::new(PARAM_BYTES),
                    }),
                }];
                entries.extend(
                    buffers
                        .iter()
                        .enumerate()
                        .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32 + 1, resource: b.as_entire_binding() }),
                );
                let group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("tern dispatch"),
                    layout: &pipeline.layout,
                    entries: &entries,
                });
                pending.bind_groups.insert(key, (group.clone(), submits));
                group
            }
        };
        let stamp = pending.profiler.as_ref().map(|p| {
            let (queries, index) = p.next();
            (queries.clone(), index)
        });
        let pass = self.pass(gpu, &mut pending);
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &bind_group, &[offset as u32]);
        if let Some((queries, index)) = &stamp {
            pass.write_timestamp(queries, *index);
        }
        pass.dispatch_workgroups(x, y, z);
        if let Some((queries, index)) = &stamp {
            pass.write_timestamp(queries, index + 1);
        }
        if let Some(p) = pending.profiler.as_mut() {
            p.dispatched.push(kernel);
        }
        Ok(())
    }

    /// Starts timing every dispatch (each submit then waits for its timestamps), or stops and returns what was
    /// measured.
    pub(crate) fn profile(&self, gpu: &Gpu, on: bool) -> Result<Option<Profile>> {
        let mut pending = self.pending.lock().map_err(|_| lock_failed())?;
        self.submit(gpu, &mut pending)?;
        let done = pending.profiler.take().map(|p| p.report());
        if on {
            pending.profiler = Some(Profiler::new(gpu)?);
        }
        Ok(done)
    }

    /// The open compute pass, opened (with the encoder) if there is none.
    fn pass<'p>(&self, gpu: &Gpu, pending: &'p mut Pending) -> &'p mut wgpu::ComputePass<'static> {
        let pass = match pending.pass.take() {
            Some(pass) => pass,
            None => {
                let encoder = pending.encoder.get_or_insert_with(|| {
                    gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("tern step") })
                });
                encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("tern ops"), timestamp_writes: None })
                    .forget_lifetime()
            }
        };
        pending.pass.insert(pass)
    }

    /// Records zeroing `buf` (between compute passes).
    pub(crate) fn clear(&self, gpu: &Gpu, buf: &wgpu::Buffer) -> Result<()> {
        let mut pending = self.pending.lock().map_err(|_| lock_failed())?;
        pending.pass = None;
        let encoder = pending.encoder.get_or_insert_with(|| {
            gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("tern step") })
        });
        encoder.clear_buffer(buf, 0, None);
        Ok(())
    }

    /// Records a buffer-to-buffer copy (between compute passes).
    pub(crate) fn copy(
        &self,
        gpu: &Gpu,
        src: &wgpu::Buffer,
        src_offset: u64,
        dst: &wgpu::Buffer,
        dst_offset: u64,
        bytes: u64,
    ) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let mut pending = self.pending.lock().map_err(|_| lock_failed())?;
        pending.pass = None;
        let encoder = pending.encoder.get_or_insert_with(|| {
            gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("tern step") })
        });
        encoder.copy_buffer_to_buffer(src, src_offset, dst, dst_offset, bytes);
        Ok(())
    }

    /// Submits what is recorded, with its parameters written first.
    fn submit(&self, gpu: &Gpu, pending: &mut Pending) -> Result<wgpu::SubmissionIndex> {
        pending.pass = None;
        if let Some(p) = pending.profiler.as_ref().filter(|p| !p.dispatched.is_empty()) {
            let encoder = pending.encoder.get_or_insert_with(|| {
                gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("tern step") })
            });
            p.resolve(encoder);
        }
        if !pending.params.is_empty() {
            gpu.queue.write_buffer(&self.ring, 0, &pending.params);
            pending.params.clear();
        }
        let commands: Vec<wgpu::CommandBuffer> = pending.encoder.take().map(|e| e.finish()).into_iter().collect();
        let index = gpu.queue.submit(commands);
        pending.next_slot = 0;
        pending.submits += 1;
        let recent = pending.submits.saturating_sub(2);
        pending.bind_groups.retain(|_, (_, used)| *used >= recent);
        if let Some(p) = pending.profiler.as_mut() {
            p.collect(gpu, index.clone())?;
        }
        Ok(index)
    }

    /// Submits everything recorded, with a copy of the first `len` values of `src` (f32, or f16 with `halves`:
    /// `len` even) at its end, and starts mapping the copy: work recorded after this runs while the host waits
    /// in [`Recorder::read_finish`].
    pub(crate) fn read_begin(&self, gpu: &Gpu, src: &wgpu::Buffer, len: usize, halves: bool) -> Result<GpuReading> {
        let bytes = len as u64 * if halves { 2 } else { 4 };
        let mut pending = self.pending.lock().map_err(|_| lock_failed())?;
        pending.pass = None;
        let reused = pending.staging.iter().position(|s| s.size() >= bytes.max(4));
        let staging = match reused {
            Some(i) => pending.staging.swap_remove(i),
            None => gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("tern readback"),
                size: bytes.max(256).next_power_of_two(),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        if bytes > 0 {
            let encoder = pending.encoder.get_or_insert_with(|| {
                gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("tern step") })
            });
            encoder.copy_buffer_to_buffer(src, 0, &staging, 0, bytes);
        }
        let submission = self.submit(gpu, &mut pending)?;
        drop(pending);
        let (tx, done) = std::sync::mpsc::channel();
        if bytes > 0 {
            staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
                let _ = tx.send(r);
            });
        }
        Ok(GpuReading { staging, bytes, halves, submission, done })
    }

    /// Waits for the submit of `r` (not for work queued after it) and returns the values it copied.
    pub(crate) fn read_finish(&self, gpu: &Gpu, r: GpuReading) -> Result<Vec<f32>> {
        let GpuReading { staging, bytes, halves, submission, done } = r;
        gpu.device
            .poll(wgpu::PollType::Wait { submission_index: Some(submission), timeout: None })
            .map_err(|e| Error::Device { detail: format!("waiting for the GPU failed: {e}") })?;
        gpu.check()?;
        if bytes == 0 {
            self.give_back(staging);
            return Ok(Vec::new());
        }
        match done.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(Error::Device { detail: format!("reading a result back failed: {e}") });
            }
            Err(_) => {
                return Err(Error::Device { detail: "the GPU never finished reading a result back".into() });
            }
        }
        let mapped = staging
            .get_mapped_range(..bytes)
            .map_err(|e| Error::Device { detail: format!("reading a result back failed: {e}") })?;
        let data: Vec<f32> = if halves {
            mapped.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
        } else {
            mapped.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
        };
        drop(mapped);
        staging.unmap();
        self.give_back(staging);
        Ok(data)
    }

    /// Keeps a few staging buffers for the next readings.
    fn give_back(&self, staging: wgpu::Buffer) {
        if let Ok(mut pending) = self.pending.lock()
            && pending.staging.len() < STAGING_KEPT
        {
            pending.staging.push(staging);
        }
    }
}

/// Staging buffers kept for reuse: a pipelined decode has two readings in flight.
const STAGING_KEPT: usize = 4;

/// A copy on its way back to the host.
#[derive(Debug)]
pub struct GpuReading {
    staging: wgpu::Buffer,
    bytes: u64,
    /// Whether the bytes are f16 values.
    halves: bool,
    submission: wgpu::SubmissionIndex,
    done: std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

/// Workgroup counts of a dispatch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    pub dims: (u32, u32, u32),
}

impl Grid {
    /// `groups` workgroups in x, folded into `y` past `max` per dimension; `groups_x` is what the kernel is told.
    pub(crate) fn folded(groups: u64, max: u32) -> (Grid, u32) {
        let x = groups.min(max as u64).max(1) as u32;
        let y = groups.div_ceil(x as u64) as u32;
        (Grid { dims: if groups == 0 { (0, 1, 1) } else { (x, y, 1) } }, x)
    }
}
