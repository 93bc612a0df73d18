//! Continuous batching through the real binary: eight greedy streams sent at once to one `serve`
//! node produce, each, the text it produces alone; and the node did run them in shared forwards.

mod common;

use std::{io::Read, time::Duration};

use common::{sse_events, test_model, Node};
use serde_json::{json, Value};

const PROMPTS: [&str; 8] = [
    "The capital of France is",
    "fn main() {",
    "Once upon a time, in a land far away, there lived",
    "1, 2, 3, 4, 5,",
    "Water boils at",
    "def fibonacci(n):",
    "The quick brown fox",
    "In the beginning God created the heaven and the earth. And the earth was without form, and \
     void; and darkness was upon the face of the deep.",
];
const MAX_TOKENS: u32 = 24;

/// A greedy streamed completion: the text of every `data:` event, joined.
fn stream(node: &Node, model: &str, prompt: &str) -> String {
    let body = json!({
        "model": model, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
        "stream": true,
    });
    let resp = ureq::post(&node.url("/v1/completions"))
        .config()
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .send_json(&body)
        .unwrap_or_else(|e| panic!("stream of {prompt:?}: {e}"));
    let mut text = String::new();
    let mut reader = resp.into_body().into_reader();
    let mut raw = Vec::new();
    reader.read_to_end(&mut raw).unwrap();
    for event in sse_events(&raw[..]) {
        if event == "[DONE]" {
            break;
        }
        let v: Value = serde_json::from_str(&event).unwrap();
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or_default());
    }
    text
}

#[test]
fn eight_concurrent_greedy_streams_equal_their_solo_texts() {
    let model = test_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let model = model.to_str().unwrap();
    let mut node = Node::new("batching");
    node.env("RUST_LOG", "info,exo_engine::scheduler=debug");
    node.start(&["--model", model, "--no-mdns"]);
    let id = node.get("/v1/models").unwrap()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let solo: Vec<String> = PROMPTS.iter().map(|p| stream(&node, &id, p)).collect();
    assert!(
        !node.log_text().contains("batched forward"),
        "one request at a time ran in shared forwards"
    );
    let barrier = std::sync::Barrier::new(PROMPTS.len());
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = PROMPTS
            .iter()
            .map(|p| {
                let (node, id, barrier) = (&node, &id, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    stream(node, id, p)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, b)) in solo.iter().zip(&together).enumerate() {
        assert!(!a.is_empty(), "prompt {i} generated nothing");
        assert_eq!(
            a, b,
            "prompt {i} ({:?}): alone vs among 7 others",
            PROMPTS[i]
        );
    }
    let log = node.log_text();
    let most = log
        .lines()
        .filter(|l| l.contains("batched forward"))
        .filter_map(|l| {
            l.split("seqs=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most >= 4,
        "the 8 streams never shared a forward of 4 or more sequences (most: {most})"
    );
}
