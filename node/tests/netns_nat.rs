//! Across the WAN, in network namespaces: a "public" network with a relay, and two "home"
//! networks, each a host behind a router doing MASQUERADE NAT that drops unsolicited inbound
//! traffic (as home routers do). The hosts cannot dial each other, yet form one ring through
//! the relay, upgrade to a direct connection by hole punching when the routers allow it, keep
//! working over the relay when they do not, and refuse a node with another swarm key.
//!
//! Addresses are TEST-NET-2 (198.51.100.0/24, the "internet") and 10.x (homes), all inside
//! namespaces the test creates and deletes.

mod common;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{netns::Netns, *};

const RELAY_IP: &str = "198.51.100.1";
const PORT: u16 = 4001;

struct Wan {
    ns: Netns,
    children: Vec<(Child, std::path::PathBuf)>,
}

impl Drop for Wan {
    fn drop(&mut self) {
        for (c, log) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
            if std::thread::panicking() {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(25).collect();
                eprintln!(
                    "--- {}:\n{}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

/// Builds pub (relay on a bridge), r1/r2 (NAT routers), h1/h2 (hosts behind them), and h3
/// (a host on the public network).
fn wan(tag: &str, block_punching: bool) -> Wan {
    let prefix = format!("exo{tag}{}", std::process::id() % 10_000);
    let ns = Netns::new(&prefix, &["pub", "r1", "r2", "h1", "h2", "h3"]);
    let p = ns.name("pub");
    common::netns::sh(&format!(
        "ip -n {p} link add br0 type bridge && ip -n {p} addr add {RELAY_IP}/24 dev br0 && ip -n {p} link set br0 up"
    ));
    for (i, r, h) in [(1, "r1", "h1"), (2, "r2", "h2")] {
        let (rn, hn) = (ns.name(r), ns.name(h));
        // WAN side: a veth into the public bridge.
        common::netns::sh(&format!(
            "ip link add wan netns {rn} type veth peer name p{i} netns {p} && \
             ip -n {p} link set p{i} master br0 && ip -n {p} link set p{i} up && \
             ip -n {rn} addr add 198.51.100.1{i}/24 dev wan && ip -n {rn} link set wan up"
        ));
        ns.link(
            r,
            "lan",
            &format!("10.{i}.0.1/24"),
            h,
            "eth0",
            &format!("10.{i}.0.2/24"),
        );
        common::netns::sh(&format!("ip -n {hn} route add default via 10.{i}.0.1"));
        // A home router: NAT out, nothing unsolicited in (neither forwarded nor to itself).
        ns.exec(
            r,
            "sysctl -qw net.ipv4.ip_forward=1 && \
             iptables -t nat -A POSTROUTING -o wan -j MASQUERADE && \
             iptables -A FORWARD -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT && \
             iptables -A FORWARD -i wan -j DROP && \
             iptables -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT && \
             iptables -A INPUT -i wan -j DROP",
        );
        if block_punching {
            // Nothing passes between the two homes' public addresses: only the relay works.
            let other = if i == 1 {
                "198.51.100.12"
            } else {
                "198.51.100.11"
            };
            ns.exec(r, &format!("iptables -I FORWARD -s {other} -j DROP && iptables -I OUTPUT -d {other} -j DROP && iptables -I FORWARD -d {other} -j DROP"));
        }
    }
    ns.link(
        "pub",
        "h3pub",
        "198.51.100.30/24",
        "h3",
        "eth0",
        "198.51.100.3/24",
    );
    // h3 sits on its own link into the public namespace; give it a route to the relay's subnet
    // through a second bridge port.
    common::netns::sh(&format!("ip -n {p} link set h3pub master br0"));
    Wan {
        ns,
        children: Vec::new(),
    }
}

impl Wan {
    fn spawn(
        &mut self,
        host: &str,
        name: &str,
        args: &[&str],
        home: &std::path::Path,
    ) -> std::path::PathBuf {
        let log = home.join(format!("{name}.log"));
        let child = self
            .ns
            .command(host, bin())
            .args(args)
            .env("EXO_HOME", home)
            .env("EXO_THREADS", "1")
            .env("DEBUG", "1")
            .env(
                "RUST_LOG",
                std::env::var("EXO_NAT_LOG").unwrap_or_else(|_| "warn,exo_p2p=debug".into()),
            )
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        self.children.push((child, log.clone()));
        log
    }

    /// `exo-p2p serve` of the gemma test model on `host` (API on 52415), through `relay`.
    fn serve(&mut self, host: &str, relay: &str, home: &std::path::Path) -> std::path::PathBuf {
        let model = test_model(GEMMA);
        self.spawn(
            host,
            host,
            &serve_args(model.to_str().unwrap(), relay, "52415", &[]),
            home,
        )
    }

    fn start_relay(&mut self) -> String {
        let home = temp_dir("relay");
        let id = peer_id(&home);
        self.spawn(
            "pub",
            "relay",
            &[
                "relay",
                "--listen",
                &format!("/ip4/0.0.0.0/tcp/{PORT}"),
                "--listen",
                &format!("/ip4/0.0.0.0/udp/{PORT}/quic-v1"),
            ],
            &home,
        );
        format!("/ip4/{RELAY_IP}/tcp/{PORT}/p2p/{id}")
    }

    /// HTTP GET from inside a namespace (the API listens there).
    fn http(
        &self,
        host: &str,
        port: u16,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Option<serde_json::Value> {
        let script = "import json,sys,urllib.request as u\n\
            data=sys.argv[2].encode() if len(sys.argv)>2 else None\n\
            r=u.Request(sys.argv[1],data=data,headers={'content-type':'application/json'})\n\
            print(u.urlopen(r,timeout=300).read().decode())";
        let mut cmd = self.ns.command(host, "python3");
        cmd.args(["-c", script, &format!("http://127.0.0.1:{port}{path}")]);
        if let Some(b) = body {
            cmd.arg(b.to_string());
        }
        let out = run_for(&mut cmd, Duration::from_secs(310))?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// `peer`'s connection kind ("direct" or "relayed") in `host`'s /v1/topology.
    fn connection(&self, host: &str, peer: &str) -> Option<String> {
        let topo = self.http(host, 52415, "/v1/topology", None)?;
        let entry = topo["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["peer_id"] == peer)?
            .clone();
        entry["connection"].as_str().map(str::to_string)
    }

    /// A 24-token greedy completion from `host`'s API, which must equal `expected`, after a
    /// one-token warm-up that loads the shards; returns its tokens per second.
    fn completion_tok_s(&self, host: &str, prompt: &str, expected: &str) -> f64 {
        let body = |n: u32| serde_json::json!({"model": "gemma-3-270m-q4_k_m", "prompt": prompt, "max_tokens": n, "temperature": 0});
        self.http(host, 52415, "/v1/completions", Some(&body(1)))
            .expect("warm-up completion");
        let start = Instant::now();
        let resp = self
            .http(host, 52415, "/v1/completions", Some(&body(24)))
            .expect("completion over the ring");
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(resp["choices"][0]["text"].as_str().unwrap(), expected);
        assert_eq!(resp["usage"]["completion_tokens"], 24);
        24.0 / secs
    }
}

fn peer_id(home: &std::path::Path) -> String {
    let out = Command::new(bin())
        .arg("id")
        .env("EXO_HOME", home)
        .output_within(CHILD_TIMEOUT);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn log_has(log: &std::path::Path, needle: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(needle)
}

fn serve_args<'a>(model: &'a str, relay: &'a str, api: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "serve",
        "--model",
        model,
        "--no-mdns",
        "--memory",
        "8G",
        "--relay",
        relay,
        "--bootstrap",
        relay,
        "--listen",
        "/ip4/0.0.0.0/tcp/4001",
        "--listen",
        "/ip4/0.0.0.0/udp/4001/quic-v1",
        "--api-port",
        api,
        "--api-host",
        "127.0.0.1",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn ring_through_the_relay_when_hole_punching_is_blocked() {
    if !common::netns::available("ring_through_the_relay_when_hole_punching_is_blocked") {
        return;
    }
    let model = test_model(GEMMA);
    let model = model.to_str().unwrap();
    let prompt = "Water boils at";
    let expected = run_single(&test_model(GEMMA), prompt, 24);
    let mut w = wan("blk", true);
    let relay = w.start_relay();
    let h1_home = temp_dir("h1");
    let h1_log = w.serve("h1", &relay, &h1_home);
    let t = Instant::now();
    // h2 joins through the relay and runs the prompt over the ring of both hosts.
    let h2_home = temp_dir("h2");
    let out =
        w.ns.command("h2", bin())
            .args([
                "run",
                model,
                "-p",
                prompt,
                "-n",
                "24",
                "--temperature",
                "0",
                "--no-mdns",
                "--memory",
                "8G",
            ])
            .args([
                "--relay",
                &relay,
                "--bootstrap",
                &relay,
                "--listen",
                "/ip4/0.0.0.0/tcp/4001",
            ])
            .args(["--wait-peers", "1", "--wait-timeout", "60"])
            .env("EXO_HOME", &h2_home)
            .env("EXO_THREADS", "1")
            .env("DEBUG", "1")
            .output_within(CHILD_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "run failed: {stderr}");
    eprintln!(
        "ring through the relay formed and generated in {:?}",
        t.elapsed()
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    assert!(
        stderr.contains("relayed=true"),
        "the hosts were not connected through the relay: {stderr}"
    );
    assert!(
        !stderr.contains("hole punch succeeded"),
        "punching should have been impossible"
    );
    assert!(log_has(&h1_log, "relay reservation accepted"));

    // The same two hosts as serving nodes: generation speed over the relayed ring.
    let h2_id = peer_id(&h2_home);
    w.serve("h2", &relay, &h2_home);
    wait_until(
        Duration::from_secs(60),
        "h2 in h1's topology through the relay",
        || (w.connection("h1", &h2_id)? == "relayed").then_some(()),
    );
    let tok_s = w.completion_tok_s("h1", prompt, &expected);
    assert_eq!(w.connection("h1", &h2_id).as_deref(), Some("relayed"));
    eprintln!("relayed ring: {tok_s:.1} tok/s (24 tokens, shards loaded)");
}

#[test]
fn hole_punching_upgrades_the_ring_to_a_direct_connection() {
    if !common::netns::available("hole_punching_upgrades_the_ring_to_a_direct_connection") {
        return;
    }
    let prompt = "The quick brown fox";
    let expected = run_single(&test_model(GEMMA), prompt, 24);
    let mut w = wan("pun", false);
    let relay = w.start_relay();
    let t = Instant::now();
    let (h1_home, h2_home) = (temp_dir("h1"), temp_dir("h2"));
    let h2_id = peer_id(&h2_home);
    let h1_log = w.serve("h1", &relay, &h1_home);
    let h2_log = w.serve("h2", &relay, &h2_home);
    wait_until(
        Duration::from_secs(60),
        "the hosts to see each other through the relay",
        || {
            (log_has(&h1_log, "node joined the topology")
                && log_has(&h2_log, "node joined the topology"))
            .then_some(())
        },
    );
    let formed = t.elapsed();
    wait_until(Duration::from_secs(60), "a hole punch", || {
        (log_has(&h1_log, "hole punch succeeded") || log_has(&h2_log, "hole punch succeeded"))
            .then_some(())
    });
    let punched = t.elapsed();
    // The topology shows the peer as directly connected.
    wait_until(
        Duration::from_secs(20),
        "a direct connection in /v1/topology",
        || (w.connection("h1", &h2_id)? == "direct").then_some(()),
    );
    let tok_s = w.completion_tok_s("h1", prompt, &expected);
    eprintln!(
        "ring through relay after {formed:?}, direct after {punched:?}; direct ring: {tok_s:.1} tok/s (24 tokens, shards loaded)"
    );
}

#[test]
fn a_node_with_another_swarm_key_is_refused() {
    if !common::netns::available("a_node_with_another_swarm_key_is_refused") {
        return;
    }
    let model = test_model(GEMMA);
    let model = model.to_str().unwrap();
    let mut w = wan("key", true);
    let (keys, other) = (temp_dir("keys"), temp_dir("other"));
    let (k1, k2) = (keys.join("swarm.key"), other.join("swarm.key"));
    for k in [&k1, &k2] {
        assert!(Command::new(bin())
            .args(["keygen", "-o"])
            .arg(k)
            .output_within(CHILD_TIMEOUT)
            .status
            .success());
    }
    let relay_home = temp_dir("relay");
    let id = peer_id(&relay_home);
    let relay_log = w.spawn(
        "pub",
        "relay",
        &[
            "relay",
            "--listen",
            &format!("/ip4/0.0.0.0/tcp/{PORT}"),
            "--swarm-key",
            k1.to_str().unwrap(),
        ],
        &relay_home,
    );
    let relay = format!("/ip4/{RELAY_IP}/tcp/{PORT}/p2p/{id}");
    let h1_home = temp_dir("h1");
    w.spawn(
        "h1",
        "h1",
        &serve_args(
            model,
            &relay,
            "52415",
            &["--swarm-key", k1.to_str().unwrap()],
        ),
        &h1_home,
    );
    // h3, with another key, cannot join: it finds no peer and says so.
    let out =
        w.ns.command("h3", bin())
            .args([
                "run",
                model,
                "-p",
                "hi",
                "-n",
                "4",
                "--no-mdns",
                "--peer",
                &relay,
                "--listen",
                "/ip4/0.0.0.0/tcp/4001",
            ])
            .args([
                "--swarm-key",
                k2.to_str().unwrap(),
                "--wait-peers",
                "1",
                "--wait-timeout",
                "8",
            ])
            .env("EXO_HOME", temp_dir("h3"))
            .output_within(CHILD_TIMEOUT);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("timed out") && stderr.contains("found 0"),
        "{stderr}"
    );
    assert!(
        log_has(&relay_log, "another swarm key cannot join"),
        "the relay did not log the refusal"
    );
    // With an invite token (the right key plus the relay's address) the same host joins.
    let invite = Command::new(bin())
        .args([
            "invite",
            "--swarm-key",
            k1.to_str().unwrap(),
            "--relay",
            &relay,
        ])
        .output_within(CHILD_TIMEOUT);
    assert!(invite.status.success());
    let token = String::from_utf8(invite.stdout).unwrap().trim().to_string();
    let out =
        w.ns.command("h3", bin())
            .args([
                "run",
                model,
                "-p",
                "hi",
                "-n",
                "4",
                "--no-mdns",
                "--listen",
                "/ip4/0.0.0.0/tcp/4001",
            ])
            .args([
                "--join",
                &token,
                "--wait-peers",
                "1",
                "--wait-timeout",
                "60",
            ])
            .env("EXO_HOME", temp_dir("h3b"))
            .output_within(CHILD_TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
