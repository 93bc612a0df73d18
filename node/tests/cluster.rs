//! Real `exo-p2p serve` processes on 127.0.0.1: a three-node ring generates exactly what one
//! process generates, each node holding only its shard; gossip and Kademlia discovery.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn model_id(file: &str) -> String {
    file.trim_end_matches(".gguf").to_lowercase()
}

/// Three nodes, static peers, no mDNS, equal memory.
fn three_nodes(model: &str) -> Vec<Node> {
    let path = test_model(model);
    let path = path.to_str().unwrap();
    let mut a = Node::new("a");
    let mut b = Node::new("b");
    let mut c = Node::new("c");
    let base = ["--model", path, "--no-mdns", "--memory", "8G"];
    a.start(&base);
    let pa = a.addr();
    b.start(&[&base[..], &["--peer", &pa]].concat());
    let pb = b.addr();
    c.start(&[&base[..], &["--peer", &pa, "--peer", &pb]].concat());
    for n in [&a, &b, &c] {
        n.wait_peers(&[&a, &b, &c], Duration::from_secs(30));
    }
    vec![a, b, c]
}

fn ring_of(topology: &Value, model: &str) -> Vec<(String, u64, u64)> {
    topology["rings"][model]
        .as_array()
        .unwrap_or_else(|| panic!("no ring for {model} in {topology}"))
        .iter()
        .map(|s| {
            (
                s["peer_id"].as_str().unwrap().to_string(),
                s["start"].as_u64().unwrap(),
                s["end"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn check_three_node_ring(file: &str, n_layers: u64) {
    let model = model_id(file);
    let prompt = "The quick brown fox";
    let expected = run_single(&test_model(file), prompt, 32);
    let nodes = three_nodes(file);
    let ring = ring_of(&nodes[0].topology(), &model);
    assert_eq!(ring.len(), 3, "ring: {ring:?}");
    assert_eq!(ring.last().unwrap().2, n_layers);
    // Every node computes the same ring from the same topology.
    for n in &nodes[1..] {
        assert_eq!(ring_of(&n.topology(), &model), ring);
    }
    let got = complete(&nodes[1], &model, prompt, 32);
    assert_eq!(got, expected, "3-node ring differs from one process");

    // Each node loaded only its own layers, as its capability record says.
    let topo = nodes[0].topology();
    for (peer, start, end) in &ring {
        let entry = topo["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["peer_id"] == peer.as_str())
            .unwrap()
            .clone();
        let loaded = wait_until(
            Duration::from_secs(10),
            "loaded shards to be gossiped",
            || {
                let t = nodes[0].topology();
                let e = t["nodes"]
                    .as_array()?
                    .iter()
                    .find(|n| n["peer_id"] == peer.as_str())?
                    .clone();
                let l = e["loaded"].as_array()?.clone();
                (!l.is_empty()).then_some(l)
            },
        );
        assert_eq!(loaded.len(), 1, "{entry}");
        assert_eq!(loaded[0]["layers"]["start"].as_u64(), Some(*start));
        assert_eq!(loaded[0]["layers"]["end"].as_u64(), Some(*end));
    }
    // The middle node holds a third of the blocks and neither embedding nor head: its memory is
    // well below a process that holds the whole model.
    let middle = nodes.iter().find(|n| n.peer_id == ring[1].0).unwrap();
    let mut whole = Node::new("whole");
    whole.start(&["--model", test_model(file).to_str().unwrap(), "--no-mdns"]);
    assert_eq!(complete(&whole, &model, prompt, 32), expected);
    let (m, w) = (middle.rss(), whole.rss());
    eprintln!(
        "RSS: middle node {} MiB, whole-model node {} MiB",
        m >> 20,
        w >> 20
    );
    assert!(
        (m as f64) < 0.7 * w as f64,
        "middle node RSS {m} vs whole {w}"
    );
}

#[test]
fn three_node_ring_matches_one_process_gemma() {
    check_three_node_ring(GEMMA, 18);
}

#[test]
fn three_node_ring_matches_one_process_qwen() {
    check_three_node_ring(QWEN, 24);
}

#[test]
fn gossip_join_and_leave_within_ten_seconds() {
    let gemma = test_model(GEMMA);
    let gemma = gemma.to_str().unwrap();
    let mut a = Node::new("a");
    a.start(&["--model", gemma, "--no-mdns"]);
    let mut b = Node::new("b");
    let pa = a.addr();
    b.start(&["--model", gemma, "--no-mdns", "--peer", &pa]);
    let t = Instant::now();
    a.wait_peers(&[&b], Duration::from_secs(10));
    eprintln!("joined after {:?}", t.elapsed());
    let t = Instant::now();
    b.kill();
    wait_until(Duration::from_secs(10), "the killed node to leave", || {
        (!a.known_peers().contains(&b.peer_id)).then_some(())
    });
    eprintln!("left after {:?}", t.elapsed());
    // A node restarted with the same identity comes back.
    b.restart();
    a.wait_peers(&[&b], Duration::from_secs(15));
}

#[test]
fn kademlia_finds_peers_through_a_bootstrap_node() {
    let gemma = test_model(GEMMA);
    let gemma = gemma.to_str().unwrap();
    let mut boot = Node::new("bootstrap");
    boot.start(&["--no-mdns"]);
    let pb = boot.addr();
    let mut a = Node::new("a");
    let mut c = Node::new("c");
    a.start(&["--model", gemma, "--no-mdns", "--bootstrap", &pb]);
    c.start(&["--model", gemma, "--no-mdns", "--bootstrap", &pb]);
    a.wait_peers(&[&c], Duration::from_secs(30));
    c.wait_peers(&[&a], Duration::from_secs(30));
    // They are connected directly, not only through gossip.
    let topo = a.topology();
    let entry = topo["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["peer_id"] == c.peer_id.as_str())
        .unwrap();
    assert_eq!(entry["connection"], "direct", "{entry}");
}

#[test]
fn serve_shuts_down_gracefully_on_sigterm() {
    let mut a = Node::new("a");
    a.start(&["--no-mdns"]);
    assert!(a.terminate().success());
}
