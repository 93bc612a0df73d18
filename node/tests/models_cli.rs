//! Models from a Hugging Face endpoint, as a user gets them: a mock hub on 127.0.0.1 that speaks
//! the real endpoints and serves the real test model. `models pull/list/rm`, `run` with a
//! repository reference, resume after killing a pull, a corrupted byte, 401 and 404, a second
//! node that gets the file from the first over the mesh while the hub is down, and a two-node
//! ring on a sharded safetensors repo where each node fetches only its layers' weight files.

mod common;

#[path = "../../store/tests/download_hub/mod.rs"]
mod download_hub;

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

use common::*;
use download_hub::{Data, Faults, MockHub};

const REPO: &str = "test/gemma-3-270m-GGUF";
const FILE: &str = "gemma-3-270m-Q4_K_M.gguf";
const DEAD_HUB: &str = "http://127.0.0.1:9";

fn exo(home: &Path, hub: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("EXO_HOME", home)
        .env("HF_ENDPOINT", hub)
        .env_remove("HF_TOKEN")
        .output_within(CHILD_TIMEOUT)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn hub_with_gemma() -> (tokio::runtime::Runtime, MockHub) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = rt.block_on(MockHub::start());
    hub.add_repo(REPO, vec![(FILE, Data::Disk(test_model(GEMMA)), true)]);
    (rt, hub)
}

