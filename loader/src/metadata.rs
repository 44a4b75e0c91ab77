use std::collections::BTreeMap;
use std::fmt;

use crate::{Error, Result};

/// One GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The GGUF name of the value's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v.into()),
            MetaValue::U16(v) => Some(v.into()),
            MetaValue::U32(v) => Some(v.into()),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            MetaValue::I8(v) => Some(v.into()),
            MetaValue::I16(v) => Some(v.into()),
            MetaValue::I32(v) => Some(v.into()),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
}

impl fmt::Display for MetaValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetaValue::String(s) if s.len() > 60 => {
                write!(f, "{:?}… ({} bytes)", s.chars().take(60).collect::<String>(), s.len())
            }
            MetaValue::String(s) => write!(f, "{s:?}"),
            MetaValue::Array(a) if a.len() > 4 => {
                write!(f, "[{}, {}, … {} items]", a[0], a[1], a.len())
            }
            MetaValue::Array(a) => {
                let items: Vec<String> = a.iter().map(|v| v.to_string()).collect();
                write!(f, "[{}]", items.join(", "))
            }
            MetaValue::Bool(v) => write!(f, "{v}"),
            MetaValue::F32(v) => write!(f, "{v}"),
            MetaValue::F64(v) => write!(f, "{v}"),
            other => write!(f, "{}", other.as_u64().map(|v| v.to_string()).unwrap_or_else(|| format!("{:?}", other))),
        }
    }
}

/// A file's metadata: keys in file order, with typed getters whose errors name the file and key.
#[derive(Debug, Clone, Default)]
pub struct Metadata {
    pub path: String,
    entries: Vec<(String, MetaValue)>,
    index: BTreeMap<String, usize>,
}

impl Metadata {
    /// Empty metadata for the file at `path`.
    pub fn new(path: impl Into<String>) -> Self {
        Metadata { path: path.into(), ..Default::default() }
    }

    /// Adds or replaces `key`.
    pub fn insert(&mut self, key: impl Into<String>, value: MetaValue) {
        let key = key.into();
        if let Some(&i) = self.index.get(&key) {
            self.entries[i].1 = value;
        } else {
            self.index.insert(key.clone(), self.entries.len());
            self.entries.push((key, value));
        }
    }

    /// The entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    fn require(&self, key: &str) -> Result<&MetaValue> {
        self.get(key).ok_or_else(|| Error::MissingKey { path: self.path.clone(), key: key.into() })
    }

    fn wrong(&self, key: &str, expected: &'static str, found: &MetaValue) -> Error {
        Error::KeyType { path: self.path.clone(), key: key.into(), expected, found: found.type_name().into() }
    }

    /// `key` as a non-negative integer.
    pub fn u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| self.wrong(key, "a non-negative integer", v))
    }

    /// `key` as a non-negative integer that fits a `usize`.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.u64(key)?;
        usize::try_from(v).map_err(|_| Error::Limit {
            path: self.path.clone(),
            what: key.into(),
            value: v,
            limit: usize::MAX as u64,
        })
    }

    /// `key` as a number.
    pub fn f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64().ok_or_else(|| self.wrong(key, "a number", v))
    }

    /// `key` as a string.
    pub fn str(&self, key: &str) -> Result<&str> {
        match self.require(key)? {
            MetaValue::String(s) => Ok(s),
            v => Err(self.wrong(key, "a string", v)),
        }
    }

    /// `key` as an array.
    pub fn array(&self, key: &str) -> Result<&[MetaValue]> {
        match self.require(key)? {
            MetaValue::Array(a) => Ok(a),
            v => Err(self.wrong(key, "an array", v)),
        }
    }

    /// `key` as an array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        self.array(key)?
            .iter()
            .map(|v| match v {
                MetaValue::String(s) => Ok(s.as_str()),
                v => Err(self.wrong(key, "an array of strings", v)),
            })
            .collect()
    }
}
