//! Chaos and load, bounded in count and time. Chaos: three nodes, twenty requests from
//! concurrent clients while ring nodes are killed (-9) and restarted at random: every request
//! ends with the correct text or a clear error, none hangs, no node panics. Load: a hundred
//! concurrent clients against a two-node ring: each completes or gets 429, none hangs, and the
//! nodes' memory afterwards is within 10% of before.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::*;
use serde_json::json;

const GEMMA_ID: &str = "gemma-3-270m-q4_k_m";
const PROMPTS: [&str; 3] = ["The quick brown fox", "Water boils at", "def fibonacci(n):"];

/// A request's result: the text, or the error the client was given.
fn request(node_url: &str, prompt: &str, stream: bool) -> Result<String, String> {
    let body = json!({"model": GEMMA_ID, "prompt": prompt, "max_tokens": 24, "temperature": 0, "stream": stream});
    let resp = ureq::post(&format!("{node_url}/v1/completions"))
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .send_json(&body)
        .map_err(|e| format!("transport: {e}"))?;
    let status = resp.status();
    if !status.is_success() {
        let v: serde_json::Value = resp
            .into_body()
            .read_json()
            .map_err(|e| format!("HTTP {status}, unreadable body: {e}"))?;
        let msg = v["error"]["message"]
            .as_str()
            .ok_or(format!("HTTP {status} without an OpenAI error: {v}"))?;
        return Err(format!("HTTP {status}: {msg}"));
    }
    if !stream {
        let v: serde_json::Value = resp.into_body().read_json().map_err(|e| e.to_string())?;
        return Ok(v["choices"][0]["text"].as_str().unwrap().to_string());
    }
    let mut text = String::new();
    for data in sse_events(resp.into_body().into_reader()) {
        if data == "[DONE]" {
            return Ok(text);
        }
        let v: serde_json::Value = serde_json::from_str(&data).map_err(|e| e.to_string())?;
        if let Some(e) = v.get("error") {
            return Err(format!("stream error: {}", e["message"]));
        }
        text.push_str(v["choices"][0]["text"].as_str().unwrap_or_default());
    }
    Err("transport: the stream ended without [DONE]".into())
}