#[test]
fn pull_list_run_and_rm_through_a_hub() {
    let (_rt, hub) = hub_with_gemma();
    let home = temp_dir("pull");
    let out = exo(&home, &hub.endpoint(), &["models", "pull", REPO]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(path.ends_with(FILE), "{path}");

    let list = exo(&home, &hub.endpoint(), &["models", "list"]);
    let list = String::from_utf8(list.stdout).unwrap();
    assert!(
        list.contains(REPO) && list.contains("gemma3") && list.contains("Q4_K_M"),
        "{list}"
    );

    // `run` with the reference gives the same text as with the local path.
    let prompt = ["-p", "Water boils at", "-n", "16", "--temperature", "0"];
    let by_ref = exo(
        &home,
        &hub.endpoint(),
        &[&["run", REPO][..], &prompt[..]].concat(),
    );
    assert!(by_ref.status.success(), "{}", stderr(&by_ref));
    let by_path = exo(
        &home,
        DEAD_HUB,
        &[
            &["run", test_model(GEMMA).to_str().unwrap()][..],
            &prompt[..],
        ]
        .concat(),
    );
    assert_eq!(by_ref.stdout, by_path.stdout);
    // Already here: a second pull neither downloads nor needs the hub.
    let again = exo(&home, DEAD_HUB, &["run", REPO, "-p", "hi", "-n", "1"]);
    assert!(again.status.success(), "{}", stderr(&again));

    let rm = exo(&home, &hub.endpoint(), &["models", "rm", REPO]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    assert!(!Path::new(&path).exists());
    let list = exo(&home, &hub.endpoint(), &["models", "list"]);
    assert!(!String::from_utf8(list.stdout).unwrap().contains(REPO));
}

#[test]
fn a_killed_pull_resumes_with_a_range_request() {
    let (_rt, hub) = hub_with_gemma();
    hub.set_faults(
        REPO,
        FILE,
        Faults {
            throttle: Some(Duration::from_millis(2)),
            ..Default::default()
        },
    );
    let home = temp_dir("resume");
    let mut child = Command::new(bin())
        .args(["models", "pull", REPO])
        .env("EXO_HOME", &home)
        .env("HF_ENDPOINT", hub.endpoint())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some megabytes have landed in the partial file.
    let part = home
        .join("models/test--gemma-3-270m-GGUF")
        .join(format!("{FILE}.part"));
    wait_until(Duration::from_secs(60), "the download to start", || {
        (std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0) > 4 << 20).then_some(())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    hub.set_faults(REPO, FILE, Faults::default());
    hub.clear_log();
    let out = exo(&home, &hub.endpoint(), &["models", "pull", REPO]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ranged: Vec<_> = hub
        .log()
        .into_iter()
        .filter(|l| l.range.is_some())
        .collect();
    assert!(
        !ranged.is_empty(),
        "the resumed pull sent no Range request: {:?}",
        hub.log()
    );
    assert!(ranged.iter().any(|l| l.status == 206), "{ranged:?}");
    let pulled = std::fs::read(home.join("models/test--gemma-3-270m-GGUF").join(FILE)).unwrap();
    assert_eq!(
        pulled.len() as u64,
        std::fs::metadata(test_model(GEMMA)).unwrap().len()
    );
}

#[test]
fn corruption_401_and_404_are_clear_errors() {
    let (_rt, hub) = hub_with_gemma();
    let home = temp_dir("errors");
    hub.set_faults(
        REPO,
        FILE,
        Faults {
            corrupt_at: Some(1 << 20),
            ..Default::default()
        },
    );
    let out = exo(&home, &hub.endpoint(), &["models", "pull", REPO]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("sha256"), "{}", stderr(&out));
    let dir = home.join("models/test--gemma-3-270m-GGUF");
    assert!(!dir.join(FILE).exists() && !dir.join(format!("{FILE}.part")).exists());

    hub.with_repo(REPO, |r| r.token = Some("secret".into()));
    hub.set_faults(REPO, FILE, Faults::default());
    let out = exo(&home, &hub.endpoint(), &["models", "pull", REPO]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("HF_TOKEN"), "{}", stderr(&out));

    let out = exo(
        &home,
        &hub.endpoint(),
        &["models", "pull", "test/no-such-model"],
    );
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("test/no-such-model") && e.to_lowercase().contains("not found"),
        "{e}"
    );
}

#[test]
fn a_second_node_gets_the_model_from_the_first_with_the_hub_down() {
    let (rt, hub) = hub_with_gemma();
    let mut a = Node::new("a");
    assert!(exo(&a.home, &hub.endpoint(), &["models", "pull", REPO])
        .status
        .success());
    drop(hub);
    drop(rt); // the hub is gone
              // Both nodes are pointed at a dead hub.
    a.env("HF_ENDPOINT", DEAD_HUB)
        .start(&["--model", REPO, "--no-mdns", "--memory", "8G"]);
    let pa = a.addr();
    let mut b = Node::new("b");
    b.env("HF_ENDPOINT", DEAD_HUB).start(&[
        "--model",
        REPO,
        "--no-mdns",
        "--memory",
        "8G",
        "--peer",
        &pa,
    ]);
    let downloads = b.get("/v1/downloads").unwrap();
    let file = downloads["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == FILE)
        .unwrap_or_else(|| panic!("{downloads}"))
        .clone();
    assert_eq!(file["source"], a.peer_id.as_str(), "{file}");
    assert_eq!(file["status"], "done", "{file}");
    assert!(b.log_text().contains("downloading from a peer"));
    // B holds what it runs: the header at start, its layers' tensors once the ring gives it
    // layers (all from A), and the bytes it holds are A's.
    let held = b.home.join("models/test--gemma-3-270m-GGUF").join(FILE);
    let whole = std::fs::read(test_model(GEMMA)).unwrap();
    let header = exo_engine::gguf::read_header(&held).unwrap();
    assert_eq!(
        std::fs::read(&held).unwrap()[..header.data_offset as usize],
        whole[..header.data_offset as usize]
    );
    // And B serves it.
    b.wait_peers(&[&a], Duration::from_secs(20));
    let expected = run_single(&test_model(GEMMA), "Water boils at", 12);
    assert_eq!(
        complete(&b, "gemma-3-270m-q4_k_m", "Water boils at", 12),
        expected
    );
}

const ST_REPO: &str = "test/tiny-llama";
/// The model id of a safetensors repo: its store directory's name.
const ST_ID: &str = "test--tiny-llama";
const ST_FILES: [&str; 3] = [
    "model-00001-of-00003.safetensors",
    "model-00002-of-00003.safetensors",
    "model-00003-of-00003.safetensors",
];

/// A tiny random Llama (4 layers) in Hugging Face layout, its weights split by an index over
/// three files: embedding and layers 0-1, layers 2-3, final norm and head. The tokenizer maps
/// each printable ASCII character (and newline) to one of the 96 token ids.
fn tiny_llama_repo() -> Vec<(String, Vec<u8>)> {
    use candle_core::{Device, Tensor};
    const HIDDEN: usize = 64;
    const HEADS: usize = 4;
    const KV_HEADS: usize = 2;
    const HEAD_DIM: usize = 16;
    const FFN: usize = 128;
    const VOCAB: usize = 96;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut tensor = |shape: &[usize], scale: f32, offset: f32| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                offset + ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    };
    let mut files: Vec<HashMap<String, Tensor>> = vec![HashMap::new(); 3];
    files[0].insert(
        "model.embed_tokens.weight".into(),
        tensor(&[VOCAB, HIDDEN], 1.0, 0.0),
    );
    for l in 0..4 {
        let p = format!("model.layers.{l}");
        let f = &mut files[l / 2];
        for (name, shape, scale, offset) in [
            ("input_layernorm.weight", vec![HIDDEN], 0.2, 1.0),
            ("post_attention_layernorm.weight", vec![HIDDEN], 0.2, 1.0),
            (
                "self_attn.q_proj.weight",
                vec![HEADS * HEAD_DIM, HIDDEN],
                0.15,
                0.0,
            ),
            (
                "self_attn.k_proj.weight",
                vec![KV_HEADS * HEAD_DIM, HIDDEN],
                0.15,
                0.0,
            ),
            (
                "self_attn.v_proj.weight",
                vec![KV_HEADS * HEAD_DIM, HIDDEN],
                0.15,
                0.0,
            ),
            (
                "self_attn.o_proj.weight",
                vec![HIDDEN, HEADS * HEAD_DIM],
                0.15,
                0.0,
            ),
            ("mlp.gate_proj.weight", vec![FFN, HIDDEN], 0.15, 0.0),
            ("mlp.up_proj.weight", vec![FFN, HIDDEN], 0.15, 0.0),
            ("mlp.down_proj.weight", vec![HIDDEN, FFN], 0.15, 0.0),
        ] {
            f.insert(format!("{p}.{name}"), tensor(&shape, scale, offset));
        }
    }
    files[2].insert("model.norm.weight".into(), tensor(&[HIDDEN], 0.2, 1.0));
    files[2].insert("lm_head.weight".into(), tensor(&[VOCAB, HIDDEN], 0.2, 0.0));

    let dir = temp_dir("tiny-llama-src");
    let mut repo = Vec::new();
    let mut weight_map = serde_json::Map::new();
    let mut total = 0;
    for (name, tensors) in ST_FILES.iter().zip(&files) {
        let path = dir.join(name);
        candle_core::safetensors::save(tensors, &path).unwrap();
        for t in tensors.keys() {
            weight_map.insert(t.clone(), (*name).into());
        }
        total += tensors.values().map(|t| t.elem_count() * 4).sum::<usize>();
        repo.push((name.to_string(), std::fs::read(&path).unwrap()));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 4,
        "hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM, "intermediate_size": FFN, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "max_position_embeddings": 256, "vocab_size": VOCAB,
    });
    let vocab: serde_json::Map<String, serde_json::Value> = (32u8..127)
        .map(|c| (c as char).to_string())
        .chain(["\n".to_string()])
        .enumerate()
        .map(|(i, t)| (t, i.into()))
        .collect();
    assert_eq!(vocab.len(), VOCAB);
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []},
    });
    for (name, v) in [
        ("config.json", config),
        ("tokenizer.json", tokenizer),
        ("model.safetensors.index.json", index),
    ] {
        repo.push((name.to_string(), v.to_string().into_bytes()));
    }
    repo
}

