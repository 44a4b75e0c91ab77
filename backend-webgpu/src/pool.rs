//! Storage buffers kept for reuse. A tensor's buffer goes back to the pool when the tensor is dropped or
//! outgrown, and the next tensor of that size class takes it instead of a fresh allocation: a new session's KV
//! cache and scratch reuse those of the last one.
//!
//! Reuse is safe against work already recorded: every later use of a reused buffer is recorded after the old
//! ones, in the same queue order (zeroing is a recorded `clear_buffer`, never a `Queue::write_buffer`, which
//! would land before commands recorded but not yet submitted).

use std::collections::HashMap;
use std::sync::Mutex;

/// Idle bytes the pool keeps at most; buffers given back past it are freed.
const IDLE_LIMIT: u64 = 1 << 30;

/// The size class of a buffer of at least `bytes`: multiples of 256 bytes up to 64 KiB, then of 64 KiB.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(16);
    if bytes <= 1 << 16 { bytes.next_multiple_of(256) } else { bytes.next_multiple_of(1 << 16) }
}

#[derive(Default)]
struct Idle {
    by_size: HashMap<u64, Vec<wgpu::Buffer>>,
    bytes: u64,
}

/// Idle storage buffers by size class.
#[derive(Default)]
pub(crate) struct BufferPool {
    idle: Mutex<Idle>,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes = self.idle.lock().map(|i| i.bytes).unwrap_or(0);
        f.debug_struct("BufferPool").field("idle_bytes", &bytes).finish()
    }
}

impl BufferPool {
    /// A storage buffer of `size_class(bytes)` bytes, reused if one is idle. Its contents are whatever its last
    /// user left.
    pub(crate) fn take(&self, device: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
        let size = size_class(bytes);
        if let Ok(mut idle) = self.idle.lock()
            && let Some(buf) = idle.by_size.get_mut(&size).and_then(Vec::pop)
        {
            idle.bytes -= size;
            return buf;
        }
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("tern tensor"),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Keeps `buf` for a later `take`, unless the pool already holds its limit.
    pub(crate) fn give(&self, buf: wgpu::Buffer) {
        let size = buf.size();
        if let Ok(mut idle) = self.idle.lock()
            && idle.bytes + size <= IDLE_LIMIT
            && size == size_class(size)
        {
            idle.bytes += size;
            idle.by_size.entry(size).or_default().push(buf);
        }
    }

    /// Bytes held idle.
    pub(crate) fn idle_bytes(&self) -> u64 {
        self.idle.lock().map(|i| i.bytes).unwrap_or(0)
    }
}
