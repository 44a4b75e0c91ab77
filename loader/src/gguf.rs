//! GGUF versions 2 and 3: header, metadata, tensor infos, aligned data section.

use tern_core::{TensorType, TernFormat};

use crate::metadata::{MetaValue, Metadata};
use crate::{Bytes, Error, Result};

/// Longest string tern accepts in a GGUF header (a chat template is a few KiB; a token is a few bytes).
pub const MAX_STRING_LEN: u64 = 16 << 20;
/// Most dimensions a GGUF tensor may have.
pub const MAX_DIMS: u32 = 4;
const MAX_TENSORS: u64 = 1 << 20;
const MAX_KEYS: u64 = 1 << 20;
const MAX_ARRAY_DEPTH: usize = 2;
const DEFAULT_ALIGNMENT: u64 = 32;

/// GGUF's `ggml_type` id of `I8`, the type tern's own formats are stored under (as opaque bytes), so that GGUF
/// readers that do not know them can still read the file and skip those tensors.
pub const GGUF_I8: u32 = 24;

/// Metadata key naming the tern format of tensor `name` (`"T4"`), present for every tensor stored in one.
pub fn tern_type_key(name: &str) -> String {
    format!("tern.type.{name}")
}

/// Metadata key holding the GGUF dimensions (`[cols, rows]`) of tern-format tensor `name`.
pub fn tern_dims_key(name: &str) -> String {
    format!("tern.dims.{name}")
}

/// One tensor's entry in the directory: its name, type, dimensions (GGUF order: `dims[0]` is the row length),
/// and where its bytes lie in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: TensorType,
    pub dims: Vec<usize>,
    /// Byte offset of the data from the start of the file.
    pub offset: usize,
    /// Byte length of the data.
    pub size: usize,
}

impl TensorInfo {
    /// Total elements.
    pub fn elements(&self) -> usize {
        self.dims.iter().product()
    }

    /// `(rows, cols)` for a matrix: `cols = dims[0]`, `rows` = the product of the rest.
    pub fn matrix_shape(&self) -> (usize, usize) {
        let cols = self.dims.first().copied().unwrap_or(1);
        (self.elements() / cols.max(1), cols)
    }
}

/// A parsed GGUF file: metadata, tensor directory, and the bytes the tensors are viewed from.
#[derive(Debug)]
pub struct GgufFile {
    pub path: String,
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: usize,
    bytes: Bytes,
}

