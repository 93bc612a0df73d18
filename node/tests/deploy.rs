//! The deployment files in deploy/: the Kubernetes manifests validate against the API schemas
//! (kubernetes-validate, from PyPI, in a venv under ~/.cache/exo-p2p/), the systemd unit passes
//! `systemd-analyze verify`, the variables they set are real `exo-p2p serve` variables, and the
//! container image (deploy/Dockerfile's `prebuilt` target on a local debootstrap base) runs a
//! two-node ring on a podman network whose greedy text equals `exo-p2p run` in one process.
//!
//! Where a tool is missing (python3 with venv and pip, systemd-analyze, podman that can run
//! containers, debootstrap) the test fails unless the user opted out with `EXO_SKIP=python`
//! (the manifests) or `EXO_SKIP=containers` (unit and containers); then it prints
//! `SKIPPED <test>: <why>` (tests/capability.rs). `scripts/container-setup.sh` installs everything.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::{
    capability::{check, Capability::*},
    *,
};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn cache_dir() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache/exo-p2p")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(cmd: &mut Command, timeout: Duration) -> String {
    let desc = format!("{cmd:?}");
    let out = run_for(cmd, timeout).unwrap_or_else(|| panic!("cannot run {desc}"));
    assert!(
        out.status.success(),
        "{desc} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

// ------------------------------------------------------------------------------------------------
// Kubernetes

/// A venv with kubernetes-validate, made once and reused; Err(why) when it cannot be had.
fn kubernetes_validate() -> Result<PathBuf, String> {
    let venv = cache_dir().join("venv-deploy");
    let exe = venv.join("bin/kubernetes-validate");
    if exe.exists() {
        return Ok(exe);
    }
    let out = run_for(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        Duration::from_secs(120),
    )
    .ok_or("python3 not found")?;
    if !out.status.success() {
        return Err(format!(
            "python3 -m venv failed (python3-venv missing?): {}",
            text(&out.stderr).trim()
        ));
    }
    let out = run_for(
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "kubernetes-validate==1.37.0",
        ]),
        Duration::from_secs(300),
    )
    .ok_or("pip not found in the venv")?;
    if !out.status.success() || !exe.exists() {
        let _ = std::fs::remove_dir_all(&venv);
        return Err(format!(
            "pip install kubernetes-validate failed: {}",
            text(&out.stderr).trim()
        ));
    }
    Ok(exe)
}

fn k8s_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "manifests in deploy/k8s: {files:?}");
    files
}

