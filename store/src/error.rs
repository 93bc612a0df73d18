//! What a pull, a store operation or a reference can fail at; every variant names the repo, file,
//! URL or path involved so the message alone tells the user what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(
        "`{0}` is neither an existing file nor a model reference (owner/repo[:QUANT] or a \
         catalog name such as {1})"
    )]
    BadReference(String, String),
    #[error(
        "access to {repo} denied by {url} (HTTP {status}{}): the model is gated or private (or \
         does not exist); {}",
        message.as_deref().map(|m| format!(", \"{m}\"")).unwrap_or_default(),
        if *token_set {
            "HF_TOKEN is set but that token has no access: accept the model's license on its \
             page and check the token's permissions"
        } else {
            "set HF_TOKEN to a Hugging Face access token (and accept the model's license on its \
             page)"
        }
    )]
    Unauthorized {
        repo: String,
        url: String,
        status: u16,
        token_set: bool,
        message: Option<String>,
    },
    #[error("repository {repo} not found at {endpoint} (HTTP 404)")]
    RepoNotFound { repo: String, endpoint: String },
    #[error("revision {revision} of {repo} not found (HTTP 404)")]
    RevisionNotFound { repo: String, revision: String },
    #[error("file {file} not found in {repo} at revision {revision} (HTTP 404 from {url})")]
    FileNotFound {
        repo: String,
        revision: String,
        file: String,
        url: String,
    },
    #[error("HTTP {status} from {url}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Http {
        status: u16,
        url: String,
        message: Option<String>,
    },
    #[error("network error fetching {url}: {reason}")]
    Network { url: String, reason: String },
    #[error("gave up on {file} of {repo} after {attempts} attempts: {last}")]
    RetriesExhausted {
        repo: String,
        file: String,
        attempts: u32,
        last: Box<DownloadError>,
    },
    #[error("unexpected response from {url}: {reason}")]
    Protocol { url: String, reason: String },
    #[error("{file} of {repo} is not a usable GGUF file: {reason}")]
    BadGguf {
        repo: String,
        file: String,
        reason: String,
    },
    #[error("no GGUF file with quantization {quant} in {repo}; available: {available}")]
    QuantNotFound {
        repo: String,
        quant: String,
        available: String,
    },
    #[error("{repo} has no GGUF or safetensors model files")]
    NoModelFiles { repo: String },
    #[error("{repo}: {reason}")]
    BadIndex { repo: String, reason: String },
    #[error("{repo} refers to an unsafe file name `{file}`")]
    UnsafeFileName { repo: String, file: String },
    #[error(
        "checksum mismatch for {file} of {repo} from {source_name}: expected {expected}, got \
         {actual}; the partial file was deleted"
    )]
    Checksum {
        repo: String,
        file: String,
        source_name: String,
        expected: String,
        actual: String,
    },
    #[error("disk full while writing {path}: free some space (or set EXO_HOME to a bigger disk)")]
    DiskFull { path: PathBuf },
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad metadata file {path}: {reason}")]
    BadMetadata { path: PathBuf, reason: String },
    #[error("model {0} is not downloaded")]
    NotDownloaded(String),
    #[error("alternative source {source_name} failed for {file} of {repo}: {reason}")]
    Alt {
        repo: String,
        file: String,
        source_name: String,
        reason: String,
    },
}

pub type Result<T, E = DownloadError> = std::result::Result<T, E>;

impl DownloadError {
    /// Failures worth retrying with backoff: server errors, rate limits, dropped connections.
    /// 4xx answers (auth, not found) and local problems are final.
    pub fn is_transient(&self) -> bool {
        match self {
            DownloadError::Http { status, .. } => {
                *status >= 500 || *status == 429 || *status == 408
            }
            DownloadError::Network { .. } => true,
            DownloadError::Protocol { .. } => true,
            _ => false,
        }
    }

    /// The hub (or network) could not be reached even after retries: a good time to use what
    /// the store already has.
    pub fn is_unreachable(&self) -> bool {
        match self {
            DownloadError::RetriesExhausted { last, .. } => last.is_transient(),
            e => e.is_transient(),
        }
    }

    /// An I/O error on `path`, told apart when the disk is full.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        if is_disk_full(&source) {
            DownloadError::DiskFull { path }
        } else {
            DownloadError::Io { op, path, source }
        }
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    const ENOSPC: i32 = 28;
    e.kind() == std::io::ErrorKind::StorageFull
        || e.kind() == std::io::ErrorKind::QuotaExceeded
        || (cfg!(unix) && e.raw_os_error() == Some(ENOSPC))
}
