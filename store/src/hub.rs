//! The Hugging Face HTTP protocol, as `huggingface_hub` and the `hf-hub` crate speak it:
//! `GET /api/models/{repo}[/revision/{rev}]` for the file list and commit, and
//! `GET /{repo}/resolve/{rev}/{file}` for bytes, which answers LFS files with a redirect to a CDN
//! whose first hop carries the sha256 (`X-Linked-Etag`), size (`X-Linked-Size`) and commit
//! (`X-Repo-Commit`).
//!
//! Why not the `hf-hub` crate: it keeps its own cache layout (blobs + snapshot symlinks), does not
//! verify sha256, folds every HTTP status into one error and has no way to put another byte
//! source in front of the hub. Resume, verification and error messages are the point of this
//! module, so it speaks the protocol with reqwest directly and follows redirects by hand to keep
//! the first hop's headers.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream::BoxStream, StreamExt, TryStreamExt};
use reqwest::{
    header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, ETAG, LOCATION, RANGE},
    StatusCode, Url,
};
use serde::{Deserialize, Serialize};

use crate::error::{DownloadError, Result};

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where the hub is and who we are to it.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL, `HF_ENDPOINT` or https://huggingface.co.
    pub endpoint: String,
    /// `HF_TOKEN`, sent as `Authorization: Bearer` to the endpoint's host only.
    pub token: Option<String>,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response before it counts as a dropped connection.
    pub read_timeout: Duration,
}

impl HubConfig {
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            token: None,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }

    /// `HF_ENDPOINT` and `HF_TOKEN` (`HUGGING_FACE_HUB_TOKEN` as the older name).
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut cfg = Self::new(var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()));
        cfg.token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN"));
        cfg
    }

    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }
}

/// `GET /api/models/{repo}`: the commit and the files of a revision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoInfo {
    /// The commit sha the revision points at.
    #[serde(default)]
    pub sha: Option<String>,
    #[serde(default)]
    pub siblings: Vec<Sibling>,
}

/// One file of a repo; `size`, `blobId` and `lfs` come only with `?blobs=true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    pub rfilename: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The git blob sha1 (what the hub's ETag is for files not in LFS).
    #[serde(default, rename = "blobId", skip_serializing_if = "Option::is_none")]
    pub blob_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lfs: Option<LfsInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LfsInfo {
    pub sha256: String,
    pub size: u64,
}

impl Sibling {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            rfilename: name.into(),
            size: None,
            blob_id: None,
            lfs: None,
        }
    }
}

/// What the first hop of `resolve` said about a file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileMeta {
    /// Normalised (no quotes, no `W/`): the sha256 for LFS files, the git blob sha1 otherwise.
    pub etag: Option<String>,
    pub commit: Option<String>,
    pub size: Option<u64>,
}

/// An open `resolve` response.
pub(crate) enum Opened {
    Body {
        meta: FileMeta,
        /// Offset of the first byte of `body` in the file (0 when a range was ignored).
        start: u64,
        total: Option<u64>,
        body: BoxStream<'static, Result<Bytes>>,
    },
    /// 416: the range starts at or past the end; `total` from `Content-Range: bytes */N`.
    RangeNotSatisfiable { meta: FileMeta, total: Option<u64> },
    /// The hub's etag is the one held: the redirect was not followed, no bytes were asked for.
    Held { meta: FileMeta },
}

#[derive(Debug, Clone)]
pub struct HubClient {
    cfg: HubConfig,
    base: Url,
    http: reqwest::Client,
}

impl HubClient {
    pub fn new(cfg: HubConfig) -> Result<Self> {
        let base = Url::parse(cfg.endpoint.trim_end_matches('/')).map_err(|e| {
            DownloadError::Protocol {
                url: cfg.endpoint.clone(),
                reason: format!("HF_ENDPOINT is not a URL: {e}"),
            }
        })?;
        let http = reqwest::Client::builder()
            // Redirects are followed by hand: the first hop holds the file's metadata, and the
            // token must not follow a redirect to another host (the CDN).
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .user_agent(concat!("exo-p2p/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DownloadError::Network {
                url: cfg.endpoint.clone(),
                reason: error_chain(&e),
            })?;
        Ok(Self { cfg, base, http })
    }

    pub fn from_env() -> Result<Self> {
        Self::new(HubConfig::from_env())
    }

