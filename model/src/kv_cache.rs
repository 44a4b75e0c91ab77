use tern_core::{Backend, TensorType};

use crate::{LlamaConfig, Result};

/// One sequence's KV cache: per layer a K and a V tensor of `capacity` rows (positions) by `kv_dim`, stored as
/// F32 or F16 ([`Backend::zeros_cache`]).
#[derive(Debug)]
pub struct KvCache<B: Backend> {
    pub(crate) k: Vec<B::Tensor>,
    pub(crate) v: Vec<B::Tensor>,
    capacity: usize,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `capacity` positions, its elements stored as `ty` (F32 or F16).
    pub fn new(backend: &B, cfg: &LlamaConfig, capacity: usize, ty: TensorType) -> Result<Self> {
        let mut k = Vec::with_capacity(cfg.n_layers);
        let mut v = Vec::with_capacity(cfg.n_layers);
        for _ in 0..cfg.n_layers {
            k.push(backend.zeros_cache(capacity, cfg.kv_dim(), ty)?);
            v.push(backend.zeros_cache(capacity, cfg.kv_dim(), ty)?);
        }
        Ok(KvCache { k, v, capacity, len: 0 })
    }

    /// Positions filled.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets positions from `len` on (the next forward pass overwrites them).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