#[test]
fn kubernetes_manifests_validate() {
    let exe = match kubernetes_validate() {
        Ok(exe) => exe,
        Err(why) => {
            assert!(!check(Python, "kubernetes_manifests_validate", Some(why)));
            return;
        }
    };
    let files = k8s_files();
    // The oldest Kubernetes still commonly run, and the newest the validator knows.
    for version in ["1.27", "1.37"] {
        let out = ok(
            Command::new(&exe)
                .args(["--strict", "--kubernetes-version", version])
                .args(&files),
            Duration::from_secs(120),
        );
        eprintln!("{}", out.trim());
    }
    let all: String = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for kind in [
        "kind: StatefulSet",
        "kind: Service",
        "clusterIP: None",
        "volumeClaimTemplates:",
        "readinessProbe:",
        "livenessProbe:",
        "path: /health",
        "/dns4/exo-0.exo.",
    ] {
        assert!(all.contains(kind), "deploy/k8s lacks `{kind}`");
    }

    // The validator does reject what is wrong: an unknown field and a missing required one.
    let dir = temp_dir("k8s-bad");
    let sts = std::fs::read_to_string(repo().join("deploy/k8s/statefulset.yaml")).unwrap();
    for (name, bad) in [
        (
            "unknown-field.yaml",
            sts.replace("serviceName:", "serviceNme:"),
        ),
        (
            "missing-selector.yaml",
            sts.replacen("  selector:\n", "  selectr:\n", 1),
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, bad).unwrap();
        let out = run_for(
            Command::new(&exe).arg("--strict").arg(&path),
            Duration::from_secs(60),
        )
        .unwrap();
        assert!(
            !out.status.success(),
            "kubernetes-validate accepted {name}: {}",
            text(&out.stdout)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// ------------------------------------------------------------------------------------------------
// systemd

fn systemd_unit_dir() -> Option<PathBuf> {
    ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("multi-user.target").exists())
}

/// `systemd-analyze verify` on `unit` in a scratch root holding the system's own unit files
/// and the binary at ExecStart's path; returns the lines about `unit`.
fn verify_unit(unit_text: &str, name: &str) -> (bool, Vec<String>) {
    let root = temp_dir("systemd-root");
    let units = root.join("usr/lib/systemd");
    std::fs::create_dir_all(&units).unwrap();
    ok(
        Command::new("cp")
            .arg("-a")
            .arg(systemd_unit_dir().unwrap())
            .arg(&units),
        Duration::from_secs(60),
    );
    let bin_dir = root.join("usr/local/bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    if std::fs::hard_link(bin(), bin_dir.join("exo-p2p")).is_err() {
        std::fs::copy(bin(), bin_dir.join("exo-p2p")).unwrap();
    }
    let etc = root.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join(name), unit_text).unwrap();
    let out = run_for(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(format!("--root={}", root.display()))
            .arg(name),
        Duration::from_secs(60),
    )
    .unwrap();
    std::fs::remove_dir_all(&root).unwrap();
    let stem = name.trim_end_matches(".service");
    let lines = text(&out.stderr)
        .lines()
        .chain(text(&out.stdout).lines())
        .filter(|l| l.contains(stem))
        .map(String::from)
        .collect();
    (out.status.success(), lines)
}

#[test]
fn systemd_unit_verifies() {
    let have = run_for(
        Command::new("systemd-analyze").arg("--version"),
        Duration::from_secs(30),
    )
    .is_some_and(|o| o.status.success());
    let missing = (!have || systemd_unit_dir().is_none()).then(|| {
        "systemd-analyze or the system's unit files are missing (apt-get install systemd)".into()
    });
    if !check(Containers, "systemd_unit_verifies", missing) {
        return;
    }
    let path = repo().join("deploy/systemd/exo-p2p.service");
    let unit = std::fs::read_to_string(&path).unwrap();
    let (success, lines) = verify_unit(&unit, "exo-p2p.service");
    assert!(
        success && lines.is_empty(),
        "systemd-analyze verify {}:\n{}",
        path.display(),
        lines.join("\n")
    );
    // The check is live: a misspelt directive is reported.
    let bad = unit.replace("LimitNOFILE=", "LimitNOFLE=");
    let (_, lines) = verify_unit(&bad, "exo-p2p-bad.service");
    assert!(
        lines.iter().any(|l| l.contains("LimitNOFLE")),
        "a misspelt directive went unnoticed: {lines:?}"
    );
    for directive in [
        "EnvironmentFile=-/etc/exo-p2p/exo-p2p.env",
        "StateDirectory=exo-p2p",
        "Environment=EXO_HOME=%S/exo-p2p",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=on-failure",
        "LimitNOFILE=",
        "AF_NETLINK",
    ] {
        assert!(unit.contains(directive), "the unit lacks {directive}");
    }
    // Sandboxing, as systemd scores it (0 = fully sandboxed, 10 = fully exposed).
    let out = ok(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&path),
        Duration::from_secs(60),
    );
    let exposure: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for exo-p2p.service:")
                .nth(1)
        })
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    eprintln!("systemd-analyze security: exposure {exposure}");
    assert!(exposure <= 2.0, "exposure {exposure}:\n{out}");
}

// ------------------------------------------------------------------------------------------------
// Variables

/// Every EXO_* variable the deploy files set or mention is one `exo-p2p serve` reads (or
/// belongs to the compose file's own parameters): a typo would be silently ignored otherwise.
#[test]
fn deploy_files_use_real_variables() {
    let help = ok(
        Command::new(bin()).args(["serve", "--help"]),
        Duration::from_secs(30),
    );
    let mut known: BTreeSet<String> = exo_vars(&help);
    // Read by the binary outside clap, at build time, and the compose file's own parameters.
    for v in [
        "EXO_HOME",
        "EXO_GIT_COMMIT",
        "EXO_IMAGE",
        "EXO_MODELS_DIR",
        "EXO_MODEL_FILE",
        "EXO_API_BIND",
    ] {
        known.insert(v.into());
    }
    assert!(known.contains("EXO_MODELS") && known.contains("EXO_BOOTSTRAP"));
    for file in [
        "deploy/systemd/exo-p2p.env",
        "deploy/systemd/exo-p2p.service",
        "deploy/compose.yaml",
        "deploy/Dockerfile",
        "deploy/k8s/statefulset.yaml",
    ] {
        let used = exo_vars(&std::fs::read_to_string(repo().join(file)).unwrap());
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses unknown variables {unknown:?}"
        );
    }
}