    pub fn endpoint(&self) -> &str {
        &self.cfg.endpoint
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has path segments")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// The API URL of a revision's file list (with blob sizes and sha256s).
    pub fn info_url(&self, repo: &str, revision: &str) -> Url {
        let (owner, name) = repo.split_once('/').unwrap_or(("", repo));
        let mut url = self.url(&["api", "models", owner, name, "revision", revision]);
        url.set_query(Some("blobs=true"));
        url
    }

    /// The download URL of one file.
    pub fn file_url(&self, repo: &str, revision: &str, file: &str) -> Url {
        let (owner, name) = repo.split_once('/').unwrap_or(("", repo));
        let mut segs = vec![owner, name, "resolve", revision];
        segs.extend(file.split('/'));
        self.url(&segs)
    }

    fn authorize(&self, req: reqwest::RequestBuilder, url: &Url) -> reqwest::RequestBuilder {
        let same_origin = url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default();
        match &self.cfg.token {
            Some(token) if same_origin => req.header(AUTHORIZATION, format!("Bearer {token}")),
            _ => req,
        }
    }

    /// The commit and file list of `revision`.
    pub async fn repo_info(&self, repo: &str, revision: &str) -> Result<RepoInfo> {
        let url = self.info_url(repo, revision);
        tracing::debug!(%url, "repo info");
        let resp = self
            .authorize(self.http.get(url.clone()), &url)
            .send()
            .await
            .map_err(|e| network(&url, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(self.status_error(status, resp.headers(), &url, repo, revision, None));
        }
        let body = resp.bytes().await.map_err(|e| network(&url, &e))?;
        serde_json::from_slice(&body).map_err(|e| DownloadError::Protocol {
            url: url.to_string(),
            reason: format!("repo info is not the expected JSON: {e}"),
        })
    }

    /// Opens bytes `range` of `file` (`Range: bytes=start-` when it runs to `u64::MAX`, else
    /// `bytes=start-last`), following redirects; stops early with `Opened::Held` when the hub
    /// names the etag `held` (the version already here).
    pub(crate) async fn open(
        &self,
        repo: &str,
        revision: &str,
        file: &str,
        range: std::ops::Range<u64>,
        held: Option<&str>,
    ) -> Result<Opened> {
        let offset = range.start;
        let asked = match range.end {
            u64::MAX if offset == 0 => None,
            u64::MAX => Some(format!("bytes={offset}-")),
            end => Some(format!("bytes={offset}-{}", end.saturating_sub(1))),
        };
        let first = self.file_url(repo, revision, file);
        let mut url = first.clone();
        let mut meta = FileMeta::default();
        for hop in 0..10 {
            let mut req = self.authorize(self.http.get(url.clone()), &url);
            if let Some(r) = &asked {
                req = req.header(RANGE, r);
            }
            tracing::debug!(%url, offset, hop, "GET");
            let resp = req.send().await.map_err(|e| network(&url, &e))?;
            let status = resp.status();
            let headers = resp.headers();
            // The hub's hop (not the CDN's) names the file's sha256, size and commit.
            if meta.etag.is_none() {
                meta.etag = header(headers, "x-linked-etag").map(|v| normalize_etag(&v));
                if meta.etag.is_none() && (hop == 0 || header(headers, "x-repo-commit").is_some()) {
                    meta.etag = header(headers, ETAG.as_str()).map(|v| normalize_etag(&v));
                }
            }
            meta.commit = meta.commit.or_else(|| header(headers, "x-repo-commit"));
            meta.size = meta
                .size
                .or_else(|| header(headers, "x-linked-size").and_then(|v| v.parse().ok()));
            if status.is_success() || status.is_redirection() {
                if let (Some(etag), Some(held)) = (&meta.etag, held) {
                    if etag.eq_ignore_ascii_case(held) {
                        return Ok(Opened::Held { meta });
                    }
                }
            }
            if status.is_redirection() {
                let location =
                    header(headers, LOCATION.as_str()).ok_or_else(|| DownloadError::Protocol {
                        url: url.to_string(),
                        reason: format!("redirect ({status}) without a Location"),
                    })?;
                url = url.join(&location).map_err(|e| DownloadError::Protocol {
                    url: url.to_string(),
                    reason: format!("bad redirect Location `{location}`: {e}"),
                })?;
                continue;
            }
            return match status {
                StatusCode::OK => {
                    let total =
                        header(headers, CONTENT_LENGTH.as_str()).and_then(|v| v.parse().ok());
                    Ok(Opened::Body {
                        meta,
                        start: 0,
                        total,
                        body: body_stream(resp, url),
                    })
                }
                StatusCode::PARTIAL_CONTENT => {
                    let range = header(headers, CONTENT_RANGE.as_str()).unwrap_or_default();
                    let (start, total) =
                        parse_content_range(&range).ok_or_else(|| DownloadError::Protocol {
                            url: url.to_string(),
                            reason: format!("206 with a bad Content-Range `{range}`"),
                        })?;
                    if start != offset {
                        return Err(DownloadError::Protocol {
                            url: url.to_string(),
                            reason: format!("asked for bytes from {offset}, got from {start}"),
                        });
                    }
                    Ok(Opened::Body {
                        meta,
                        start,
                        total,
                        body: body_stream(resp, url),
                    })
                }
                StatusCode::RANGE_NOT_SATISFIABLE => {
                    let total = header(headers, CONTENT_RANGE.as_str())
                        .and_then(|v| v.rsplit('/').next().and_then(|t| t.parse().ok()));
                    Ok(Opened::RangeNotSatisfiable { meta, total })
                }
                _ => Err(self.status_error(status, headers, &url, repo, revision, Some(file))),
            };
        }
        Err(DownloadError::Protocol {
            url: first.to_string(),
            reason: "more than 10 redirects".into(),
        })
    }

    /// The error for a failed status, told apart by the hub's `X-Error-Code` where it sends one.
    fn status_error(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        url: &Url,
        repo: &str,
        revision: &str,
        file: Option<&str>,
    ) -> DownloadError {
        let code = header(headers, "x-error-code").unwrap_or_default();
        let message = header(headers, "x-error-message");
        match status.as_u16() {
            401 | 403 => DownloadError::Unauthorized {
                repo: repo.into(),
                url: url.to_string(),
                status: status.as_u16(),
                token_set: self.cfg.token.is_some(),
                message,
            },
            404 if code == "RevisionNotFound" => DownloadError::RevisionNotFound {
                repo: repo.into(),
                revision: revision.into(),
            },
            404 if code == "RepoNotFound" || file.is_none() => DownloadError::RepoNotFound {
                repo: repo.into(),
                endpoint: self.cfg.endpoint.clone(),
            },
            404 => DownloadError::FileNotFound {
                repo: repo.into(),
                revision: revision.into(),
                file: file.unwrap_or_default().into(),
                url: url.to_string(),
            },
            s => DownloadError::Http {
                status: s,
                url: url.to_string(),
                message,
            },
        }
    }
}

fn body_stream(resp: reqwest::Response, url: Url) -> BoxStream<'static, Result<Bytes>> {
    resp.bytes_stream()
        .map_err(move |e| network(&url, &e))
        .boxed()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `W/"abc"` and `"abc"` both mean `abc`.
pub fn normalize_etag(etag: &str) -> String {
    let e = etag.trim();
    let e = e.strip_prefix("W/").unwrap_or(e);
    e.trim_matches('"').to_string()
}

/// `bytes 100-199/1000` -> (100, Some(1000)); `*` for an unknown total gives `None`.
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

fn network(url: &Url, e: &reqwest::Error) -> DownloadError {
    DownloadError::Network {
        url: url.to_string(),
        reason: error_chain(e),
    }
}

/// reqwest's own message is only "error sending request"; the cause is in the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_normalised() {
        assert_eq!(normalize_etag("\"abc\""), "abc");
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag("abc"), "abc");
    }

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5, Some(10))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 5-9/10"), None);
    }

    #[test]
    fn urls_escape_file_names_and_revisions() {
        let hub = HubClient::new(HubConfig::new("http://127.0.0.1:9/mirror/")).unwrap();
        assert_eq!(
            hub.file_url("a/b", "refs/pr/1", "dir/x y.gguf").as_str(),
            "http://127.0.0.1:9/mirror/a/b/resolve/refs%2Fpr%2F1/dir/x%20y.gguf"
        );
        assert_eq!(
            hub.info_url("a/b", "main").as_str(),
            "http://127.0.0.1:9/mirror/api/models/a/b/revision/main?blobs=true"
        );
    }
}
