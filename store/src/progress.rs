//! Per-file download progress: a callback trait for whoever shows it, a fan-out, and a shared
//! tracker whose serde snapshot is what the API's `GET /v1/downloads` returns.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

/// Where a file's bytes come from: the hub, or a peer id.
pub const SOURCE_HUB: &str = "hub";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileStatus {
    /// Selected, waiting for a download slot.
    Queued,
    Downloading,
    /// All bytes in; checking the sha256.
    Verifying,
    /// Downloaded and verified.
    Done,
    /// Already in the store at the wanted version; nothing fetched.
    Cached,
    Failed,
}

impl FileStatus {
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            FileStatus::Done | FileStatus::Cached | FileStatus::Failed
        )
    }
}

/// One file's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileProgress {
    pub repo: String,
    pub file: String,
    /// Bytes on disk so far, including what a resumed `.part` already had.
    pub downloaded: u64,
    pub total: Option<u64>,
    /// `"hub"` or the peer id the bytes come from.
    pub source: String,
    pub status: FileStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Told about every change of a file's progress (often: once per received chunk), from the
/// download tasks; implementations must be cheap and must not block.
pub trait Progress: Send + Sync {
    fn update(&self, p: &FileProgress);
}

impl<F: Fn(&FileProgress) + Send + Sync> Progress for F {
    fn update(&self, p: &FileProgress) {
        self(p)
    }
}

/// Sends every update to several sinks (say a terminal reporter and the API's tracker).
#[derive(Default, Clone)]
pub struct Fanout(pub Vec<Arc<dyn Progress>>);

impl Progress for Fanout {
    fn update(&self, p: &FileProgress) {
        for sink in &self.0 {
            sink.update(p);
        }
    }
}

/// What `GET /v1/downloads` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadsSnapshot {
    pub files: Vec<FileProgress>,
}

impl DownloadsSnapshot {
    pub fn downloaded(&self) -> u64 {
        self.files.iter().map(|f| f.downloaded).sum()
    }

    pub fn total(&self) -> Option<u64> {
        self.files.iter().map(|f| f.total).sum()
    }
}

/// Keeps the latest progress of every file seen; share it (`Arc`) between the downloader and the
/// API.
#[derive(Default)]
pub struct DownloadTracker {
    files: Mutex<BTreeMap<(String, String), FileProgress>>,
}

impl DownloadTracker {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn snapshot(&self) -> DownloadsSnapshot {
        let files = self.files.lock().expect("download tracker poisoned");
        DownloadsSnapshot {
            files: files.values().cloned().collect(),
        }
    }

    /// Forgets finished files (done, cached, failed), keeping those still under way.
    pub fn clear_finished(&self) {
        let mut files = self.files.lock().expect("download tracker poisoned");
        files.retain(|_, f| !f.status.is_finished());
    }
}

impl Progress for DownloadTracker {
    fn update(&self, p: &FileProgress) {
        let mut files = self.files.lock().expect("download tracker poisoned");
        let key = (p.repo.clone(), p.file.clone());
        match files.get_mut(&key) {
            Some(f) => f.clone_from(p),
            None => {
                files.insert(key, p.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(file: &str, done: u64, status: FileStatus) -> FileProgress {
        FileProgress {
            repo: "a/b".into(),
            file: file.into(),
            downloaded: done,
            total: Some(10),
            source: SOURCE_HUB.into(),
            status,
            error: None,
        }
    }

    #[test]
    fn tracker_keeps_latest_and_serialises() {
        let t = DownloadTracker::new();
        t.update(&fp("x", 1, FileStatus::Downloading));
        t.update(&fp("x", 5, FileStatus::Downloading));
        t.update(&fp("y", 10, FileStatus::Done));
        let s = t.snapshot();
        assert_eq!(s.files.len(), 2);
        assert_eq!(s.downloaded(), 15);
        assert_eq!(s.total(), Some(20));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["files"][0]["status"], "downloading");
        assert_eq!(json["files"][0]["source"], "hub");
        t.clear_finished();
        assert_eq!(t.snapshot().files.len(), 1);
    }
}