fn exo_vars(s: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(pos) = s[i..].find("EXO_") {
        let start = i + pos;
        let mut end = start + 4;
        while end < b.len()
            && (b[end].is_ascii_uppercase() || b[end] == b'_' || b[end].is_ascii_digit())
        {
            end += 1;
        }
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if boundary && end > start + 4 {
            out.insert(s[start..end].to_string());
        }
        i = end;
    }
    out
}

// ------------------------------------------------------------------------------------------------
// Containers

const BASE_IMAGE: &str = "localhost/exo-base:bookworm";
/// The container tests build images and run models: one at a time.
static CONTAINER_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());
const RUNTIME_BASE_IMAGE: &str = "localhost/exo-p2p-runtime-base:test";

fn podman(args: &[&str]) -> Option<Output> {
    run_for(Command::new("podman").args(args), Duration::from_secs(300))
}

fn podman_ok(args: &[&str]) -> String {
    ok(Command::new("podman").args(args), Duration::from_secs(600))
}

/// Why containers cannot run here, if they cannot.
fn container_runtime_problem() -> Option<String> {
    match podman(&["info", "--format", "{{.Host.OCIRuntime.Name}}"]) {
        None => return Some("podman is not installed (scripts/container-setup.sh)".into()),
        Some(o) if !o.status.success() => {
            return Some(format!("`podman info` failed: {}", text(&o.stderr).trim()))
        }
        Some(_) => {}
    }
    // The base image: made once with debootstrap, then cached (image and tarball).
    let out = run_for(
        Command::new(repo().join("scripts/container-base.sh")).arg(BASE_IMAGE),
        Duration::from_secs(900),
    )
    .expect("cannot run scripts/container-base.sh");
    if !out.status.success() {
        return Some(format!(
            "cannot make the base image {BASE_IMAGE}: {}",
            text(&out.stderr).trim()
        ));
    }
    let out = podman(&["run", "--rm", "--network", "none", BASE_IMAGE, "true"]).unwrap();
    if !out.status.success() {
        return Some(format!(
            "podman cannot run a container (scripts/container-setup.sh configures runc): {}",
            text(&out.stderr).trim()
        ));
    }
    None
}

/// A build context holding the binary cargo built for the tests (debug info stripped, to keep
/// the image layer small), plus `files`.
fn image_context(files: &[(&str, &[u8])]) -> PathBuf {
    let context = temp_dir("image-context");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(context.join("exo-p2p"))
        .arg(bin())
        .output_within(CHILD_TIMEOUT)
        .status
        .success();
    if !stripped {
        std::fs::copy(bin(), context.join("exo-p2p")).unwrap();
    }
    for (name, bytes) in files {
        std::fs::write(context.join(name), bytes).unwrap();
    }
    context
}

/// Everything the container test creates, removed on drop (also when the test fails).
struct Podman {
    prefix: String,
    containers: Vec<String>,
    volumes: Vec<String>,
    network: Option<String>,
    image: Option<String>,
}

impl Podman {
    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.containers {
                if let Some(o) = podman(&["logs", "--tail", "40", c]) {
                    eprintln!(
                        "--- podman logs {c}:\n{}{}",
                        text(&o.stdout),
                        text(&o.stderr)
                    );
                }
            }
        }
        for c in &self.containers {
            let _ = podman(&["rm", "-f", "-t", "2", c]);
        }
        for v in &self.volumes {
            let _ = podman(&["volume", "rm", "-f", v]);
        }
        if let Some(n) = &self.network {
            let _ = podman(&["network", "rm", "-f", n]);
        }
        if let Some(i) = &self.image {
            let _ = podman(&["rmi", "-f", i]);
        }
    }
}

fn api_port(container: &str) -> u16 {
    let out = podman_ok(&["port", container, "52415/tcp"]);
    out.lines()
        .next()
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no published API port for {container}: {out}"))
}

fn http_get(port: u16, path: &str) -> Option<Value> {
    let mut resp = ureq::get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    resp.body_mut().read_json().ok()
}

