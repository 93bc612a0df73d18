//! mDNS on a LAN: two nodes in two network namespaces joined by a veth pair find each other
//! with no flags at all.

mod common;

use std::{process::Stdio, time::Duration};

use common::{netns::Netns, *};

#[test]
fn mdns_discovers_a_node_on_the_same_lan() {
    if !common::netns::available("mdns_discovers_a_node_on_the_same_lan") {
        return;
    }
    let prefix = format!("exomdns{}", std::process::id() % 100_000);
    let ns = Netns::new(&prefix, &["a", "b"]);
    ns.link("a", "veth-a", "10.77.0.1/24", "b", "veth-b", "10.77.0.2/24");
    let model = test_model(GEMMA);
    let mut nodes = Vec::new();
    let mut peer_ids = Vec::new();
    for host in ["a", "b"] {
        let home = temp_dir(&format!("mdns-{host}"));
        // Create the identity first, so the peer id is known before the node runs.
        let out = std::process::Command::new(bin())
            .arg("id")
            .env("EXO_HOME", &home)
            .output_within(CHILD_TIMEOUT);
        peer_ids.push(String::from_utf8(out.stdout).unwrap().trim().to_string());
        let log = home.join("node.log");
        let child = ns
            .command(host, bin())
            .arg("serve")
            .arg("--model")
            .arg(&model)
            .env("EXO_HOME", &home)
            .env("EXO_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        nodes.push((child, home, log));
    }
    // Each node logs when the other joins its topology.
    for (i, (_, _, log)) in nodes.iter().enumerate() {
        let other = &peer_ids[1 - i];
        wait_until(Duration::from_secs(30), "mDNS discovery", || {
            log_shows_join(log, other).then_some(())
        });
    }
    for (mut child, home, _) in nodes {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(home);
    }
}
