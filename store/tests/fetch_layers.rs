//! A node given some layers fetches only what they need, against the mock hub (which counts the
//! bytes it serves): of a single GGUF file its header and its tensors' byte ranges, of a split
//! one (made by llama.cpp's `llama-gguf-split`) the parts' headers and the tensors its layers
//! read. The shards fetched that way, run as a ring of two, give the whole file's greedy text.

mod download_hub;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use candle_core::Device;
use download_hub::{Data, Faults, MockHub};
use exo_engine::{even_split, gguf::Gguf, LocalRing, ShardModel};
use exo_protocol::{LayerRange, SamplingParams};
use exo_store::{parse_reference, Downloader, HubConfig, ModelStore, PullOptions, RetryPolicy};

const LIMIT: Duration = Duration::from_secs(300);
const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const PROMPT: &[u32] = &[785, 6722, 315, 9625, 374, 12095, 13, 576, 6722];

fn test_model(name: &str) -> PathBuf {
    let dir = std::env::var("EXO_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/exo-p2p/test-models")
        });
    let p = dir.join(name);
    assert!(
        p.exists(),
        "test model {} is missing: run scripts/fetch-test-models.sh",
        p.display()
    );
    p
}

fn downloader(hub: &MockHub, home: &Path) -> Downloader {
    Downloader::new(ModelStore::new(home), HubConfig::new(hub.endpoint()))
        .unwrap()
        .with_retry(RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        })
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test took too long")
}

fn greedy(ring: &LocalRing, prompt: &[u32], n: usize) -> Vec<u32> {
    let p = SamplingParams::greedy();
    let mut out = Vec::with_capacity(n);
    let mut tok = ring.step("k", 0, prompt, &p).expect("prefill");
    for pos in prompt.len().. {
        out.push(tok.id);
        if out.len() == n {
            break;
        }
        tok = ring.step("k", pos, &[tok.id], &p).expect("decode step");
    }
    ring.release("k");
    out
}

/// What one node of the ring did: where its model is and what the hub served it.
struct NodePull {
    path: PathBuf,
    range: LayerRange,
    header_bytes: u64,
    layer_bytes: u64,
}

