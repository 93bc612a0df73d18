//! Speculative decoding through the real binary: greedy text with `--lookup` and `--draft` is the
//! text plain greedy decoding writes, on one node, on a 2-node ring and through a serving
//! node's API; a draft model with another tokenizer is refused.

mod common;

use std::{process::Command, time::Duration};

use common::{bin, test_model, CommandExt, Node, CHILD_TIMEOUT, GEMMA, QWEN};

const QWEN_1_5B: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";
/// Code with repetition, so prompt lookup has matches to propose (and some it gets wrong).
const PROMPT: &str = "Write a Python class Stack with push, pop, peek and is_empty methods, \
    each with a docstring, then a short example using it.";
const TOKENS: &str = "40";

/// `exo-p2p run` greedy over `model` with `extra` flags: (stdout, stderr).
fn run(model: &str, extra: &[&str]) -> (String, String) {
    let out = Command::new(bin())
        .arg("run")
        .arg(test_model(model))
        .args(["-p", PROMPT, "--chat", "-n", TOKENS, "--temperature", "0"])
        .args(extra)
        .env("EXO_HOME", common::temp_dir("spec-run"))
        .env("EXO_THREADS", "1")
        .env("DEBUG", "1")
        .output_within(CHILD_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "run {extra:?} failed: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// (drafted, accepted) from the run's log line.
fn acceptance(stderr: &str) -> (usize, usize) {
    let line = stderr
        .lines()
        .find(|l| l.contains("speculative decoding") && l.contains("drafted="))
        .unwrap_or_else(|| panic!("no speculation summary in the log:\n{stderr}"));
    let field = |name: &str| -> usize {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    (field("drafted"), field("accepted"))
}

#[test]
fn lookup_and_draft_keep_greedy_text_on_one_node() {
    let (plain, _) = run(QWEN, &[]);
    assert!(!plain.trim().is_empty());
    let (lookup, log) = run(QWEN, &["--lookup"]);
    assert_eq!(lookup, plain, "--lookup changed the greedy text");
    let (drafted, accepted) = acceptance(&log);
    assert!(drafted > 0, "prompt lookup proposed nothing:\n{log}");
    eprintln!("lookup: {accepted}/{drafted} drafts accepted");

    // A 1.5B target with the 0.5B draft: drafts are often but not always right.
    let (plain, _) = run(QWEN_1_5B, &[]);
    let draft = test_model(QWEN);
    let (drafted_text, log) = run(QWEN_1_5B, &["--draft", draft.to_str().unwrap()]);
    assert_eq!(drafted_text, plain, "--draft changed the greedy text");
    let (drafted, accepted) = acceptance(&log);
    assert!(accepted > 0 && accepted <= drafted, "{accepted}/{drafted}");
    eprintln!("draft: {accepted}/{drafted} drafts accepted");
}

#[test]
fn lookup_and_draft_keep_greedy_text_on_a_two_node_ring() {
    let (plain, _) = run(QWEN, &[]);
    let mut a = Node::new("spec-ring");
    a.start(&["--model", test_model(QWEN).to_str().unwrap(), "--no-mdns"]);
    let draft = test_model(QWEN);
    for extra in [&["--lookup"][..], &["--draft", draft.to_str().unwrap()][..]] {
        let ring = [
            "--no-mdns",
            "--peer",
            &a.addr(),
            "--wait-peers",
            "1",
            "--wait-timeout",
            "60",
        ];
        let (text, log) = run(QWEN, &[&ring[..], extra].concat());
        assert_eq!(
            log.matches("ring stage").count(),
            2,
            "not a ring of two:\n{log}"
        );
        assert_eq!(
            text, plain,
            "{extra:?} on a 2-node ring changed the greedy text"
        );
        let (drafted, accepted) = acceptance(&log);
        assert!(
            drafted > 0 && accepted > 0,
            "{extra:?}: {accepted}/{drafted}"
        );
    }
}

#[test]
fn a_serving_node_speculates_for_its_requests() {
    let model = test_model(QWEN);
    let model = model.to_str().unwrap();
    let id = "qwen2.5-coder-0.5b-instruct-q4_k_m";
    let reference = common::run_single(&test_model(QWEN), "def quicksort(arr):", 32);
    let mut a = Node::new("spec-serve");
    a.env("DEBUG", "1");
    a.start(&["--model", model, "--no-mdns", "--lookup"]);
    let text = common::complete(&a, id, "def quicksort(arr):", 32);
    assert_eq!(
        text, reference,
        "a serving node with --lookup changed the greedy text"
    );
    wait_for_log(&a, "drafted=");
}

fn wait_for_log(node: &Node, what: &str) {
    common::wait_until(Duration::from_secs(10), what, || {
        node.log_text()
            .lines()
            .any(|l| l.contains("generation done") && l.contains(what) && !l.contains("drafted=0"))
            .then_some(())
    });
}

#[test]
fn a_draft_with_another_tokenizer_is_refused() {
    let out = Command::new(bin())
        .arg("run")
        .arg(test_model(QWEN))
        .args(["-p", "hi", "-n", "4", "--temperature", "0"])
        .args(["--draft", test_model(GEMMA).to_str().unwrap()])
        .env("EXO_HOME", common::temp_dir("spec-refuse"))
        .env("EXO_THREADS", "1")
        .output_within(CHILD_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a gemma draft for qwen was accepted");
    assert!(
        stderr.contains("tokenizer differs") && stderr.contains("gemma-3-270m"),
        "unclear refusal: {stderr}"
    );
    assert!(out.stdout.is_empty(), "generated despite the refusal");
}
