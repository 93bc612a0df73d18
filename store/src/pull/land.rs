//! A file being downloaded: bytes go to `{file}.part` (hashed as they are written), the version
//! they belong to (the expected sha256, or the git blob sha1 for small non-LFS files) is noted in
//! `{file}.part.tag` so a resume never splices two versions, and only a verified file is renamed
//! to its real name.

use std::{
    io::Read,
    path::{Path, PathBuf},
};

use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWriteExt, BufWriter};

use bytes::Bytes;
use futures_util::{stream::BoxStream, StreamExt};

use super::{Downloader, PullCtx, PulledFile};
use crate::{
    error::{DownloadError, Result},
    manifest::FileRecord,
    progress::FileStatus,
};

/// What the finished file must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub sha256: Option<String>,
    /// Git blob sha1: what the hub's etag is for files outside LFS.
    pub git_sha1: Option<String>,
    pub size: Option<u64>,
}

impl Expected {
    /// Sorts a hub etag into sha256 (64 hex digits) or git sha1 (40).
    pub fn from_etag(etag: Option<&str>, size: Option<u64>) -> Self {
        let mut e = Self {
            size,
            ..Self::default()
        };
        if let Some(t) = etag.map(str::to_ascii_lowercase) {
            if is_hex(&t, 64) {
                e.sha256 = Some(t);
            } else if is_hex(&t, 40) {
                e.git_sha1 = Some(t);
            }
        }
        e
    }

    /// The version a `.part` belongs to.
    pub fn tag(&self) -> Option<String> {
        self.sha256
            .clone()
            .or_else(|| self.git_sha1.as_ref().map(|s| format!("git:{s}")))
    }

    pub fn is_verifiable(&self) -> bool {
        self.sha256.is_some() || self.git_sha1.is_some()
    }
}

pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
    pub git_sha1: Option<String>,
}

impl Written {
    /// The first way `expected` is not met, as (expected, actual).
    pub fn mismatch(&self, expected: &Expected) -> Option<(String, String)> {
        if let Some(size) = expected.size.filter(|s| *s != self.size) {
            return Some((format!("{size} bytes"), format!("{} bytes", self.size)));
        }
        if let Some(sha) = expected.sha256.as_ref().filter(|s| **s != self.sha256) {
            return Some((format!("sha256 {sha}"), format!("sha256 {}", self.sha256)));
        }
        match (&expected.git_sha1, &self.git_sha1) {
            (Some(e), Some(a)) if e != a => {
                Some((format!("git sha1 {e}"), format!("git sha1 {a}")))
            }
            _ => None,
        }
    }
}

pub struct PartFile {
    pub dest: PathBuf,
    pub part: PathBuf,
    tag: PathBuf,
}

impl PartFile {
    pub fn new(dest: PathBuf) -> Self {
        let with = |ext: &str| {
            let mut s = dest.clone().into_os_string();
            s.push(ext);
            PathBuf::from(s)
        };
        Self {
            part: with(".part"),
            tag: with(".part.tag"),
            dest,
        }
    }

