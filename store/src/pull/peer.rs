//! Another place to get model bytes from before the hub: peers on the libp2p mesh that hold the
//! file. The downloader puts its bytes through the same `.part` / resume / sha256 / rename path as
//! the hub's, so a peer can serve only files whose sha256 is known, and a bad or vanished peer
//! costs a fall back to the hub, never a bad file.

use bytes::Bytes;
use futures_util::{stream::BoxStream, StreamExt, TryStreamExt};

use super::{
    land::{Expected, PartFile},
    Downloader, PullCtx, PulledFile,
};
use crate::{
    error::{DownloadError, Result},
    hub::RepoInfo,
};

/// A file some alternative source can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub size: u64,
    /// Lower-case hex sha256 of the whole file; the bytes are checked against it.
    pub sha256: String,
}

/// Bytes of one file: the range asked for.
pub struct AltStream {
    /// Who serves them (a peer id), recorded in progress and in the store's metadata.
    pub source: String,
    pub bytes: BoxStream<'static, std::io::Result<Bytes>>,
}

pub type AltError = Box<dyn std::error::Error + Send + Sync>;

/// An alternative source of repo listings and file bytes (the node implements it over libp2p).
/// Every method may say "don't know" (`None`/`Err`); the downloader then asks the hub.
#[async_trait::async_trait]
pub trait AltSource: Send + Sync {
    /// The revision's commit and file list, if a peer knows it (from its own pull of the repo;
    /// see `ModelStore::repo_info`). Lets a node pull without reaching the hub at all.
    async fn repo_info(&self, _repo: &str, _revision: &str) -> Option<RepoInfo> {
        None
    }

    /// Size and sha256 of `file` if some peer holds it.
    async fn locate(&self, repo: &str, file: &str) -> Option<RemoteFile>;

    /// Bytes `range` of `file` (the one `locate` described; `range.end` at most its size).
    async fn fetch_range(
        &self,
        repo: &str,
        file: &str,
        remote: &RemoteFile,
        range: std::ops::Range<u64>,
    ) -> Result<AltStream, AltError>;
}

impl Downloader {
    pub(super) async fn fetch_from_alt(
        &self,
        alt: &dyn AltSource,
        ctx: &PullCtx<'_>,
        file: &str,
        known: &Expected,
        part: &PartFile,
    ) -> Result<Option<PulledFile>> {
        let Some(remote) = alt.locate(ctx.repo, file).await else {
            return Ok(None);
        };
        let remote_sha = remote.sha256.to_ascii_lowercase();
        if known.sha256.as_ref().is_some_and(|s| *s != remote_sha)
            || known.size.is_some_and(|s| s != remote.size)
        {
            tracing::debug!(repo = ctx.repo, file, "peers hold another version");
            return Ok(None);
        }
        let expected = Expected {
            sha256: Some(remote_sha),
            git_sha1: None,
            size: Some(remote.size),
        };
        let tag = expected.tag();
        let (mut offset, part_tag) = part.existing().await;
        if offset > 0 && (part_tag != tag || offset > remote.size) {
            part.discard().await;
            offset = 0;
        }
        let alt_err = |source: &str, reason: String| DownloadError::Alt {
            repo: ctx.repo.into(),
            file: file.into(),
            source_name: source.into(),
            reason,
        };
        let stream = alt
            .fetch_range(ctx.repo, file, &remote, offset..remote.size)
            .await
            .map_err(|e| alt_err("alternative source", e.to_string()))?;
        let source = stream.source.clone();
        let (repo, name, src) = (ctx.repo.to_string(), file.to_string(), source.clone());
        let body = stream
            .bytes
            .map_err(move |e| DownloadError::Alt {
                repo: repo.clone(),
                file: name.clone(),
                source_name: src.clone(),
                reason: e.to_string(),
            })
            .boxed();
        let writer = part.open(offset, tag.as_deref(), &expected).await?;
        let writer = self
            .pump(ctx, file, writer, body, Some(remote.size), &source)
            .await?;
        self.land(ctx, file, part, writer, &expected, &source)
            .await
            .map(Some)
    }
}
