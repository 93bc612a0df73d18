//! A sequence's output does not depend on what it is batched with: on both real test models,
//! greedy decoding of each prompt alone equals its decoding inside one batched forward per step
//! with seven other prompts of different lengths — token for token, with bit-equal logits — while
//! the others start at different steps (so prompts are prefilled in the same forward as other
//! sequences decode) and one prompt is long enough for the tiled attention path.

mod common;

use candle_core::Device;
use common::test_model;
use exo_engine::{KvCache, Logits, SeqStep, ShardInput, ShardModel, Source, TextTokenizer};

const STEPS: usize = 12;

const PROMPTS: [&str; 8] = [
    "Hi",
    "The capital of France is",
    "fn main() {",
    "Once upon a time, in a land far away, there lived",
    "1, 2, 3, 4, 5,",
    "Water boils at",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    // Long enough (over 64 tokens) for ggml's tiled attention in its prefill.
    "In the beginning God created the heaven and the earth. And the earth was without form, and \
     void; and darkness was upon the face of the deep. And the Spirit of God moved upon the face \
     of the waters. And God said, Let there be light: and there was light. And God saw the light, \
     that it was good: and God divided the light from the darkness.",
];

fn logits_vec(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy tokens and the logits behind each, running the prompt alone.
fn alone(model: &ShardModel, prompt: &[u32]) -> (Vec<u32>, Vec<Vec<f32>>) {
    let mut cache = model.new_cache();
    let (mut tokens, mut logits) = (Vec::new(), Vec::new());
    let mut input = prompt.to_vec();
    for _ in 0..STEPS {
        let out = model
            .forward(ShardInput::Tokens(&input), &mut cache, Logits::Last)
            .unwrap();
        let l = logits_vec(&out);
        let t = argmax(&l);
        tokens.push(t);
        logits.push(l);
        input = vec![t];
    }
    (tokens, logits)
}

/// Every prompt decoded in one batched forward per step; prompt `i` joins at step `i`.
fn batched(model: &ShardModel, prompts: &[Vec<u32>]) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    let n = prompts.len();
    let mut caches: Vec<KvCache> = (0..n).map(|_| model.new_cache()).collect();
    let mut inputs: Vec<Vec<u32>> = prompts.to_vec();
    let mut results = vec![(Vec::new(), Vec::new()); n];
    for step in 0..STEPS + n {
        let active: Vec<usize> = (0..n)
            .filter(|&i| step >= i && results[i].0.len() < STEPS)
            .collect();
        if active.is_empty() {
            break;
        }
        let mut seqs = Vec::new();
        let mut order = Vec::new();
        for (i, cache) in caches.iter_mut().enumerate() {
            if active.contains(&i) {
                seqs.push(SeqStep {
                    input: ShardInput::Tokens(&inputs[i]),
                    cache,
                    logits: Logits::Last,
                });
                order.push(i);
            }
        }
        let outs = model.forward_batch(seqs).unwrap();
        assert_eq!(outs.len(), order.len());
        for (i, out) in order.into_iter().zip(outs) {
            let l = logits_vec(&out);
            let t = argmax(&l);
            results[i].0.push(t);
            results[i].1.push(l);
            inputs[i] = vec![t];
        }
    }
    results
}

fn check(name: &str) {
    let path = test_model(name);
    let model = ShardModel::load(&path, None, &Device::Cpu).unwrap();
    let tok = TextTokenizer::from_source(&Source::open(&path).unwrap()).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| tok.encode(p, true).unwrap())
        .collect();
    assert!(prompts.iter().any(|p| p.len() >= 64), "a long prompt");
    let together = batched(&model, &prompts);
    for (i, prompt) in prompts.iter().enumerate() {
        let (tokens, logits) = alone(&model, prompt);
        let (btokens, blogits) = &together[i];
        assert_eq!(
            &tokens,
            btokens,
            "{name}: prompt {i} ({:?}) alone {:?}, batched {:?}",
            PROMPTS[i],
            tok.decode(&tokens).unwrap(),
            tok.decode(btokens).unwrap()
        );
        for (step, (a, b)) in logits.iter().zip(blogits).enumerate() {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{name}: prompt {i} logits differ at step {step}");
        }
    }
}

#[test]
fn gemma_alone_equals_batched_with_seven_others() {
    check(common::GEMMA);
}

#[test]
fn qwen_alone_equals_batched_with_seven_others() {
    check(common::QWEN);
}

/// Eight requests stepping at once through a ring of shard runners (one shard, then two), each
/// on its own thread as the node's drivers run them, produce the same greedy tokens as each
/// alone, and the runners' schedulers did batch them (fewer forwards than sequence steps).
fn concurrent_runners(name: &str, shards: u32) {
    let path = test_model(name);
    let ring = exo_engine::LocalRing::load(&path, shards, &Device::Cpu).unwrap();
    let tok = TextTokenizer::from_source(&Source::open(&path).unwrap()).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| tok.encode(p, true).unwrap())
        .collect();
    let solo: Vec<Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| common::greedy(&ring, &format!("solo-{i}"), p, STEPS))
        .collect();
    let before = ring.runners()[0].batch_stats();
    let barrier = std::sync::Barrier::new(prompts.len());
    let together: Vec<Vec<u32>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (ring, barrier) = (&ring, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    common::greedy(ring, &format!("together-{i}"), p, STEPS)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, b)) in solo.iter().zip(&together).enumerate() {
        assert_eq!(
            a,
            b,
            "{name} on {shards} shards: prompt {i} alone {:?}, among 7 others {:?}",
            tok.decode(a).unwrap(),
            tok.decode(b).unwrap()
        );
    }
    let after = ring.runners()[0].batch_stats();
    let (forwards, seqs) = (after.0 - before.0, after.1 - before.1);
    assert_eq!(seqs, (prompts.len() * STEPS) as u64, "one chunk per step");
    assert!(
        forwards * 2 <= seqs,
        "{name}: {forwards} forwards for {seqs} sequence steps: the steps were not batched"
    );
}

#[test]
fn concurrent_requests_through_runners_equal_their_solo_text() {
    concurrent_runners(common::QWEN, 1);
    concurrent_runners(common::GEMMA, 2);
}