    /// Length of the partial download and the version it is of (`None`: unknown, not resumable).
    pub async fn existing(&self) -> (u64, Option<String>) {
        let len = match tokio::fs::metadata(&self.part).await {
            Ok(m) => m.len(),
            Err(_) => return (0, None),
        };
        let tag = tokio::fs::read_to_string(&self.tag)
            .await
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty());
        (len, tag)
    }

    pub async fn discard(&self) {
        let _ = tokio::fs::remove_file(&self.part).await;
        let _ = tokio::fs::remove_file(&self.tag).await;
    }

    /// Opens the part for writing at `start`: from scratch when 0, else after hashing the bytes
    /// already there (which the caller checked are of version `tag`).
    pub async fn open(
        &self,
        start: u64,
        tag: Option<&str>,
        expected: &Expected,
    ) -> Result<PartWriter> {
        if let Some(dir) = self.part.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| DownloadError::io("create directory", dir, e))?;
        }
        let mut git = match (&expected.git_sha1, expected.size) {
            (Some(_), Some(size)) => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Some(h)
            }
            _ => None,
        };
        let mut sha256 = Sha256::new();
        let file = if start == 0 {
            match tag {
                Some(t) => tokio::fs::write(&self.tag, t)
                    .await
                    .map_err(|e| DownloadError::io("write", &self.tag, e))?,
                None => {
                    let _ = tokio::fs::remove_file(&self.tag).await;
                }
            }
            tokio::fs::File::create(&self.part)
                .await
                .map_err(|e| DownloadError::io("create", &self.part, e))?
        } else {
            let path = self.part.clone();
            let (s, g) =
                tokio::task::spawn_blocking(move || hash_prefix(&path, start, sha256, git))
                    .await
                    .expect("hashing task panicked")?;
            sha256 = s;
            git = g;
            let mut f = tokio::fs::OpenOptions::new()
                .write(true)
                .open(&self.part)
                .await
                .map_err(|e| DownloadError::io("open", &self.part, e))?;
            f.set_len(start)
                .await
                .map_err(|e| DownloadError::io("truncate", &self.part, e))?;
            use tokio::io::AsyncSeekExt;
            f.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| DownloadError::io("seek", &self.part, e))?;
            f
        };
        Ok(PartWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            path: self.part.clone(),
            sha256,
            git,
            written: start,
        })
    }

    /// Moves the verified part to its real name (replacing an older version).
    pub async fn commit(&self) -> Result<()> {
        tokio::fs::rename(&self.part, &self.dest)
            .await
            .map_err(|e| DownloadError::io("rename", &self.dest, e))?;
        let _ = tokio::fs::remove_file(&self.tag).await;
        Ok(())
    }
}

fn hash_prefix(
    path: &Path,
    len: u64,
    mut sha256: Sha256,
    mut git: Option<Sha1>,
) -> Result<(Sha256, Option<Sha1>)> {
    let f = std::fs::File::open(path).map_err(|e| DownloadError::io("open", path, e))?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, f).take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| DownloadError::io("read", path, e))?;
        if n == 0 {
            break;
        }
        sha256.update(&buf[..n]);
        if let Some(g) = git.as_mut() {
            g.update(&buf[..n]);
        }
    }
    Ok((sha256, git))
}

pub struct PartWriter {
    file: BufWriter<tokio::fs::File>,
    path: PathBuf,
    sha256: Sha256,
    git: Option<Sha1>,
    /// Bytes in the part so far.
    pub written: u64,
}

