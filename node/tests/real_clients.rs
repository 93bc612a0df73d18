//! Real clients against real nodes: the official `openai` Python client (and, on one node, a
//! real browser on the chat page) against `exo-p2p serve` with a real model, alone and as a
//! 2-node ring (one node serves the API, the other holds layers). Runs tests/python/run.sh.

mod common;

use std::{process::Command, time::Duration};

use common::*;

const PROMPT: &str = "What is the capital of France? Answer in one word.";
const MAX_TOKENS: &str = "16";

fn python_available(test: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import venv, ensurepip"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let msg = format!("SKIPPED {test}: needs python3 with venv (apt-get install python3-venv)");
        assert!(
            std::env::var("EXO_REQUIRE_PYTHON").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("{msg}");
    }
    ok
}

fn expected_chat() -> String {
    let out = Command::new(bin())
        .arg("run")
        .arg(test_model(QWEN))
        .args([
            "--chat",
            "-p",
            PROMPT,
            "-n",
            MAX_TOKENS,
            "--temperature",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn pytest(api: &Node, key: &str, filter: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/run.sh");
    let status = Command::new("bash")
        .arg(script)
        .args(["-k", filter])
        .env("EXO_API_BASE", api.url(""))
        .env("EXO_API_KEY", key)
        .env("EXO_TEST_MODEL", "qwen2.5-coder-0.5b-instruct-q4_k_m")
        .env("EXO_EXPECT_CHAT", expected_chat())
        .env("EXO_CHAT_PROMPT", PROMPT)
        .env("EXO_CHAT_MAX_TOKENS", MAX_TOKENS)
        .status()
        .unwrap();
    assert!(status.success(), "python tests failed against {}", api.name);
}

#[test]
fn openai_client_and_browser_against_one_node() {
    if !python_available("openai_client_and_browser_against_one_node") {
        return;
    }
    let mut a = Node::new("a");
    a.start(&[
        "--model",
        test_model(QWEN).to_str().unwrap(),
        "--no-mdns",
        "--api-key",
        "sekrit",
    ]);
    a.wait_ready();
    pytest(&a, "sekrit", "openai_client or real_node or web_page");
}

#[test]
fn openai_client_through_a_two_node_ring() {
    if !python_available("openai_client_through_a_two_node_ring") {
        return;
    }
    let qwen = test_model(QWEN);
    let qwen = qwen.to_str().unwrap();
    // The API node offers little memory, so the other node holds most layers.
    let (a, _layers) = pair(
        qwen,
        &["--memory", "1G", "--api-key", "sekrit"],
        &["--memory", "8G"],
    );
    // Topology needs the key too.
    wait_until(Duration::from_secs(30), "a 2-node ring", || {
        let resp = ureq::get(&a.url("/v1/topology"))
            .header("Authorization", "Bearer sekrit")
            .call()
            .ok()?;
        let topo: serde_json::Value = resp.into_body().read_json().ok()?;
        (topo["rings"]["qwen2.5-coder-0.5b-instruct-q4_k_m"]
            .as_array()?
            .len()
            == 2)
            .then_some(())
    });
    pytest(&a, "sekrit", "openai_client or real_node");
}
