//! The local model store under `EXO_HOME` (default `~/.cache/exo`):
//!
//! ```text
//! EXO_HOME/models/{owner}--{repo}/
//!     .exo-model.json          commit, repo file list, per-file size / sha256 / etag / source
//!     .exo-lock                locked (flock) by the process pulling into this directory
//!     {file}                   each file under its repo path (`Q4_K_M/x-00001-of-00002.gguf`)
//!     {file}.part              a download under way or interrupted (resumed by the next pull)
//!     {file}.part.tag          the sha256 (or git blob id) the .part's bytes belong to
//! ```
//!
//! A GGUF model is opened by its (first) `.gguf` file, a safetensors model by its directory.
//! The hub forbids `--` in names, so `{owner}--{repo}` is unambiguous.

use std::path::{Component, Path, PathBuf};

use exo_protocol::LayerRange;
use serde::{Deserialize, Serialize};

use crate::{
    error::{DownloadError, Result},
    hub::{LfsInfo, RepoInfo, Sibling},
    manifest::{
        mtime_ns, read_gguf_info, FileRecord, GgufInfo, Manifest, ModelFormat, Partial,
        OWN_FILE_PREFIX,
    },
    pull::land::sha256_file,
    reference::{catalog_names, HubRef, ModelRef},
    select::{self, Plan},
};

const LOCK_FILE: &str = ".exo-lock";

/// What of a model a node wants: the weight files of an indexed safetensors model holding some
/// layers, or the byte ranges of a GGUF model's parts holding them (the weights of a safetensors
/// model without an index are always whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    All,
    /// The files (safetensors) or byte ranges (GGUF) holding these layers.
    Layers(LayerRange),
    /// No weights: a safetensors model's settings, tokenizer and index; a GGUF model's headers.
    Metadata,
}

impl From<Option<&LayerRange>> for Need {
    fn from(layers: Option<&LayerRange>) -> Self {
        layers.map_or(Need::All, |r| Need::Layers(*r))
    }
}

#[derive(Debug, Clone)]
pub struct ModelStore {
    root: PathBuf,
}

/// A model in the store, as `exo-p2p models list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalModel {
    pub repo: String,
    pub dir: PathBuf,
    pub revision: Option<String>,
    pub commit: Option<String>,
    pub format: Option<ModelFormat>,
    pub files: Vec<LocalFile>,
    /// Bytes of complete files.
    pub total_size: u64,
    /// Bytes in `.part` files of interrupted downloads.
    pub partial_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFile {
    pub name: String,
    pub size: u64,
    pub sha256: Option<String>,
    /// `"hub"` or the peer it came from.
    pub source: Option<String>,
    /// Architecture and quantization of a GGUF file.
    pub gguf: Option<GgufInfo>,
    /// Only some byte ranges are here (which layers' tensors, and how many bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
}

/// A file this node holds and can serve to peers (for its capability record).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeldFile {
    pub repo: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

/// What `remove` deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    pub repo: String,
    pub files: Vec<String>,
    pub bytes: u64,
    /// Whether the whole model directory went.
    pub whole: bool,
}

