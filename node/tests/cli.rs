//! The `exo-p2p` binary as a user runs it: `run` on a real model, and its errors.

mod common;

use std::process::Command;

use common::{test_model, CommandExt, CHILD_TIMEOUT};

fn exo() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_exo-p2p"));
    c.env_remove("RUST_LOG").env_remove("DEBUG");
    c
}

fn reference(model: &str, prompt: &str) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/llamacpp-greedy.jsonl"
    );
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["model"] == model && v["prompt"] == prompt)
        .unwrap()["continuation"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn run_streams_only_the_generated_text() {
    let model = "gemma-3-270m-q4_k_m.gguf";
    let out = exo()
        .args(["run"])
        .arg(test_model(model))
        .args([
            "--prompt",
            "The quick brown fox",
            "--max-tokens",
            "32",
            "--temperature",
            "0",
        ])
        .output_within(CHILD_TIMEOUT);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout, reference(model, "The quick brown fox"));
}

#[test]
fn run_chat_applies_the_template_and_stops_at_end_of_turn() {
    let out = exo()
        .args(["run"])
        .arg(test_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
        .args([
            "--chat",
            "-p",
            "What is 2+2? Answer with one number.",
            "-n",
            "64",
            "--temperature",
            "0",
        ])
        .output_within(CHILD_TIMEOUT);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains('4'), "{stdout:?}");
    assert!(
        !stdout.contains("<|im_end|>") && !stdout.contains("<|im_start|>"),
        "{stdout:?}"
    );
}

fn assert_one_line_error(out: std::process::Output, needle: &str) {
    assert!(!out.status.success());
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr: {stderr}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(needle),
        "stderr: {stderr}"
    );
}

#[test]
fn missing_file_is_one_clear_error() {
    let out = exo()
        .args(["run", "/no/such/model.gguf", "-p", "hi"])
        .output_within(CHILD_TIMEOUT);
    assert_one_line_error(out, "/no/such/model.gguf");
}

#[test]
fn non_gguf_file_is_one_clear_error() {
    let out = exo()
        .args([
            "run",
            concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"),
            "-p",
            "hi",
        ])
        .env("RUST_BACKTRACE", "1")
        .output_within(CHILD_TIMEOUT);
    assert_one_line_error(out, "is not a GGUF file");
}

#[test]
fn unsupported_architecture_is_one_clear_error() {
    use candle_core::quantized::gguf_file::{self, Value};
    let path = std::env::temp_dir().join(format!("exo-mamba-{}.gguf", std::process::id()));
    let arch = Value::String("mamba".into());
    gguf_file::write(
        &mut std::fs::File::create(&path).unwrap(),
        &[("general.architecture", &arch)],
        &[],
    )
    .unwrap();
    let out = exo()
        .arg("run")
        .arg(&path)
        .args(["-p", "hi"])
        .output_within(CHILD_TIMEOUT);
    std::fs::remove_file(&path).unwrap();
    assert_one_line_error(out, "architecture `mamba`");
}

#[test]
fn version_names_the_commit() {
    let out = exo().arg("--version").output_within(CHILD_TIMEOUT);
    let v = String::from_utf8(out.stdout).unwrap();
    assert!(v.starts_with("exo-p2p 0.") && v.contains('('), "{v}");
}

#[test]
fn perplexity_reports_progress_and_a_final_estimate() {
    let text = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/kjv-genesis-1-8.txt"
    );
    let out = exo()
        .arg("perplexity")
        .arg(test_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
        .arg(text)
        .args(["-c", "64", "--chunks", "3", "--json"])
        .output_within(CHILD_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // llama-perplexity's running figures, one per chunk.
    assert!(stderr.contains("[1]") && stderr.contains("[3]"), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["chunks"], 3);
    assert_eq!(r["scored_tokens"], 3 * 31);
    let ppl = r["ppl"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < 100.0, "{r}");

    let out = exo()
        .arg("perplexity")
        .arg(test_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))
        .arg("/nonexistent/text.txt")
        .output_within(CHILD_TIMEOUT);
    assert_one_line_error(out, "/nonexistent/text.txt");
}
