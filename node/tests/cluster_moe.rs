//! A mixture-of-experts model across real `exo-p2p serve` processes on 127.0.0.1: a 2-node ring
//! on the tiny Qwen3-MoE, Mixtral-style and gpt-oss (MXFP4) GGUFs (tests/fixtures, made by
//! scripts/tiny-fixtures.sh) generates exactly what one process generates, each node holding one
//! of the two layers with its experts.

mod common;

use std::{path::PathBuf, time::Duration};

use common::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).join(name)
}

fn check_two_node_ring(file: &str) {
    let path = fixture(file);
    let model = file.trim_end_matches(".gguf").to_string();
    let prompt = "The quick brown fox";
    let expected = run_single(&path, prompt, 24);
    let (a, b) = pair(
        path.to_str().unwrap(),
        &["--memory", "1G"],
        &["--memory", "1G"],
    );
    a.wait_peers(&[&b], Duration::from_secs(30));
    b.wait_peers(&[&a], Duration::from_secs(30));
    let ring = wait_until(Duration::from_secs(30), "a 2-node ring", || {
        let t = a.topology();
        let stages = t["rings"][&model].as_array()?.clone();
        (stages.len() == 2).then_some(stages)
    });
    assert_eq!(ring[0]["end"].as_u64(), Some(1), "{ring:?}");
    assert_eq!(ring[1]["end"].as_u64(), Some(2), "{ring:?}");
    for node in [&a, &b] {
        let got = complete(node, &model, prompt, 24);
        assert_eq!(
            got, expected,
            "2-node ring of {file} differs from one process"
        );
    }
}

#[test]
fn two_node_ring_matches_one_process_qwen3moe() {
    check_two_node_ring("tiny-qwen3moe-q8_0.gguf");
}

#[test]
fn two_node_ring_matches_one_process_mixtral() {
    check_two_node_ring("tiny-mixtral-q8_0.gguf");
}

#[test]
fn two_node_ring_matches_one_process_gpt_oss() {
    check_two_node_ring("tiny-gpt-oss-mxfp4.gguf");
}
