//! Another place to get model bytes from before the hub: peers on the libp2p mesh that hold the
//! file. The downloader puts its bytes through the same `.part` / resume / sha256 / rename path as
//! the hub's, so a peer can serve only files whose sha256 is known, and a bad or vanished peer
//! costs a fall back to the hub, never a bad file.

use bytes::Bytes;
use futures_util::stream::BoxStream;

use super::hub::RepoInfo;

/// A file some alternative source can serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub size: u64,
    /// Lower-case hex sha256 of the whole file; the bytes are checked against it.
    pub sha256: String,
}

/// Bytes of one file from an offset to its end.
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

    /// The bytes of `file` (the one `locate` described) from `offset` on.
    async fn fetch_range(
        &self,
        repo: &str,
        file: &str,
        remote: &RemoteFile,
        offset: u64,
    ) -> Result<AltStream, AltError>;
}
