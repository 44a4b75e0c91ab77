//! GPU time per kernel, from timestamps written around every dispatch (the adapter's `timestamp-query` inside
//! passes). Profiling makes each submit wait for its timestamps, so it is for finding where a step's time goes,
//! not for measuring its speed.

use std::collections::HashMap;

use tern_core::{Error, Result};
use tern_shaders::Kernel;

use crate::device::Gpu;

/// Timestamps one submit can hold: a begin and an end per dispatch.
const QUERIES: u32 = 4096;

/// GPU time spent in one kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    pub label: String,
    /// Dispatches timed.
    pub calls: u64,
    /// Total GPU time, in microseconds.
    pub total_us: f64,
}

/// What profiling measured since it was switched on.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Profile {
    /// By kernel, the most time first.
    pub kernels: Vec<KernelTime>,
    /// Time between the end of one dispatch and the start of the next in the same submit, in microseconds:
    /// barriers, launches and anything else the GPU does between kernels.
    pub between_us: f64,
    /// Submits timed.
    pub submits: u64,
}

pub(crate) struct Profiler {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// The kernels of the current submit's dispatches, in order: dispatch `i` wrote queries `2i` and `2i + 1`.
    pub(crate) dispatched: Vec<Kernel>,
    by_kernel: HashMap<Kernel, (u64, f64)>,
    between_ns: f64,
    submits: u64,
    /// Nanoseconds per timestamp tick.
    period: f64,
}

impl Profiler {
    pub(crate) fn new(gpu: &Gpu) -> Result<Profiler> {
        let needed = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        if !gpu.device.features().contains(needed) {
            return Err(Error::Device {
                detail: format!("{} cannot time kernels (no timestamp queries inside passes)", gpu.report.name),
            });
        }
        let bytes = QUERIES as u64 * 8;
        let buffer = |label, usage| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        Ok(Profiler {
            queries: gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("tern kernel timestamps"),
                ty: wgpu::QueryType::Timestamp,
                count: QUERIES,
            }),
            resolved: buffer("tern timestamps", wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC),
            readback: buffer("tern timestamps readback", wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST),
            dispatched: Vec::new(),
            by_kernel: HashMap::new(),
            between_ns: 0.0,
            submits: 0,
            period: gpu.queue.get_timestamp_period() as f64,
        })
    }

    /// Whether one more dispatch fits this submit's queries.
    pub(crate) fn has_room(&self) -> bool {
        (self.dispatched.len() as u32 + 1) * 2 <= QUERIES
    }

    /// The query set and the index of the next dispatch's begin timestamp.
    pub(crate) fn next(&self) -> (&wgpu::QuerySet, u32) {
        (&self.queries, self.dispatched.len() as u32 * 2)
    }

    /// Records copying this submit's timestamps to the readback buffer.
    pub(crate) fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        let n = self.dispatched.len() as u32 * 2;
        if n > 0 {
            encoder.resolve_query_set(&self.queries, 0..n, &self.resolved, 0);
            encoder.copy_buffer_to_buffer(&self.resolved, 0, &self.readback, 0, n as u64 * 8);
        }
    }

    /// Waits for `submission` and adds its dispatches' times.
    pub(crate) fn collect(&mut self, gpu: &Gpu, submission: wgpu::SubmissionIndex) -> Result<()> {
        let n = self.dispatched.len();
        if n == 0 {
            return Ok(());
        }
        let bytes = n as u64 * 16;
        let (tx, rx) = std::sync::mpsc::channel();
        self.readback.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
            let _ = tx.send(r);
        });
        gpu.device
            .poll(wgpu::PollType::Wait { submission_index: Some(submission), timeout: None })
            .map_err(|e| Error::Device { detail: format!("waiting for timestamps failed: {e}") })?;
        match rx.recv() {
            Ok(Ok(())) => {}
            _ => return Err(Error::Device { detail: "timestamps never came back".into() }),
        }
        let ticks: Vec<u64> = self
            .readback
            .get_mapped_range(..bytes)
            .map_err(|e| Error::Device { detail: format!("reading timestamps failed: {e}") })?
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect();
        self.readback.unmap();
        for (i, kernel) in self.dispatched.drain(..).enumerate() {
            let (begin, end) = (ticks[2 * i], ticks[2 * i + 1]);
            let entry = self.by_kernel.entry(kernel).or_insert((0, 0.0));
            entry.0 += 1;
            entry.1 += end.saturating_sub(begin) as f64 * self.period;
            if let Some(&next) = ticks.get(2 * i + 2) {
                self.between_ns += next.saturating_sub(end) as f64 * self.period;
            }
        }
        self.submits += 1;
        Ok(())
    }

    pub(crate) fn report(&self) -> Profile {
        let mut kernels: Vec<KernelTime> =
            self.by_kernel.iter().map(|(k, &(calls, ns))| KernelTime { label: k.label(), calls, total_us: ns / 1e3 }).collect();
        kernels.sort_by(|a, b| b.total_us.total_cmp(&a.total_us));
        Profile { kernels, between_us: self.between_ns / 1e3, submits: self.submits }
    }
}
