//! A GGUF model in part, for a node that runs some of its layers: each part's header first
//! (a growing prefix until it parses), then only the byte ranges of the tensors the layers read
//! ([`select::gguf_wants`]), from a peer holding the whole file or else the hub with HTTP
//! `Range`. The bytes go into a sparse file of the part's full size at its real name, so the
//! engine opens it as usual; the ranges written are recorded ([`Partial`]) after each chunk, so
//! an interrupted pull resumes where it stopped. A part whose every tensor is wanted comes whole
//! through the usual verified path, and a partial file that ends up complete is hashed and
//! becomes whole. What a range cannot be checked against (no sha256 of a slice exists) is
//! checked as far as it goes: the header parses, its tensors fit the listed size, each range
//! arrives at its length, and the file's etag has not changed.

use std::ops::Range;

use bytes::BytesMut;
use exo_engine::gguf::{Header, HeaderError};
use futures_util::StreamExt;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{known, land::Expected, Downloader, PullCtx, PulledFile};
use crate::{
    error::{DownloadError, Result},
    hub::Opened,
    manifest::{FileRecord, Partial},
    progress::{FileStatus, SOURCE_HUB},
    pull::land::sha256_file,
    select,
    store::Need,
};

/// The most bytes fetched (and recorded) at once: the most an interruption loses.
const CHUNK: u64 = 64 << 20;
/// The first guess at a header's length; it grows until the header parses.
const FIRST_HEADER_BYTES: u64 = 1 << 20;

/// One part as this pull found or made it.
struct Held {
    file: String,
    header: Header,
    rec: FileRecord,
    transferred: u64,
}

impl Downloader {
    /// Fetches what `need` (layers or metadata) wants of the GGUF parts `files` (in order).
    pub(super) async fn fetch_gguf_part(
        &self,
        ctx: &PullCtx<'_>,
        files: &[String],
        need: Need,
    ) -> Result<Vec<PulledFile>> {
        let mut held = Vec::with_capacity(files.len());
        for f in files {
            held.push(self.header_of(ctx, f).await?);
        }
        let headers: Vec<&Header> = held.iter().map(|h| &h.header).collect();
        let wants = select::gguf_wants(&headers, need);
        let mut out = Vec::with_capacity(files.len());
        for (h, want) in held.into_iter().zip(wants) {
            let every = select::gguf_ranges(&h.header, Need::All, true);
            let all_wanted = select::missing(&every, &want).is_empty();
            if h.rec.is_whole() || (need != Need::Metadata && all_wanted) {
                // Every tensor of this part is wanted: the whole file, checked by its sha256.
                let mut f = self.fetch_file(ctx, &h.file).await?;
                f.transferred += h.transferred;
                out.push(f);
                continue;
            }
            out.push(self.fill(ctx, h, &want, need).await?);
        }
        Ok(out)
    }

    /// The part's header: read from the held file (whole, or partial of this version), else
    /// fetched into a new sparse file of the listed size.
    async fn header_of(&self, ctx: &PullCtx<'_>, file: &str) -> Result<Held> {
        let dest = self.store.file_path(ctx.repo, file)?;
        let expected = known(ctx.info, file);
        let rec = ctx.manifest.as_ref().and_then(|m| m.files.get(file));
        let on_disk = tokio::fs::metadata(&dest).await.ok().map(|m| m.len());
        if let Some(rec) = rec.filter(|r| {
            on_disk == Some(r.size) && expected.sha256.as_ref().is_none_or(|s| *s == r.sha256)
        }) {
            let path = dest.clone();
            if let Ok(Ok(header)) =
                tokio::task::spawn_blocking(move || exo_engine::gguf::read_header(&path)).await
            {
                return Ok(Held {
                    file: file.into(),
                    header,
                    rec: rec.clone(),
                    transferred: 0,
                });
            }
        }
        let (Some(size), Some(sha256)) = (expected.size, expected.sha256.clone()) else {
            // Without a size and hash nothing of it can be fetched in part: fetch it whole.
            tracing::info!(
                repo = ctx.repo,
                file,
                "the listing gives no size and sha256; fetching the file whole"
            );
            let f = self.fetch_file(ctx, file).await?;
            let path = dest.clone();
            let header = tokio::task::spawn_blocking(move || exo_engine::gguf::read_header(&path))
                .await
                .expect("header task panicked")
                .map_err(|e| self.bad_gguf(ctx, file, e.to_string()))?;
            let rec = self
                .store
                .manifest(ctx.repo)?
                .and_then(|m| m.files.get(file).cloned())
                .ok_or_else(|| self.bad_gguf(ctx, file, "not recorded after its pull".into()))?;
            return Ok(Held {
                file: file.into(),
                header,
                rec,
                transferred: f.transferred,
            });
        };
        // A growing prefix, each request for the bytes after the last one.
        let mut bytes = Vec::new();
        let mut len = FIRST_HEADER_BYTES.min(size);
        let (header, source) = loop {
            let at = bytes.len() as u64;
            let (more, from) = self.fetch_bytes(ctx, file, at..len, &expected).await?;
            bytes.extend_from_slice(&more);
            match Header::parse(&bytes) {
                Ok(h) => break (h, from),
                Err(HeaderError::Truncated { needed, .. }) if len < size => {
                    len = needed.max(len * 2).min(size);
                }
                Err(e) => return Err(self.bad_gguf(ctx, file, e.to_string())),
            }
        };
        let transferred = bytes.len() as u64;
        if header.file_size() > size {
            return Err(self.bad_gguf(
                ctx,
                file,
                format!(
                    "its header puts tensors up to byte {}, but the file has {size} bytes",
                    header.file_size()
                ),
            ));
        }
        let mut f = self.open_sparse(&dest, size, true).await?;
        write_at(&mut f, &dest, 0, &bytes).await?;
        let mut partial = Partial::default();
        partial.add(0..bytes.len() as u64);
        let rec = FileRecord {
            size,
            etag: Some(sha256.clone()),
            sha256,
            commit: ctx.info.sha.clone(),
            source,
            mtime_ns: 0,
            gguf: None,
            partial: Some(partial),
        };
        self.record(ctx, file, rec.clone()).await?;
        tracing::info!(
            repo = ctx.repo,
            file,
            bytes = bytes.len(),
            source = rec.source,
            "GGUF header"
        );
        self.report(
            ctx,
            file,
            transferred,
            Some(transferred),
            &rec.source,
            FileStatus::Done,
            None,
        );
        Ok(Held {
            file: file.into(),
            header,
            rec,
            transferred,
        })
    }

