//! Helpers for tests that run real `exo-p2p` processes on loopback.
#![allow(dead_code)]

#[path = "../../../tests/capability.rs"]
pub mod capability;
pub mod netns;

use std::{
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
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

/// Runs `cmd` (stdin closed, output captured), killing it after `timeout`; None when it cannot
/// be started. Every child process a test runs to completion goes through here.
pub fn run_for(cmd: &mut Command, timeout: Duration) -> Option<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.ok(),
        Err(_) => {
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
    }
}

/// How long a child process a test runs to completion may take unless the test says otherwise.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(300);

/// Bounded versions of `Command::output` and `Command::status`: every child process a test runs
/// to completion is killed (and the test fails) after `timeout`.
pub trait CommandExt {
    /// Output captured; panics when the program cannot be started.
    fn output_within(&mut self, timeout: Duration) -> Output;
    /// The test's stdout and stderr (the child's output shows as it runs).
    fn status_within(&mut self, timeout: Duration) -> std::process::ExitStatus;
}

impl CommandExt for Command {
    fn output_within(&mut self, timeout: Duration) -> Output {
        let desc = format!("{self:?}");
        run_for(self, timeout).unwrap_or_else(|| panic!("cannot start {desc}"))
    }

    fn status_within(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {self:?}: {e}"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{self:?} did not finish within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
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

/// One `exo-p2p serve` process with its own EXO_HOME; killed on drop. The OS picks its ports
/// (port 0) on the first start; a restart keeps them, so peers' addresses stay valid.
pub struct Node {
    pub name: String,
    child: Option<Child>,
    pub home: PathBuf,
    /// 0 until the node has started.
    pub api_port: u16,
    /// 0 until the node has started.
    pub p2p_port: u16,
    pub peer_id: String,
    pub log: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

/// How long a node may take from spawn to its readiness line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

impl Node {
    /// Creates the node's identity (so its peer id is known) without starting it.
    pub fn new(name: &str) -> Self {
        let home = temp_dir(name);
        let out = Command::new(bin())
            .arg("id")
            .env("EXO_HOME", &home)
            .output_within(Duration::from_secs(30));
        assert!(out.status.success(), "exo-p2p id failed");
        let peer_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
        Self {
            name: name.into(),
            child: None,
            log: home.join("node.log"),
            home,
            api_port: 0,
            p2p_port: 0,
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

    /// This node's address for `--peer` / `--bootstrap` (once started).
    pub fn addr(&self) -> String {
        assert!(self.p2p_port != 0, "{} has not started yet", self.name);
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.p2p_port, self.peer_id)
    }

    /// Starts `exo-p2p serve` with `args` and waits for its readiness lines.
    pub fn start(&mut self, args: &[&str]) -> &mut Self {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self.spawn();
        self
    }

    /// Spawns the node and waits (bounded) until it prints that it listens and that its API is
    /// ready, learning the ports the OS chose.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let from = log.metadata().unwrap().len() as usize;
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
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let child = self.child.insert(child);
        let (name, path) = (&self.name, &self.log);
        let (api, p2p) = wait_until(
            READY_TIMEOUT,
            &format!("{name}'s readiness line (log: {})", path.display()),
            || {
                if let Some(status) = child.try_wait().unwrap() {
                    panic!(
                        "{name} exited ({status}) before it was ready:\n{}",
                        log_tail(path)
                    );
                }
                let text = std::fs::read_to_string(path).unwrap_or_default();
                readiness(text.get(from..).unwrap_or_default())
            },
        );
        assert!(
            self.api_port == 0 || self.api_port == api,
            "{} came back on API port {api}, not {}",
            self.name,
            self.api_port
        );
        (self.api_port, self.p2p_port) = (api, p2p);
    }

    /// Starts the node again with the same identity, ports and flags; waits until it is ready.
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
        let mut resp = ureq::get(&self.url(path))
            .config()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .call()
            .ok()?;
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
        log_tail(&self.log)
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

/// The last 30 lines of a log file.
fn log_tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The API and peer-to-peer ports in a node's readiness lines (`listening on
/// /ip4/127.0.0.1/tcp/P/p2p/..` then `..API ready on http://127.0.0.1:P ..`), once both are there.
pub fn readiness(log: &str) -> Option<(u16, u16)> {
    let api = log.lines().find_map(|l| {
        let url = l.split("API ready on http://").nth(1)?;
        let host_port = url.split_whitespace().next()?;
        host_port.rsplit(':').next()?.parse().ok()
    })?;
    let p2p = log.lines().find_map(|l| {
        let rest = l.strip_prefix("listening on /ip4/127.0.0.1/tcp/")?;
        rest.split('/').next()?.parse().ok()
    })?;
    Some((api, p2p))
}

/// Two nodes serving `model` without mDNS, the second given the first as a peer; both ready.
/// Each node's extra flags come after `--model MODEL --no-mdns`.
pub fn pair(model: &str, a_args: &[&str], b_args: &[&str]) -> (Node, Node) {
    let mut a = Node::new("a");
    let mut b = Node::new("b");
    a.start(&[&["--model", model, "--no-mdns"][..], a_args].concat());
    let pa = a.addr();
    b.start(&[&["--model", model, "--no-mdns", "--peer", &pa][..], b_args].concat());
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
        .output_within(CHILD_TIMEOUT);
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
