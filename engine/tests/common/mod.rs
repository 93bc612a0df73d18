//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use exo_engine::LocalRing;
use exo_protocol::SamplingParams;

/// Path of a real test model; fails with instructions when it has not been fetched.
pub fn test_model(name: &str) -> PathBuf {
    let dir = std::env::var("EXO_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/exo-p2p/test-models")
        });
    let path = dir.join(name);
    assert!(
        path.exists(),
        "test model {} is missing: run scripts/fetch-test-models.sh (or set EXO_TEST_MODELS)",
        path.display()
    );
    path
}

pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";
pub const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// Greedy generation of `n` tokens (no stop on EOS) through a ring.
pub fn greedy(ring: &LocalRing, key: &str, prompt: &[u32], n: usize) -> Vec<u32> {
    let p = SamplingParams::greedy();
    let mut out = Vec::with_capacity(n);
    let mut tok = ring.step(key, 0, prompt, &p).expect("prefill");
    for pos in prompt.len().. {
        out.push(tok.id);
        if out.len() == n {
            break;
        }
        tok = ring.step(key, pos, &[tok.id], &p).expect("decode step");
    }
    ring.release(key);
    out
}
