//! Writing GGUF version 3: what `tern quantize` will emit, and how tests build files to read back.

use tern_core::TensorType;

use crate::gguf::{GGUF_I8, tern_dims_key, tern_type_key};
use crate::metadata::MetaValue;
use crate::{Error, Result};

/// Alignment of tensor data when `general.alignment` is not set.
pub const DEFAULT_ALIGNMENT: usize = 32;

/// A GGUF file being assembled in memory: metadata in insertion order, then tensors in insertion order.
#[derive(Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, TensorType, Vec<usize>, Vec<u8>)>,
}

fn type_id(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, key: &str, v: &MetaValue) -> Result<()> {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(u8::from(*x)),
        MetaValue::String(s) => put_str(out, s),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Array(items) => {
            // An empty array is written as an array of u8; GGUF gives every array one element type.
            let elem = items.first().map_or(0, type_id);
            if let Some(odd) = items.iter().find(|i| type_id(i) != elem) {
                return Err(Error::Format {
                    path: "gguf writer".into(),
                    detail: format!("array {key:?} mixes {} and {}", items[0].type_name(), odd.type_name()),
                });
            }
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, key, item)?;
            }
        }
    }
    Ok(())
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) metadata `key`.
    pub fn metadata(&mut self, key: impl Into<String>, value: MetaValue) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Adds a tensor of type `ty` with GGUF dimensions `dims` (`dims[0]` the row length) and its encoded bytes.
    pub fn tensor(&mut self, name: impl Into<String>, ty: TensorType, dims: &[usize], data: Vec<u8>) -> Result<&mut Self> {
        let name = name.into();
        let bad = |detail: String| Error::BadTensor { path: "gguf writer".into(), tensor: name.clone(), detail };
        let elements = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| bad("dimensions overflow".into()))?;
        if dims.is_empty() || dims.len() > crate::MAX_DIMS as usize || !dims[0].is_multiple_of(ty.block_len()) {
            return Err(bad(format!("dimensions {dims:?} do not suit {ty}")));
        }
        let expected = ty.data_bytes(elements / dims[0], dims[0]).ok_or_else(|| bad("size overflows".into()))?;
        if data.len() != expected {
            return Err(bad(format!("{} bytes given, {ty} {dims:?} takes {expected}", data.len())));
        }
        if self.tensors.iter().any(|t| t.0 == name) {
            return Err(bad("a tensor of that name was already added".into()));
        }
        if ty.tern_format().is_some() {
            if dims.len() != 2 {
                return Err(bad(format!("tern formats store matrices; dimensions {dims:?} are not [cols, rows]")));
            }
            self.metadata(tern_type_key(&name), MetaValue::String(ty.name().into()));
            self.metadata(tern_dims_key(&name), MetaValue::Array(dims.iter().map(|&d| MetaValue::U64(d as u64)).collect()));
        }
        self.tensors.push((name, ty, dims.to_vec(), data));
        Ok(self)
    }

    fn alignment(&self) -> usize {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two())
            .map_or(DEFAULT_ALIGNMENT, |a| a as usize)
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let align = self.alignment();
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            out.extend_from_slice(&type_id(value).to_le_bytes());
            put_value(&mut out, key, value)?;
        }
        let mut offset = 0usize;
        for (name, ty, dims, data) in &self.tensors {
            // tern's formats go in as opaque I8 bytes; their type and shape are in the `tern.` keys.
            let (id, dims) = if ty.tern_format().is_some() { (GGUF_I8, vec![data.len()]) } else { (*ty as u32, dims.clone()) };
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for &d in &dims {
                out.extend_from_slice(&(d as u64).to_le_bytes());
            }
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + data.len()).next_multiple_of(align);
        }
        for (_, _, _, data) in &self.tensors {
            out.resize(out.len().next_multiple_of(align), 0);
            out.extend_from_slice(data);
        }
        Ok(out)
    }

    /// Writes the file to `path`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn write(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        use std::io::Write;
        let path = path.as_ref();
        let io = |source| Error::Io { path: path.display().to_string(), source };
        let mut f = std::fs::File::create(path).map_err(io)?;
        f.write_all(&self.to_bytes()?).map_err(io)?;
        f.sync_all().map_err(io)
    }
}
