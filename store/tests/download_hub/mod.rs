//! A mock Hugging Face hub on 127.0.0.1 for the download tests. It speaks the endpoints exo-p2p
//! uses — `GET /api/models/{repo}[/revision/{rev}]` and `GET /{repo}/resolve/{rev}/{file}`, which
//! for LFS files answers 302 to `/cdn/{sha256}` with `X-Linked-Etag`, `X-Linked-Size` and
//! `X-Repo-Commit` as the real hub does — serves real bytes with `Range` support, and can drop a
//! connection part-way, flip a byte, ignore ranges, throttle, fail with 5xx, or demand a token.
//! It logs every request and counts how many bodies are in flight at once.
#![allow(dead_code)]

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Router,
};
use bytes::Bytes;
use sha1::Sha1;
use sha2::{Digest, Sha256};

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn git_sha1(data: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex(&h.finalize())
}

/// Deterministic pseudo-random bytes.
pub fn bytes_of(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(Clone)]
pub enum Data {
    Mem(Bytes),
    Disk(PathBuf),
}

/// How a file misbehaves.
#[derive(Default)]
pub struct Faults {
    /// Drop the connection after this many body bytes, on the next `n` requests.
    pub drop_after: Option<(u64, usize)>,
    /// Serve the byte at this offset flipped.
    pub corrupt_at: Option<u64>,
    /// Answer ranges with the whole file (200).
    pub ignore_range: bool,
    /// Sleep this long before each 64 KiB chunk.
    pub throttle: Option<Duration>,
    /// Answer the next `n` requests for the file with this status.
    pub fail: Option<(u16, usize)>,
}

pub struct MockFile {
    pub data: Data,
    pub size: u64,
    pub sha256: String,
    pub git_sha1: String,
    pub lfs: bool,
    pub faults: Mutex<Faults>,
}

pub struct MockRepo {
    pub sha: String,
    pub files: BTreeMap<String, Arc<MockFile>>,
    /// Requires `Authorization: Bearer {token}`.
    pub token: Option<String>,
    /// Sizes and hashes in the listing (`?blobs=true`); off to test etag-only verification.
    pub listing_blobs: bool,
    /// Names in the listing that resolve to 404.
    pub phantom: Vec<String>,
    /// Redirect LFS files to this absolute base (another host name) instead of `/cdn/`.
    pub cdn_base: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub path: String,
    pub range: Option<String>,
    pub auth: Option<String>,
    pub status: u16,
}

#[derive(Default)]
pub struct HubState {
    pub repos: Mutex<HashMap<String, MockRepo>>,
    pub log: Mutex<Vec<Logged>>,
    inflight: AtomicUsize,
    pub max_inflight: AtomicUsize,
    /// Body bytes sent for file downloads (what a node cost the hub).
    pub bytes_served: AtomicU64,
}