#[test]
fn container_two_node_ring_matches_one_process() {
    let test = "container_two_node_ring_matches_one_process";
    let _one_at_a_time = CONTAINER_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    if !check(Containers, test, container_runtime_problem()) {
        return;
    }
    eprintln!("[{:>5.1?}] base image ready", t0.elapsed());
    let model_path = std::fs::canonicalize(test_model(GEMMA)).unwrap();
    let model_id = GEMMA.trim_end_matches(".gguf");
    let prompt = "The quick brown fox";
    let max_tokens = 24;

    let mut pm = Podman {
        prefix: format!("exo-deploy-test-{}", std::process::id()),
        containers: Vec::new(),
        volumes: Vec::new(),
        network: None,
        image: None,
    };

    // The image from the prebuilt-binary stage, with the binary cargo built for this test
    // (debug symbols stripped to keep the layer small). The runtime base is tagged so the
    // next run reuses its layers.
    let context = image_context(&[]);
    let dockerfile = repo().join("deploy/Dockerfile");
    let dockerfile = dockerfile.to_str().unwrap();
    let base_arg = format!("BASE={BASE_IMAGE}");
    let ctx = context.to_str().unwrap();
    podman_ok(&[
        "build",
        "--format",
        "docker",
        "-f",
        dockerfile,
        "--build-arg",
        &base_arg,
        "--target",
        "runtime-base",
        "-t",
        RUNTIME_BASE_IMAGE,
        ctx,
    ]);
    let image = format!("localhost/{}:latest", pm.prefix);
    pm.image = Some(image.clone());
    let build_log = podman_ok(&[
        "build",
        "--format",
        "docker",
        "-f",
        dockerfile,
        "--build-arg",
        &base_arg,
        "--target",
        "prebuilt",
        "-t",
        &image,
        ctx,
    ]);
    std::fs::remove_dir_all(&context).unwrap();
    let version = ok(
        Command::new(bin()).arg("--version"),
        Duration::from_secs(30),
    );
    assert!(
        build_log.contains(version.trim()),
        "the image's exo-p2p --version differs from {version}: {build_log}"
    );
    eprintln!("[{:>5.1?}] image {image} built", t0.elapsed());

    // The image's contract.
    let inspect: Value = serde_json::from_str(&podman_ok(&["image", "inspect", &image])).unwrap();
    let cfg = &inspect[0]["Config"];
    assert_eq!(cfg["User"], "10001:10001", "{cfg}");
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["exo-p2p", "serve"]));
    assert!(cfg["Volumes"].get("/var/lib/exo").is_some(), "{cfg}");
    for port in ["52415/tcp", "52416/tcp", "52416/udp"] {
        assert!(cfg["ExposedPorts"].get(port).is_some(), "{port}: {cfg}");
    }
    assert!(
        cfg["Env"].to_string().contains("EXO_HOME=/var/lib/exo"),
        "{cfg}"
    );
    let health = inspect[0]["Config"]["Healthcheck"]["Test"]
        .as_array()
        .or(inspect[0]["Healthcheck"]["Test"].as_array())
        .unwrap_or_else(|| panic!("no HEALTHCHECK in {}", inspect[0]));
    assert!(format!("{health:?}").contains("/health"), "{health:?}");

    let network = pm.name("net");
    podman_ok(&["network", "create", &network]);
    pm.network = Some(network.clone());

    // Each node keeps its identity in a volume: create node a's first, so its peer id is known
    // (as compose does for the relay).
    let (a, b) = (pm.name("a"), pm.name("b"));
    let (vol_a, vol_b) = (pm.name("home-a"), pm.name("home-b"));
    for v in [&vol_a, &vol_b] {
        podman_ok(&["volume", "create", v]);
        pm.volumes.push(v.clone());
    }
    let home_a = format!("{vol_a}:/var/lib/exo");
    let id_a = podman_ok(&[
        "run",
        "--rm",
        "--no-healthcheck",
        "--network",
        "none",
        "--entrypoint",
        "exo-p2p",
        "-v",
        &home_a,
        &image,
        "id",
    ])
    .trim()
    .to_string();
    assert!(id_a.starts_with("12D3KooW"), "peer id: {id_a}");

    let model_mount = format!("{}:/models/{GEMMA}:ro", model_path.display());
    let model_arg = format!("/models/{GEMMA}");
    let start = |name: &str, volume: &str, extra: &[&str]| {
        let home = format!("{volume}:/var/lib/exo");
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            &network,
            "-v",
            &home,
            "-v",
            &model_mount,
            "-p",
            "127.0.0.1::52415",
            "-e",
            "EXO_THREADS=1",
            "-e",
            "EXO_NO_MDNS=true",
            "-e",
            "EXO_MEMORY=4G",
            "-e",
            "EXO_MAX_KV_MEMORY=512M",
            &image,
            "--model",
            &model_arg,
        ];
        args.extend_from_slice(extra);
        podman_ok(&args);
    };
    start(&a, &vol_a, &[]);
    pm.containers.push(a.clone());
    // b bootstraps from a by DNS name without a peer id, as the Kubernetes pods do.
    let bootstrap = format!("/dns4/{a}/tcp/52416");
    start(&b, &vol_b, &["--bootstrap", &bootstrap]);
    pm.containers.push(b.clone());
    let (port_a, port_b) = (api_port(&a), api_port(&b));

    for port in [port_a, port_b] {
        wait_until(
            Duration::from_secs(120),
            "a container node's /health",
            || http_get(port, "/health").filter(|h| h["ready"] == true),
        );
    }
    let health = http_get(port_a, "/health").unwrap();
    assert_eq!(
        health["peer_id"],
        id_a.as_str(),
        "identity from the volume: {health}"
    );
    // Both nodes plan the same two-node ring, each holding half the layers.
    let ring_of = |port: u16| -> Option<Vec<(String, u64, u64)>> {
        let t = http_get(port, "/v1/topology")?;
        let ring = t["rings"][model_id].as_array()?;
        Some(
            ring.iter()
                .map(|s| {
                    (
                        s["peer_id"].as_str().unwrap_or_default().to_string(),
                        s["start"].as_u64().unwrap_or(0),
                        s["end"].as_u64().unwrap_or(0),
                    )
                })
                .collect(),
        )
    };
    let ring = wait_until(Duration::from_secs(60), "a two-node ring", || {
        ring_of(port_b).filter(|r| r.len() == 2)
    });
    assert_eq!(ring[1].2, 18, "ring: {ring:?}");
    assert!(ring.iter().any(|s| s.0 == id_a), "ring: {ring:?}");
    wait_until(Duration::from_secs(30), "a to plan the same ring", || {
        (ring_of(port_a).as_ref() == Some(&ring)).then_some(())
    });
    eprintln!("[{:>5.1?}] two-node ring {ring:?}", t0.elapsed());

    // The image's HEALTHCHECK passes (podman runs it on demand) and the node is not root.
    let out = podman(&["healthcheck", "run", &a]).unwrap();
    assert!(
        out.status.success(),
        "HEALTHCHECK failed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(podman_ok(&["exec", &a, "id", "-u"]).trim(), "10001");

    let body = serde_json::json!({
        "model": model_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
    });
    let mut resp = ureq::post(&format!("http://127.0.0.1:{port_b}/v1/completions"))
        .config()
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .send_json(&body)
        .unwrap_or_else(|e| panic!("completion through the containers failed: {e}"));
    let v: Value = resp.body_mut().read_json().unwrap();
    let got = v["choices"][0]["text"].as_str().unwrap().to_string();
    let expected = run_single(&model_path, prompt, max_tokens);
    eprintln!("[{:>5.1?}] generated {got:?}", t0.elapsed());
    assert_eq!(
        got, expected,
        "the two-container ring differs from one process"
    );
    assert!(!got.trim().is_empty());

    drop(pm);
    eprintln!("[{:>5.1?}] torn down", t0.elapsed());
}

