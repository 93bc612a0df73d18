//! Helpers for tests that run real `exo-p2p` processes on loopback.
#![allow(dead_code)]

pub mod netns;

use std::{
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";
pub const QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_exo-p2p")
}

pub fn test_model(name: &str) -> PathBuf {
    let dir = std::env::var("EXO_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/exo-p2p/test-models")
        });
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} missing: run scripts/fetch-test-models.sh",
        p.display()
    );
    p
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "exo-test-{name}-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) % 1_000_000
}

/// Polls `f` every 100 ms until it returns Some, or panics after `timeout` with `what`.
/// Whether the node log at `log` says that `peer` joined this node's topology.
pub fn log_shows_join(log: &std::path::Path, peer: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("node joined the topology") && l.contains(peer))
}

pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `exo-p2p serve` process with its own EXO_HOME and ports; killed on drop.
pub struct Node {
    pub name: String,
    child: Option<Child>,
    pub home: PathBuf,
    pub api_port: u16,
    pub p2p_port: u16,
    pub peer_id: String,
    pub log: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Node {
    /// Creates the node's identity (so its peer id is known) without starting it.
    pub fn new(name: &str) -> Self {
        let home = temp_dir(name);
        let out = Command::new(bin())
            .arg("id")
            .env("EXO_HOME", &home)
            .output()
            .unwrap();
        assert!(out.status.success(), "exo-p2p id failed");
        let peer_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Self {
            name: name.into(),
            child: None,
            log: home.join("node.log"),
            home,
            api_port: free_port(),
            p2p_port: free_port(),
            peer_id,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Sets an environment variable for the node's process (before `start`).
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// This node's address for `--peer` / `--bootstrap`.
    pub fn addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.p2p_port, self.peer_id)
    }

    /// Starts `exo-p2p serve` with the node's ports plus `args`.
    pub fn start(&mut self, args: &[&str]) -> &mut Self {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self.spawn();
        self
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin())
            .arg("serve")
            .args(["--listen", &format!("/ip4/127.0.0.1/tcp/{}", self.p2p_port)])
            .args([
                "--api-port",
                &self.api_port.to_string(),
                "--api-host",
                "127.0.0.1",
            ])
            .args(&self.args)
            .env("EXO_HOME", &self.home)
            .env("EXO_THREADS", "1")
            .env_remove("RUST_LOG")
            .env("DEBUG", std::env::var("EXO_TEST_DEBUG").unwrap_or_default())
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// Starts the node again with the same identity, ports and flags.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not running").id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    pub fn get(&self, path: &str) -> Option<Value> {
        let mut resp = ureq::get(&self.url(path)).call().ok()?;
        resp.body_mut().read_json().ok()
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let resp = ureq::post(&self.url(path))
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .send_json(body)
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let mut resp = resp;
        let v: Value = resp.body_mut().read_json().map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(v)
        } else {
            Err(format!("HTTP {status}: {v}"))
        }
    }

    /// Waits until the node answers /health.
    pub fn wait_ready(&self) -> &Self {
        let t = Duration::from_secs(60);
        wait_until(
            t,
            &format!("{} to be ready (log: {})", self.name, self.log_tail()),
            || {
                self.child.as_ref()?;
                ureq::get(&self.url("/health")).call().ok().map(|_| ())
            },
        );
        self
    }

    pub fn topology(&self) -> Value {
        self.get("/v1/topology").unwrap_or(Value::Null)
    }

    /// Peer ids in this node's topology.
    pub fn known_peers(&self) -> Vec<String> {
        self.topology()["nodes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|n| n["peer_id"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn wait_peers(&self, peers: &[&Node], timeout: Duration) {
        wait_until(
            timeout,
            &format!("{} to know {} peers", self.name, peers.len()),
            || {
                let known = self.known_peers();
                peers
                    .iter()
                    .all(|p| known.contains(&p.peer_id))
                    .then_some(())
            },
        );
    }

    /// Resident memory of the process, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap()
            * 1024
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the node with SIGTERM and waits for it (graceful shutdown).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("not running");
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("{} did not exit within 10 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.home);
        } else {
            eprintln!(
                "--- log of {} ({}):\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            );
        }
    }
}

/// Two nodes serving `model` without mDNS, the second given the first as a peer; both ready.
/// Each node's extra flags come after `--model MODEL --no-mdns`.
pub fn pair(model: &str, a_args: &[&str], b_args: &[&str]) -> (Node, Node) {
    let mut a = Node::new("a");
    let mut b = Node::new("b");
    let pa = a.addr();
    a.start(&[&["--model", model, "--no-mdns"][..], a_args].concat());
    b.start(&[&["--model", model, "--no-mdns", "--peer", &pa][..], b_args].concat());
    a.wait_ready();
    b.wait_ready();
    (a, b)
}

/// A greedy completion through a node's API.
pub fn complete(node: &Node, model: &str, prompt: &str, max_tokens: u32) -> String {
    let body = serde_json::json!({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
    });
    let v = node
        .post("/v1/completions", &body)
        .unwrap_or_else(|e| panic!("completion failed: {e}"));
    v["choices"][0]["text"].as_str().unwrap().to_string()
}

/// `exo-p2p run` on one process: the single-node reference text.
pub fn run_single(model: &Path, prompt: &str, max_tokens: u32) -> String {
    let out = Command::new(bin())
        .arg("run")
        .arg(model)
        .args([
            "-p",
            prompt,
            "-n",
            &max_tokens.to_string(),
            "--temperature",
            "0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Reads Server-Sent Events `data:` payloads from a streaming response body.
pub fn sse_events(body: impl Read) -> impl Iterator<Item = String> {
    BufReader::new(body)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("data: ").map(String::from))
}
