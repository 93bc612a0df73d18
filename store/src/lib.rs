//! exo-p2p's model store and downloads: the network side of getting a model onto a node, kept out
//! of the engine (which only opens files).
//!
//! A model reference ([`parse_reference`]) names a local path, a catalog name or a Hugging Face
//! repo (`owner/repo[:QUANT]`). A [`Downloader`] pulls what a node needs of it into the
//! [`ModelStore`] under `EXO_HOME` (default `~/.cache/exo`; layout in [`store`]) over the hub's
//! HTTP protocol (`HF_ENDPOINT`, `HF_TOKEN`), or from an [`AltSource`] (peers) first: each file
//! lands through a `.part` file, resumes with HTTP ranges, and is renamed into place only after
//! its sha256 checks out. Progress goes to [`Progress`] sinks: a [`TerminalReporter`] for people
//! and a [`DownloadTracker`] whose [`DownloadsSnapshot`] the API serves.

pub mod catalog;
pub mod error;
pub mod gguf_name;
pub mod hub;
pub mod manifest;
pub mod progress;
pub mod pull;
pub mod reference;
pub mod reporter;
pub mod select;
pub mod store;

pub use catalog::{CatalogEntry, CATALOG};
pub use error::DownloadError;
pub use hub::{FileMeta, HubClient, HubConfig, LfsInfo, RepoInfo, Sibling, DEFAULT_ENDPOINT};
pub use manifest::{FileRecord, GgufInfo, Manifest, ModelFormat, Partial};
pub use progress::{
    DownloadTracker, DownloadsSnapshot, Fanout, FileProgress, FileStatus, Progress, SOURCE_HUB,
};
pub use pull::{
    AltError, AltSource, AltStream, Downloader, PullOptions, PulledFile, PulledModel, RemoteFile,
    RetryPolicy, MAX_PARALLEL,
};
pub use reference::{parse_reference, HubRef, ModelRef, DEFAULT_QUANT, DEFAULT_REVISION};
pub use reporter::TerminalReporter;
pub use store::{HeldFile, LocalFile, LocalModel, ModelStore, Need, Removed};
