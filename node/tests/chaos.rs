//! Chaos and load, bounded in count and time. Chaos: three nodes, twenty requests from
//! concurrent clients while ring nodes are killed (-9) and restarted at random: kills happen,
//! the driving node recovers rings, and every request ends with exactly the text of an
//! uninterrupted run or with the documented "no ring fits" error; none hangs, no node panics.
//! Load: a hundred concurrent streaming clients against a two-node ring: each gets either 429 or
//! a 200 whose stream carries the whole text and ends with `[DONE]`; the nodes' memory afterwards
//! is within 10% of before.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
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

/// The value of an unlabelled counter or gauge in a node's `/metrics`.
fn metric(node: &Node, name: &str) -> f64 {
    let text = ureq::get(&node.url("/metrics"))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
}

/// The error a request may end with under chaos: the survivors cannot hold the model (README,
/// "Meshes"). With every node offering 8 GiB it should not even happen here.
const NO_RING_FITS: &str = "no ring fits on the rest";

#[test]
fn chaos_every_request_ends_correctly_or_with_a_clear_error() {
    let model = test_model(GEMMA);
    let expected: Vec<String> = PROMPTS.iter().map(|p| run_single(&model, p, 24)).collect();
    let model = model.to_str().unwrap();
    let mut api = Node::new("api");
    api.start(&[
        "--model",
        model,
        "--no-mdns",
        "--memory",
        "8G",
        "--max-concurrent",
        "4",
    ]);
    let pa = api.addr();
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
            Arc::new(Mutex::new(node))
        })
        .collect();
    api.wait_peers(
        &[&victims[0].lock().unwrap(), &victims[1].lock().unwrap()],
        Duration::from_secs(30),
    );
    let recoveries_before = metric(&api, "exo_recoveries_total");

    // Kills land while requests run (the chaos thread waits for one in flight), each victim
    // restarts with its identity and ports and is waited on until ready again.
    let (done, in_flight) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let chaos = {
        let (done, in_flight, victims) = (done.clone(), in_flight.clone(), victims.clone());
        std::thread::spawn(move || {
            let mut seed = 0x1234_5678u64;
            let mut rand = move |n: u64| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                (seed >> 33) % n
            };
            let (mut kills, deadline) = (0, Instant::now() + Duration::from_secs(240));
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(300 + rand(1200)));
                if in_flight.load(Ordering::Relaxed) == 0 {
                    continue;
                }
                let v = &victims[rand(2) as usize];
                v.lock().unwrap().kill();
                kills += 1;
                std::thread::sleep(Duration::from_millis(200 + rand(800)));
                v.lock().unwrap().restart();
            }
            kills
        })
    };

    let url = api.url("");
    let results: Vec<(usize, Result<String, String>, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|worker| {
                let (url, in_flight) = (url.clone(), in_flight.clone());
                s.spawn(move || {
                    (0..5)
                        .map(|i| {
                            let p = (worker + i) % PROMPTS.len();
                            let t = Instant::now();
                            in_flight.fetch_add(1, Ordering::Relaxed);
                            let r = request(&url, PROMPTS[p], (worker + i) % 2 == 0);
                            in_flight.fetch_sub(1, Ordering::Relaxed);
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
    let kills = chaos.join().expect("the chaos thread failed (a restart?)");
    let recoveries = metric(&api, "exo_recoveries_total") - recoveries_before;
    let (ok, no_ring) = (
        results.iter().filter(|r| r.1.is_ok()).count(),
        results.iter().filter(|r| r.1.is_err()).count(),
    );
    eprintln!(
        "chaos: {} requests, {ok} correct, {no_ring} \"no ring fits\"; {kills} kills, \
         {recoveries} ring recoveries",
        results.len()
    );
    assert_eq!(results.len(), 20);
    for (p, r, took) in &results {
        match r {
            Ok(text) => assert_eq!(
                text, &expected[*p],
                "a request returned other text than an uninterrupted run ({:?})",
                PROMPTS[*p]
            ),
            Err(e) => assert!(
                e.contains(NO_RING_FITS),
                "a request failed after {took:?} with other than \"{NO_RING_FITS}\": {e}"
            ),
        }
    }
    assert!(kills >= 2, "only {kills} kills happened");
    assert!(
        recoveries >= 1.0,
        "{kills} kills but no ring recovery on the API node"
    );
    assert!(api.log_text().contains("recovering request on a new ring"));
    let mut logs = vec![api.log_text()];
    logs.extend(victims.iter().map(|v| v.lock().unwrap().log_text()));
    for log in &logs {
        assert!(!log.contains("panicked"), "a node panicked:\n{log}");
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// What one of the hundred clients got.
struct LoadResult {
    prompt: usize,
    status: u16,
    /// Time to the first piece of text.
    ttft: Option<f64>,
    text: String,
    pieces: usize,
    /// Whether the stream ended with `data: [DONE]`.
    done: bool,
    /// An error event inside the stream.
    error: Option<String>,
}

fn load_client(url: &str, prompt: usize) -> LoadResult {
    let body = json!({"model": GEMMA_ID, "prompt": PROMPTS[prompt], "max_tokens": 8, "temperature": 0, "stream": true});
    let t = Instant::now();
    let resp = ureq::post(&format!("{url}/v1/completions"))
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(180)))
        .build()
        .send_json(&body)
        .expect("no response: the server hung or dropped the client");
    let mut r = LoadResult {
        prompt,
        status: resp.status().as_u16(),
        ttft: None,
        text: String::new(),
        pieces: 0,
        done: false,
        error: None,
    };
    if r.status != 200 {
        return r;
    }
    for data in sse_events(resp.into_body().into_reader()) {
        if data == "[DONE]" {
            r.done = true;
            break;
        }
        let v: serde_json::Value = match serde_json::from_str(&data) {
            Ok(v) => v,
            Err(e) => {
                r.error = Some(format!("unparsable event {data:?}: {e}"));
                break;
            }
        };
        if let Some(e) = v.get("error") {
            r.error = Some(e.to_string());
            break;
        }
        let piece = v["choices"][0]["text"].as_str().unwrap_or_default();
        if !piece.is_empty() && r.ttft.is_none() {
            r.ttft = Some(t.elapsed().as_secs_f64());
        }
        r.text.push_str(piece);
        r.pieces += 1;
    }
    r
}

/// A hundred clients at once against the API of `a`: every one completes with the uninterrupted
/// text or gets a 429. Returns how many completed.
fn hundred_client_burst(a: &Node, expected: &[String]) -> usize {
    let url = a.url("");
    let start = Instant::now();
    let results: Vec<LoadResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let url = url.clone();
                s.spawn(move || load_client(&url, i % PROMPTS.len()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed().as_secs_f64();
    let completed: Vec<&LoadResult> = results.iter().filter(|r| r.status == 200).collect();
    let rejected = results.iter().filter(|r| r.status == 429).count();
    assert_eq!(
        completed.len() + rejected,
        100,
        "a request neither completed nor got 429; statuses: {:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    // A 200 counts as completed only with the whole text and the final [DONE].
    for r in &completed {
        assert!(
            r.error.is_none() && r.done,
            "a 200 stream for {:?} ended without [DONE] (error: {:?}) after {:?}",
            PROMPTS[r.prompt],
            r.error,
            r.text
        );
        assert_eq!(
            r.text, expected[r.prompt],
            "a 200 stream for {:?} carried other text than an uninterrupted run",
            PROMPTS[r.prompt]
        );
    }
    assert!(!completed.is_empty());
    let mut ttfts: Vec<f64> = completed.iter().filter_map(|r| r.ttft).collect();
    ttfts.sort_by(f64::total_cmp);
    let tokens: usize = completed.iter().map(|r| r.pieces).sum();
    eprintln!(
        "load: {} completed, {rejected} got 429; TTFT p50 {:.2}s p99 {:.2}s; {:.1} tok/s overall over {wall:.1}s",
        completed.len(),
        percentile(&ttfts, 0.5),
        percentile(&ttfts, 0.99),
        tokens as f64 / wall
    );
    completed.len()
}

#[test]
fn a_hundred_concurrent_clients_complete_or_get_429_and_memory_returns() {
    let model = test_model(GEMMA);
    let expected: Vec<String> = PROMPTS.iter().map(|p| run_single(&model, p, 8)).collect();
    let model = model.to_str().unwrap();
    let (a, b) = pair(model, &["--memory", "8G"], &["--memory", "8G"]);
    a.wait_peers(&[&b], Duration::from_secs(30));
    // The first burst brings the batch scratch (logits and activations for a full batch) and the
    // allocator's arenas to their peak; memory is measured from there, so the second, identical
    // burst must give back all it takes: a leak per request or per stream shows as growth.
    hundred_client_burst(&a, &expected);
    request(&a.url(""), "Hello", false).unwrap();
    let before = (a.rss(), b.rss());
    hundred_client_burst(&a, &expected);
    // The node keeps serving afterwards.
    request(&a.url(""), "Hello", false).unwrap();
    let after = (a.rss(), b.rss());
    eprintln!(
        "RSS after the first burst {:?} MiB, after the second {:?} MiB",
        (before.0 >> 20, before.1 >> 20),
        (after.0 >> 20, after.1 >> 20)
    );
    for (x, y) in [(before.0, after.0), (before.1, after.1)] {
        assert!(
            (y as f64) <= 1.05 * x as f64,
            "RSS grew from {x} to {y} over an identical second burst"
        );
    }
}
