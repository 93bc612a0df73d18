//! Model downloads against a mock hub on 127.0.0.1 (tests/download_hub): pulls of GGUF (by
//! quant tag, split) and safetensors (by layer range), the store (list, rm, resolve, held files),
//! resume after a dropped connection or a killed process, checksum failures, auth and 404
//! messages, retries, the parallelism bound and the alternative-source hook.

mod download_hub;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use download_hub::{bytes_of, sha256, Data, Faults, MockHub};
use exo_protocol::LayerRange;
use exo_store::{
    parse_reference, AltError, AltSource, AltStream, DownloadError, DownloadTracker, Downloader,
    FileStatus, HubConfig, ModelFormat, ModelRef, ModelStore, Progress, PullOptions, RemoteFile,
    RepoInfo, RetryPolicy,
};
use futures_util::StreamExt;

/// Every test's waits are bounded by this.
const LIMIT: Duration = Duration::from_secs(120);

fn test_models_dir() -> PathBuf {
    std::env::var("EXO_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/exo-p2p/test-models")
        })
}

fn test_model(name: &str) -> PathBuf {
    let p = test_models_dir().join(name);
    assert!(
        p.exists(),
        "test model {} is missing: run scripts/fetch-test-models.sh (or set EXO_TEST_MODELS)",
        p.display()
    );
    p
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

fn downloader(hub: &MockHub, home: &Path) -> Downloader {
    Downloader::new(ModelStore::new(home), HubConfig::new(hub.endpoint()))
        .unwrap()
        .with_retry(fast_retry())
}

fn mem(len: usize, seed: u64) -> Data {
    Data::Mem(Bytes::from(bytes_of(len, seed)))
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took too long")
}

fn file_sha(p: &Path) -> String {
    sha256(&std::fs::read(p).unwrap())
}

const GEMMA_REPO: &str = "unsloth/gemma-3-270m-it-GGUF";
const GEMMA_FILE: &str = "gemma-3-270m-it-Q4_K_M.gguf";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_real_gguf_by_catalog_name_list_resolve_and_rm() {
    let hub = MockHub::start().await;
    let real = test_model("gemma-3-270m-q4_k_m.gguf");
    hub.add_repo(
        GEMMA_REPO,
        vec![
            (GEMMA_FILE, Data::Disk(real.clone()), true),
            ("gemma-3-270m-it-Q8_0.gguf", mem(1000, 1), true),
            ("gemma-3-270m-it-F16.gguf", mem(1000, 2), true),
            (
                "README.md",
                Data::Mem(Bytes::from_static(b"# gemma")),
                false,
            ),
        ],
    );
    let home = tempfile::tempdir().unwrap();
    let tracker = DownloadTracker::new();
    let dl = downloader(&hub, home.path()).with_progress(tracker.clone());
    let r = parse_reference("gemma-3-270m");
    let pulled = bounded(dl.pull(&r, &PullOptions::default())).await.unwrap();

    assert_eq!(pulled.format, ModelFormat::Gguf);
    assert_eq!(
        pulled.path,
        home.path()
            .join("models/unsloth--gemma-3-270m-it-GGUF")
            .join(GEMMA_FILE)
    );
    assert_eq!(pulled.files.len(), 1);
    assert!(pulled.files[0].fetched);
    assert_eq!(file_sha(&pulled.path), file_sha(&real));
    assert_eq!(pulled.files[0].sha256, file_sha(&real));
    // The LFS file went resolve -> 302 -> /cdn/, and nothing else was downloaded.
    let resolves = hub.requests("/resolve/");
    assert_eq!(resolves.len(), 1, "{resolves:?}");
    assert_eq!(resolves[0].status, 302);
    assert_eq!(hub.requests("/cdn/").len(), 1);
    assert!(!pulled.path.with_extension("gguf.part").exists());

    // Progress: one file, done, bytes == total, from the hub; the snapshot serialises.
    let snap = tracker.snapshot();
    assert_eq!(snap.files.len(), 1);
    let f = &snap.files[0];
    assert_eq!(
        (f.status, f.downloaded, f.total),
        (
            FileStatus::Done,
            f.total.unwrap(),
            Some(std::fs::metadata(&real).unwrap().len())
        )
    );
    assert_eq!(f.source, "hub");
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["files"][0]["repo"], GEMMA_REPO);
    assert_eq!(json["files"][0]["status"], "done");

    // The pulled file is a model the engine opens.
    let info = exo_engine::ModelInfo::load(&pulled.path).unwrap();
    assert_eq!(info.spec.arch, "gemma3");

    // list: repo, size, GGUF arch and quant from the header, commit.
    let store = ModelStore::new(home.path());
    let models = store.list().unwrap();
    assert_eq!(models.len(), 1);
    let m = &models[0];
    assert_eq!(m.repo, GEMMA_REPO);
    assert_eq!(m.total_size, std::fs::metadata(&real).unwrap().len());
    assert_eq!(m.commit, pulled.commit);
    let g = m.files[0].gguf.as_ref().unwrap();
    assert_eq!(
        (g.arch.as_str(), g.quant.as_deref()),
        ("gemma3", Some("Q4_K_M"))
    );

    // resolve without network; a re-pull of the unchanged revision transfers nothing.
    assert_eq!(store.resolve(&r, None).unwrap(), Some(pulled.path.clone()));
    hub.clear_log();
    let again = bounded(dl.pull(&r, &PullOptions::default())).await.unwrap();
    assert_eq!(again.fetched_bytes(), 0);
    assert_eq!(again.path, pulled.path);
    let log = hub.log();
    assert_eq!(log.len(), 1, "only the listing: {log:?}");
    assert!(log[0].path.starts_with("/api/models/"));
    // prefer_local: not even the listing.
    hub.clear_log();
    let local = bounded(dl.pull(
        &r,
        &PullOptions {
            prefer_local: true,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    assert_eq!(local.path, pulled.path);
    assert!(hub.log().is_empty());

    // Another quant is not resolved until pulled.
    assert_eq!(
        store
            .resolve(&parse_reference("gemma-3-270m:Q8_0"), None)
            .unwrap(),
        None
    );

    // rm
    let removed = store.remove(&r).unwrap();
    assert!(removed.whole);
    assert_eq!(removed.files, vec![GEMMA_FILE.to_string()]);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.resolve(&r, None).unwrap(), None);
    assert!(matches!(
        store.remove(&r),
        Err(DownloadError::NotDownloaded(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quant_tags_pick_files_case_insensitively() {
    let hub = MockHub::start().await;
    hub.add_repo(
        "acme/tiny-GGUF",
        vec![
            ("tiny-q4_k_m.gguf", mem(3000, 1), true),
            ("tiny-Q8_0.gguf", mem(4000, 2), true),
            ("mmproj-tiny-Q8_0.gguf", mem(100, 3), true),
        ],
    );
    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path());
    let p = bounded(dl.pull(
        &parse_reference("acme/tiny-GGUF:q8_0"),
        &PullOptions::default(),
    ))
    .await
    .unwrap();
    assert_eq!(
        p.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
        ["tiny-Q8_0.gguf"]
    );
    let p = bounded(dl.pull(&parse_reference("acme/tiny-GGUF"), &PullOptions::default()))
        .await
        .unwrap();
    assert_eq!(p.files[0].name, "tiny-q4_k_m.gguf");
    // Both quants are held; rm of one quant leaves the other.
    let store = ModelStore::new(home.path());
    let removed = store
        .remove(&parse_reference("acme/tiny-GGUF:Q8_0"))
        .unwrap();
    assert!(!removed.whole);
    assert_eq!(removed.files, ["tiny-Q8_0.gguf"]);
    assert!(store
        .resolve(&parse_reference("acme/tiny-GGUF"), None)
        .unwrap()
        .is_some());
    assert!(store
        .resolve(&parse_reference("acme/tiny-GGUF:Q8_0"), None)
        .unwrap()
        .is_none());

    let err = bounded(dl.pull(
        &parse_reference("acme/tiny-GGUF:Q2_K"),
        &PullOptions::default(),
    ))
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("Q2_K") && msg.contains("acme/tiny-GGUF") && msg.contains("Q4_K_M, Q8_0"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_gguf_gets_every_part() {
    let hub = MockHub::start().await;
    hub.add_repo(
        "acme/big-GGUF",
        vec![
            ("Q4_K_M/big-Q4_K_M-00001-of-00003.gguf", mem(5000, 1), true),
            ("Q4_K_M/big-Q4_K_M-00002-of-00003.gguf", mem(5000, 2), true),
            ("Q4_K_M/big-Q4_K_M-00003-of-00003.gguf", mem(2000, 3), true),
            ("Q8_0/big-Q8_0-00001-of-00002.gguf", mem(9000, 4), true),
            ("Q8_0/big-Q8_0-00002-of-00002.gguf", mem(9000, 5), true),
        ],
    );
    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path());
    let p = bounded(dl.pull(&parse_reference("acme/big-GGUF"), &PullOptions::default()))
        .await
        .unwrap();
    assert_eq!(p.files.len(), 3);
    assert!(p.path.ends_with("Q4_K_M/big-Q4_K_M-00001-of-00003.gguf"));
    for f in &p.files {
        let on_disk = home.path().join("models/acme--big-GGUF").join(&f.name);
        assert_eq!(
            file_sha(&on_disk),
            hub.file("acme/big-GGUF", &f.name).sha256
        );
    }
    assert!(hub.requests("Q8_0").is_empty());
}

/// A 4-layer safetensors repo: embed + layers 0-1 in shard 1, layer 1 (part) + 2 in shard 2,
/// layer 3 + norm + lm_head in shard 3.
fn add_safetensors_repo(hub: &MockHub, repo: &str) {
    let index = serde_json::json!({
        "metadata": {"total_size": 3000},
        "weight_map": {
            "model.embed_tokens.weight": "model-00001-of-00003.safetensors",
            "model.layers.0.self_attn.q_proj.weight": "model-00001-of-00003.safetensors",
            "model.layers.1.self_attn.q_proj.weight": "model-00001-of-00003.safetensors",
            "model.layers.1.mlp.down_proj.weight": "model-00002-of-00003.safetensors",
            "model.layers.2.self_attn.q_proj.weight": "model-00002-of-00003.safetensors",
            "model.layers.3.self_attn.q_proj.weight": "model-00003-of-00003.safetensors",
            "model.norm.weight": "model-00003-of-00003.safetensors",
            "lm_head.weight": "model-00003-of-00003.safetensors",
        }
    });
    let json = |v: serde_json::Value| Data::Mem(Bytes::from(serde_json::to_vec(&v).unwrap()));
    hub.add_repo(
        repo,
        vec![
            (
                "config.json",
                json(serde_json::json!({"model_type": "llama", "num_hidden_layers": 4})),
                false,
            ),
            (
                "generation_config.json",
                json(serde_json::json!({"do_sample": false})),
                false,
            ),
            (
                "tokenizer.json",
                json(serde_json::json!({"model": {}})),
                false,
            ),
            ("tokenizer_config.json", json(serde_json::json!({})), false),
            ("model.safetensors.index.json", json(index), false),
            ("model-00001-of-00003.safetensors", mem(1000, 1), true),
            ("model-00002-of-00003.safetensors", mem(1000, 2), true),
            ("model-00003-of-00003.safetensors", mem(1000, 3), true),
            ("README.md", Data::Mem(Bytes::from_static(b"readme")), false),
            ("original/consolidated.safetensors", mem(3000, 4), true),
        ],
    );
}

fn names(p: &exo_store::PulledModel) -> Vec<&str> {
    p.files.iter().map(|f| f.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safetensors_layer_range_fetches_only_needed_shards() {
    let hub = MockHub::start().await;
    add_safetensors_repo(&hub, "acme/st");
    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path());
    let r = parse_reference("acme/st");
    let side = [
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ];

    let first = PullOptions {
        layers: Some(LayerRange::new(0, 1, 4)),
        ..Default::default()
    };
    let p = bounded(dl.pull(&r, &first)).await.unwrap();
    assert_eq!(p.format, ModelFormat::Safetensors);
    assert_eq!(p.path, home.path().join("models/acme--st"));
    let mut want: Vec<&str> = side.to_vec();
    want.push("model-00001-of-00003.safetensors");
    want.sort();
    assert_eq!(names(&p), want);
    assert!(hub.requests("model-00002-of").is_empty() && hub.requests("model-00003-of").is_empty());
    assert!(hub.requests("README").is_empty() && hub.requests("consolidated").is_empty());
    // Non-LFS files are served directly with a weak git-sha1 etag, and verified against it.
    assert_eq!(hub.requests("/resolve/main/config.json")[0].status, 200);
    let store = ModelStore::new(home.path());
    assert!(store
        .resolve(&r, Some(&LayerRange::new(0, 1, 4)))
        .unwrap()
        .is_some());
    assert!(store
        .resolve(&r, Some(&LayerRange::new(2, 4, 4)))
        .unwrap()
        .is_none());

    // The middle shard (layers 1..3): shards 1 and 2, nothing else new.
    hub.clear_log();
    let mid = PullOptions {
        layers: Some(LayerRange::new(1, 3, 4)),
        ..Default::default()
    };
    let p = bounded(dl.pull(&r, &mid)).await.unwrap();
    let fetched: Vec<&str> = p
        .files
        .iter()
        .filter(|f| f.fetched)
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(fetched, ["model-00002-of-00003.safetensors"]);
    assert!(hub.requests("model-00001-of").is_empty());

    // The last shard gets the norm and head file.
    let last = PullOptions {
        layers: Some(LayerRange::new(3, 4, 4)),
        ..Default::default()
    };
    let p = bounded(dl.pull(&r, &last)).await.unwrap();
    assert!(names(&p).contains(&"model-00003-of-00003.safetensors"));
    assert!(!names(&p).contains(&"model-00001-of-00003.safetensors"));

    // A layer range that does not fit the model is refused.
    let bad = PullOptions {
        layers: Some(LayerRange::new(0, 2, 8)),
        ..Default::default()
    };
    let err = bounded(dl.pull(&r, &bad)).await.unwrap_err().to_string();
    assert!(err.contains("4 layers"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safetensors_metadata_only_fetches_no_weights() {
    let hub = MockHub::start().await;
    add_safetensors_repo(&hub, "acme/st");
    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path());
    let r = parse_reference("acme/st");
    let meta = PullOptions {
        metadata_only: true,
        ..Default::default()
    };
    let p = bounded(dl.pull(&r, &meta)).await.unwrap();
    assert!(names(&p).contains(&"model.safetensors.index.json"));
    assert!(
        !names(&p).iter().any(|n| n.ends_with(".safetensors")),
        "{:?}",
        names(&p)
    );
    assert!(hub.requests("-of-00003.safetensors").is_empty() && hub.requests("cdn").is_empty());
    let store = ModelStore::new(home.path());
    assert!(store.resolve_metadata(&r).unwrap().is_some());
    assert!(store.resolve(&r, None).unwrap().is_none());
    // Held metadata: a metadata pull that prefers the store needs no hub.
    hub.clear_log();
    let again = PullOptions {
        prefer_local: true,
        ..meta
    };
    bounded(dl.pull(&r, &again)).await.unwrap();
    assert!(hub.log().is_empty(), "{:?}", hub.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_dropped_connection_uses_range_and_206() {
    let hub = MockHub::start().await;
    let real = test_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let repo = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF";
    let file = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
    hub.add_repo(repo, vec![(file, Data::Disk(real.clone()), true)]);
    let cut = 50 * 1024 * 1024;
    hub.set_faults(
        repo,
        file,
        Faults {
            drop_after: Some((cut, 1)),
            ..Default::default()
        },
    );
    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path());
    let p = bounded(dl.pull(
        &parse_reference("qwen2.5-coder-0.5b"),
        &PullOptions::default(),
    ))
    .await
    .unwrap();
    assert_eq!(p.files[0].sha256, file_sha(&real));
    let cdn = hub.requests("/cdn/");
    assert_eq!(cdn.len(), 2, "{cdn:?}");
    assert_eq!(cdn[0].range, None);
    let range = cdn[1].range.as_deref().expect("the retry asks for a range");
    let from: u64 = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from > 0 && from <= cut, "{range}");
    assert_eq!(cdn[1].status, 206);
    // The range went through the redirect too.
    assert_eq!(hub.requests("/resolve/")[1].range.as_deref(), Some(range));
    let info = exo_engine::ModelInfo::load(&p.path).unwrap();
    assert_eq!(info.spec.arch, "qwen2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_when_server_ignores_range_starts_over() {
    let hub = MockHub::start().await;
    hub.add_repo(
        "acme/x-GGUF",
        vec![("x-Q4_K_M.gguf", mem(1 << 20, 7), true)],
    );
    hub.set_faults(
        "acme/x-GGUF",
        "x-Q4_K_M.gguf",
        Faults {
            drop_after: Some((300_000, 1)),
            ignore_range: true,
            ..Default::default()
        },
    );
    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path());
    let p = bounded(dl.pull(&parse_reference("acme/x-GGUF"), &PullOptions::default()))
        .await
        .unwrap();
    assert_eq!(
        p.files[0].sha256,
        hub.file("acme/x-GGUF", "x-Q4_K_M.gguf").sha256
    );
    let cdn = hub.requests("/cdn/");
    assert_eq!(cdn.len(), 2, "{:?}", hub.log());
    assert!(cdn[1].range.is_some(), "{:?}", hub.log());
    assert_eq!(cdn[1].status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_byte_fails_checksum_and_keeps_nothing() {
    let hub = MockHub::start().await;
    hub.add_repo(
        "acme/bad-GGUF",
        vec![("bad-Q4_K_M.gguf", mem(200_000, 9), true)],
    );
    hub.set_faults(
        "acme/bad-GGUF",
        "bad-Q4_K_M.gguf",
        Faults {
            corrupt_at: Some(123_456),
            ..Default::default()
        },
    );
    let home = tempfile::tempdir().unwrap();
    let tracker = DownloadTracker::new();
    let dl = downloader(&hub, home.path()).with_progress(tracker.clone());
    let err = bounded(dl.pull(&parse_reference("acme/bad-GGUF"), &PullOptions::default()))
        .await
        .unwrap_err();
    assert!(matches!(err, DownloadError::Checksum { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("bad-Q4_K_M.gguf") && msg.contains("checksum mismatch"),
        "{msg}"
    );
    let dir = home.path().join("models/acme--bad-GGUF");
    assert!(!dir.join("bad-Q4_K_M.gguf").exists());
    assert!(!dir.join("bad-Q4_K_M.gguf.part").exists());
    assert!(ModelStore::new(home.path())
        .held_files()
        .unwrap()
        .is_empty());
    assert_eq!(tracker.snapshot().files[0].status, FileStatus::Failed);
    // Checksum failures are not retried.
    assert_eq!(hub.requests("/cdn/").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_and_not_found_messages() {
    let hub = MockHub::start().await;
    hub.add_repo(
        "meta/gated-GGUF",
        vec![("g-Q4_K_M.gguf", mem(1000, 1), true)],
    );
    hub.with_repo("meta/gated-GGUF", |r| r.token = Some("hf_secret".into()));
    hub.add_repo("acme/holes-GGUF", vec![("h-Q8_0.gguf", mem(1000, 2), true)]);
    hub.with_repo("acme/holes-GGUF", |r| {
        r.phantom.push("h-Q4_K_M.gguf".into())
    });
    let home = tempfile::tempdir().unwrap();
    let gated = parse_reference("meta/gated-GGUF");

    let err = bounded(downloader(&hub, home.path()).pull(&gated, &PullOptions::default()))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, DownloadError::Unauthorized { status: 401, .. }),
        "{msg}"
    );
    assert!(
        msg.contains("meta/gated-GGUF")
            && msg.contains("gated or private")
            && msg.contains("set HF_TOKEN"),
        "{msg}"
    );

    let with = |token: &str| {
        Downloader::new(
            ModelStore::new(home.path()),
            HubConfig::new(hub.endpoint()).with_token(Some(token.into())),
        )
        .unwrap()
        .with_retry(fast_retry())
    };
    let err = bounded(with("hf_wrong").pull(&gated, &PullOptions::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::Unauthorized { status: 403, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HF_TOKEN is set but"), "{err}");
    hub.clear_log();
    bounded(with("hf_secret").pull(&gated, &PullOptions::default()))
        .await
        .unwrap();
    // The token goes to the hub and its own redirect target, as a bearer token.
    assert!(hub
        .log()
        .iter()
        .all(|l| l.auth.as_deref() == Some("Bearer hf_secret")));
    // ... but not to a CDN on another host.
    std::fs::remove_dir_all(home.path().join("models/meta--gated-GGUF")).unwrap();
    let cdn = format!("http://localhost:{}", hub.addr.port());
    hub.with_repo("meta/gated-GGUF", |r| r.cdn_base = Some(cdn));
    hub.clear_log();
    bounded(with("hf_secret").pull(&gated, &PullOptions::default()))
        .await
        .unwrap();
    let resolve = hub.requests("/resolve/");
    assert_eq!(resolve[0].auth.as_deref(), Some("Bearer hf_secret"));
    assert_eq!(hub.requests("/cdn/")[0].auth, None, "{:?}", hub.log());

    let err = bounded(
        downloader(&hub, home.path())
            .pull(&parse_reference("acme/missing"), &PullOptions::default()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DownloadError::RepoNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("acme/missing") && err.to_string().contains("not found"),
        "{err}"
    );

    hub.clear_log();
    let err = bounded(
        downloader(&hub, home.path())
            .pull(&parse_reference("acme/holes-GGUF"), &PullOptions::default()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DownloadError::FileNotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("h-Q4_K_M.gguf") && msg.contains("acme/holes-GGUF") && msg.contains("404"),
        "{msg}"
    );
    // A 404 is not retried.
    assert_eq!(hub.requests("/resolve/").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_then_given_up() {
    let hub = MockHub::start().await;
    hub.add_repo(
        "acme/flaky-GGUF",
        vec![("f-Q4_K_M.gguf", mem(5000, 1), true)],
    );
    hub.set_faults(
        "acme/flaky-GGUF",
        "f-Q4_K_M.gguf",
        Faults {
            fail: Some((503, 2)),
            ..Default::default()
        },
    );
    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path());
    let r = parse_reference("acme/flaky-GGUF");
    bounded(dl.pull(&r, &PullOptions::default())).await.unwrap();
    let statuses: Vec<u16> = hub.requests("/resolve/").iter().map(|l| l.status).collect();
    assert_eq!(statuses, [503, 503, 302]);

    hub.add_repo(
        "acme/down-GGUF",
        vec![("d-Q4_K_M.gguf", mem(5000, 1), true)],
    );
    hub.set_faults(
        "acme/down-GGUF",
        "d-Q4_K_M.gguf",
        Faults {
            fail: Some((500, 100)),
            ..Default::default()
        },
    );
    let err = bounded(dl.pull(&parse_reference("acme/down-GGUF"), &PullOptions::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, DownloadError::RetriesExhausted { attempts: 3, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    assert_eq!(hub.requests("down-GGUF/resolve/").len(), 3);

    // A hub nobody listens on: a network error naming the URL.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dl = Downloader::new(
        ModelStore::new(home.path()),
        HubConfig::new(format!("http://{closed}")),
    )
    .unwrap()
    .with_retry(fast_retry());
    let err = bounded(dl.pull(&parse_reference("acme/none"), &PullOptions::default()))
        .await
        .unwrap_err();
    let DownloadError::RetriesExhausted { last, .. } = &err else {
        panic!("{err}")
    };
    assert!(matches!(**last, DownloadError::Network { .. }), "{err}");
    assert!(err.to_string().contains(&closed.to_string()), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_eight_files_at_once() {
    let hub = MockHub::start().await;
    let mut files = Vec::new();
    for i in 0..20 {
        files.push((
            format!("model-{:05}-of-00020.safetensors", i + 1),
            mem(256 * 1024, i),
        ));
    }
    let mut entries: Vec<(&str, Data, bool)> = files
        .iter()
        .map(|(n, d)| (n.as_str(), d.clone(), true))
        .collect();
    entries.push(("config.json", Data::Mem(Bytes::from_static(b"{}")), false));
    hub.add_repo("acme/wide", entries);
    for (n, _) in &files {
        hub.set_faults(
            "acme/wide",
            n,
            Faults {
                throttle: Some(Duration::from_millis(20)),
                ..Default::default()
            },
        );
    }
    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path());
    let p = bounded(dl.pull(&parse_reference("acme/wide"), &PullOptions::default()))
        .await
        .unwrap();
    assert_eq!(p.files.len(), 21);
    let max = hub.max_inflight();
    assert!((4..=8).contains(&max), "max in flight {max}");
    eprintln!("at most {max} files in flight");
    // Fewer when asked.
    let hub2 = MockHub::start().await;
    hub2.add_repo(
        "acme/wide",
        files
            .iter()
            .map(|(n, d)| (n.as_str(), d.clone(), true))
            .collect(),
    );
    let home2 = tempfile::tempdir().unwrap();
    bounded(
        downloader(&hub2, home2.path())
            .with_max_parallel(2)
            .pull(&parse_reference("acme/wide"), &PullOptions::default()),
    )
    .await
    .unwrap();
    assert!(hub2.max_inflight() <= 2);
}

/// Peers as an alternative source: files held in memory, a listing, a request counter.
struct FakePeers {
    info: Option<RepoInfo>,
    files: HashMap<String, Bytes>,
    /// Serve this many bytes then fail (a peer that goes away).
    fail_after: Option<usize>,
    corrupt: bool,
    fetches: Mutex<Vec<(String, u64)>>,
}

#[async_trait::async_trait]
impl AltSource for FakePeers {
    async fn repo_info(&self, _repo: &str, _revision: &str) -> Option<RepoInfo> {
        self.info.clone()
    }

    async fn locate(&self, _repo: &str, file: &str) -> Option<RemoteFile> {
        self.files.get(file).map(|b| RemoteFile {
            size: b.len() as u64,
            sha256: sha256(b),
        })
    }

    async fn fetch_range(
        &self,
        _repo: &str,
        file: &str,
        _remote: &RemoteFile,
        range: std::ops::Range<u64>,
    ) -> Result<AltStream, AltError> {
        let offset = range.start;
        self.fetches
            .lock()
            .unwrap()
            .push((file.to_string(), offset));
        let mut data = self.files[file]
            .slice(offset as usize..range.end as usize)
            .to_vec();
        if self.corrupt {
            data[0] ^= 1;
        }
        let chunks: Vec<std::io::Result<Bytes>> = match self.fail_after {
            Some(n) => vec![
                Ok(Bytes::from(data[..n].to_vec())),
                Err(std::io::Error::other("peer went away")),
            ],
            None => data
                .chunks(4096)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect(),
        };
        Ok(AltStream {
            source: "12D3KooWpeer".into(),
            bytes: futures_util::stream::iter(chunks).boxed(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternative_source_serves_files_without_the_hub() {
    // The hub has the repo, but must not be asked.
    let hub = MockHub::start().await;
    add_safetensors_repo(&hub, "acme/st");
    // A peer that pulled it earlier answers with its store's listing.
    let peer_home = tempfile::tempdir().unwrap();
    bounded(
        downloader(&hub, peer_home.path())
            .pull(&parse_reference("acme/st"), &PullOptions::default()),
    )
    .await
    .unwrap();
    let peer_store = ModelStore::new(peer_home.path());
    let info = peer_store.repo_info("acme/st", "main").unwrap().unwrap();
    let mut files = HashMap::new();
    for held in peer_store.held_files().unwrap() {
        let (path, h) = peer_store
            .held_file("acme/st", &held.file)
            .unwrap()
            .unwrap();
        assert_eq!(h, held);
        files.insert(held.file.clone(), Bytes::from(std::fs::read(path).unwrap()));
    }
    let peers = Arc::new(FakePeers {
        info: Some(info),
        files,
        fail_after: None,
        corrupt: false,
        fetches: Mutex::default(),
    });
    hub.clear_log();

    let home = tempfile::tempdir().unwrap();
    let tracker = DownloadTracker::new();
    let sources = Arc::new(Mutex::new(Vec::new()));
    let s2 = sources.clone();
    let dl = downloader(&hub, home.path())
        .with_alt_source(peers.clone())
        .with_progress(tracker.clone())
        .with_progress(Arc::new(move |p: &exo_store::FileProgress| {
            if p.status == FileStatus::Downloading {
                s2.lock().unwrap().push(p.source.clone());
            }
        }) as Arc<dyn Progress>);
    let layers = PullOptions {
        layers: Some(LayerRange::new(0, 1, 4)),
        ..Default::default()
    };
    let p = bounded(dl.pull(&parse_reference("acme/st"), &layers))
        .await
        .unwrap();
    assert!(hub.log().is_empty(), "the hub was asked: {:?}", hub.log());
    assert!(p
        .files
        .iter()
        .all(|f| f.source == "12D3KooWpeer" && f.fetched));
    assert_eq!(p.files.len(), 6);
    assert!(sources.lock().unwrap().iter().all(|s| s == "12D3KooWpeer"));
    assert!(tracker
        .snapshot()
        .files
        .iter()
        .all(|f| f.source == "12D3KooWpeer" && f.status == FileStatus::Done));
    // The store records where the bytes came from.
    let listed = ModelStore::new(home.path())
        .get("acme/st")
        .unwrap()
        .unwrap();
    assert!(listed
        .files
        .iter()
        .all(|f| f.source.as_deref() == Some("12D3KooWpeer")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_vanishing_peers_fall_back_to_the_hub() {
    let hub = MockHub::start().await;
    let data = Bytes::from(bytes_of(300_000, 5));
    hub.add_repo(
        "acme/p-GGUF",
        vec![("p-Q4_K_M.gguf", Data::Mem(data.clone()), true)],
    );
    let mut files = HashMap::new();
    files.insert("p-Q4_K_M.gguf".to_string(), data.clone());

    // A peer that goes away after 100 kB: the hub resumes from there (same sha256, same .part).
    let peers = Arc::new(FakePeers {
        info: None,
        files: files.clone(),
        fail_after: Some(100_000),
        corrupt: false,
        fetches: Mutex::default(),
    });
    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path()).with_alt_source(peers.clone());
    let p = bounded(dl.pull(&parse_reference("acme/p-GGUF"), &PullOptions::default()))
        .await
        .unwrap();
    assert_eq!(p.files[0].sha256, sha256(&data));
    assert_eq!(p.files[0].source, "hub");
    assert_eq!(
        hub.requests("/cdn/")[0].range.as_deref(),
        Some("bytes=100000-")
    );

    // A peer serving a bad byte: the part is dropped and the hub serves the whole file.
    hub.clear_log();
    let peers = Arc::new(FakePeers {
        info: None,
        files,
        fail_after: None,
        corrupt: true,
        fetches: Mutex::default(),
    });
    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path()).with_alt_source(peers.clone());
    let p = bounded(dl.pull(&parse_reference("acme/p-GGUF"), &PullOptions::default()))
        .await
        .unwrap();
    assert_eq!(p.files[0].sha256, sha256(&data));
    assert_eq!(peers.fetches.lock().unwrap().len(), 1);
    assert_eq!(hub.requests("/cdn/")[0].range, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_files_use_cached_hashes_until_a_file_changes() {
    let hub = MockHub::start().await;
    hub.add_repo("acme/h-GGUF", vec![("h-Q4_K_M.gguf", mem(10_000, 1), true)]);
    let home = tempfile::tempdir().unwrap();
    bounded(
        downloader(&hub, home.path())
            .pull(&parse_reference("acme/h-GGUF"), &PullOptions::default()),
    )
    .await
    .unwrap();
    let store = ModelStore::new(home.path());
    let held = store.held_files().unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(
        (held[0].repo.as_str(), held[0].file.as_str(), held[0].size),
        ("acme/h-GGUF", "h-Q4_K_M.gguf", 10_000)
    );
    assert_eq!(
        held[0].sha256,
        hub.file("acme/h-GGUF", "h-Q4_K_M.gguf").sha256
    );

    // The hash comes from the metadata file, not from re-reading the file.
    let dir = store.repo_dir("acme/h-GGUF");
    let mpath = dir.join(".exo-model.json");
    let text = std::fs::read_to_string(&mpath)
        .unwrap()
        .replace(&held[0].sha256, &"0".repeat(64));
    std::fs::write(&mpath, text).unwrap();
    assert_eq!(store.held_files().unwrap()[0].sha256, "0".repeat(64));

    // A changed file is hashed again.
    std::thread::sleep(Duration::from_millis(20));
    let new = bytes_of(10_000, 99);
    std::fs::write(dir.join("h-Q4_K_M.gguf"), &new).unwrap();
    assert_eq!(store.held_files().unwrap()[0].sha256, sha256(&new));
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_is_named() {
    let hub = MockHub::start().await;
    hub.add_repo(
        "acme/full-GGUF",
        vec![("f-Q4_K_M.gguf", mem(3 << 20, 1), true)],
    );
    let home = tempfile::tempdir().unwrap();
    // The part file is /dev/full, where every write fails with ENOSPC.
    let dir = home.path().join("models/acme--full-GGUF");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.join("f-Q4_K_M.gguf.part")).unwrap();
    let err = bounded(
        downloader(&hub, home.path())
            .pull(&parse_reference("acme/full-GGUF"), &PullOptions::default()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DownloadError::DiskFull { .. }), "{err}");
    assert!(
        err.to_string().contains("disk full") && err.to_string().contains("f-Q4_K_M.gguf.part"),
        "{err}"
    );
}

#[test]
fn local_paths_and_bad_references() {
    let home = tempfile::tempdir().unwrap();
    let store = ModelStore::new(home.path());
    let model = home.path().join("m.gguf");
    std::fs::write(&model, b"x").unwrap();
    let r = parse_reference(model.to_str().unwrap());
    assert_eq!(r, ModelRef::Local(model.clone()));
    assert_eq!(store.resolve(&r, None).unwrap(), Some(model));
    let err = store
        .resolve(&parse_reference("no-such-model"), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-such-model") && err.contains("gemma-3-270m"),
        "{err}"
    );
}

/// Run in a child process by `resume_after_killed_process`; does nothing otherwise.
#[test]
#[ignore = "helper run by resume_after_killed_process"]
fn child_pull() {
    let (Ok(endpoint), Ok(home)) = (
        std::env::var("EXO_DL_CHILD_ENDPOINT"),
        std::env::var("EXO_DL_CHILD_HOME"),
    ) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dl = Downloader::new(ModelStore::new(home), HubConfig::new(endpoint)).unwrap();
        let _ = dl
            .pull(&parse_reference("acme/slow-GGUF"), &PullOptions::default())
            .await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_killed_process() {
    let hub = MockHub::start().await;
    let size = 4 << 20;
    hub.add_repo(
        "acme/slow-GGUF",
        vec![("s-Q4_K_M.gguf", mem(size, 3), true)],
    );
    // ~64 KiB every 20 ms: about 1.3 s for the whole file, slow enough to be killed part-way.
    hub.set_faults(
        "acme/slow-GGUF",
        "s-Q4_K_M.gguf",
        Faults {
            throttle: Some(Duration::from_millis(20)),
            ..Default::default()
        },
    );
    let home = tempfile::tempdir().unwrap();
    let part = home
        .path()
        .join("models/acme--slow-GGUF/s-Q4_K_M.gguf.part");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_pull", "--ignored", "--nocapture"])
        .env("EXO_DL_CHILD_ENDPOINT", hub.endpoint())
        .env("EXO_DL_CHILD_HOME", home.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    loop {
        let len = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if len >= 1 << 20 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "child never got 1 MiB in"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "child ended before being killed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let had = std::fs::metadata(&part).unwrap().len();
    assert!(had > 0 && had < size as u64, "{had}");

    hub.set_faults("acme/slow-GGUF", "s-Q4_K_M.gguf", Faults::default());
    hub.clear_log();
    let p = bounded(
        downloader(&hub, home.path())
            .pull(&parse_reference("acme/slow-GGUF"), &PullOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(
        p.files[0].sha256,
        hub.file("acme/slow-GGUF", "s-Q4_K_M.gguf").sha256
    );
    let cdn = hub.requests("/cdn/");
    assert_eq!(cdn.len(), 1);
    let from: u64 = cdn[0]
        .range
        .as_deref()
        .unwrap()
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from >= 1 << 20, "resumed from {from}");
    assert_eq!(cdn[0].status, 206);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_model_download_it_once() {
    let hub = MockHub::start().await;
    hub.add_repo(
        "acme/c-GGUF",
        vec![("c-Q4_K_M.gguf", mem(1 << 20, 4), true)],
    );
    hub.set_faults(
        "acme/c-GGUF",
        "c-Q4_K_M.gguf",
        Faults {
            throttle: Some(Duration::from_millis(5)),
            ..Default::default()
        },
    );
    let home = tempfile::tempdir().unwrap();
    let (a, b) = (downloader(&hub, home.path()), downloader(&hub, home.path()));
    let r = parse_reference("acme/c-GGUF");
    let opts = PullOptions::default();
    let (pa, pb) = bounded(async { tokio::join!(a.pull(&r, &opts), b.pull(&r, &opts)) }).await;
    let (pa, pb) = (pa.unwrap(), pb.unwrap());
    assert_eq!(pa.files[0].sha256, pb.files[0].sha256);
    assert_eq!(pa.fetched_bytes() + pb.fetched_bytes(), 1 << 20);
    assert_eq!(hub.requests("/cdn/").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_commit_refetches_only_changed_files() {
    let hub = MockHub::start().await;
    hub.add_repo(
        "acme/n-GGUF",
        vec![
            ("n-Q4_K_M.gguf", mem(100_000, 1), true),
            ("README.md", mem(10, 2), false),
        ],
    );
    // A listing without sizes or hashes: verification relies on the resolve headers alone.
    hub.with_repo("acme/n-GGUF", |r| r.listing_blobs = false);
    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path());
    let r = parse_reference("acme/n-GGUF");
    let first = bounded(dl.pull(&r, &PullOptions::default())).await.unwrap();

    // A new commit that leaves the file alone: one resolve (its etag matches), no bytes.
    hub.with_repo("acme/n-GGUF", |r| r.sha = "1".repeat(40));
    hub.clear_log();
    let p = bounded(dl.pull(&r, &PullOptions::default())).await.unwrap();
    assert_eq!(p.commit.as_deref(), Some("1".repeat(40).as_str()));
    assert_eq!(p.fetched_bytes(), 0);
    assert!(hub.requests("/cdn/").is_empty());
    assert_eq!(hub.requests("/resolve/").len(), 1);

    // A new commit that changes it: downloaded again, replacing the old one.
    let new = bytes_of(120_000, 9);
    hub.with_repo("acme/n-GGUF", |r| {
        r.sha = "2".repeat(40);
        r.files.insert(
            "n-Q4_K_M.gguf".into(),
            Arc::new(download_hub::mock_file(
                Data::Mem(Bytes::from(new.clone())),
                true,
            )),
        );
    });
    let p = bounded(dl.pull(&r, &PullOptions::default())).await.unwrap();
    assert_eq!(p.fetched_bytes(), 120_000);
    assert_eq!(file_sha(&p.path), sha256(&new));
    assert_ne!(p.files[0].sha256, first.files[0].sha256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_hub_falls_back_to_the_store() {
    let hub = MockHub::start().await;
    hub.add_repo("acme/o-GGUF", vec![("o-Q4_K_M.gguf", mem(10_000, 1), true)]);
    let home = tempfile::tempdir().unwrap();
    let r = parse_reference("acme/o-GGUF");
    let first = bounded(downloader(&hub, home.path()).pull(&r, &PullOptions::default()))
        .await
        .unwrap();
    let endpoint = hub.endpoint();
    drop(hub);
    let dl = Downloader::new(ModelStore::new(home.path()), HubConfig::new(endpoint))
        .unwrap()
        .with_retry(fast_retry());
    let again = bounded(dl.pull(&r, &PullOptions::default())).await.unwrap();
    assert_eq!(again.path, first.path);
    assert_eq!(again.fetched_bytes(), 0);
    // Not held: the network error is the answer.
    let err = bounded(dl.pull(&parse_reference("acme/other"), &PullOptions::default()))
        .await
        .unwrap_err();
    assert!(err.is_unreachable(), "{err}");
}