impl PartWriter {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| DownloadError::io("write", &self.path, e))?;
        self.sha256.update(chunk);
        if let Some(g) = self.git.as_mut() {
            g.update(chunk);
        }
        self.written += chunk.len() as u64;
        Ok(())
    }

    /// Flushes to disk (so a crash after the rename cannot leave a short file) and returns the
    /// hashes.
    pub async fn finish(mut self) -> Result<Written> {
        let io = |e| DownloadError::io("write", &self.path, e);
        self.file.flush().await.map_err(io)?;
        self.file.get_ref().sync_all().await.map_err(io)?;
        Ok(Written {
            size: self.written,
            sha256: hex(&self.sha256.finalize()),
            git_sha1: self.git.map(|g| hex(&g.finalize())),
        })
    }

    /// Flushes what was received so a later attempt can resume from it.
    pub async fn keep(mut self) {
        let _ = self.file.flush().await;
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// sha256 of a whole file, for files the store holds without a recorded hash.
pub fn sha256_file(path: &Path) -> Result<String> {
    let (h, _) = hash_prefix(path, u64::MAX, Sha256::new(), None)?;
    Ok(hex(&h.finalize()))
}

impl Downloader {
    /// Streams `body` into the part, reporting progress. On a failure the bytes so far stay in
    /// the part for the next attempt.
    pub(super) async fn pump(
        &self,
        ctx: &PullCtx<'_>,
        file: &str,
        mut writer: PartWriter,
        mut body: BoxStream<'static, Result<Bytes>>,
        total: Option<u64>,
        source: &str,
    ) -> Result<PartWriter> {
        self.report(
            ctx,
            file,
            writer.written,
            total,
            source,
            FileStatus::Downloading,
            None,
        );
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    writer.keep().await;
                    return Err(e);
                }
            };
            if let Err(e) = writer.write(&chunk).await {
                writer.keep().await;
                return Err(e);
            }
            self.report(
                ctx,
                file,
                writer.written,
                total,
                source,
                FileStatus::Downloading,
                None,
            );
        }
        if let Some(t) = total.filter(|t| writer.written < *t) {
            let got = writer.written;
            writer.keep().await;
            return Err(DownloadError::Network {
                url: self.hub.file_url(ctx.repo, ctx.revision, file).to_string(),
                reason: format!("connection closed after {got} of {t} bytes from {source}"),
            });
        }
        Ok(writer)
    }

    /// Verifies the finished part, renames it into place and records it.
    pub(super) async fn land(
        &self,
        ctx: &PullCtx<'_>,
        file: &str,
        part: &PartFile,
        writer: PartWriter,
        expected: &Expected,
        source: &str,
    ) -> Result<PulledFile> {
        self.report(
            ctx,
            file,
            writer.written,
            expected.size,
            source,
            FileStatus::Verifying,
            None,
        );
        let written = writer.finish().await?;
        if let Some((want, got)) = written.mismatch(expected) {
            part.discard().await;
            return Err(DownloadError::Checksum {
                repo: ctx.repo.into(),
                file: file.into(),
                source_name: source.into(),
                expected: want,
                actual: got,
            });
        }
        part.commit().await?;
        let rec = FileRecord {
            size: written.size,
            sha256: written.sha256.clone(),
            etag: expected.git_sha1.clone().or(expected.sha256.clone()),
            commit: ctx.info.sha.clone(),
            source: source.into(),
            mtime_ns: 0,
            gguf: None,
            partial: None,
        };
        self.record(ctx, file, rec).await?;
        tracing::info!(
            repo = ctx.repo,
            file,
            bytes = written.size,
            source,
            "downloaded"
        );
        self.report(
            ctx,
            file,
            written.size,
            Some(written.size),
            source,
            FileStatus::Done,
            None,
        );
        Ok(PulledFile {
            name: file.into(),
            size: written.size,
            sha256: written.sha256,
            source: source.into(),
            fetched: true,
            transferred: written.size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_sort_into_hashes() {
        let sha = "a".repeat(64);
        let e = Expected::from_etag(Some(&sha.to_uppercase()), Some(3));
        assert_eq!(e.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(e.tag(), Some(sha));
        let e = Expected::from_etag(Some(&"b".repeat(40)), None);
        assert_eq!(e.tag(), Some(format!("git:{}", "b".repeat(40))));
        assert!(!Expected::from_etag(Some("xyz"), None).is_verifiable());
    }

    #[tokio::test]
    async fn resume_hashes_the_prefix() {
        let dir = std::env::temp_dir().join(format!("exo-part-{}", std::process::id()));
        tokio::fs::create_dir_all(&dir).await.unwrap();
        let data = b"hello, world";
        // Git's blob id of "hello, world" (`git hash-object`).
        let exp = Expected {
            sha256: None,
            git_sha1: Some("8c01d89ae06311834ee4b1fab2f0414d35f01102".into()),
            size: Some(data.len() as u64),
        };
        let part = PartFile::new(dir.join("f.txt"));
        let mut w = part.open(0, exp.tag().as_deref(), &exp).await.unwrap();
        w.write(&data[..5]).await.unwrap();
        w.keep().await;
        let (len, tag) = part.existing().await;
        assert_eq!((len, tag), (5, exp.tag()));
        let mut w = part.open(5, exp.tag().as_deref(), &exp).await.unwrap();
        w.write(&data[5..]).await.unwrap();
        let written = w.finish().await.unwrap();
        assert_eq!(written.mismatch(&exp), None, "{written:?}");
        assert_eq!(written.sha256, hex(&Sha256::digest(data)));
        part.commit().await.unwrap();
        assert_eq!(std::fs::read(dir.join("f.txt")).unwrap(), data);
        assert!(!part.part.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