/// The weight files in a node's store.
fn held_weights(home: &Path) -> BTreeSet<String> {
    std::fs::read_dir(home.join("models/test--tiny-llama"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.ends_with(".safetensors"))
                .collect()
        })
        .unwrap_or_default()
}

/// A mock hub serving the tiny Llama repo, and two nodes serving it from that hub.
fn tiny_llama_pair() -> (tokio::runtime::Runtime, MockHub, Node, Node) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hub = rt.block_on(MockHub::start());
    let files = tiny_llama_repo();
    hub.add_repo(
        ST_REPO,
        files
            .iter()
            .map(|(n, b)| {
                let lfs = n.ends_with(".safetensors");
                (n.as_str(), Data::Mem(b.clone().into()), lfs)
            })
            .collect(),
    );
    let mut a = Node::new("a");
    let mut b = Node::new("b");
    let base = ["--model", ST_REPO, "--no-mdns", "--memory", "8G"];
    a.env("HF_ENDPOINT", &hub.endpoint()).start(&base);
    let pa = a.addr();
    b.env("HF_ENDPOINT", &hub.endpoint())
        .start(&[&base[..], &["--peer", &pa]].concat());
    for n in [&a, &b] {
        n.wait_peers(&[&a, &b], Duration::from_secs(30));
    }
    (rt, hub, a, b)
}

