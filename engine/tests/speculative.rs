//! Speculative verification on real models: one pass over a token and its drafts gives what
//! plain greedy steps give at each position, and rolling the KV caches back past rejected drafts
//! (at any position, on every shard) leaves decoding exactly where plain decoding would be.

mod common;

use candle_core::Device;
use common::{greedy, test_model, GEMMA, QWEN};
use exo_engine::{speculative::accepted_prefix, LocalRing, ModelInfo, Speculation};
use exo_protocol::SamplingParams;

const N: usize = 10;

/// For every split point `j`, verifies the reference token at the prompt's end followed by `j`
/// correct drafts and then wrong ones; checks the target's answers, then decodes on from the
/// accepted position (the caches rolled back) and checks it continues the reference text.
fn rollback_at_every_position(file: &str, shards: u32) {
    let path = test_model(file);
    let info = ModelInfo::load(&path).unwrap();
    let ring = LocalRing::load(&path, shards, &Device::Cpu).unwrap();
    let prompt = info
        .encode_prompt("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n")
        .unwrap();
    let reference = greedy(&ring, "ref", &prompt, N + 4);
    let p = SamplingParams::greedy();
    let start = prompt.len();
    for j in 0..=N {
        let key = format!("spec-{j}");
        let first = ring.step(&key, 0, &prompt, &p).unwrap();
        assert_eq!(first.id, reference[0]);
        // reference[0] is fed at `start`; drafts: j right tokens, then wrong ones.
        let mut input = vec![reference[0]];
        input.extend_from_slice(&reference[1..=j]);
        let wrong = |t: u32| if t == 0 { 1 } else { t - 1 };
        input.extend((j + 1..=N).map(|i| wrong(reference[i])));
        let outs = ring.verify(&key, start, &input, &p, 0).unwrap();
        assert_eq!(outs.len(), input.len());
        let ids: Vec<u32> = outs.iter().map(|t| t.id).collect();
        let n = accepted_prefix(&input[1..], &ids);
        assert_eq!(
            n, j,
            "{file} on {shards} shards: drafts accepted with {j} right"
        );
        assert_eq!(&ids[..=j], &reference[1..=j + 1], "{file}: verified tokens");
        // Continue plainly after the accepted prefix: every shard rolls back to it.
        let mut tok = outs[j].clone();
        let rest = reference.iter().enumerate().skip(j + 1);
        for (pos, (i, want)) in (start + 1 + j..).zip(rest) {
            assert_eq!(
                tok.id, *want,
                "{file} on {shards} shards, split {j}: token {i}"
            );
            tok = ring.step(&key, pos, &[tok.id], &p).unwrap();
        }
        ring.release(&key);
    }
}

#[test]
fn rollback_at_every_position_one_shard() {
    rollback_at_every_position(GEMMA, 1);
}

#[test]
fn rollback_at_every_position_across_shards() {
    rollback_at_every_position(QWEN, 3);
}

#[test]
fn draft_with_another_tokenizer_is_refused() {
    let target = ModelInfo::load(&test_model(QWEN)).unwrap();
    let err = Speculation::load_draft(&test_model(GEMMA), &target.tokenizer, &target.id)
        .err()
        .expect("gemma cannot draft for qwen");
    let msg = err.to_string();
    assert!(msg.contains("tokenizer differs"), "{msg}");
    assert!(msg.contains("gemma-3-270m"), "{msg}");
    // The same model as its own draft is accepted and proposes what it would write.
    let spec = Speculation::load_draft(&test_model(QWEN), &target.tokenizer, &target.id).unwrap();
    let prompt = target.encode_prompt("fn main() {\n    println!(").unwrap();
    let ring = LocalRing::load(&test_model(QWEN), 1, &Device::Cpu).unwrap();
    let reference = greedy(&ring, "ref", &prompt, 6);
    let mut s = spec.speculator(target.context_length());
    let mut context = prompt.clone();
    context.push(reference[0]);
    assert_eq!(s.propose(&context, 100).unwrap()[..3], reference[1..4]);
    // After a rejection the draft rolls back to what was accepted and follows the new text.
    context.push(reference[1]);
    assert_eq!(s.propose(&context, 100).unwrap()[..2], reference[2..4]);
}
