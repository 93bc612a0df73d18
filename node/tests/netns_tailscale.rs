//! Tailscale discovery: two hosts (network namespaces on a 100.64.0.0/24 link, Tailscale's
//! address range) each see the other in a mock `tailscale status --json` on PATH, and join one
//! mesh with `--tailscale` alone (no mDNS, no peers given).

mod common;

use std::{os::unix::fs::PermissionsExt, process::Stdio, time::Duration};

use common::{netns::Netns, *};

#[test]
fn tailscale_peers_are_found_and_joined() {
    if !common::netns::available("tailscale_peers_are_found_and_joined") {
        return;
    }
    let prefix = format!("exots{}", std::process::id() % 100_000);
    let ns = Netns::new(&prefix, &["a", "b"]);
    ns.link("a", "ts0", "100.64.0.1/24", "b", "ts0", "100.64.0.2/24");
    let model = test_model(GEMMA);
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    for (host, other_ip) in [("a", "100.64.0.2"), ("b", "100.64.0.1")] {
        let home = temp_dir(&format!("ts-{host}"));
        ids.push(
            String::from_utf8(
                std::process::Command::new(bin())
                    .arg("id")
                    .env("EXO_HOME", &home)
                    .output_within(CHILD_TIMEOUT)
                    .stdout,
            )
            .unwrap()
            .trim()
            .to_string(),
        );
        // A stand-in for the tailscale CLI that knows one online peer.
        let bin_dir = home.join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap();
        let status = serde_json::json!({
            "Self": {"HostName": host, "Online": true},
            "Peer": {"nodekey:1": {"HostName": "other", "Online": true, "TailscaleIPs": [other_ip]}}
        });
        let script = bin_dir.join("tailscale");
        std::fs::write(&script, format!("#!/bin/sh\n[ \"$1 $2\" = \"status --json\" ] || exit 2\ncat <<'JSON'\n{status}\nJSON\n")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let log = home.join("node.log");
        let child = ns
            .command(host, bin())
            .args(["serve", "--model"])
            .arg(&model)
            .args([
                "--tailscale",
                "--no-mdns",
                "--listen",
                "/ip4/0.0.0.0/tcp/52416",
            ])
            .env("PATH", path)
            .env("EXO_HOME", &home)
            .env("EXO_THREADS", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        nodes.push((child, home, log));
    }
    for (i, (_, _, log)) in nodes.iter().enumerate() {
        let other = &ids[1 - i];
        wait_until(Duration::from_secs(40), "Tailscale discovery", || {
            log_shows_join(log, other).then_some(())
        });
    }
    for (mut child, home, _) in nodes {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(home);
    }
}