pub struct MockHub {
    pub addr: SocketAddr,
    pub state: Arc<HubState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockHub {
    pub async fn start() -> Self {
        let state = Arc::new(HubState::default());
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn add_repo(&self, repo: &str, files: Vec<(&str, Data, bool)>) {
        let files = files
            .into_iter()
            .map(|(name, data, lfs)| (name.to_string(), Arc::new(mock_file(data, lfs))))
            .collect();
        self.state.repos.lock().unwrap().insert(
            repo.to_string(),
            MockRepo {
                sha: sha256(repo.as_bytes())[..40].to_string(),
                files,
                token: None,
                listing_blobs: true,
                phantom: Vec::new(),
                cdn_base: None,
            },
        );
    }

    pub fn with_repo<R>(&self, repo: &str, f: impl FnOnce(&mut MockRepo) -> R) -> R {
        f(self
            .state
            .repos
            .lock()
            .unwrap()
            .get_mut(repo)
            .expect("mock repo"))
    }

    pub fn file(&self, repo: &str, file: &str) -> Arc<MockFile> {
        self.with_repo(repo, |r| r.files[file].clone())
    }

    pub fn set_faults(&self, repo: &str, file: &str, faults: Faults) {
        *self.file(repo, file).faults.lock().unwrap() = faults;
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().unwrap().clone()
    }

    pub fn clear_log(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// Requests whose path contains `needle`.
    pub fn requests(&self, needle: &str) -> Vec<Logged> {
        self.log()
            .into_iter()
            .filter(|l| l.path.contains(needle))
            .collect()
    }

    pub fn max_inflight(&self) -> usize {
        self.state.max_inflight.load(Ordering::SeqCst)
    }

    /// Body bytes of files served so far.
    pub fn bytes_served(&self) -> u64 {
        self.state.bytes_served.load(Ordering::SeqCst)
    }
}

pub fn mock_file(data: Data, lfs: bool) -> MockFile {
    let (size, sha, git) = match &data {
        Data::Mem(b) => (b.len() as u64, sha256(b), git_sha1(b)),
        Data::Disk(p) => {
            let b = std::fs::read(p).unwrap();
            (b.len() as u64, sha256(&b), git_sha1(&b))
        }
    };
    MockFile {
        data,
        size,
        sha256: sha,
        git_sha1: git,
        lfs,
        faults: Mutex::new(Faults::default()),
    }
}

fn status_with(status: u16, code: &str, msg: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [
            ("x-error-code", code.to_string()),
            ("x-error-message", msg.to_string()),
        ],
        msg.to_string(),
    )
        .into_response()
}

async fn handle(State(st): State<Arc<HubState>>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let resp = route(&st, &path, req.uri().query(), &headers).await;
    st.log.lock().unwrap().push(Logged {
        path: format!(
            "{}{}",
            path,
            req.uri()
                .query()
                .map(|q| format!("?{q}"))
                .unwrap_or_default()
        ),
        range,
        auth,
        status: resp.status().as_u16(),
    });
    resp
}

fn check_auth(repo: &MockRepo, headers: &HeaderMap) -> Option<Response> {
    let want = repo.token.as_ref()?;
    match headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        None => Some(status_with(
            401,
            "GatedRepo",
            "Access to this model is restricted",
        )),
        Some(v) if v == format!("Bearer {want}") => None,
        Some(_) => Some(status_with(403, "GatedRepo", "Your token has no access")),
    }
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

async fn route(
    st: &Arc<HubState>,
    path: &str,
    _query: Option<&str>,
    headers: &HeaderMap,
) -> Response {
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    // GET /api/models/{owner}/{repo}[/revision/{rev}]
    if segs.len() >= 4 && segs[0] == "api" && segs[1] == "models" {
        let repo_id = format!("{}/{}", segs[2], segs[3]);
        let rev = if segs.len() == 6 && segs[4] == "revision" {
            segs[5].clone()
        } else {
            "main".into()
        };
        let repos = st.repos.lock().unwrap();
        let Some(repo) = repos.get(&repo_id) else {
            return status_with(404, "RepoNotFound", "Repository not found");
        };
        if let Some(r) = check_auth(repo, headers) {
            return r;
        }
        if rev != "main" && rev != repo.sha {
            return status_with(404, "RevisionNotFound", "Invalid rev id");
        }
        let mut siblings: Vec<serde_json::Value> = repo
            .files
            .iter()
            .map(|(name, f)| {
                if !repo.listing_blobs {
                    return serde_json::json!({ "rfilename": name });
                }
                let mut s = serde_json::json!({
                    "rfilename": name, "size": f.size, "blobId": f.git_sha1,
                });
                if f.lfs {
                    s["lfs"] =
                        serde_json::json!({"sha256": f.sha256, "size": f.size, "pointerSize": 134});
                }
                s
            })
            .collect();
        for p in &repo.phantom {
            siblings.push(serde_json::json!({ "rfilename": p }));
        }
        let body = serde_json::json!({ "id": repo_id, "sha": repo.sha, "siblings": siblings });
        return axum::Json(body).into_response();
    }
    // GET /cdn/{sha256}: where LFS files are redirected.
    if segs.len() == 2 && segs[0] == "cdn" {
        let file = {
            let repos = st.repos.lock().unwrap();
            repos
                .values()
                .flat_map(|r| r.files.values())
                .find(|f| f.sha256 == segs[1])
                .cloned()
        };
        return match file {
            Some(f) => serve(st, &f, headers, HeaderMap::new()).await,
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    // GET /{owner}/{repo}/resolve/{rev}/{file...}
    if segs.len() >= 5 && segs[2] == "resolve" {
        let repo_id = format!("{}/{}", segs[0], segs[1]);
        let rev = &segs[3];
        let name = segs[4..].join("/");
        let (file, sha, cdn_base) = {
            let repos = st.repos.lock().unwrap();
            let Some(repo) = repos.get(&repo_id) else {
                return status_with(404, "RepoNotFound", "Repository not found");
            };
            if let Some(r) = check_auth(repo, headers) {
                return r;
            }
            if rev != "main" && *rev != repo.sha {
                return status_with(404, "RevisionNotFound", "Invalid rev id");
            }
            match repo.files.get(&name) {
                Some(f) => (
                    f.clone(),
                    repo.sha.clone(),
                    repo.cdn_base.clone().unwrap_or_default(),
                ),
                None => return status_with(404, "EntryNotFound", "Entry not found"),
            }
        };
        {
            let mut faults = file.faults.lock().unwrap();
            if let Some((status, n)) = faults.fail {
                faults.fail = (n > 1).then_some((status, n - 1));
                return status_with(status, "", "injected failure");
            }
        }
        let mut meta = HeaderMap::new();
        meta.insert("x-repo-commit", sha.parse().unwrap());
        if file.lfs {
            meta.insert(
                "x-linked-etag",
                format!("\"{}\"", file.sha256).parse().unwrap(),
            );
            meta.insert("x-linked-size", file.size.to_string().parse().unwrap());
            meta.insert(
                header::ETAG,
                format!("\"{}\"", file.sha256).parse().unwrap(),
            );
            meta.insert(
                header::LOCATION,
                format!("{cdn_base}/cdn/{}", file.sha256).parse().unwrap(),
            );
            return (StatusCode::FOUND, meta).into_response();
        }
        meta.insert(
            header::ETAG,
            format!("W/\"{}\"", file.git_sha1).parse().unwrap(),
        );
        return serve(st, &file, headers, meta).await;
    }
    StatusCode::NOT_FOUND.into_response()
}

/// Decrements the in-flight count when a body is finished or dropped.
struct Inflight(Arc<HubState>);
impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(
    st: &Arc<HubState>,
    f: &Arc<MockFile>,
    headers: &HeaderMap,
    mut extra: HeaderMap,
) -> Response {
    let (drop_after, corrupt_at, ignore_range, throttle) = {
        let mut faults = f.faults.lock().unwrap();
        let drop_after = faults.drop_after.map(|(n, _)| n);
        if let Some((n, left)) = faults.drop_after {
            faults.drop_after = (left > 1).then_some((n, left - 1));
        }
        (
            drop_after,
            faults.corrupt_at,
            faults.ignore_range,
            faults.throttle,
        )
    };
    let asked = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'));
    let range = asked.and_then(|(a, _)| a.parse::<u64>().ok());
    // `bytes=a-b` (inclusive) ends the body early; `bytes=a-` runs to the end.
    let end = asked
        .and_then(|(_, b)| b.parse::<u64>().ok())
        .filter(|_| !ignore_range)
        .map_or(f.size, |b| (b + 1).min(f.size));
    let (status, start) = match range {
        Some(s) if !ignore_range => {
            if s >= f.size {
                extra.insert(
                    header::CONTENT_RANGE,
                    format!("bytes */{}", f.size).parse().unwrap(),
                );
                return (StatusCode::RANGE_NOT_SATISFIABLE, extra).into_response();
            }
            extra.insert(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{}", s, end - 1, f.size)
                    .parse()
                    .unwrap(),
            );
            (StatusCode::PARTIAL_CONTENT, s)
        }
        _ => (StatusCode::OK, 0),
    };
    extra.insert(
        header::CONTENT_LENGTH,
        (end - start).to_string().parse().unwrap(),
    );
    extra.insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
    if !extra.contains_key(header::ETAG) {
        // A CDN's own etag, which is not the file's sha256.
        extra.insert(header::ETAG, "\"cdn-etag-0001\"".parse().unwrap());
    }
    let n = st.inflight.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_inflight.fetch_max(n, Ordering::SeqCst);
    let guard = Inflight(st.clone());

    struct S {
        f: Arc<MockFile>,
        pos: u64,
        sent: u64,
        reader: Option<tokio::fs::File>,
        st: Arc<HubState>,
        _guard: Inflight,
    }
    let state = S {
        st: st.clone(),
        f: f.clone(),
        pos: start,
        sent: 0,
        reader: None,
        _guard: guard,
    };
    let stream = futures_util::stream::unfold(state, move |mut s| async move {
        if s.pos >= end {
            return None;
        }
        if let Some(limit) = drop_after {
            if s.sent >= limit {
                // Let the client read what was sent: an abort can discard bytes still in its
                // socket buffer, and then there would be nothing to resume from.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let err = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "injected drop");
                // Ending the body with an error makes hyper abort the connection.
                s.pos = end;
                return Some((Err(err), s));
            }
        }
        if let Some(t) = throttle {
            tokio::time::sleep(t).await;
        }
        let mut len = (64 * 1024).min(end - s.pos);
        if let Some(limit) = drop_after {
            len = len.min(limit - s.sent).max(1);
        }
        let mut chunk = match &s.f.data {
            Data::Mem(b) => b.slice(s.pos as usize..(s.pos + len) as usize).to_vec(),
            Data::Disk(p) => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                if s.reader.is_none() {
                    let mut r = tokio::fs::File::open(p).await.unwrap();
                    r.seek(std::io::SeekFrom::Start(s.pos)).await.unwrap();
                    s.reader = Some(r);
                }
                let mut buf = vec![0u8; len as usize];
                s.reader
                    .as_mut()
                    .unwrap()
                    .read_exact(&mut buf)
                    .await
                    .unwrap();
                buf
            }
        };
        if let Some(c) = corrupt_at {
            if c >= s.pos && c < s.pos + len {
                chunk[(c - s.pos) as usize] ^= 0xff;
            }
        }
        s.pos += len;
        s.sent += len;
        s.st.bytes_served.fetch_add(len, Ordering::SeqCst);
        Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), s))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    *resp.status_mut() = status;
    resp.headers_mut().extend(extra);
    resp
}