/// A serving node's two pulls, as `serve` makes them: the description (headers) at start-up,
/// then the weights of the layers it is given.
async fn node_pull(hub: &MockHub, home: &Path, reference: &str, stage: usize) -> NodePull {
    let dl = downloader(hub, home);
    let r = parse_reference(reference);
    let before = hub.bytes_served();
    let meta = bounded(dl.pull(
        &r,
        &PullOptions {
            metadata_only: true,
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let header_bytes = hub.bytes_served() - before;
    assert_eq!(meta.fetched_bytes(), header_bytes);
    // The headers alone describe the model.
    let n = Gguf::open(&meta.path)
        .unwrap()
        .get("qwen2.block_count")
        .unwrap()
        .as_u64()
        .unwrap() as u32;
    let range = even_split(n, 2)[stage];
    let before = hub.bytes_served();
    let pulled = bounded(dl.pull(
        &r,
        &PullOptions {
            layers: Some(range),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    let layer_bytes = hub.bytes_served() - before;
    assert_eq!(pulled.fetched_bytes(), layer_bytes);
    assert_eq!(pulled.path, meta.path);
    // The store knows what it holds: the layers, not the whole model.
    let store = ModelStore::new(home);
    assert_eq!(
        store.resolve(&r, Some(&range)).unwrap(),
        Some(pulled.path.clone())
    );
    assert_eq!(store.resolve(&r, None).unwrap(), None);
    // Pulling the same layers again transfers nothing.
    let before = hub.bytes_served();
    let again = bounded(dl.pull(
        &r,
        &PullOptions {
            layers: Some(range),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    assert_eq!(again.fetched_bytes(), 0);
    assert_eq!(hub.bytes_served(), before);
    NodePull {
        path: pulled.path,
        range,
        header_bytes,
        layer_bytes,
    }
}

/// Two nodes fetched their halves of `reference`; each fetched well under `whole_bytes`, and the
/// two shards give the whole file's greedy text.
fn check_ring(a: &NodePull, b: &NodePull, whole: &Path, whole_bytes: u64) {
    for n in [a, b] {
        let total = n.header_bytes + n.layer_bytes;
        eprintln!(
            "{}: headers {} bytes, layers {} bytes, {:.0}% of {whole_bytes}",
            n.range,
            n.header_bytes,
            n.layer_bytes,
            100.0 * total as f64 / whole_bytes as f64
        );
        assert!(
            total < whole_bytes * 3 / 4,
            "{}: fetched {total} of {whole_bytes} bytes",
            n.range
        );
        assert!(n.header_bytes < whole_bytes / 20, "{}", n.header_bytes);
    }
    let shard = |n: &NodePull| ShardModel::load(&n.path, Some(n.range), &Device::Cpu).unwrap();
    let ring = LocalRing::new(vec![shard(a), shard(b)]);
    let reference = LocalRing::load(whole, 1, &Device::Cpu).unwrap();
    assert_eq!(greedy(&ring, PROMPT, 16), greedy(&reference, PROMPT, 16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_node_ring_fetches_byte_ranges_of_a_single_file_and_gives_the_whole_files_text() {
    let whole = test_model(QWEN);
    let size = std::fs::metadata(&whole).unwrap().len();
    let hub = MockHub::start().await;
    let repo = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF";
    hub.add_repo(
        repo,
        vec![(
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            Data::Disk(whole.clone()),
            true,
        )],
    );
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node_pull(&hub, ha.path(), repo, 0).await;
    let b = node_pull(&hub, hb.path(), repo, 1).await;
    // The hub answered with ranges, never the whole file.
    assert!(hub
        .log()
        .iter()
        .filter(|l| l.path.contains("/cdn/"))
        .all(|l| l.range.is_some()));
    // `models list` data: a partial file, with the layers it holds.
    let listed = ModelStore::new(ha.path()).list().unwrap();
    let f = &listed[0].files[0];
    let p = f.partial.as_ref().expect("held in part");
    assert_eq!(p.layers, vec![a.range]);
    assert!(f.size < size && f.sha256.is_none(), "{f:?}");
    // A partial file is not offered to peers as the file.
    assert!(ModelStore::new(ha.path()).held_files().unwrap().is_empty());
    check_ring(&a, &b, &whole, size);

    // The same node given every layer later ends up with the whole file, verified.
    let dl = downloader(&hub, ha.path());
    let r = parse_reference(repo);
    let full = bounded(dl.pull(
        &r,
        &PullOptions {
            layers: Some(LayerRange::full(a.range.n_layers)),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(&full.path).unwrap(),
        std::fs::read(&whole).unwrap()
    );
    let held = ModelStore::new(ha.path()).held_files().unwrap();
    assert_eq!(held.len(), 1);
}

/// Bytes of `file` held in part in the store at `home` (0 when not held in part).
fn held_in_part(home: &Path, repo: &str, file: &str) -> u64 {
    ModelStore::new(home)
        .manifest(repo)
        .unwrap()
        .and_then(|m| m.files.get(file).and_then(|f| f.partial.clone()))
        .map_or(0, |p| p.bytes())
}

/// A range pull stopped part-way (the process killed while its tensors download) resumes where
/// it stopped: the second pull fetches exactly what the first had not recorded, and the file
/// ends up as an uninterrupted pull's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_range_pull_resumes_where_it_stopped() {
    let whole = test_model(QWEN);
    let hub = MockHub::start().await;
    let repo = "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF";
    let file = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
    hub.add_repo(repo, vec![(file, Data::Disk(whole.clone()), true)]);
    let clean_home = tempfile::tempdir().unwrap();
    let clean = node_pull(&hub, clean_home.path(), repo, 0).await;

    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path());
    let r = parse_reference(repo);
    let meta = PullOptions {
        metadata_only: true,
        ..Default::default()
    };
    bounded(dl.pull(&r, &meta)).await.unwrap();
    let held_header = held_in_part(home.path(), repo, file);
    assert!(held_header > 0, "the header is held in part");
    // About 64 MiB/s, so the pull is still running when it is stopped.
    hub.set_faults(
        repo,
        file,
        Faults {
            throttle: Some(Duration::from_millis(1)),
            ..Default::default()
        },
    );
    let opts = PullOptions {
        layers: Some(clean.range),
        ..Default::default()
    };
    let before = hub.bytes_served();
    let task = tokio::spawn({
        let (dl, r, opts) = (downloader(&hub, home.path()), r.clone(), opts.clone());
        async move { dl.pull(&r, &opts).await }
    });
    // Stop it once some of its tensors are recorded and more are on the way.
    bounded(async {
        while held_in_part(home.path(), repo, file) == held_header
            || hub.bytes_served() - before < clean.layer_bytes / 2
        {
            assert!(
                !task.is_finished(),
                "the pull ended before it could be stopped"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    task.abort();
    let _ = task.await;
    let recorded = held_in_part(home.path(), repo, file) - held_header;
    assert!(
        recorded > 0 && recorded < clean.layer_bytes,
        "{recorded} of {} bytes recorded when stopped",
        clean.layer_bytes
    );
    hub.set_faults(repo, file, Faults::default());

    let before = hub.bytes_served();
    let resumed = bounded(downloader(&hub, home.path()).pull(&r, &opts))
        .await
        .unwrap();
    let fetched = hub.bytes_served() - before;
    eprintln!(
        "stopped with {recorded} of {} bytes recorded; the resumed pull fetched {fetched}",
        clean.layer_bytes
    );
    assert_eq!(fetched, clean.layer_bytes - recorded);
    assert_eq!(resumed.fetched_bytes(), fetched);
    assert_eq!(
        ModelStore::new(home.path())
            .resolve(&r, Some(&clean.range))
            .unwrap(),
        Some(resumed.path.clone())
    );
    // Byte for byte what the uninterrupted pull wrote (sparse files of the same size).
    assert!(std::fs::read(&resumed.path).unwrap() == std::fs::read(&clean.path).unwrap());
}

/// llama.cpp's `llama-gguf-split`, built by scripts/llamacpp.sh.
fn llama_gguf_split() -> PathBuf {
    let bin = std::env::var_os("EXO_LLAMACPP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/exo-p2p/llama.cpp/0.3.36/build/bin")
        })
        .join("llama-gguf-split");
    assert!(
        bin.exists(),
        "{} is not built (source scripts/llamacpp.sh; llamacpp_bin native llama-gguf-split)",
        bin.display()
    );
    bin
}

/// Splits `model` into parts of at most `max_size`; returns the parts in order.
fn split(model: &Path, out: &Path, max_size: &str) -> Vec<PathBuf> {
    let status = Command::new(llama_gguf_split())
        .args(["--split-max-size", max_size])
        .arg(model)
        .arg(out.join("qwen-Q4_K_M"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "llama-gguf-split failed");
    let mut parts: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    parts.sort();
    assert!(parts.len() > 2, "{parts:?}");
    parts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_node_ring_fetches_only_its_tensors_of_a_split_file() {
    let whole = test_model(QWEN);
    let dir = tempfile::tempdir().unwrap();
    let parts = split(&whole, dir.path(), "150M");
    let size: u64 = parts
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let hub = MockHub::start().await;
    let repo = "someone/qwen-split-GGUF";
    let names: Vec<String> = parts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    hub.add_repo(
        repo,
        parts
            .iter()
            .zip(&names)
            .map(|(p, n)| (n.as_str(), Data::Disk(p.clone()), true))
            .collect(),
    );
    let (ha, hb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = node_pull(&hub, ha.path(), repo, 0).await;
    let b = node_pull(&hub, hb.path(), repo, 1).await;
    assert!(a.path.ends_with(&names[0]), "{}", a.path.display());
    check_ring(&a, &b, &whole, size);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_or_missing_part_is_a_clear_error() {
    let whole = test_model(QWEN);
    let dir = tempfile::tempdir().unwrap();
    let parts = split(&whole, dir.path(), "150M");
    let names: Vec<String> = parts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // Part 2 cut short: its header names tensors past its end.
    let cut = dir.path().join("cut");
    let bytes = std::fs::read(&parts[1]).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let hub = MockHub::start().await;
    let repo = "someone/qwen-split-GGUF";
    let mut files: Vec<(&str, Data, bool)> = parts
        .iter()
        .zip(&names)
        .map(|(p, n)| (n.as_str(), Data::Disk(p.clone()), true))
        .collect();
    files[1].1 = Data::Disk(cut);
    hub.add_repo(repo, files);
    let home = tempfile::tempdir().unwrap();
    let dl = downloader(&hub, home.path());
    let opts = PullOptions {
        metadata_only: true,
        ..Default::default()
    };
    let err = bounded(dl.pull(&parse_reference(repo), &opts))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&names[1]) && err.contains("tensors up to byte"),
        "{err}"
    );

    // A listing without part 2.
    let hub = MockHub::start().await;
    hub.add_repo(
        repo,
        parts
            .iter()
            .zip(&names)
            .filter(|(_, n)| !n.contains("-00002-of-"))
            .map(|(p, n)| (n.as_str(), Data::Disk(p.clone()), true))
            .collect(),
    );
    let home = tempfile::tempdir().unwrap();
    let err = bounded(downloader(&hub, home.path()).pull(&parse_reference(repo), &opts))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("lists parts [1, 3"), "{err}");
}