#[test]
fn chaos_every_request_ends_correctly_or_with_a_clear_error() {
    let model = test_model(GEMMA);
    let expected: Vec<String> = PROMPTS.iter().map(|p| run_single(&model, p, 24)).collect();
    let model = model.to_str().unwrap();
    let mut api = Node::new("api");
    let pa = api.addr();
    api.start(&[
        "--model",
        model,
        "--no-mdns",
        "--memory",
        "8G",
        "--max-concurrent",
        "4",
    ]);
    api.wait_ready();
    let victims: Vec<Arc<Mutex<Node>>> = ["b", "c"]
        .iter()
        .map(|n| {
            let mut node = Node::new(n);
            node.start(&[
                "--model",
                model,
                "--no-mdns",
                "--memory",
                "8G",
                "--peer",
                &pa,
            ]);
            node.wait_ready();
            Arc::new(Mutex::new(node))
        })
        .collect();
    api.wait_peers(
        &[&victims[0].lock().unwrap(), &victims[1].lock().unwrap()],
        Duration::from_secs(30),
    );

    let done = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (done, victims) = (done.clone(), victims.clone());
        std::thread::spawn(move || {
            let mut seed = 0x1234_5678u64;
            let mut rand = move |n: u64| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                (seed >> 33) % n
            };
            let (mut kills, deadline) = (0, Instant::now() + Duration::from_secs(240));
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(800 + rand(2000)));
                let v = &victims[rand(2) as usize];
                v.lock().unwrap().kill();
                kills += 1;
                std::thread::sleep(Duration::from_millis(300 + rand(1500)));
                v.lock().unwrap().restart();
            }
            kills
        })
    };

    let url = api.url("");
    let results: Vec<(usize, Result<String, String>, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|worker| {
                let url = url.clone();
                s.spawn(move || {
                    (0..5)
                        .map(|i| {
                            let p = (worker + i) % PROMPTS.len();
                            let t = Instant::now();
                            let r = request(&url, PROMPTS[p], (worker + i) % 2 == 0);
                            (p, r, t.elapsed())
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    done.store(true, Ordering::Relaxed);
    let kills = chaos.join().unwrap();

    let (mut ok, mut errors) = (0, Vec::new());
    for (p, r, took) in &results {
        match r {
            Ok(text) => {
                assert_eq!(
                    text, &expected[*p],
                    "a request returned wrong text under chaos"
                );
                ok += 1;
            }
            Err(e) => {
                // A clear, OpenAI-shaped error, never a dropped connection or a hang.
                assert!(
                    !e.starts_with("transport"),
                    "unclear failure after {took:?}: {e}"
                );
                errors.push(e.clone());
            }
        }
    }
    eprintln!(
        "chaos: {} requests, {ok} correct, {} clear errors, {kills} kills: {errors:?}",
        results.len(),
        errors.len()
    );
    assert_eq!(results.len(), 20);
    assert!(ok >= 10, "too few requests survived the chaos: {ok}");
    let mut logs = vec![api.log_text()];
    logs.extend(victims.iter().map(|v| v.lock().unwrap().log_text()));
    for log in &logs {
        assert!(!log.contains("panicked"), "a node panicked:\n{log}");
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[test]
fn a_hundred_concurrent_clients_complete_or_get_429_and_memory_returns() {
    let model = test_model(GEMMA);
    let model = model.to_str().unwrap();
    let (a, b) = pair(model, &["--memory", "8G"], &["--memory", "8G"]);
    a.wait_peers(&[&b], Duration::from_secs(30));
    // Warm up (shards loaded), then measure memory.
    request(&a.url(""), "Hello", false).unwrap();
    let before = (a.rss(), b.rss());

    let url = a.url("");
    let start = Instant::now();
    let results: Vec<(u16, Option<f64>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let url = url.clone();
                s.spawn(move || {
                    let body = json!({"model": GEMMA_ID, "prompt": PROMPTS[i % 3], "max_tokens": 8, "temperature": 0, "stream": true});
                    let t = Instant::now();
                    let resp = ureq::post(&format!("{url}/v1/completions"))
                        .config()
                        .http_status_as_error(false)
                        .timeout_global(Some(Duration::from_secs(180)))
                        .build()
                        .send_json(&body)
                        .expect("no response: the server hung or dropped the client");
                    let status = resp.status().as_u16();
                    if status != 200 {
                        return (status, None, 0);
                    }
                    let (mut ttft, mut pieces) = (None, 0);
                    for data in sse_events(resp.into_body().into_reader()) {
                        if data == "[DONE]" {
                            break;
                        }
                        if data.contains("\"text\"") && ttft.is_none() {
                            ttft = Some(t.elapsed().as_secs_f64());
                        }
                        pieces += 1;
                    }
                    (status, ttft, pieces)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let completed: Vec<&(u16, Option<f64>, usize)> =
        results.iter().filter(|r| r.0 == 200).collect();
    let rejected = results.iter().filter(|r| r.0 == 429).count();
    assert_eq!(
        completed.len() + rejected,
        100,
        "statuses: {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(!completed.is_empty());
    let mut ttfts: Vec<f64> = completed.iter().filter_map(|r| r.1).collect();
    ttfts.sort_by(f64::total_cmp);
    let tokens: usize = completed.iter().map(|r| r.2).sum();
    eprintln!(
        "load: {} completed, {rejected} got 429; TTFT p50 {:.2}s p99 {:.2}s; {:.1} tok/s overall over {wall:.1}s",
        completed.len(),
        percentile(&ttfts, 0.5),
        percentile(&ttfts, 0.99),
        tokens as f64 / wall
    );
    // The node keeps serving afterwards, and gives back what the load took.
    request(&a.url(""), "Hello", false).unwrap();
    let after = (a.rss(), b.rss());
    eprintln!(
        "RSS before {:?} MiB, after {:?} MiB",
        (before.0 >> 20, before.1 >> 20),
        (after.0 >> 20, after.1 >> 20)
    );
    for (x, y) in [(before.0, after.0), (before.1, after.1)] {
        assert!((y as f64) <= 1.10 * x as f64, "RSS grew from {x} to {y}");
    }
}
