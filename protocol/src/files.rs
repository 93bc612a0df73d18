//! `/exo-p2p/files/1`: model files served by the peers that hold them, in chunks, so a LAN
//! downloads a model from the internet once. The receiver verifies the whole file's sha256
//! (advertised in capability records) before keeping it.

use serde::{Deserialize, Serialize};

use crate::PROTOCOL_VERSION;

/// Largest chunk a node sends in one reply.
pub const MAX_CHUNK_BYTES: u32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileRequest {
    pub v: u16,
    pub body: FileRequestBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FileRequestBody {
    /// The repository listing the peer recorded when it pulled (commit, files, sizes, hashes).
    Listing { repo: String, revision: String },
    /// `len` bytes of `file` from `offset` (at most [`MAX_CHUNK_BYTES`]).
    Chunk {
        repo: String,
        file: String,
        offset: u64,
        len: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileResponse {
    pub v: u16,
    pub body: FileResponseBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FileResponseBody {
    /// The listing as the hub's JSON, or none when the peer has not pulled that repository.
    Listing(Option<String>),
    Chunk {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// Size of the whole file.
        size: u64,
    },
    Error(String),
}

impl FileRequest {
    pub fn new(body: FileRequestBody) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            body,
        }
    }
}

impl FileResponse {
    pub fn new(body: FileResponseBody) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            body,
        }
    }
}