    /// Writes the ranges of `want` the part lacks, chunk by chunk, recording each.
    async fn fill(
        &self,
        ctx: &PullCtx<'_>,
        mut h: Held,
        want: &[Range<u64>],
        need: Need,
    ) -> Result<PulledFile> {
        let file = h.file.clone();
        let dest = self.store.file_path(ctx.repo, &file)?;
        let mut partial = h.rec.partial.clone().unwrap_or_default();
        let todo: Vec<Range<u64>> = select::missing(want, &partial.ranges())
            .into_iter()
            .flat_map(|r| {
                (r.start..r.end)
                    .step_by(CHUNK as usize)
                    .map(move |s| s..(s + CHUNK).min(r.end))
            })
            .collect();
        let total: u64 = todo.iter().map(|r| r.end - r.start).sum();
        let expected = Expected {
            sha256: Some(h.rec.sha256.clone()),
            git_sha1: None,
            size: Some(h.rec.size),
        };
        if !todo.is_empty() {
            let mut f = self.open_sparse(&dest, h.rec.size, false).await?;
            let mut done = 0;
            for r in todo {
                self.report(
                    ctx,
                    &file,
                    done,
                    Some(total),
                    &h.rec.source,
                    FileStatus::Downloading,
                    None,
                );
                let (bytes, source) = self.fetch_bytes(ctx, &file, r.clone(), &expected).await?;
                write_at(&mut f, &dest, r.start, &bytes).await?;
                partial.add(r.clone());
                done += r.end - r.start;
                h.rec.source = source;
                h.rec.partial = Some(partial.clone());
                self.record(ctx, &file, h.rec.clone()).await?;
            }
            h.transferred += total;
        }
        if let Need::Layers(r) = need {
            if !partial.layers.contains(&r) {
                partial.layers.push(r);
                partial.layers.sort_by_key(|l| (l.start, l.end));
            }
        }
        h.rec.partial = Some(partial.clone());
        if partial.held == [[0, h.rec.size]] {
            // Every byte is here: check it as a whole file.
            let path = dest.clone();
            let sha = tokio::task::spawn_blocking(move || sha256_file(&path))
                .await
                .expect("hashing task panicked")?;
            if sha == h.rec.sha256 {
                h.rec.partial = None;
            } else {
                return Err(DownloadError::Checksum {
                    repo: ctx.repo.into(),
                    file: file.clone(),
                    source_name: h.rec.source.clone(),
                    expected: format!("sha256 {}", h.rec.sha256),
                    actual: format!("sha256 {sha}"),
                });
            }
        }
        self.record(ctx, &file, h.rec.clone()).await?;
        let status = if h.transferred > 0 {
            FileStatus::Done
        } else {
            FileStatus::Cached
        };
        let held = partial.bytes();
        self.report(ctx, &file, held, Some(held), &h.rec.source, status, None);
        tracing::info!(
            repo = ctx.repo,
            file,
            held_bytes = held,
            of = h.rec.size,
            fetched = h.transferred,
            layers = ?partial.layers,
            "GGUF tensors for the layers"
        );
        Ok(PulledFile {
            name: file,
            size: h.rec.size,
            sha256: h.rec.sha256,
            source: h.rec.source,
            fetched: h.transferred > 0,
            transferred: h.transferred,
        })
    }