impl ModelStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `EXO_HOME`, or `~/.cache/exo`.
    pub fn from_env() -> Self {
        Self::new(Self::default_root())
    }

    pub fn default_root() -> PathBuf {
        if let Some(home) = std::env::var_os("EXO_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(home);
        }
        let home = std::env::var_os("HOME")
            .or_else(|| std::env::var_os("USERPROFILE"))
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        home.join(".cache").join("exo")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }

    /// `EXO_HOME/models/{owner}--{repo}`.
    pub fn repo_dir(&self, repo: &str) -> PathBuf {
        self.models_dir().join(repo.replace('/', "--"))
    }

    /// Where `file` of `repo` lives; refuses names that would leave the model's directory.
    pub fn file_path(&self, repo: &str, file: &str) -> Result<PathBuf> {
        safe_join(&self.repo_dir(repo), repo, file)
    }

    pub fn manifest(&self, repo: &str) -> Result<Option<Manifest>> {
        Manifest::load(&self.repo_dir(repo))
    }

    /// Every model in the store, by repo name.
    pub fn list(&self) -> Result<Vec<LocalModel>> {
        let dir = self.models_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DownloadError::io("read directory", dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            if !entry.path().is_dir() || !name.contains("--") {
                continue;
            }
            let repo = name.replacen("--", "/", 1);
            // A directory left by a pull that fetched nothing (say, a missing quant) is no model.
            if let Some(m) = self
                .describe(&repo)?
                .filter(|m| !m.files.is_empty() || m.partial_bytes > 0)
            {
                out.push(m);
            }
        }
        out.sort_by(|a, b| a.repo.cmp(&b.repo));
        Ok(out)
    }

    /// One model of the store, if present.
    pub fn get(&self, repo: &str) -> Result<Option<LocalModel>> {
        self.describe(repo)
    }

    fn describe(&self, repo: &str) -> Result<Option<LocalModel>> {
        let dir = self.repo_dir(repo);
        if !dir.is_dir() {
            return Ok(None);
        }
        let manifest = Manifest::load(&dir)?;
        let mut files = Vec::new();
        let mut partial_bytes = 0;
        for (name, size) in walk(&dir) {
            if name.ends_with(".part") {
                partial_bytes += size;
                continue;
            }
            if name.ends_with(".part.tag") || name.starts_with(OWN_FILE_PREFIX) {
                continue;
            }
            let rec = manifest.as_ref().and_then(|m| m.files.get(&name));
            let gguf = match rec {
                Some(r) if r.size == size => r.gguf.clone(),
                _ if name.ends_with(".gguf") => read_gguf_info(&dir.join(&name)),
                _ => None,
            };
            let rec = rec.filter(|r| r.size == size);
            let partial = rec.and_then(|r| r.partial.clone());
            files.push(LocalFile {
                sha256: rec.filter(|r| r.is_whole()).map(|r| r.sha256.clone()),
                // A partial file is sparse: count the bytes written, not its length.
                size: partial.as_ref().map_or(size, Partial::bytes),
                partial,
                source: rec.map(|r| r.source.clone()),
                name,
                gguf,
            });
        }
        files.sort_by(|a, b| a.name.cmp(&b.name));
        let format = if files.iter().any(|f| f.name.ends_with(".gguf")) {
            Some(ModelFormat::Gguf)
        } else if files.iter().any(|f| f.name.ends_with(".safetensors")) {
            Some(ModelFormat::Safetensors)
        } else {
            None
        };
        Ok(Some(LocalModel {
            repo: manifest
                .as_ref()
                .map_or(repo.to_string(), |m| m.repo.clone()),
            total_size: files.iter().map(|f| f.size).sum(),
            revision: manifest.as_ref().map(|m| m.revision.clone()),
            commit: manifest.and_then(|m| m.commit),
            dir,
            format,
            files,
            partial_bytes,
        }))
    }

    /// The path to open for `r` when everything it needs is already here (`layers`: only the
    /// safetensors shards for that range), without touching the network.
    pub fn resolve(&self, r: &ModelRef, layers: Option<&LayerRange>) -> Result<Option<PathBuf>> {
        self.resolve_for(r, Need::from(layers))
    }

    /// [`Self::resolve`] for a node that fetches its shard's weights later: a safetensors model
    /// with an index needs only its settings, tokenizer and index here.
    pub fn resolve_metadata(&self, r: &ModelRef) -> Result<Option<PathBuf>> {
        self.resolve_for(r, Need::Metadata)
    }

    pub(crate) fn resolve_for(&self, r: &ModelRef, need: Need) -> Result<Option<PathBuf>> {
        match r {
            ModelRef::Local(p) if p.exists() => Ok(Some(p.clone())),
            ModelRef::Local(p) => Err(DownloadError::BadReference(
                p.display().to_string(),
                catalog_names(),
            )),
            ModelRef::Hub(h) => {
                let Some(m) = self.manifest(&h.repo)? else {
                    return Ok(None);
                };
                if m.revision != h.revision {
                    return Ok(None);
                }
                let dir = self.repo_dir(&h.repo);
                let Some((path, needed)) = self.needed_files(&m, h, need)? else {
                    return Ok(None);
                };
                let all_held = self.has_all(&dir, &m, &needed, need);
                Ok(all_held.then(|| if path.is_empty() { dir } else { dir.join(path) }))
            }
        }
    }

    /// The files `h` needs according to the recorded listing, with the path to open (relative),
    /// or `None` when that cannot be known yet (the safetensors index is not here).
    fn needed_files(
        &self,
        m: &Manifest,
        h: &HubRef,
        need: Need,
    ) -> Result<Option<(String, Vec<String>)>> {
        let names: Vec<String> = m.siblings.iter().map(|s| s.rfilename.clone()).collect();
        let dir = self.repo_dir(&h.repo);
        let plan = select::plan(&h.repo, &names, h.quant.as_deref())?;
        let index = match plan.index() {
            Some(index) if !self.is_held(&dir, m, index) => return Ok(None),
            Some(index) => {
                let path = dir.join(index);
                Some(std::fs::read(&path).map_err(|e| DownloadError::io("read", &path, e))?)
            }
            None => None,
        };
        select::wanted(&h.repo, &plan, index.as_deref(), need).map(Some)
    }

    /// Whether every one of `files` is here as far as `need` wants it: whole, or (GGUF, for
    /// layers or metadata) with the byte ranges wanted written.
    fn has_all(&self, dir: &Path, m: &Manifest, files: &[String], need: Need) -> bool {
        let gguf = files.iter().all(|f| f.ends_with(".gguf"));
        if need == Need::All || !gguf {
            return files.iter().all(|f| self.is_held(dir, m, f));
        }
        let mut headers = Vec::new();
        for f in files {
            let Some(rec) = m.files.get(f) else {
                return false;
            };
            let path = dir.join(f);
            if !std::fs::metadata(&path).is_ok_and(|md| md.len() == rec.size) {
                return false;
            }
            match exo_engine::gguf::read_header(&path) {
                Ok(h) => headers.push((h, rec)),
                Err(_) => return false,
            }
        }
        let hs: Vec<_> = headers.iter().map(|(h, _)| h).collect();
        let wants = select::gguf_wants(&hs, need);
        headers
            .iter()
            .zip(wants)
            .all(|((_, rec), want)| match &rec.partial {
                None => true,
                Some(p) => select::missing(&want, &p.ranges()).is_empty(),
            })
    }

    fn is_held(&self, dir: &Path, m: &Manifest, file: &str) -> bool {
        let Some(rec) = m.files.get(file).filter(|r| r.is_whole()) else {
            return false;
        };
        std::fs::metadata(dir.join(file)).is_ok_and(|md| md.is_file() && md.len() == rec.size)
    }

    /// Deletes a model: the whole directory, or with an explicit `:QUANT` only that
    /// quantization's GGUF files.
    pub fn remove(&self, r: &ModelRef) -> Result<Removed> {
        let h = match r {
            ModelRef::Hub(h) => h,
            ModelRef::Local(p) => {
                return Err(DownloadError::NotDownloaded(p.display().to_string()));
            }
        };
        let dir = self.repo_dir(&h.repo);
        if !dir.is_dir() {
            return Err(DownloadError::NotDownloaded(h.to_string()));
        }
        let manifest = Manifest::load(&dir)?;
        if let (Some(quant), Some(mut m)) = (&h.quant, manifest) {
            let names: Vec<String> = m.siblings.iter().map(|s| s.rfilename.clone()).collect();
            if let Plan::Gguf { files, .. } = select::plan(&h.repo, &names, Some(quant))? {
                let mut removed = Removed {
                    repo: h.repo.clone(),
                    files: Vec::new(),
                    bytes: 0,
                    whole: false,
                };
                for f in files {
                    let path = safe_join(&dir, &h.repo, &f)?;
                    if let Ok(md) = std::fs::metadata(&path) {
                        std::fs::remove_file(&path)
                            .map_err(|e| DownloadError::io("remove", &path, e))?;
                        removed.bytes += md.len();
                        removed.files.push(f.clone());
                    }
                    for ext in [".part", ".part.tag"] {
                        let mut p = path.clone().into_os_string();
                        p.push(ext);
                        let _ = std::fs::remove_file(PathBuf::from(p));
                    }
                    m.files.remove(&f);
                }
                if removed.files.is_empty() {
                    return Err(DownloadError::NotDownloaded(h.to_string()));
                }
                let left = walk(&dir)
                    .iter()
                    .any(|(n, _)| !n.starts_with(OWN_FILE_PREFIX));
                if left {
                    m.save(&dir)?;
                } else {
                    std::fs::remove_dir_all(&dir)
                        .map_err(|e| DownloadError::io("remove", &dir, e))?;
                    removed.whole = true;
                }
                tracing::info!(repo = %h.repo, files = ?removed.files, "removed");
                return Ok(removed);
            }
        }
        let files = walk(&dir);
        std::fs::remove_dir_all(&dir).map_err(|e| DownloadError::io("remove", &dir, e))?;
        tracing::info!(repo = %h.repo, "removed");
        Ok(Removed {
            repo: h.repo.clone(),
            bytes: files.iter().map(|(_, s)| s).sum(),
            files: files
                .into_iter()
                .map(|(n, _)| n)
                .filter(|n| !n.starts_with(OWN_FILE_PREFIX))
                .collect(),
            whole: true,
        })
    }

    /// Every complete file held, with its sha256, for the node's capability record. Hashes come
    /// from the metadata file; a file changed since it was hashed (size or mtime) is hashed
    /// again and the record updated. May read whole files: call it off the async runtime.
    pub fn held_files(&self) -> Result<Vec<HeldFile>> {
        let mut out = Vec::new();
        for model in self.list()? {
            let dir = self.repo_dir(&model.repo);
            let Some(mut m) = Manifest::load(&dir)? else {
                continue;
            };
            let mut changed = false;
            let mut gone = Vec::new();
            for (name, rec) in m.files.iter_mut() {
                let path = safe_join(&dir, &m.repo, name)?;
                if !rec.is_whole() {
                    // Its bytes are not its sha256's: nothing to offer peers as that file.
                    if !path.exists() {
                        gone.push(name.clone());
                    }
                    continue;
                }
                let Ok(md) = std::fs::metadata(&path) else {
                    gone.push(name.clone());
                    continue;
                };
                let mtime = mtime_ns(&md);
                if md.len() != rec.size || mtime != rec.mtime_ns {
                    tracing::info!(file = %path.display(), "changed since hashed; hashing again");
                    rec.sha256 = sha256_file(&path)?;
                    rec.size = md.len();
                    rec.mtime_ns = mtime;
                    changed = true;
                }
                out.push(HeldFile {
                    repo: m.repo.clone(),
                    file: name.clone(),
                    size: rec.size,
                    sha256: rec.sha256.clone(),
                });
            }
            for name in gone {
                m.files.remove(&name);
                changed = true;
            }
            if changed {
                m.save(&dir)?;
            }
        }
        Ok(out)
    }

    /// One held file, for serving it to a peer: its path and what it is.
    pub fn held_file(&self, repo: &str, file: &str) -> Result<Option<(PathBuf, HeldFile)>> {
        let Some(m) = self.manifest(repo)? else {
            return Ok(None);
        };
        let Some(rec) = m.files.get(file).filter(|r| r.is_whole()) else {
            return Ok(None);
        };
        let path = self.file_path(repo, file)?;
        let ok = std::fs::metadata(&path).is_ok_and(|md| md.len() == rec.size);
        Ok(ok.then(|| {
            (
                path,
                HeldFile {
                    repo: m.repo.clone(),
                    file: file.to_string(),
                    size: rec.size,
                    sha256: rec.sha256.clone(),
                },
            )
        }))
    }

    /// The repo listing recorded at the last pull, with sha256 and size for held files: what a
    /// node answers a peer's `AltSource::repo_info` with.
    pub fn repo_info(&self, repo: &str, revision: &str) -> Result<Option<RepoInfo>> {
        let Some(m) = self.manifest(repo)? else {
            return Ok(None);
        };
        if m.revision != revision && m.commit.as_deref() != Some(revision) {
            return Ok(None);
        }
        let siblings = m
            .siblings
            .iter()
            .map(
                |s| match m.files.get(&s.rfilename).filter(|r| r.is_whole()) {
                    Some(rec) => Sibling {
                        rfilename: s.rfilename.clone(),
                        size: Some(rec.size),
                        blob_id: s.blob_id.clone(),
                        lfs: Some(LfsInfo {
                            sha256: rec.sha256.clone(),
                            size: rec.size,
                        }),
                    },
                    None => s.clone(),
                },
            )
            .collect();
        Ok(Some(RepoInfo {
            sha: m.commit.clone(),
            siblings,
        }))
    }

    /// Takes the directory's pull lock, waiting while another pull (in this process or another)
    /// holds it; the OS releases it when the holder exits, even when killed.
    pub(crate) async fn lock_repo(&self, repo: &str) -> Result<std::fs::File> {
        let dir = self.repo_dir(repo);
        std::fs::create_dir_all(&dir)
            .map_err(|e| DownloadError::io("create directory", &dir, e))?;
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DownloadError::io("open", &path, e))?;
        let mut waited = false;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) => {
                    if !waited {
                        tracing::info!(repo, "waiting for another pull of this model to finish");
                        waited = true;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(DownloadError::io("lock", &path, e));
                }
            }
        }
    }

    /// Records a file that just landed (re-reading the metadata file first, so concurrent pulls
    /// of one repo in this process do not lose each other's records).
    pub(crate) fn record_file(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
        mut rec: FileRecord,
    ) -> Result<()> {
        let dir = self.repo_dir(repo);
        let path = safe_join(&dir, repo, file)?;
        if let Ok(md) = std::fs::metadata(&path) {
            rec.mtime_ns = mtime_ns(&md);
        }
        if file.ends_with(".gguf") && rec.gguf.is_none() {
            rec.gguf = read_gguf_info(&path);
        }
        let mut m = Manifest::load(&dir)?.unwrap_or_else(|| Manifest::new(repo, revision));
        m.files.insert(file.to_string(), rec);
        m.save(&dir)
    }

    /// Records the revision's commit and listing at the start of a pull.
    pub(crate) fn record_listing(&self, repo: &str, revision: &str, info: &RepoInfo) -> Result<()> {
        let dir = self.repo_dir(repo);
        std::fs::create_dir_all(&dir)
            .map_err(|e| DownloadError::io("create directory", &dir, e))?;
        let mut m = Manifest::load(&dir)?.unwrap_or_else(|| Manifest::new(repo, revision));
        m.revision = revision.to_string();
        m.commit = info.sha.clone();
        m.siblings = info.siblings.clone();
        m.save(&dir)
    }
}

