//! Model files over the mesh (`/exo-p2p/files/1`): this node serves the files it holds whole, in
//! chunks at any offset, and [`PeerFiles`] lets the downloader fetch whole files or byte ranges
//! (a shard's tensors) from peers before the hub, so a LAN downloads a model from the internet
//! once. Whole files from a peer go through the downloader's sha256 check like the hub's; a
//! range is checked for its length, from a peer that holds the file at the listed sha256.
//! Files held only in part are not offered.

use std::{
    io::{Read, Seek, SeekFrom},
    time::Duration,
};

use bytes::Bytes;
use exo_protocol::{
    FileOffer, FileRequest, FileRequestBody, FileResponse, FileResponseBody, LfsPointer,
    ListedFile, RepoListing, MAX_CHUNK_BYTES,
};
use exo_store::{
    AltError, AltSource, AltStream, HeldFile, LfsInfo, ModelStore, RemoteFile, RepoInfo, Sibling,
};
use futures::{stream, StreamExt};
use libp2p::PeerId;
use tokio::sync::{mpsc, watch};

use crate::{
    network::{Client, InboundFile},
    topology::Topology,
};

/// The files this node holds, as its capability record offers them to peers.
pub fn offers(held: Vec<HeldFile>) -> Vec<FileOffer> {
    held.into_iter()
        .map(|f| FileOffer {
            repo: f.repo,
            file: f.file,
            size: f.size,
            sha256: f.sha256,
        })
        .collect()
}

/// The store's listing as the wire carries it.
fn to_listing(info: RepoInfo) -> RepoListing {
    RepoListing {
        commit: info.sha,
        files: info
            .siblings
            .into_iter()
            .map(|s| ListedFile {
                name: s.rfilename,
                size: s.size,
                blob_id: s.blob_id,
                lfs: s.lfs.map(|l| LfsPointer {
                    sha256: l.sha256,
                    size: l.size,
                }),
            })
            .collect(),
    }
}

fn from_listing(listing: RepoListing) -> RepoInfo {
    RepoInfo {
        sha: listing.commit,
        siblings: listing
            .files
            .into_iter()
            .map(|f| Sibling {
                rfilename: f.name,
                size: f.size,
                blob_id: f.blob_id,
                lfs: f.lfs.map(|l| LfsInfo {
                    sha256: l.sha256,
                    size: l.size,
                }),
            })
            .collect(),
    }
}

/// Answers peers' file requests from the local store.
pub fn serve(store: ModelStore, client: Client, mut inbound: mpsc::Receiver<InboundFile>) {
    tokio::spawn(async move {
        while let Some(msg) = inbound.recv().await {
            let (store, client) = (store.clone(), client.clone());
            tokio::spawn(async move {
                let req = msg.request.body;
                let response = tokio::task::spawn_blocking(move || answer(&store, req))
                    .await
                    .unwrap_or_else(|e| FileResponseBody::Error(e.to_string()));
                client
                    .respond_file(msg.channel, FileResponse::new(response))
                    .await;
            });
        }
    });
}

fn answer(store: &ModelStore, req: FileRequestBody) -> FileResponseBody {
    match req {
        FileRequestBody::Files { repo, revision } => match store.repo_info(&repo, &revision) {
            Ok(info) => FileResponseBody::Files(info.map(to_listing)),
            Err(e) => FileResponseBody::Error(e.to_string()),
        },
        FileRequestBody::Listing { repo, revision } => match store.repo_info(&repo, &revision) {
            Ok(info) => {
                FileResponseBody::Listing(info.and_then(|i| serde_json::to_string(&i).ok()))
            }
            Err(e) => FileResponseBody::Error(e.to_string()),
        },
        FileRequestBody::Chunk {
            repo,
            file,
            offset,
            len,
        } => {
            let read = || -> Result<FileResponseBody, String> {
                let (path, held) = store
                    .held_file(&repo, &file)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("{repo}/{file} is not held here"))?;
                if offset > held.size {
                    return Err(format!("offset {offset} is past the end of {file}"));
                }
                let len = (len.min(MAX_CHUNK_BYTES) as u64).min(held.size - offset) as usize;
                let mut f = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                f.seek(SeekFrom::Start(offset)).map_err(|e| e.to_string())?;
                let mut data = vec![0u8; len];
                f.read_exact(&mut data).map_err(|e| e.to_string())?;
                Ok(FileResponseBody::Chunk {
                    data,
                    size: held.size,
                })
            };
            read().unwrap_or_else(FileResponseBody::Error)
        }
    }
}

/// Peers as a source of model files for the downloader.
pub struct PeerFiles {
    pub client: Client,
    pub topology: watch::Receiver<Topology>,
    /// How long to wait for a peer holding a repository to show up before giving up on peers.
    pub wait: Duration,
}

