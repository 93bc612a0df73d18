//! Surviving node loss: kill -9 a node of a 3-node ring during a streamed greedy completion and
//! the stream completes with exactly the text of an uninterrupted run; when the survivors
//! cannot hold the model, a clear error arrives within 10 s; a dead driver's KV caches are freed;
//! a client that disconnects frees every shard's cache.

mod common;

use std::{
    io::Read,
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{json, Value};

const PROMPT: &str = "The quick brown fox";
const GEMMA_ID: &str = "gemma-3-270m-q4_k_m";

fn gemma() -> String {
    test_model(GEMMA).to_str().unwrap().to_string()
}

/// Three gemma nodes with static peers and the same memory; returns them in ring order.
fn ring_of_three(memory: &str, extra: &[&str]) -> Vec<Node> {
    let model = gemma();
    let mut nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| Node::new(n)).collect();
    let mut addrs: Vec<String> = Vec::new();
    for n in nodes.iter_mut() {
        let mut args = vec!["--model", model.as_str(), "--no-mdns", "--memory", memory];
        for a in &addrs {
            args.extend(["--peer", a.as_str()]);
        }
        args.extend_from_slice(extra);
        n.start(&args);
        addrs.push(n.addr());
    }
    let all: Vec<&Node> = nodes.iter().collect();
    for n in &nodes {
        n.wait_peers(&all, Duration::from_secs(30));
    }
    let ring: Vec<String> = nodes[0].topology()["rings"][GEMMA_ID]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["peer_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ring.len(), 3);
    nodes.sort_by_key(|n| ring.iter().position(|p| *p == n.peer_id).unwrap());
    nodes
}

enum Event {
    Text(String),
    Error(Value),
    Done,
}

/// Streams a greedy completion from `node`, sending each event with its arrival time.
fn stream_completion(node: &Node, max_tokens: u32) -> mpsc::Receiver<(Instant, Event)> {
    let (tx, rx) = mpsc::channel();
    let url = node.url("/v1/completions");
    std::thread::spawn(move || {
        let body = json!({"model": GEMMA_ID, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": true});
        let resp = ureq::post(&url)
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .send_json(&body);
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send((Instant::now(), Event::Error(json!(e.to_string()))));
                return;
            }
        };
        if !resp.status().is_success() {
            let mut s = String::new();
            let _ = resp.into_body().into_reader().read_to_string(&mut s);
            let _ = tx.send((Instant::now(), Event::Error(json!(s))));
            return;
        }
        for data in sse_events(resp.into_body().into_reader()) {
            let now = Instant::now();
            if data == "[DONE]" {
                let _ = tx.send((now, Event::Done));
                return;
            }
            let v: Value = serde_json::from_str(&data).unwrap();
            let ev = if v.get("error").is_some() {
                Event::Error(v)
            } else {
                Event::Text(
                    v["choices"][0]["text"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            };
            if tx.send((now, ev)).is_err() {
                return;
            }
        }
    });
    rx
}

/// Collects a stream; kills `victims` once `kill_after` pieces of text have arrived. Returns the
/// text, the error (if any), the longest gap between events after the kill, and the time from the
/// first kill to the end of the stream.
fn run_with_kills(
    driver: &Node,
    victims: &mut [&mut Node],
    kill_after: usize,
    max_tokens: u32,
) -> (String, Option<Value>, Duration, Duration) {
    let rx = stream_completion(driver, max_tokens);
    let (mut text, mut pieces) = (String::new(), 0);
    let mut killed_at = None;
    let mut last = Instant::now();
    let mut worst_gap = Duration::ZERO;
    loop {
        let (at, ev) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the stream hung");
        if killed_at.is_some() {
            worst_gap = worst_gap.max(at - last);
        }
        last = at;
        match ev {
            Event::Text(t) => {
                text.push_str(&t);
                pieces += 1;
                if pieces == kill_after && killed_at.is_none() {
                    killed_at = Some(Instant::now());
                    for v in victims.iter_mut() {
                        v.kill();
                    }
                    last = Instant::now();
                }
            }
            Event::Error(e) => {
                let killed_at = killed_at.expect("failed before the kill");
                return (text, Some(e), worst_gap, at - killed_at);
            }
            Event::Done => {
                let killed_at = killed_at.expect("finished before the kill");
                return (text, None, worst_gap, at - killed_at);
            }
        }
    }
}

fn check_recovery(victim: usize, driver: usize) {
    let expected = run_single(&test_model(GEMMA), PROMPT, 200);
    let mut nodes = ring_of_three("8G", &[]);
    let mut lost = nodes.remove(victim);
    let driver = &nodes[if driver > victim { driver - 1 } else { driver }];
    let (text, err, gap, _) = run_with_kills(driver, &mut [&mut lost], 40, 200);
    assert!(err.is_none(), "stream failed: {err:?}");
    assert_eq!(
        text, expected,
        "the recovered stream differs from an uninterrupted run"
    );
    eprintln!("recovered after losing ring node {victim}: longest pause {gap:?}");
    assert!(gap < Duration::from_secs(5 + 10), "recovery took {gap:?}");
    let metrics = ureq::get(&driver.url("/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("exo_recoveries_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(driver
        .log_text()
        .contains("recovering request on a new ring"));
}

#[test]
fn killing_the_middle_node_mid_stream_loses_no_token() {
    check_recovery(1, 0);
}

#[test]
fn killing_the_last_node_mid_stream_loses_no_token() {
    check_recovery(2, 0);
}

#[test]
fn killing_the_first_node_mid_stream_loses_no_token() {
    check_recovery(0, 2);
}

#[test]
fn when_the_survivor_cannot_hold_the_model_the_error_is_clear_and_quick() {
    // 150 MiB each: three nodes hold gemma's 235 MiB (a stage's need counts its layers' real bytes
    // plus half the embedding/output table at each end, ~120 MiB for the first of two), one cannot.
    let mut nodes = ring_of_three("150M", &[]);
    let (first, rest) = nodes.split_at_mut(1);
    let (b, c) = rest.split_at_mut(1);
    let (text, err, _, took) = run_with_kills(&first[0], &mut [&mut b[0], &mut c[0]], 10, 200);
    let err = err.expect("the stream should end with an error");
    eprintln!("error {took:?} after losing two of three nodes: {err}");
    assert!(took < Duration::from_secs(10), "the error took {took:?}");
    assert!(!text.is_empty());
    let msg = err["error"]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("not enough memory"), "{err}");
    // Before streaming starts, the same condition is an HTTP error.
    let resp = first[0].post(
        "/v1/completions",
        &json!({"model": GEMMA_ID, "prompt": "hi", "max_tokens": 4}),
    );
    let e = resp.unwrap_err();
    assert!(e.contains("503") && e.contains("not enough memory"), "{e}");
}

fn kv_requests(node: &Node) -> u64 {
    let text = ureq::get(&node.url("/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("exo_kv_cache_requests "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn a_dead_drivers_caches_are_freed_after_the_idle_timeout() {
    let model = gemma();
    let (a, mut driver) = pair(
        &model,
        &["--memory", "8G", "--kv-idle-timeout", "2"],
        &["--memory", "8G"],
    );
    a.wait_peers(&[&driver], Duration::from_secs(30));
    driver.wait_peers(&[&a], Duration::from_secs(30));
    let rx = stream_completion(&driver, 200);
    // Wait for a few tokens: both nodes now hold the request's cache.
    for _ in 0..5 {
        rx.recv_timeout(Duration::from_secs(60)).unwrap();
    }
    assert_eq!(kv_requests(&a), 1);
    driver.kill();
    let t = Instant::now();
    wait_until(
        Duration::from_secs(15),
        "the orphaned KV cache to be freed",
        || (kv_requests(&a) == 0).then_some(()),
    );
    eprintln!(
        "orphaned cache freed {:?} after the driver died",
        t.elapsed()
    );
}

#[test]
fn a_client_that_disconnects_frees_every_shards_cache() {
    let model = gemma();
    let (a, b) = pair(&model, &["--memory", "8G"], &["--memory", "8G"]);
    a.wait_peers(&[&b], Duration::from_secs(30));
    b.wait_peers(&[&a], Duration::from_secs(30));
    {
        let body = json!({"model": GEMMA_ID, "prompt": PROMPT, "max_tokens": 500, "temperature": 0, "stream": true});
        let resp = ureq::post(&a.url("/v1/completions"))
            .send_json(&body)
            .unwrap();
        let mut events = sse_events(resp.into_body().into_reader());
        for _ in 0..5 {
            events.next().unwrap();
        }
        assert_eq!(kv_requests(&a), 1);
        assert_eq!(kv_requests(&b), 1);
        // Dropping the reader closes the connection mid-stream.
    }
    wait_until(
        Duration::from_secs(10),
        "both shards to free the request",
        || (kv_requests(&a) == 0 && kv_requests(&b) == 0).then_some(()),
    );
    assert!(a.log_text().contains("generation cancelled and released"));
}
