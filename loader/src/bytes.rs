use std::ops::Deref;

/// The bytes of a model file: a read-only memory map on native targets, or an owned buffer (the browser, or a
/// file a caller already holds in memory).
#[derive(Debug)]
pub enum Bytes {
    #[cfg(not(target_arch = "wasm32"))]
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    /// Maps the file at `path` read-only.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn map(path: &std::path::Path) -> crate::Result<Self> {
        let io = |source| crate::Error::Io { path: path.display().to_string(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        // Safety: the map is read-only and tern never writes through it. Another process truncating or
        // rewriting the file while it is mapped is outside what any reader can defend against (the same
        // contract as every mmap-based model loader); every offset read from the map is still bounds-checked.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(Bytes::Mapped(map))
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            #[cfg(not(target_arch = "wasm32"))]
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}
