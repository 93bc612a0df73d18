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
    /// The repository listing the peer recorded when it pulled (commit, files, sizes, hashes),
    /// answered with [`FileResponseBody::Files`].
    Files { repo: String, revision: String },
    /// The same listing as the hub's JSON text, answered with [`FileResponseBody::Listing`]:
    /// what builds before [`Self::Files`] ask and answer, kept so they still share files.
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
    /// The listing, or none when the peer has not pulled that repository.
    Files(Option<RepoListing>),
    /// The listing as the hub's JSON, or none (the answer to [`FileRequestBody::Listing`]).
    Listing(Option<String>),
    Chunk {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// Size of the whole file.
        size: u64,
    },
    Error(String),
}

/// A repository at one revision as a peer holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoListing {
    /// The commit the revision pointed at when the peer pulled.
    pub commit: Option<String>,
    pub files: Vec<ListedFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListedFile {
    /// Path in the repository.
    pub name: String,
    pub size: Option<u64>,
    /// The git blob sha1.
    pub blob_id: Option<String>,
    /// Git LFS: the content's sha256 and size.
    pub lfs: Option<LfsPointer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LfsPointer {
    pub sha256: String,
    pub size: u64,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};

    #[test]
    fn listings_round_trip_in_both_forms() {
        let listing = RepoListing {
            commit: Some("abc".into()),
            files: vec![ListedFile {
                name: "m.gguf".into(),
                size: Some(7),
                blob_id: Some("b".into()),
                lfs: Some(LfsPointer {
                    sha256: "00".repeat(32),
                    size: 7,
                }),
            }],
        };
        for body in [
            FileResponseBody::Files(Some(listing)),
            FileResponseBody::Files(None),
            FileResponseBody::Listing(Some("{\"sha\":\"abc\"}".into())),
        ] {
            let msg = FileResponse::new(body);
            let back: FileResponse = decode(&encode(&msg).unwrap(), usize::MAX).unwrap();
            assert_eq!(back, msg);
        }
        for body in [
            FileRequestBody::Files {
                repo: "o/r".into(),
                revision: "main".into(),
            },
            FileRequestBody::Listing {
                repo: "o/r".into(),
                revision: "main".into(),
            },
        ] {
            let msg = FileRequest::new(body);
            let back: FileRequest = decode(&encode(&msg).unwrap(), usize::MAX).unwrap();
            assert_eq!(back, msg);
        }
    }
}