struct Reader<'a> {
    path: &'a str,
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        match end {
            Some(end) => {
                let s = &self.b[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => {
                Err(Error::Truncated { path: self.path.into(), what: what(), offset: self.pos, needed: n, len: self.b.len() })
            }
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn limit(&self, what: &dyn Fn() -> String, value: u64, limit: u64) -> Result<usize> {
        if value > limit {
            return Err(Error::Limit { path: self.path.into(), what: what(), value, limit });
        }
        usize::try_from(value).map_err(|_| Error::Limit { path: self.path.into(), what: what(), value, limit: usize::MAX as u64 })
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let len = self.limit(&|| format!("length of {}", what()), len, MAX_STRING_LEN)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::BadString { path: self.path.into(), what: what() })
    }

    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn value(&mut self, key: &str, ty: u32, depth: usize) -> Result<MetaValue> {
        let what = || format!("value of {key:?}");
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(&what)?[0]),
            1 => MetaValue::I8(self.array::<1>(&what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            4 => MetaValue::U32(self.u32(&what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            7 => {
                let b = self.array::<1>(&what)?[0];
                if b > 1 {
                    return Err(Error::Format { path: self.path.into(), detail: format!("{} is a bool with byte {b}", what()) });
                }
                MetaValue::Bool(b == 1)
            }
            8 => MetaValue::String(self.string(&what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::Limit {
                        path: self.path.into(),
                        what: format!("array nesting of {key:?}"),
                        value: depth as u64 + 1,
                        limit: MAX_ARRAY_DEPTH as u64,
                    });
                }
                let elem = self.u32(&|| format!("element type of {key:?}"))?;
                let count = self.u64(&|| format!("length of array {key:?}"))?;
                // Every element takes at least one byte, so a count beyond the bytes left is a lie.
                let count = self.limit(&|| format!("length of array {key:?}"), count, self.remaining())?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(key, elem, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(&what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            ty => {
                return Err(Error::UnknownValueType { path: self.path.into(), key: key.into(), ty });
            }
        })
    }
}

/// The type and dimensions of a tensor stored in one of tern's formats: checks the `tern.type.` and
/// `tern.dims.` keys against the I8 byte count the directory gives.
fn tern_tensor(metadata: &Metadata, name: &str, byte_dims: &[usize]) -> Result<(TensorType, Vec<usize>)> {
    let path = || metadata.path.clone();
    let bad = |detail: String| Error::BadTensor { path: path(), tensor: name.into(), detail };
    let type_name = metadata.str(&tern_type_key(name))?;
    let format = TernFormat::from_name(type_name).ok_or_else(|| Error::UnknownTernType {
        path: path(),
        tensor: name.into(),
        name: type_name.into(),
    })?;
    let dims = metadata
        .array(&tern_dims_key(name))?
        .iter()
        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()).filter(|&d| d > 0 && d <= 1 << 40))
        .collect::<Option<Vec<usize>>>()
        .filter(|d| d.len() == 2)
        .ok_or_else(|| bad(format!("{:?} must be two positive integers [cols, rows]", tern_dims_key(name))))?;
    let (cols, rows) = (dims[0], dims[1]);
    if !cols.is_multiple_of(format.row_multiple()) {
        let unit = if format.is_trellis() { "scale block" } else { "block" };
        return Err(bad(format!("row length {cols} is not a multiple of {format}'s {unit} of {}", format.row_multiple())));
    }
    let want = format.tensor_type().data_bytes(rows, cols);
    if byte_dims.len() != 1 || Some(byte_dims[0]) != want {
        return Err(bad(format!(
            "{format} {rows}x{cols} takes {} bytes, but the directory gives I8 dimensions {byte_dims:?}",
            want.map_or("too many".into(), |w| w.to_string())
        )));
    }
    Ok((format.tensor_type(), dims))
}

impl GgufFile {
    /// Maps and parses the GGUF file at `path`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::parse(path.display().to_string(), Bytes::map(path)?)
    }

    /// Parses GGUF `bytes`; `path` names them in errors.
    pub fn parse(path: impl Into<String>, bytes: Bytes) -> Result<Self> {
        let path = path.into();
        let mut r = Reader { path: &path, b: &bytes, pos: 0 };
        let magic = r.take(4, &|| "magic".into())?;
        if magic != b"GGUF" {
            return Err(Error::BadMagic { path: path.clone(), found: magic.to_vec() });
        }
        let version = r.u32(&|| "version".into())?;
        if !(2..=3).contains(&version) {
            return Err(Error::UnsupportedVersion { path: path.clone(), version });
        }
        let n_tensors = r.u64(&|| "tensor count".into())?;
        let n_tensors = r.limit(&|| "tensor count".into(), n_tensors, MAX_TENSORS.min(r.remaining()))?;
        let n_keys = r.u64(&|| "metadata key count".into())?;
        let n_keys = r.limit(&|| "metadata key count".into(), n_keys, MAX_KEYS.min(r.remaining()))?;

        let mut metadata = Metadata::new(path.clone());
        for i in 0..n_keys {
            let key = r.string(&|| format!("name of metadata key {i}"))?;
            let ty = r.u32(&|| format!("value type of {key:?}"))?;
            let value = r.value(&key, ty, 0)?;
            metadata.insert(key, value);
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 16 => a,
                _ => {
                    return Err(Error::Format {
                        path: path.clone(),
                        detail: format!("general.alignment {v} is not a power of two up to 65536"),
                    });
                }
            },
        } as usize;

        let mut infos = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&|| format!("name of tensor {i}"))?;
            let n_dims = r.u32(&|| format!("dimension count of tensor {name:?}"))?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(Error::BadTensor {
                    path: path.clone(),
                    tensor: name,
                    detail: format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)"),
                });
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                let v = r.u64(&|| format!("dimension {d} of tensor {name:?}"))?;
                let v = r.limit(&|| format!("dimension {d} of tensor {name:?}"), v, 1 << 40)?;
                dims.push(v);
            }
            let ty_id = r.u32(&|| format!("type of tensor {name:?}"))?;
            let offset = r.u64(&|| format!("offset of tensor {name:?}"))?;
            infos.push((name, dims, ty_id, offset));
        }

        let data_start = r.pos.div_ceil(alignment).checked_mul(alignment);
        let len = bytes.len();
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, ty_id, offset) in infos {
            let bad = |detail: String| Error::BadTensor { path: path.clone(), tensor: name.clone(), detail };
            let (ty, dims) = match (ty_id, metadata.get(&tern_type_key(&name))) {
                (GGUF_I8, Some(_)) => tern_tensor(&metadata, &name, &dims)?,
                (_, Some(_)) => {
                    return Err(bad(format!("has a {:?} key but is stored as GGUF type {ty_id}, not I8", tern_type_key(&name))));
                }
                (_, None) => {
                    let ty = TensorType::from_gguf_id(ty_id).ok_or_else(|| Error::UnknownTensorType {
                        path: path.clone(),
                        tensor: name.clone(),
                        ty: ty_id,
                    })?;
                    (ty, dims)
                }
            };
            let elements = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
            if elements == 0 {
                return Err(bad(format!("dimensions {dims:?} hold no elements")));
            }
            if dims[0] % ty.block_len() != 0 {
                return Err(bad(format!("row length {} is not a multiple of {ty}'s block of {}", dims[0], ty.block_len())));
            }
            let size = ty.data_bytes(elements / dims[0], dims[0]).ok_or_else(|| bad("size overflows".into()))?;
            if offset % alignment as u64 != 0 {
                return Err(bad(format!("offset {offset} is not a multiple of the alignment {alignment}")));
            }
            let start = data_start.and_then(|s| usize::try_from(offset).ok().and_then(|o| s.checked_add(o)));
            let end = start.and_then(|s| s.checked_add(size)).filter(|&e| e <= len);
            let (Some(start), Some(_)) = (start, end) else {
                return Err(Error::TensorOutOfBounds {
                    path: path.clone(),
                    tensor: name,
                    offset,
                    size: size as u64,
                    len: len as u64,
                });
            };
            tensors.push(TensorInfo { name, ty, dims, offset: start, size });
        }
        Ok(GgufFile { path, version, metadata, tensors, alignment, bytes })
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of tensor `t` (a zero-copy view of the file).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        // Directory entries were checked against the file length when parsed; an entry made elsewhere that
        // does not fit yields no bytes, which every consumer rejects as a length mismatch.
        t.offset.checked_add(t.size).and_then(|end| self.bytes.get(t.offset..end)).unwrap_or(&[])
    }

    /// Size of the whole file in bytes.
    pub fn file_len(&self) -> usize {
        self.bytes.len()
    }
}