#[test]
fn ring_nodes_fetch_only_the_weight_files_of_their_layers() {
    let (_rt, hub, a, b) = tiny_llama_pair();
    let endpoint = hub.endpoint();
    // Serving the model needs only its description: no weights before any request.
    for n in [&a, &b] {
        assert!(held_weights(&n.home).is_empty(), "{}", n.log_tail());
    }
    assert!(hub
        .requests(".safetensors")
        .iter()
        .all(|l| l.path.contains("index")));

    let prompt = "Water boils at";
    let got = complete(&a, ST_REPO, prompt, 12);

    // Each node holds the files of its layers: 0..2 the first, 2..4 the second and the head's.
    let ring: Vec<(String, u64)> = a.topology()["rings"][ST_ID]
        .as_array()
        .unwrap_or_else(|| panic!("no ring: {}", a.topology()))
        .iter()
        .map(|s| {
            (
                s["peer_id"].as_str().unwrap().to_string(),
                s["start"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(ring.len(), 2, "{ring:?}");
    for n in [&a, &b] {
        let start = ring.iter().find(|(p, _)| *p == n.peer_id).unwrap().1;
        let want: BTreeSet<String> = match start {
            0 => [ST_FILES[0]].map(String::from).into(),
            2 => [ST_FILES[1], ST_FILES[2]].map(String::from).into(),
            s => panic!("unexpected split at {s}: {ring:?}"),
        };
        assert_eq!(held_weights(&n.home), want, "{}", n.name);
        assert!(
            n.log_text()
                .contains("weight files for the layers are here"),
            "{}",
            n.log_tail()
        );
    }
    // The hub served each weight file once: neither node fetched all of them.
    for f in ST_FILES {
        let fetched = hub.requests(&format!("/resolve/main/{f}"));
        assert_eq!(fetched.len(), 1, "{f}: {:?}", hub.log());
    }

    // One process on the whole repo generates the same text.
    let single = temp_dir("tiny-llama-single");
    let out = exo(&single, &endpoint, &["models", "pull", ST_REPO]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(held_weights(&single).len(), 3);
    let out = exo(
        &single,
        DEAD_HUB,
        &[
            "run",
            ST_REPO,
            "-p",
            prompt,
            "-n",
            "12",
            "--temperature",
            "0",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let expected = String::from_utf8(out.stdout).unwrap();
    assert!(!expected.is_empty());
    assert_eq!(got, expected, "the 2-node ring differs from one process");
    let _ = std::fs::remove_dir_all(&single);
}

#[test]
fn a_failed_weight_download_is_a_clear_error() {
    let (_rt, hub, a, b) = tiny_llama_pair();
    for f in ST_FILES {
        hub.set_faults(
            ST_REPO,
            f,
            Faults {
                corrupt_at: Some(100),
                ..Default::default()
            },
        );
    }
    let body = serde_json::json!({"model": ST_REPO, "prompt": "hi", "max_tokens": 2});
    let err = a.post("/v1/completions", &body).unwrap_err();
    assert!(
        err.contains("cannot fetch the weights of test/tiny-llama") && err.contains("sha256"),
        "{err}"
    );
    assert!(held_weights(&a.home).is_empty() && held_weights(&b.home).is_empty());
}