    /// Bytes `range` of `file`: from a peer holding this version whole, else from the hub
    /// (retrying transient failures). Returns them and who served them.
    async fn fetch_bytes(
        &self,
        ctx: &PullCtx<'_>,
        file: &str,
        range: Range<u64>,
        expected: &Expected,
    ) -> Result<(Vec<u8>, String)> {
        let len = (range.end - range.start) as usize;
        if let Some(alt) = &self.alt {
            if let Some(remote) = alt.locate(ctx.repo, file).await.filter(|r| {
                Some(r.sha256.to_ascii_lowercase()) == expected.sha256
                    && Some(r.size) == expected.size
            }) {
                match alt
                    .fetch_range(ctx.repo, file, &remote, range.clone())
                    .await
                {
                    Ok(s) => {
                        let mut buf = Vec::with_capacity(len);
                        let mut body = s.bytes;
                        let mut failed = None;
                        while let Some(chunk) = body.next().await {
                            match chunk {
                                Ok(c) => buf.extend_from_slice(&c),
                                Err(e) => {
                                    failed = Some(e.to_string());
                                    break;
                                }
                            }
                            if buf.len() >= len {
                                break;
                            }
                        }
                        if failed.is_none() && buf.len() >= len {
                            buf.truncate(len);
                            return Ok((buf, s.source));
                        }
                        tracing::warn!(
                            repo = ctx.repo,
                            file,
                            source = s.source,
                            "bytes {}..{} from a peer failed ({}); asking the hub",
                            range.start,
                            range.end,
                            failed.unwrap_or_else(|| format!("{} bytes", buf.len()))
                        );
                    }
                    Err(e) => tracing::warn!(repo = ctx.repo, file, "{e}; asking the hub"),
                }
            }
        }
        let mut failures = 0;
        loop {
            match self.hub_range(ctx, file, range.clone(), expected).await {
                Ok(b) => return Ok((b, SOURCE_HUB.into())),
                Err(e) if e.is_transient() => {
                    failures += 1;
                    self.retry.back_off(failures, e, ctx.repo, file).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One ranged request to the hub.
    async fn hub_range(
        &self,
        ctx: &PullCtx<'_>,
        file: &str,
        range: Range<u64>,
        expected: &Expected,
    ) -> Result<Vec<u8>> {
        let url = || self.hub.file_url(ctx.repo, ctx.revision, file).to_string();
        let len = (range.end - range.start) as usize;
        let (meta, start, mut body) = match self
            .hub
            .open(ctx.repo, ctx.revision, file, range.clone(), None)
            .await?
        {
            Opened::Body {
                meta, start, body, ..
            } => (meta, start, body),
            Opened::RangeNotSatisfiable { total, .. } => {
                return Err(DownloadError::Protocol {
                    url: url(),
                    reason: format!(
                        "bytes {}..{} are past the end (the file has {total:?} bytes)",
                        range.start, range.end
                    ),
                })
            }
            Opened::Held { .. } => unreachable!("no etag was named"),
        };
        let now = Expected::from_etag(meta.etag.as_deref(), meta.size);
        if now.sha256.is_some() && now.sha256 != expected.sha256 {
            return Err(DownloadError::Protocol {
                url: url(),
                reason: "the file changed since it was listed; pull again".into(),
            });
        }
        if start != range.start {
            return Err(DownloadError::Protocol {
                url: url(),
                reason: format!(
                    "asked for bytes from {}, got from {start} (the server ignores ranges)",
                    range.start
                ),
            });
        }
        let mut buf = BytesMut::with_capacity(len);
        while buf.len() < len {
            match body.next().await {
                Some(chunk) => buf.extend_from_slice(&chunk?),
                None => {
                    return Err(DownloadError::Network {
                        url: url(),
                        reason: format!(
                            "connection closed after {} of {len} bytes of {}..{}",
                            buf.len(),
                            range.start,
                            range.end
                        ),
                    })
                }
            }
        }
        buf.truncate(len);
        Ok(buf.to_vec())
    }

    /// Opens `dest` for writing at the given size (`fresh`: emptied first, another version may
    /// be there). Unwritten regions stay holes.
    async fn open_sparse(
        &self,
        dest: &std::path::Path,
        size: u64,
        fresh: bool,
    ) -> Result<tokio::fs::File> {
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| DownloadError::io("create directory", dir, e))?;
        }
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(fresh)
            .open(dest)
            .await
            .map_err(|e| DownloadError::io("open", dest, e))?;
        f.set_len(size)
            .await
            .map_err(|e| DownloadError::io("resize", dest, e))?;
        Ok(f)
    }

    fn bad_gguf(&self, ctx: &PullCtx<'_>, file: &str, reason: String) -> DownloadError {
        DownloadError::BadGguf {
            repo: ctx.repo.into(),
            file: file.into(),
            reason,
        }
    }
}

/// Writes `bytes` at `offset` and syncs them, so what is recorded as held is on disk.
async fn write_at(
    f: &mut tokio::fs::File,
    path: &std::path::Path,
    offset: u64,
    bytes: &[u8],
) -> Result<()> {
    let io = |e| DownloadError::io("write", path, e);
    f.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
    f.write_all(bytes).await.map_err(io)?;
    f.sync_data().await.map_err(io)
}
