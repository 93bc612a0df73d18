//! The GGUF header: magic, version, metadata key/values and tensor infos, parsed from bytes.
//!
//! Parsing works on a prefix of a file: when the bytes run out it says how many it needs
//! ([`HeaderError::Truncated`]), so a downloader can fetch a remote file's header alone.
//! Layout (GGUF v1–v3, little-endian): `"GGUF"`, version u32, tensor count, key/value count
//! (u64; u32 in v1), the key/values, the tensor infos, then padding to `general.alignment`
//! (default 32) where the tensor data starts.

use std::collections::{HashMap, HashSet};

use super::types::GgmlType;

pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's limits (GGML_MAX_DIMS; GGUF's caps on strings and arrays): a corrupt count fails here
/// instead of asking for gigabytes.
const MAX_DIMS: u32 = 4;
const MAX_LEN: u64 = 1 << 30;
const MAX_DEPTH: usize = 16;

/// Why bytes are not a GGUF header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the header needs at least {needed} bytes, only {have} are there")]
    Truncated { needed: u64, have: u64 },
    #[error("it starts with {0:02x?}, not the GGUF magic")]
    NotGguf([u8; 4]),
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, HeaderError>;

/// A metadata value, of any of GGUF's value types.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
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
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type holding a value that fits.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => v.try_into().ok(),
            Value::I16(v) => v.try_into().ok(),
            Value::I32(v) => v.try_into().ok(),
            Value::I64(v) => v.try_into().ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| v.try_into().ok()),
        }
    }

    /// Any number, floats and integers.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor is and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub ggml_type: GgmlType,
    /// ggml's order: `dims[0]` is the innermost (row) length.
    pub dims: Vec<u64>,
    /// From the start of the file's tensor data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Bytes of the tensor's data.
    pub fn bytes(&self) -> u64 {
        self.ggml_type.bytes_for(self.elements())
    }

    /// The shape outermost first, as candle (and numpy) write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// The layer a `blk.N.*` tensor belongs to.
    pub fn layer(&self) -> Option<u32> {
        self.name
            .strip_prefix("blk.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    }
}

/// A parsed GGUF header.
#[derive(Debug, Clone)]
pub struct Header {
    pub version: u32,
    pub metadata: HashMap<String, Value>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the tensor data section starts in the file.
    pub data_offset: u64,
}

impl Header {
    /// Parses the header at the start of `bytes` (a whole file or a prefix of one).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut c = Cursor {
            buf: bytes,
            pos: 0,
            v1: false,
        };
        let magic: [u8; 4] = c.take(4)?.try_into().expect("4 bytes");
        if &magic != b"GGUF" {
            return Err(if magic == *b"FUGG" {
                HeaderError::Invalid("big-endian GGUF files are not supported".into())
            } else {
                HeaderError::NotGguf(magic)
            });
        }
        let version = c.u32()?;
        match version {
            1 => c.v1 = true,
            2 | 3 => {}
            v => return Err(invalid(format!("unsupported GGUF version {v}"))),
        }
        let n_tensors = c.len()?;
        let n_kv = c.len()?;
        if n_tensors > MAX_LEN || n_kv > MAX_LEN {
            return Err(invalid(format!(
                "implausible counts: {n_tensors} tensors, {n_kv} metadata keys"
            )));
        }
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(invalid(format!("metadata key `{key}` appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(invalid(format!("bad general.alignment {v:?}"))),
            },
        };
        let mut tensors = Vec::with_capacity(n_tensors.min(1 << 16) as usize);
        let mut names = HashSet::new();
        for _ in 0..n_tensors {
            let t = c.tensor_info()?;
            if t.offset % alignment != 0 {
                return Err(invalid(format!(
                    "tensor `{}` starts at offset {}, not a multiple of the alignment {alignment}",
                    t.name, t.offset
                )));
            }
            if !names.insert(t.name.clone()) {
                return Err(invalid(format!("tensor `{}` appears twice", t.name)));
            }
            tensors.push(t);
        }
        let data_offset = (c.pos as u64).next_multiple_of(alignment);
        Ok(Header {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// Bytes from the start of the file to the end of the last tensor: the file's size.
    pub fn file_size(&self) -> u64 {
        self.data_offset
            + self
                .tensors
                .iter()
                .map(|t| t.offset + t.bytes())
                .max()
                .unwrap_or(0)
    }

    /// The byte range of tensor `t` in the file.
    pub fn range(&self, t: &TensorInfo) -> std::ops::Range<u64> {
        let start = self.data_offset + t.offset;
        start..start + t.bytes()
    }
}

fn invalid(s: String) -> HeaderError {
    HeaderError::Invalid(s)
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// GGUF v1 writes lengths and dimensions as u32.
    v1: bool,
}

impl<'a> Cursor<'a> {
    fn need(&self, n: u64) -> Result<()> {
        let needed = self.pos as u64 + n;
        if needed > self.buf.len() as u64 {
            return Err(HeaderError::Truncated {
                needed,
                have: self.buf.len() as u64,
            });
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        self.need(n as u64)?;
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn len(&mut self) -> Result<u64> {
        if self.v1 {
            self.u32().map(u64::from)
        } else {
            self.u64()
        }
    }

    fn string(&mut self) -> Result<String> {
        let n = self.len()?;
        if n > MAX_LEN {
            return Err(invalid(format!("string of {n} bytes")));
        }
        self.need(n)?;
        // Token texts are not always valid UTF-8; keep what can be read, as llama.cpp does.
        Ok(String::from_utf8_lossy(self.take(n as usize)?).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(invalid(format!("bool value {b}"))),
            },
            8 => Value::String(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(invalid("arrays nested too deep".into()));
                }
                let elem = self.u32()?;
                let n = self.len()?;
                if n > MAX_LEN {
                    return Err(invalid(format!("array of {n} values")));
                }
                // Each value takes at least a byte: a count past the end is a short read,
                // found before allocating for it.
                self.need(n)?;
                let mut values = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    values.push(self.value(elem, depth + 1)?);
                }
                Value::Array(values)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            t => return Err(invalid(format!("unknown metadata value type {t}"))),
        })
    }

    fn tensor_info(&mut self) -> Result<TensorInfo> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        if n_dims > MAX_DIMS {
            return Err(invalid(format!("tensor `{name}` has {n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.len()?);
        }
        let id = self.u32()?;
        let ggml_type = GgmlType::from_id(id).ok_or_else(|| {
            invalid(format!(
                "tensor `{name}` has ggml type id {id}, which ggml does not define"
            ))
        })?;
        let offset = self.u64()?;
        let elements = dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .filter(|&n| n < 1 << 50)
            .ok_or_else(|| invalid(format!("tensor `{name}` has dimensions {dims:?}")))?;
        let row = dims.first().copied().unwrap_or(1);
        if row % ggml_type.block_size() != 0 || elements % ggml_type.block_size() != 0 {
            return Err(invalid(format!(
                "tensor `{name}` has rows of {row} values, not a multiple of {ggml_type}'s \
                 block of {}",
                ggml_type.block_size()
            )));
        }
        Ok(TensorInfo {
            name,
            ggml_type,
            dims,
            offset,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal GGUF v3 writer for tests: metadata as `(key, type id, value bytes)`.
    pub(crate) fn write_header(
        kv: &[(&str, u32, Vec<u8>)],
        tensors: &[(&str, &[u64], u32, u64)],
    ) -> Vec<u8> {
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend((s.len() as u64).to_le_bytes());
            b.extend(s.as_bytes());
        };
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((kv.len() as u64).to_le_bytes());
        for (k, ty, v) in kv {
            s(&mut b, k);
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        for (name, dims, ty, offset) in tensors {
            s(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            for d in *dims {
                b.extend(d.to_le_bytes());
            }
            b.extend(ty.to_le_bytes());
            b.extend(offset.to_le_bytes());
        }
        b
    }

    pub(crate) fn string_value(s: &str) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s.as_bytes());
        b
    }

    #[test]
    fn reads_every_value_type_and_tensor_info() {
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend(2u64.to_le_bytes());
        arr.extend(string_value("a"));
        arr.extend(string_value("bé"));
        let kv = vec![
            ("u8", 0, vec![7]),
            ("i8", 1, vec![0xff]),
            ("u16", 2, 513u16.to_le_bytes().to_vec()),
            ("i16", 3, (-2i16).to_le_bytes().to_vec()),
            ("u32", 4, 70000u32.to_le_bytes().to_vec()),
            ("i32", 5, (-3i32).to_le_bytes().to_vec()),
            ("f32", 6, 1.5f32.to_le_bytes().to_vec()),
            ("bool", 7, vec![1]),
            ("str", 8, string_value("qwen2")),
            ("arr", 9, arr),
            ("u64", 10, (1u64 << 40).to_le_bytes().to_vec()),
            ("i64", 11, (-5i64).to_le_bytes().to_vec()),
            ("f64", 12, 0.25f64.to_le_bytes().to_vec()),
            ("general.alignment", 4, 64u32.to_le_bytes().to_vec()),
        ];
        let bytes = write_header(
            &kv,
            &[
                ("blk.3.attn_q.weight", &[256, 4], 12, 0),
                ("token_embd.weight", &[64, 10], 20, 640),
            ],
        );
        let h = Header::parse(&bytes).unwrap();
        let m = |k: &str| h.metadata.get(k).unwrap();
        assert_eq!(m("u8"), &Value::U8(7));
        assert_eq!(m("i8").as_i64(), Some(-1));
        assert_eq!(m("i8").as_u64(), None);
        assert_eq!(m("u16").as_u64(), Some(513));
        assert_eq!(m("i16").as_f64(), Some(-2.0));
        assert_eq!(m("u32").as_u64(), Some(70000));
        assert_eq!(m("i32").as_i64(), Some(-3));
        assert_eq!(m("f32").as_f64(), Some(1.5));
        assert_eq!(m("bool").as_bool(), Some(true));
        assert_eq!(m("str").as_str(), Some("qwen2"));
        let a: Vec<_> = m("arr")
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(a, ["a", "bé"]);
        assert_eq!(m("u64").as_u64(), Some(1 << 40));
        assert_eq!(m("i64").as_i64(), Some(-5));
        assert_eq!(m("f64").as_f64(), Some(0.25));
        assert_eq!(h.alignment, 64);
        assert_eq!(h.data_offset % 64, 0);
        assert!(h.data_offset >= bytes.len() as u64);
        let q = &h.tensors[0];
        assert_eq!(
            (q.ggml_type.name(), q.shape(), q.bytes(), q.layer()),
            ("Q4_K", vec![4, 256], 4 * 144, Some(3))
        );
        let e = &h.tensors[1];
        assert_eq!(
            (e.ggml_type.name(), e.bytes(), e.layer()),
            ("IQ4_NL", 20 * 18, None)
        );
        assert_eq!(h.range(e), h.data_offset + 640..h.data_offset + 640 + 360);
        assert_eq!(h.file_size(), h.data_offset + 1000);
    }

    #[test]
    fn a_short_prefix_says_how_much_it_needs() {
        let bytes = write_header(
            &[("str", 8, string_value("hello world"))],
            &[("t", &[32], 0, 0)],
        );
        for cut in 0..bytes.len() {
            match Header::parse(&bytes[..cut]) {
                Err(HeaderError::Truncated { needed, have }) => {
                    assert!(needed > cut as u64 && needed <= bytes.len() as u64, "{cut}");
                    assert_eq!(have, cut as u64);
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
        assert!(Header::parse(&bytes).is_ok());
    }

    #[test]
    fn bad_headers_are_named() {
        assert_eq!(
            Header::parse(b"[package]\nname").unwrap_err(),
            HeaderError::NotGguf(*b"[pac")
        );
        let err = |kv: &[(&str, u32, Vec<u8>)], t: &[(&str, &[u64], u32, u64)]| {
            Header::parse(&write_header(kv, t)).unwrap_err().to_string()
        };
        assert!(err(&[], &[("w", &[32], 99, 0)]).contains("ggml type id 99"));
        assert!(err(&[], &[("w", &[100], 12, 0)]).contains("not a multiple of Q4_K's block of 256"));
        assert!(err(&[], &[("w", &[32], 0, 3)]).contains("alignment"));
        assert!(err(&[], &[("w", &[32], 0, 0), ("w", &[32], 0, 128)]).contains("`w` appears twice"));
        assert!(err(&[("k", 42, vec![])], &[]).contains("value type 42"));
        // An array claiming more values than there are bytes is a short read, not an allocation.
        let mut huge = 0u32.to_le_bytes().to_vec();
        huge.extend((1u64 << 29).to_le_bytes());
        let e = Header::parse(&write_header(&[("a", 9, huge)], &[])).unwrap_err();
        assert!(matches!(e, HeaderError::Truncated { .. }), "{e:?}");
    }
}
