//! The engine's GGUF reader: one model across all the parts of a split file.
//!
//! [`Gguf::open`] takes a `.gguf` file, or the first part of a split one
//! (`name-00001-of-00005.gguf`, written by `llama-gguf-split`: the first part holds the metadata,
//! every part some tensors, each part its own header and data section). It maps every part
//! into memory, reads each header ([`Header`]: metadata of every value type, tensor infos of every
//! ggml type, [`GgmlType`]), checks that the parts belong together and that every tensor lies
//! inside its file, and then hands out tensors as raw bytes ([`TensorData`]) straight from the
//! mapping, or as candle `QTensor`s for the types candle knows. Tensor bytes are read once, when
//! a tensor is asked for; nothing else of the data section is touched.

mod header;
pub mod split;
mod types;

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
};

use candle_core::{quantized::QTensor, Device};
use memmap2::Mmap;

pub use header::{Header, HeaderError, TensorInfo, Value, DEFAULT_ALIGNMENT};
pub use types::GgmlType;

/// What can go wrong reading a GGUF model; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read model {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF file: {reason}")]
    NotGguf { path: PathBuf, reason: String },
    #[error("{path}: bad GGUF header: {source}")]
    Header { path: PathBuf, source: HeaderError },
    #[error(
        "{path} is truncated: tensor `{tensor}` ends at byte {end}, the file has {size} bytes"
    )]
    Truncated {
        path: PathBuf,
        tensor: String,
        end: u64,
        size: u64,
    },
    #[error("{first} is part 1 of a {count}-part GGUF, but part {no} ({path}) is missing")]
    MissingPart {
        first: PathBuf,
        path: PathBuf,
        no: u32,
        count: u32,
    },
    #[error("{path}: {reason}")]
    Split { path: PathBuf, reason: String },
    #[error(
        "tensor `{tensor}` of {path} has type {ty}, which exo-p2p cannot load yet \
         (this build loads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K…Q6_K, IQ4_NL, IQ4_XS, MXFP4)"
    )]
    UnsupportedType {
        path: PathBuf,
        tensor: String,
        ty: GgmlType,
    },
    #[error("tensor `{tensor}` of {path}: {reason}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
}

type Result<T, E = GgufError> = std::result::Result<T, E>;

/// One file of a model: its header and its bytes.
struct Part {
    path: PathBuf,
    header: Header,
    map: Mmap,
}

/// A GGUF model, whole or split, mapped into memory.
pub struct Gguf {
    parts: Vec<Part>,
    /// Tensor name → (part, index into that part's tensor infos).
    index: HashMap<String, (usize, usize)>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("parts", &self.part_paths().collect::<Vec<_>>())
            .field("tensors", &self.index.len())
            .finish()
    }
}

/// One tensor's bytes, as stored (ggml blocks), with what they are.
pub struct TensorData<'a> {
    pub info: &'a TensorInfo,
    pub bytes: &'a [u8],
    /// The file holding them.
    pub path: &'a Path,
}

impl TensorData<'_> {
    /// The tensor as a candle `QTensor` (a copy), for the types candle holds; other types are
    /// an [`GgufError::UnsupportedType`] naming the tensor.
    pub fn to_qtensor(&self, device: &Device) -> Result<QTensor> {
        let ty = self.info.ggml_type;
        let dtype = ty.candle().ok_or_else(|| GgufError::UnsupportedType {
            path: self.path.to_path_buf(),
            tensor: self.info.name.clone(),
            ty,
        })?;
        candle_core::quantized::ggml_file::qtensor_from_ggml(
            dtype,
            self.bytes,
            self.info.shape(),
            device,
        )
        .map_err(|e| GgufError::Tensor {
            path: self.path.to_path_buf(),
            tensor: self.info.name.clone(),
            reason: e.to_string().lines().next().unwrap_or_default().to_string(),
        })
    }
}

