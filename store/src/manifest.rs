//! The small metadata file kept beside a pulled model (`.exo-model.json`): the commit pulled, the
//! repo's file list at that commit, and for each file held its size, sha256 and hub etag. It makes
//! a re-pull of an unchanged model a no-op, lets the node advertise files by sha256 without
//! re-hashing them on every start, and lets a peer answer another node's repo listing.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::UNIX_EPOCH,
};

use exo_protocol::LayerRange;
use serde::{Deserialize, Serialize};

use crate::{
    error::{DownloadError, Result},
    hub::Sibling,
};

pub const MANIFEST_FILE: &str = ".exo-model.json";
/// Files of exo-p2p's own in a model directory start with this (metadata, lock).
pub const OWN_FILE_PREFIX: &str = ".exo-";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelFormat {
    Gguf,
    Safetensors,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub repo: String,
    pub revision: String,
    /// The commit the files were pulled at.
    pub commit: Option<String>,
    /// The repo's files at that commit (with hub sizes and hashes where known).
    #[serde(default)]
    pub siblings: Vec<Sibling>,
    /// Files held, by repo path.
    #[serde(default)]
    pub files: BTreeMap<String, FileRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub size: u64,
    /// Lower-case hex sha256 of the file's bytes (of a [`Partial`] file: what the listing says
    /// the whole file's is; its bytes cannot be checked against it).
    pub sha256: String,
    /// The hub's etag when it came from the hub: the sha256 for LFS files, the git blob sha1
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// `"hub"` or the peer id it came from.
    pub source: String,
    /// Modification time (ns since the epoch) when hashed: a changed file gets re-hashed.
    #[serde(default)]
    pub mtime_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf: Option<GgufInfo>,
    /// Set when only some byte ranges of a GGUF file are here (a node that runs some layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
}

impl FileRecord {
    /// All of the file is here (and was verified against its sha256).
    pub fn is_whole(&self) -> bool {
        self.partial.is_none()
    }
}

/// A GGUF file held in part: a sparse file of the full size in which only `held` is written
/// (the header, and the tensors of `layers`), so the engine opens it as usual and reads only
/// the tensors of those layers. Nothing but the header's parse and the sizes checks its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// Byte ranges written, sorted and disjoint, as `[start, end)`.
    pub held: Vec<[u64; 2]>,
    /// The layer ranges whose tensors are all in `held` (none: the header only).
    #[serde(default)]
    pub layers: Vec<LayerRange>,
}

impl Partial {
    pub fn ranges(&self) -> Vec<std::ops::Range<u64>> {
        self.held.iter().map(|[a, b]| *a..*b).collect()
    }

    /// Adds `r` to what is held.
    pub fn add(&mut self, r: std::ops::Range<u64>) {
        let mut all = self.ranges();
        all.push(r);
        self.held = crate::select::merge(all, 0)
            .into_iter()
            .map(|r| [r.start, r.end])
            .collect();
    }

    /// Bytes written.
    pub fn bytes(&self) -> u64 {
        self.held.iter().map(|[a, b]| b - a).sum()
    }
}

/// What a GGUF header says about the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GgufInfo {
    /// `general.architecture`.
    pub arch: String,
    /// `general.file_type` as llama.cpp names it (`Q4_K_M`), or `type N` when unknown.
    pub quant: Option<String>,
}

impl Manifest {
    pub fn new(repo: &str, revision: &str) -> Self {
        Self {
            repo: repo.into(),
            revision: revision.into(),
            commit: None,
            siblings: Vec::new(),
            files: BTreeMap::new(),
        }
    }

    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DownloadError::io("read", path, e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DownloadError::BadMetadata {
                path,
                reason: e.to_string(),
            })
    }

    /// Writes through a temporary file and a rename, so a crash leaves the old or the new one.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(self).expect("manifest serialises");
        std::fs::write(&tmp, json).map_err(|e| DownloadError::io("write", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| DownloadError::io("rename", &path, e))
    }

    /// Sizes of the files held.
    pub fn total_size(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    pub fn sibling(&self, name: &str) -> Option<&Sibling> {
        self.siblings.iter().find(|s| s.rfilename == name)
    }
}

/// Modification time of `meta` in ns since the epoch (0 when the platform has none).
pub fn mtime_ns(meta: &std::fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Reads architecture and quantization from a GGUF file's header (not its tensors).
pub fn read_gguf_info(path: &Path) -> Option<GgufInfo> {
    let header = exo_engine::gguf::read_header(path)
        .map_err(|e| tracing::debug!("no GGUF header: {e}"))
        .ok()?;
    let meta = |k: &str| header.metadata.get(k);
    let arch = meta("general.architecture")?.as_str()?.to_string();
    let quant = meta("general.file_type").and_then(|v| {
        let n = v.as_u64()? as u32;
        Some(
            crate::gguf_name::file_type_name(n)
                .map(str::to_string)
                .unwrap_or_else(|| format!("type {n}")),
        )
    });
    Some(GgufInfo { arch, quant })
}
