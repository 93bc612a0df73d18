//! Models from a Hugging Face endpoint, as a user gets them: a mock hub on 127.0.0.1 that speaks
//! the real endpoints and serves the real test model. `models pull/list/rm`, `run` with a
//! repository reference, resume after killing a pull, a corrupted byte, 401 and 404, and a second
//! node that gets the file from the first over the mesh while the hub is down.

mod common;

#[path = "../../engine/tests/download_hub/mod.rs"]
mod download_hub;

use std::{
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
        .output()
        .unwrap()
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
    let pa = a.addr();
    // Both nodes are pointed at a dead hub.
    a.env("HF_ENDPOINT", DEAD_HUB)
        .start(&["--model", REPO, "--no-mdns", "--memory", "8G"]);
    a.wait_ready();
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
    b.wait_ready();
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
    let held = b.home.join("models/test--gemma-3-270m-GGUF").join(FILE);
    assert_eq!(
        std::fs::read(&held).unwrap(),
        std::fs::read(test_model(GEMMA)).unwrap()
    );
    // And B serves it.
    b.wait_peers(&[&a], Duration::from_secs(20));
    let expected = run_single(&test_model(GEMMA), "Water boils at", 12);
    assert_eq!(
        complete(&b, "gemma-3-270m-q4_k_m", "Water boils at", 12),
        expected
    );
}