/// `dir/file` for a repo path from the hub or a peer: only plain relative components.
pub(crate) fn safe_join(dir: &Path, repo: &str, file: &str) -> Result<PathBuf> {
    let unsafe_name = || DownloadError::UnsafeFileName {
        repo: repo.into(),
        file: file.into(),
    };
    if file.is_empty() || file.contains('\\') || file.contains('\0') {
        return Err(unsafe_name());
    }
    let rel = Path::new(file);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(unsafe_name());
    }
    Ok(dir.join(rel))
}

/// Regular files under `dir`, as (relative path with `/`, size).
fn walk(dir: &Path) -> Vec<(String, u64)> {
    fn go(base: &Path, dir: &Path, out: &mut Vec<(String, u64)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                go(base, &path, out);
            } else if md.is_file() {
                let rel = path.strip_prefix(base).unwrap_or(&path);
                let name = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                out.push((name, md.len()));
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let s = ModelStore::new("/x");
        assert_eq!(s.repo_dir("a/b"), PathBuf::from("/x/models/a--b"));
        assert_eq!(
            s.file_path("a/b", "Q4/m.gguf").unwrap(),
            PathBuf::from("/x/models/a--b/Q4/m.gguf")
        );
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "a\\b", "./a"] {
            assert!(s.file_path("a/b", bad).is_err(), "{bad}");
        }
    }
}
