//! Real clients against real nodes: the official `openai`, `anthropic` and `ollama` Python
//! clients, with tool calls and structured output (and, on one node, a real browser on the chat
//! page) against `exo-p2p serve` with a real model, alone and as a
//! 2-node ring (one node serves the API, the other holds layers). Runs tests/python/run.sh.
//! Without python3-venv these fail unless the user opted out (`EXO_SKIP=python`); without
//! Chromium the browser test fails unless `EXO_SKIP=chromium` (tests/python/conftest.py).

mod common;

use std::{process::Command, time::Duration};

use common::*;

const PROMPT: &str = "What is the capital of France? Answer in one word.";
const MAX_TOKENS: &str = "16";
/// The client tests of every API surface, tools and structured output included.
const AGENT_SURFACES: &str =
    "openai_client or real_node or anthropic_client or ollama_client or tools or responses";

/// Whether python3 with venv is there; fails the test unless the user opted out (EXO_SKIP=python).
fn python_available(test: &str) -> bool {
    let ok = run_for(
        Command::new("python3").args(["-c", "import venv, ensurepip"]),
        Duration::from_secs(30),
    )
    .is_some_and(|o| o.status.success());
    let missing = (!ok).then(|| "needs python3 with venv (apt-get install python3-venv)".into());
    capability::check(capability::Capability::Python, test, missing)
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
        .output_within(CHILD_TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn pytest(api: &Node, key: &str, filter: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/python/run.sh");
    // run.sh bounds its venv and pip steps itself; this bounds the whole run.
    let status = Command::new("bash")
        .arg(script)
        .args(["-k", filter])
        .env("EXO_API_BASE", api.url(""))
        .env("EXO_API_KEY", key)
        .env("EXO_TEST_MODEL", "qwen2.5-coder-0.5b-instruct-q4_k_m")
        .env("EXO_EXPECT_CHAT", expected_chat())
        .env("EXO_CHAT_PROMPT", PROMPT)
        .env("EXO_CHAT_MAX_TOKENS", MAX_TOKENS)
        .status_within(Duration::from_secs(900));
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
    pytest(&a, "sekrit", &format!("{AGENT_SURFACES} or web_page"));
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
    pytest(&a, "sekrit", AGENT_SURFACES);
}