/// Maps `path` read-only.
fn map(path: &Path) -> Result<Mmap> {
    let io = |source| GgufError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    if file.metadata().map_err(io)?.len() == 0 {
        return Err(GgufError::NotGguf {
            path: path.to_path_buf(),
            reason: "the file is empty".into(),
        });
    }
    // SAFETY: mapped read-only; exo-p2p never writes a model file it has opened, and a model
    // store replaces files by renaming, which leaves this mapping on the old inode.
    unsafe { Mmap::map(&file) }.map_err(io)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Header> {
    Header::parse(bytes).map_err(|e| match e {
        HeaderError::NotGguf(_) => GgufError::NotGguf {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
        source => GgufError::Header {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Reads the header of one GGUF file (a whole model or one part), without its tensor data.
pub fn read_header(path: &Path) -> Result<Header> {
    parse(path, &map(path)?)
}

impl Part {
    fn open(path: &Path) -> Result<Self> {
        let map = map(path)?;
        let header = parse(path, &map)?;
        let size = map.len() as u64;
        for t in &header.tensors {
            let end = header.range(t).end;
            if end > size {
                return Err(GgufError::Truncated {
                    path: path.to_path_buf(),
                    tensor: t.name.clone(),
                    end,
                    size,
                });
            }
        }
        Ok(Part {
            path: path.to_path_buf(),
            header,
            map,
        })
    }

    fn meta_u64(&self, key: &str) -> Option<u64> {
        self.header.metadata.get(key).and_then(Value::as_u64)
    }

    fn split_err(&self, reason: String) -> GgufError {
        GgufError::Split {
            path: self.path.clone(),
            reason,
        }
    }
}

impl Gguf {
    /// Opens a GGUF model: a single file, or the first part of a split one with all its parts
    /// beside it.
    pub fn open(path: &Path) -> Result<Self> {
        let first = Part::open(path)?;
        let count = first.meta_u64(split::KEY_COUNT).unwrap_or(1);
        let mut parts = vec![first];
        if count > 1 {
            let count = u32::try_from(count)
                .map_err(|_| parts[0].split_err(format!("{} is {count}", split::KEY_COUNT)))?;
            Self::open_parts(&mut parts, count)?;
        }
        let mut index = HashMap::new();
        for (p, part) in parts.iter().enumerate() {
            for (i, t) in part.header.tensors.iter().enumerate() {
                if index.insert(t.name.clone(), (p, i)).is_some() {
                    return Err(
                        part.split_err(format!("tensor `{}` is also in an earlier part", t.name))
                    );
                }
            }
        }
        if let Some(n) = parts[0].meta_u64(split::KEY_TENSORS) {
            if n != index.len() as u64 {
                return Err(parts[0].split_err(format!(
                    "{} says {n} tensors, its {} part(s) hold {}",
                    split::KEY_TENSORS,
                    parts.len(),
                    index.len()
                )));
            }
        }
        Ok(Gguf { parts, index })
    }

    /// Opens parts 2..=count beside the first one (`parts[0]`) and checks each one's split keys.
    fn open_parts(parts: &mut Vec<Part>, count: u32) -> Result<()> {
        let first = &parts[0];
        let no = first.meta_u64(split::KEY_NO).unwrap_or(0);
        let file_name = first
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parsed = split::parse_part_name(&file_name);
        if no != 0 {
            let hint = parsed
                .map(|(prefix, _, _)| format!("; open {}", split::part_name(prefix, 1, count)))
                .unwrap_or_default();
            return Err(first.split_err(format!(
                "is part {} of a {count}-part GGUF, not the first{hint}",
                no + 1
            )));
        }
        let prefix = match parsed {
            Some((prefix, 1, c)) if c == count => prefix.to_string(),
            _ => {
                return Err(first.split_err(format!(
                    "is the first of {count} parts, but its name does not end in `-00001-of-{count:05}.gguf`, \
                     so the other parts cannot be found"
                )))
            }
        };
        let dir = first.path.parent().unwrap_or(Path::new("")).to_path_buf();
        let first_path = first.path.clone();
        for no in 2..=count {
            let path = dir.join(split::part_name(&prefix, no, count));
            if !path.exists() {
                return Err(GgufError::MissingPart {
                    first: first_path,
                    path,
                    no,
                    count,
                });
            }
            let part = Part::open(&path)?;
            let (c, n) = (
                part.meta_u64(split::KEY_COUNT),
                part.meta_u64(split::KEY_NO),
            );
            if c != Some(count.into()) {
                return Err(part.split_err(format!(
                    "{} is {}, but {} says {count}",
                    split::KEY_COUNT,
                    c.map_or("missing".into(), |c| c.to_string()),
                    first_path.display()
                )));
            }
            if n != Some((no - 1).into()) {
                return Err(part.split_err(format!(
                    "{} is {}, expected {} for part {no}",
                    split::KEY_NO,
                    n.map_or("missing".into(), |n| n.to_string()),
                    no - 1
                )));
            }
            parts.push(part);
        }
        Ok(())
    }

    /// The file the model was opened from (its first part).
    pub fn path(&self) -> &Path {
        &self.parts[0].path
    }

    /// Every file of the model, first part first.
    pub fn part_paths(&self) -> impl Iterator<Item = &Path> {
        self.parts.iter().map(|p| p.path.as_path())
    }

    /// The model's metadata (the first part's: later parts carry only `split.*` keys).
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.parts[0].header.metadata
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata().get(key)
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        let &(p, i) = self.index.get(name)?;
        Some(&self.parts[p].header.tensors[i])
    }

    /// Every tensor, in file order.
    pub fn tensor_infos(&self) -> impl Iterator<Item = &TensorInfo> {
        self.parts.iter().flat_map(|p| p.header.tensors.iter())
    }

    /// A tensor's bytes, in place in the mapping.
    pub fn tensor(&self, name: &str) -> Option<TensorData<'_>> {
        let &(p, i) = self.index.get(name)?;
        let part = &self.parts[p];
        let info = &part.header.tensors[i];
        let r = part.header.range(info);
        Some(TensorData {
            info,
            bytes: &part.map[r.start as usize..r.end as usize],
            path: &part.path,
        })
    }

    /// Bytes of all tensors.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensor_infos().map(TensorInfo::bytes).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::{header::tests::*, *};

    /// Writes a GGUF with F32 tensors `(name, values)` holding `values`, and its metadata.
    fn write(path: &Path, kv: &[(&str, u32, Vec<u8>)], tensors: &[(&str, Vec<f32>)]) {
        let mut offset = 0;
        let mut infos = Vec::new();
        for (name, v) in tensors {
            infos.push((*name, vec![v.len() as u64], offset));
            offset += (v.len() as u64 * 4).next_multiple_of(32);
        }
        let refs: Vec<_> = infos
            .iter()
            .map(|(n, d, o)| (*n, d.as_slice(), 0u32, *o))
            .collect();
        let mut b = write_header(kv, &refs);
        for (_, v) in tensors {
            b.resize(b.len().next_multiple_of(32), 0);
            b.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        }
        std::fs::write(path, b).unwrap();
    }

    fn split_kv(no: u16, count: u16, tensors: i32) -> Vec<(&'static str, u32, Vec<u8>)> {
        vec![
            (split::KEY_NO, 2, no.to_le_bytes().to_vec()),
            (split::KEY_COUNT, 2, count.to_le_bytes().to_vec()),
            (split::KEY_TENSORS, 5, tensors.to_le_bytes().to_vec()),
        ]
    }

    fn floats(t: &TensorData) -> Vec<f32> {
        t.bytes
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn a_split_model_opens_across_its_parts() {
        let dir = tempfile::tempdir().unwrap();
        let mut kv = split_kv(0, 2, 3);
        kv.push(("general.architecture", 8, string_value("llama")));
        write(
            &dir.path().join("m-00001-of-00002.gguf"),
            &kv,
            &[("a", vec![1.0; 8])],
        );
        write(
            &dir.path().join("m-00002-of-00002.gguf"),
            &split_kv(1, 2, 3),
            &[("b", vec![2.0; 8]), ("c", vec![3.0, 4.0])],
        );
        let g = Gguf::open(&dir.path().join("m-00001-of-00002.gguf")).unwrap();
        assert_eq!(
            g.get("general.architecture").and_then(Value::as_str),
            Some("llama")
        );
        assert_eq!(g.part_paths().count(), 2);
        assert_eq!(floats(&g.tensor("a").unwrap()), vec![1.0; 8]);
        assert_eq!(floats(&g.tensor("c").unwrap()), vec![3.0, 4.0]);
        assert!(g
            .tensor("c")
            .unwrap()
            .path
            .ends_with("m-00002-of-00002.gguf"));
        assert_eq!(g.tensor_bytes(), 18 * 4);
        let q = g.tensor("b").unwrap().to_qtensor(&Device::Cpu).unwrap();
        assert_eq!(q.shape().dims(), &[8]);

        // The second part is not a model on its own.
        let e = Gguf::open(&dir.path().join("m-00002-of-00002.gguf"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is part 2 of a 2-part GGUF, not the first; open m-00001-of-00002.gguf"),
            "{e}"
        );
    }

    #[test]
    fn broken_splits_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        write(
            &p("m-00001-of-00003.gguf"),
            &split_kv(0, 3, 3),
            &[("a", vec![1.0; 8])],
        );
        write(
            &p("m-00002-of-00003.gguf"),
            &split_kv(1, 3, 3),
            &[("b", vec![1.0; 8])],
        );
        let e = Gguf::open(&p("m-00001-of-00003.gguf"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("part 3") && e.contains("m-00003-of-00003.gguf") && e.contains("missing"),
            "{e}"
        );

        write(
            &p("m-00003-of-00003.gguf"),
            &split_kv(2, 4, 3),
            &[("c", vec![1.0; 8])],
        );
        let e = Gguf::open(&p("m-00001-of-00003.gguf"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!(
                "{}: split.count is 4",
                p("m-00003-of-00003.gguf").display()
            )),
            "{e}"
        );

        write(
            &p("m-00003-of-00003.gguf"),
            &split_kv(1, 3, 3),
            &[("c", vec![1.0; 8])],
        );
        let e = Gguf::open(&p("m-00001-of-00003.gguf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("split.no is 1, expected 2"), "{e}");

        write(
            &p("m-00001-of-00003.gguf"),
            &split_kv(0, 3, 5),
            &[("a", vec![1.0; 8])],
        );
        write(
            &p("m-00003-of-00003.gguf"),
            &split_kv(2, 3, 5),
            &[("c", vec![1.0; 8])],
        );
        let e = Gguf::open(&p("m-00001-of-00003.gguf"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("split.tensors.count says 5 tensors, its 3 part(s) hold 3"),
            "{e}"
        );

        // A truncated part names the part and the tensor cut off.
        write(
            &p("m-00001-of-00003.gguf"),
            &split_kv(0, 3, 3),
            &[("a", vec![1.0; 8])],
        );
        let b = std::fs::read(p("m-00002-of-00003.gguf")).unwrap();
        std::fs::write(p("m-00002-of-00003.gguf"), &b[..b.len() - 4]).unwrap();
        let e = Gguf::open(&p("m-00001-of-00003.gguf"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("m-00002-of-00003.gguf is truncated: tensor `b` ends at byte"),
            "{e}"
        );

        // A first part renamed so that its siblings cannot be found.
        std::fs::rename(p("m-00001-of-00003.gguf"), p("renamed.gguf")).unwrap();
        let e = Gguf::open(&p("renamed.gguf")).unwrap_err().to_string();
        assert!(e.contains("does not end in `-00001-of-00003.gguf`"), "{e}");
    }

    #[test]
    fn unloadable_types_are_named_and_bad_files_say_what_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("iq.gguf");
        let mut b = write_header(&[], &[("blk.0.ffn_up.weight", &[256, 2], 16, 0)]);
        b.resize(b.len().next_multiple_of(32) + 2 * 66, 0);
        std::fs::write(&path, &b).unwrap();
        let g = Gguf::open(&path).unwrap();
        let t = g.tensor("blk.0.ffn_up.weight").unwrap();
        assert_eq!((t.bytes.len(), t.info.ggml_type.name()), (132, "IQ2_XXS"));
        let e = t.to_qtensor(&Device::Cpu).unwrap_err().to_string();
        assert!(
            e.starts_with("tensor `blk.0.ffn_up.weight` of") && e.contains("has type IQ2_XXS"),
            "{e}"
        );

        std::fs::write(&path, b"").unwrap();
        let e = Gguf::open(&path).unwrap_err().to_string();
        assert!(e.contains("is not a GGUF file: the file is empty"), "{e}");
        std::fs::write(&path, &b[..40]).unwrap();
        let e = Gguf::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("bad GGUF header: the header needs at least"),
            "{e}"
        );
        let e = Gguf::open(&dir.path().join("nope.gguf"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cannot read model") && e.contains("nope.gguf"),
            "{e}"
        );
    }
}
