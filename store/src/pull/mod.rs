//! Pulling a model into the store: list the revision, pick the files this node needs, and fetch
//! each (at most 8 at once) from an alternative source (peers) when one has it, else from the
//! hub, with resume, retries and sha256 verification. `hub` fetches from the hub, `peer` from an
//! [`AltSource`], and `land` turns the bytes of either into a verified file in the store.

mod hub;
pub mod land;
mod peer;
mod ranges;

use std::{path::PathBuf, sync::Arc, time::Duration};

use exo_protocol::LayerRange;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use self::land::{is_hex, Expected, PartFile};
pub use self::peer::{AltError, AltSource, AltStream, RemoteFile};
use crate::{
    error::{DownloadError, Result},
    hub::{HubClient, HubConfig, RepoInfo},
    manifest::{FileRecord, Manifest, ModelFormat},
    progress::{Fanout, FileProgress, FileStatus, Progress, SOURCE_HUB},
    reference::{catalog_names, HubRef, ModelRef},
    select::{self, Plan},
    store::{ModelStore, Need},
};

/// The most files downloaded at once.
pub const MAX_PARALLEL: usize = 8;

/// Backoff for transient failures (5xx, 429, dropped connections): `base * 2^n` capped at `max`,
/// plus up to 25% jitter. Attempts that made progress do not count.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << failures.min(16))
            .min(self.max_delay);
        let jitter = exp.mul_f64(rand::random::<f64>() * 0.25);
        exp + jitter
    }

    /// After the `failures`-th transient failure `e` of fetching `file` of `repo`: wait the
    /// backoff, or give up with [`DownloadError::RetriesExhausted`] once the attempts are spent.
    pub async fn back_off(
        &self,
        failures: u32,
        e: DownloadError,
        repo: &str,
        file: &str,
    ) -> Result<()> {
        if failures >= self.max_attempts {
            return Err(DownloadError::RetriesExhausted {
                repo: repo.into(),
                file: file.into(),
                attempts: failures,
                last: Box::new(e),
            });
        }
        let delay = self.delay(failures);
        tracing::warn!(repo, file, "{e}; retrying in {delay:?}");
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Only what these layers need: the safetensors shards holding them, or of a GGUF model
    /// the header and the tensors' byte ranges of each part (a part all of whose tensors are
    /// wanted comes whole, verified by its sha256).
    pub layers: Option<LayerRange>,
    /// No weights: of a safetensors model with an index its settings, tokenizer and index, of
    /// a GGUF model the header of each part. Enough to describe the model and advertise it, for
    /// a node that fetches its shard (with `layers`) once it is given layers to run. The weights
    /// of a safetensors model without an index, which every node needs whole, come as usual.
    pub metadata_only: bool,
    /// Overrides the reference's revision (branch, tag or commit).
    pub revision: Option<String>,
    /// Use the store's copy without asking the hub or peers when it has every file needed.
    pub prefer_local: bool,
}

/// A model ready to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledModel {
    pub repo: String,
    pub revision: String,
    pub commit: Option<String>,
    pub format: ModelFormat,
    /// `EXO_HOME/models/{owner}--{repo}`.
    pub dir: PathBuf,
    /// What to open: the (first) GGUF file, or the safetensors directory.
    pub path: PathBuf,
    pub files: Vec<PulledFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    /// `"hub"` or the peer it came from (for a cached file, where it came from originally).
    pub source: String,
    /// Whether bytes were transferred by this pull (false: already in the store).
    pub fetched: bool,
    /// Bytes transferred by this pull: the size of a file fetched whole, the ranges of one
    /// fetched in part.
    #[serde(default)]
    pub transferred: u64,
}

impl PulledModel {
    /// Bytes transferred by this pull.
    pub fn fetched_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.transferred).sum()
    }
}

/// Downloads models into a [`ModelStore`]. Cheap to share behind an `Arc`.
pub struct Downloader {
    store: ModelStore,
    hub: HubClient,
    alt: Option<Arc<dyn AltSource>>,
    progress: Fanout,
    max_parallel: usize,
    retry: RetryPolicy,
    /// Serialises read-modify-write of metadata files between this process's downloads.
    records: Arc<std::sync::Mutex<()>>,
}