impl PeerFiles {
    /// Peers whose capability records say they hold files of `repo` (and `file`, if given).
    fn holders(&self, repo: &str, file: Option<&str>) -> Vec<(PeerId, Option<RemoteFile>)> {
        let topo = self.topology.borrow();
        topo.nodes
            .values()
            .filter(|e| e.record.peer_id != topo.local)
            .filter_map(|e| {
                let held: Vec<_> = e.record.files.iter().filter(|f| f.repo == repo).collect();
                let remote = match file {
                    Some(name) => {
                        let f = held.iter().find(|f| f.file == name)?;
                        Some(RemoteFile {
                            size: f.size,
                            sha256: f.sha256.clone(),
                        })
                    }
                    None if held.is_empty() => return None,
                    None => None,
                };
                Some((e.record.peer_id.parse().ok()?, remote))
            })
            .collect()
    }

    async fn wait_for_holders(&self, repo: &str) -> Vec<PeerId> {
        let mut topo = self.topology.clone();
        let found = tokio::time::timeout(self.wait, async {
            let _ = topo
                .wait_for(|t| {
                    t.nodes
                        .values()
                        .any(|e| e.record.files.iter().any(|f| f.repo == repo))
                })
                .await;
        })
        .await;
        if found.is_err() {
            tracing::debug!(repo, "no peer holds files of this repository");
        }
        self.holders(repo, None)
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }
}

impl PeerFiles {
    /// The listing as builds before [`FileRequestBody::Files`] answer it.
    async fn json_listing(&self, peer: PeerId, repo: &str, revision: &str) -> Option<RepoInfo> {
        let req = FileRequest::new(FileRequestBody::Listing {
            repo: repo.into(),
            revision: revision.into(),
        });
        match self.client.file_request(peer, req).await {
            Ok(FileResponse {
                body: FileResponseBody::Listing(Some(json)),
                ..
            }) => serde_json::from_str(&json).ok(),
            _ => None,
        }
    }
}

#[async_trait::async_trait]
impl AltSource for PeerFiles {
    async fn repo_info(&self, repo: &str, revision: &str) -> Option<RepoInfo> {
        for peer in self.wait_for_holders(repo).await {
            let req = FileRequest::new(FileRequestBody::Files {
                repo: repo.into(),
                revision: revision.into(),
            });
            let info = match self.client.file_request(peer, req).await {
                Ok(FileResponse {
                    body: FileResponseBody::Files(listing),
                    ..
                }) => listing.map(from_listing),
                // A build before `Files` cannot read the request: ask the JSON form.
                _ => self.json_listing(peer, repo, revision).await,
            };
            if let Some(info) = info {
                tracing::info!(repo, %peer, "repository listing from a peer");
                return Some(info);
            }
        }
        None
    }

    async fn locate(&self, repo: &str, file: &str) -> Option<RemoteFile> {
        self.holders(repo, Some(file))
            .into_iter()
            .find_map(|(_, f)| f)
    }

    async fn fetch_range(
        &self,
        repo: &str,
        file: &str,
        remote: &RemoteFile,
        range: std::ops::Range<u64>,
    ) -> Result<AltStream, AltError> {
        let (peer, _) = self
            .holders(repo, Some(file))
            .into_iter()
            .find(|(_, f)| f.as_ref().is_some_and(|f| f.sha256 == remote.sha256))
            .ok_or("no peer holds this version of the file")?;
        tracing::info!(repo, file, %peer, start = range.start, end = range.end, "downloading from a peer");
        let chunk = MAX_CHUNK_BYTES as u64;
        let end = range.end.min(remote.size);
        let offsets = (range.start..end).step_by(chunk as usize);
        let (client, repo, file) = (self.client.clone(), repo.to_string(), file.to_string());
        // Four chunk requests in flight keep a LAN link busy.
        let bytes = stream::iter(offsets)
            .map(move |off| {
                let (client, repo, file) = (client.clone(), repo.clone(), file.clone());
                async move {
                    let req = FileRequest::new(FileRequestBody::Chunk {
                        repo,
                        file,
                        offset: off,
                        len: chunk.min(end - off) as u32,
                    });
                    match client.file_request(peer, req).await {
                        Ok(FileResponse {
                            body: FileResponseBody::Chunk { data, .. },
                            ..
                        }) if !data.is_empty() => Ok(Bytes::from(data)),
                        Ok(FileResponse {
                            body: FileResponseBody::Error(e),
                            ..
                        }) => Err(std::io::Error::other(e)),
                        Ok(_) => Err(std::io::Error::other("unexpected reply from peer")),
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    }
                }
            })
            .buffered(4)
            .boxed();
        Ok(AltStream {
            source: peer.to_string(),
            bytes,
        })
    }
}