/// deploy/systemd/exo-p2p.service really runs under systemd, sandbox and all: two systemd
/// containers (privileged, so systemd can set up the unit's namespaces) on one podman network,
/// configured only by deploy/systemd/exo-p2p.env, find each other with mDNS and form a ring; the
/// node keeps its peer id (StateDirectory) across `systemctl restart`.
#[test]
fn systemd_unit_runs_under_systemd() {
    let test = "systemd_unit_runs_under_systemd";
    let _one_at_a_time = CONTAINER_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let t0 = Instant::now();
    if !check(Containers, test, container_runtime_problem()) {
        return;
    }
    let mut pm = Podman {
        prefix: format!("exo-systemd-test-{}", std::process::id()),
        containers: Vec::new(),
        volumes: Vec::new(),
        network: None,
        image: None,
    };
    let unit = std::fs::read(repo().join("deploy/systemd/exo-p2p.service")).unwrap();
    let env = std::fs::read(repo().join("deploy/systemd/exo-p2p.env")).unwrap();
    let env_text = String::from_utf8_lossy(&env).to_string();
    let model_line = format!("EXO_MODELS=/srv/models/{GEMMA}");
    assert!(
        env_text.lines().any(|l| l == model_line),
        "the env file's example model changed: update this test"
    );
    // Apt layers first (cached between runs), then the binary and the unit. HF_ENDPOINT points
    // nowhere: the node must never reach out.
    let containerfile = format!(
        "FROM {BASE_IMAGE}\n\
         RUN apt-get update && apt-get install -y --no-install-recommends systemd systemd-sysv \
         curl ca-certificates && rm -rf /var/lib/apt/lists/*\n\
         COPY exo-p2p /usr/local/bin/exo-p2p\n\
         COPY exo-p2p.service /etc/systemd/system/exo-p2p.service\n\
         COPY exo-p2p.env /etc/exo-p2p/exo-p2p.env\n\
         RUN mkdir -p /etc/systemd/system/exo-p2p.service.d \
         && printf '[Service]\\nEnvironment=HF_ENDPOINT=http://127.0.0.1:9\\nEnvironment=EXO_THREADS=1\\n' \
         > /etc/systemd/system/exo-p2p.service.d/test.conf \
         && systemctl enable exo-p2p\n\
         CMD [\"/sbin/init\"]\n"
    );
    let context = image_context(&[
        ("Containerfile", containerfile.as_bytes()),
        ("exo-p2p.service", &unit),
        ("exo-p2p.env", &env),
    ]);
    let image = format!("localhost/{}:latest", pm.prefix);
    pm.image = Some(image.clone());
    podman_ok(&[
        "build",
        "-f",
        context.join("Containerfile").to_str().unwrap(),
        "-t",
        &image,
        context.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&context).unwrap();
    eprintln!("[{:>5.1?}] systemd image built", t0.elapsed());

    let network = pm.name("net");
    podman_ok(&["network", "create", &network]);
    pm.network = Some(network.clone());
    let model = std::fs::canonicalize(test_model(GEMMA)).unwrap();
    let mount = format!("{}:/srv/models/{GEMMA}:ro", model.display());
    let nodes = [pm.name("a"), pm.name("b")];
    for n in &nodes {
        podman_ok(&[
            "run",
            "-d",
            "--name",
            n,
            "--privileged",
            "--systemd=always",
            "--network",
            &network,
            "-v",
            &mount,
            &image,
        ]);
        pm.containers.push(n.clone());
    }
    let exec = |n: &str, cmd: &[&str]| -> Option<String> {
        let mut args = vec!["exec", n];
        args.extend_from_slice(cmd);
        let out = podman(&args)?;
        out.status.success().then(|| text(&out.stdout))
    };
    let curl = |n: &str, path: &str| -> Option<Value> {
        let url = format!("http://127.0.0.1:52415{path}");
        serde_json::from_str(&exec(n, &["curl", "-fsS", &url])?).ok()
    };
    let ring_len = |n: &str| -> Option<usize> {
        Some(
            curl(n, "/v1/topology")?["rings"][GEMMA.trim_end_matches(".gguf")]
                .as_array()?
                .len(),
        )
    };
    for n in &nodes {
        wait_until(Duration::from_secs(120), "exo-p2p.service to be up", || {
            curl(n, "/health").filter(|h| h["ready"] == true)
        });
    }
    wait_until(
        Duration::from_secs(60),
        "a two-node ring found by mDNS",
        || (ring_len(&nodes[0]) == Some(2) && ring_len(&nodes[1]) == Some(2)).then_some(()),
    );
    eprintln!("[{:>5.1?}] two systemd units in one ring", t0.elapsed());
    let user = exec(
        &nodes[0],
        &["systemctl", "show", "-p", "User,DynamicUser", "exo-p2p"],
    );
    assert!(
        user.as_deref().unwrap_or("").contains("DynamicUser=yes"),
        "{user:?}"
    );

    let before = curl(&nodes[0], "/health").unwrap()["peer_id"].clone();
    exec(&nodes[0], &["systemctl", "restart", "exo-p2p"]).expect("systemctl restart");
    let after = wait_until(Duration::from_secs(60), "the restarted unit", || {
        curl(&nodes[0], "/health").filter(|h| h["ready"] == true)
    });
    assert_eq!(
        after["peer_id"], before,
        "the identity did not survive a restart"
    );
    assert_eq!(
        exec(&nodes[0], &["systemctl", "is-active", "exo-p2p"])
            .as_deref()
            .map(str::trim),
        Some("active")
    );
    drop(pm);
    eprintln!("[{:>5.1?}] torn down", t0.elapsed());
}