/// What one pull knows while it fetches files.
struct PullCtx<'a> {
    repo: &'a str,
    revision: &'a str,
    info: &'a RepoInfo,
    manifest: Option<Manifest>,
}

impl Downloader {
    pub fn new(store: ModelStore, hub: HubConfig) -> Result<Self> {
        Ok(Self {
            store,
            hub: HubClient::new(hub)?,
            alt: None,
            progress: Fanout::default(),
            max_parallel: MAX_PARALLEL,
            retry: RetryPolicy::default(),
            records: Arc::default(),
        })
    }

    /// `EXO_HOME`, `HF_ENDPOINT`, `HF_TOKEN`.
    pub fn from_env() -> Result<Self> {
        Self::new(ModelStore::from_env(), HubConfig::from_env())
    }

    /// Asks `alt` (peers) for listings and bytes before the hub.
    pub fn with_alt_source(mut self, alt: Arc<dyn AltSource>) -> Self {
        self.alt = Some(alt);
        self
    }

    /// Adds a progress sink (may be called more than once).
    pub fn with_progress(mut self, p: Arc<dyn Progress>) -> Self {
        self.progress.0.push(p);
        self
    }

    /// Files fetched at once, 1..=8.
    pub fn with_max_parallel(mut self, n: usize) -> Self {
        self.max_parallel = n.clamp(1, MAX_PARALLEL);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn store(&self) -> &ModelStore {
        &self.store
    }

    pub fn hub(&self) -> &HubClient {
        &self.hub
    }

    /// Makes `r` available locally and returns what to open. A re-pull of an unchanged revision
    /// asks only for the listing and transfers nothing.
    pub async fn pull(&self, r: &ModelRef, opts: &PullOptions) -> Result<PulledModel> {
        let h = match r {
            ModelRef::Local(p) => return self.local(p),
            ModelRef::Hub(h) => h,
        };
        let mut h = h.clone();
        if let Some(rev) = &opts.revision {
            h.revision = rev.clone();
        }
        let need = if opts.metadata_only {
            Need::Metadata
        } else {
            Need::from(opts.layers.as_ref())
        };
        if opts.prefer_local {
            if let Some(m) = self.stored_copy(&h, need)? {
                tracing::info!(repo = %h.repo, "using the store's copy");
                return Ok(m);
            }
        }
        let info = match self.repo_info(&h).await {
            Ok(info) => info,
            Err(e) if e.is_unreachable() => match self.stored_copy(&h, need)? {
                Some(m) => {
                    tracing::warn!(repo = %h.repo, "cannot reach the hub ({e}); using the store's copy");
                    return Ok(m);
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        // One pull per model directory at a time: two writers on one .part would spoil it.
        let _lock = self.store.lock_repo(&h.repo).await?;
        let manifest = self.store.manifest(&h.repo)?;
        self.store.record_listing(&h.repo, &h.revision, &info)?;
        let ctx = PullCtx {
            repo: &h.repo,
            revision: &h.revision,
            info: &info,
            manifest,
        };
        let names: Vec<String> = info.siblings.iter().map(|s| s.rfilename.clone()).collect();
        let plan = select::plan(&h.repo, &names, h.quant.as_deref())?;
        let format = plan.format();
        tracing::info!(repo = %h.repo, revision = %h.revision, commit = ?info.sha, ?format, "pull");
        let mut done = Vec::new();
        // A safetensors index says which shards hold which layers: fetch it first.
        let index = match plan.index() {
            Some(index) => {
                done.push(self.fetch_file(&ctx, index).await?);
                let path = self.store.file_path(&h.repo, index)?;
                Some(
                    tokio::fs::read(&path)
                        .await
                        .map_err(|e| DownloadError::io("read", &path, e))?,
                )
            }
            None => None,
        };
        let (open, mut wanted) = select::wanted(&h.repo, &plan, index.as_deref(), need)?;
        wanted.retain(|f| Some(f.as_str()) != plan.index());
        let open = if open.is_empty() {
            self.store.repo_dir(&h.repo)
        } else {
            self.store.file_path(&h.repo, &open)?
        };
        if matches!(plan, Plan::Gguf { .. }) && need != Need::All {
            done.extend(self.fetch_gguf_part(&ctx, &wanted, need).await?);
            return Ok(self.pulled(&h, &info, format, open, done));
        }
        for f in &wanted {
            self.report(&ctx, f, 0, None, SOURCE_HUB, FileStatus::Queued, None);
        }
        // Owned names: a closure over borrowed ones makes this future not provably `Send`
        // (rust-lang/rust#102211), and nodes pull inside spawned tasks.
        let ctx = &ctx;
        let fetched: Vec<PulledFile> = futures_util::stream::iter(wanted.iter().cloned())
            .map(|f| async move { self.fetch_file(ctx, &f).await })
            .buffer_unordered(self.max_parallel)
            .try_collect()
            .await?;
        done.extend(fetched);
        Ok(self.pulled(&h, &info, format, open, done))
    }

    fn pulled(
        &self,
        h: &HubRef,
        info: &RepoInfo,
        format: ModelFormat,
        path: PathBuf,
        mut files: Vec<PulledFile>,
    ) -> PulledModel {
        files.sort_by(|a, b| a.name.cmp(&b.name));
        PulledModel {
            repo: h.repo.clone(),
            revision: h.revision.clone(),
            commit: info.sha.clone(),
            format,
            dir: self.store.repo_dir(&h.repo),
            path,
            files,
        }
    }

    fn local(&self, p: &std::path::Path) -> Result<PulledModel> {
        if !p.exists() {
            return Err(DownloadError::BadReference(
                p.display().to_string(),
                catalog_names(),
            ));
        }
        let format = if p.is_dir() {
            ModelFormat::Safetensors
        } else {
            ModelFormat::Gguf
        };
        Ok(PulledModel {
            repo: String::new(),
            revision: String::new(),
            commit: None,
            format,
            dir: p.parent().map(PathBuf::from).unwrap_or_default(),
            path: p.to_path_buf(),
            files: Vec::new(),
        })
    }

    /// The store's copy when it has every file `h` needs.
    fn stored_copy(&self, h: &HubRef, need: Need) -> Result<Option<PulledModel>> {
        let r = ModelRef::Hub(h.clone());
        let Some(path) = self.store.resolve_for(&r, need)? else {
            return Ok(None);
        };
        let Some(m) = self.store.manifest(&h.repo)? else {
            return Ok(None);
        };
        let format = if path.is_dir() {
            ModelFormat::Safetensors
        } else {
            ModelFormat::Gguf
        };
        Ok(Some(PulledModel {
            repo: h.repo.clone(),
            revision: m.revision.clone(),
            commit: m.commit.clone(),
            format,
            dir: self.store.repo_dir(&h.repo),
            path,
            files: m
                .files
                .iter()
                .map(|(name, rec)| PulledFile {
                    name: name.clone(),
                    size: rec.size,
                    sha256: rec.sha256.clone(),
                    source: rec.source.clone(),
                    fetched: false,
                    transferred: 0,
                })
                .collect(),
        }))
    }

    /// The revision's listing: from peers when they know it (a pull then needs no hub at all),
    /// else from the hub, retrying transient failures.
    async fn repo_info(&self, h: &HubRef) -> Result<RepoInfo> {
        if let Some(alt) = &self.alt {
            if let Some(info) = alt.repo_info(&h.repo, &h.revision).await {
                tracing::debug!(repo = %h.repo, "listing from an alternative source");
                return Ok(info);
            }
        }
        let mut failures = 0;
        loop {
            match self.hub.repo_info(&h.repo, &h.revision).await {
                Err(e) if e.is_transient() => {
                    failures += 1;
                    self.retry
                        .back_off(failures, e, &h.repo, "the file list")
                        .await?;
                }
                other => return other,
            }
        }
    }

    /// One file: already here, from an alternative source, or from the hub.
    async fn fetch_file(&self, ctx: &PullCtx<'_>, file: &str) -> Result<PulledFile> {
        let result = self.fetch_file_inner(ctx, file).await;
        if let Err(e) = &result {
            self.report(
                ctx,
                file,
                0,
                None,
                SOURCE_HUB,
                FileStatus::Failed,
                Some(e.to_string()),
            );
        }
        result
    }

    async fn fetch_file_inner(&self, ctx: &PullCtx<'_>, file: &str) -> Result<PulledFile> {
        let dest = self.store.file_path(ctx.repo, file)?;
        let known = known(ctx.info, file);
        if let Some(rec) = ctx.manifest.as_ref().and_then(|m| m.files.get(file)) {
            if is_current(rec, &dest, &known, ctx.info.sha.as_deref()).await {
                return Ok(self.already_held(ctx, file, rec.clone()));
            }
        }
        let part = PartFile::new(dest);
        if let Some(alt) = &self.alt {
            match self
                .fetch_from_alt(alt.as_ref(), ctx, file, &known, &part)
                .await
            {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => tracing::warn!(repo = ctx.repo, file, "{e}; falling back to the hub"),
            }
        }
        self.fetch_from_hub(ctx, file, &known, &part).await
    }

    /// A file the store already holds intact: reported as cached, nothing fetched.
    fn already_held(&self, ctx: &PullCtx<'_>, file: &str, rec: FileRecord) -> PulledFile {
        self.report(
            ctx,
            file,
            rec.size,
            Some(rec.size),
            &rec.source,
            FileStatus::Cached,
            None,
        );
        PulledFile {
            name: file.into(),
            size: rec.size,
            sha256: rec.sha256,
            source: rec.source,
            fetched: false,
            transferred: 0,
        }
    }

    async fn record(&self, ctx: &PullCtx<'_>, file: &str, rec: FileRecord) -> Result<()> {
        // Reading a GGUF header and writing JSON is blocking work.
        let (store, lock) = (self.store.clone(), self.records.clone());
        let (repo, revision, file) = (
            ctx.repo.to_string(),
            ctx.revision.to_string(),
            file.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            let _guard = lock.lock().expect("record lock poisoned");
            store.record_file(&repo, &revision, &file, rec)
        })
        .await
        .expect("record task panicked")
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        ctx: &PullCtx<'_>,
        file: &str,
        downloaded: u64,
        total: Option<u64>,
        source: &str,
        status: FileStatus,
        error: Option<String>,
    ) {
        if self.progress.0.is_empty() {
            return;
        }
        self.progress.update(&FileProgress {
            repo: ctx.repo.into(),
            file: file.into(),
            downloaded,
            total,
            source: source.into(),
            status,
            error,
        });
    }
}

/// What the listing says a file is (sizes and hashes come with `?blobs=true` or from peers).
fn known(info: &RepoInfo, file: &str) -> Expected {
    let Some(s) = info.siblings.iter().find(|s| s.rfilename == file) else {
        return Expected::default();
    };
    match &s.lfs {
        Some(lfs) => Expected {
            sha256: Some(lfs.sha256.to_ascii_lowercase()),
            git_sha1: None,
            size: Some(lfs.size),
        },
        None => Expected {
            sha256: None,
            git_sha1: s.blob_id.clone().filter(|b| is_hex(b, 40)),
            size: s.size,
        },
    }
}

/// Whether the held file is the one the listing wants, without any request.
async fn is_current(
    rec: &FileRecord,
    dest: &std::path::Path,
    known: &Expected,
    commit: Option<&str>,
) -> bool {
    let on_disk = tokio::fs::metadata(dest)
        .await
        .is_ok_and(|m| m.len() == rec.size);
    if !on_disk || !rec.is_whole() {
        return false;
    }
    if let Some(sha) = &known.sha256 {
        return *sha == rec.sha256;
    }
    if let Some(git) = &known.git_sha1 {
        return rec.etag.as_ref() == Some(git);
    }
    commit.is_some() && rec.commit.as_deref() == commit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            max_attempts: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let d: Vec<_> = (0..6).map(|i| p.delay(i)).collect();
        assert!(d[0] >= Duration::from_millis(100) && d[0] <= Duration::from_millis(125));
        assert!(d[2] >= Duration::from_millis(400) && d[2] <= Duration::from_millis(500));
        assert!(d[5] >= Duration::from_secs(1) && d[5] <= Duration::from_millis(1250));
    }
}
