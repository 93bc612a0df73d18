//! Network namespaces made by a test (root only): hosts joined by veth pairs, removed on drop.
#![allow(dead_code)]

use std::process::{Command, Stdio};

/// Whether this process can create network namespaces (root and iproute2); when it cannot,
/// the test fails unless the user opted out (`EXO_SKIP=netns`, see [`super::capability`]).
pub fn available(test: &str) -> bool {
    let missing = if unsafe { libc::geteuid() } != 0 {
        Some("needs root (`ip netns`)".to_string())
    } else if !Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        Some("needs iproute2 (`ip`): apt-get install iproute2".to_string())
    } else {
        None
    };
    super::capability::check(super::capability::Capability::Netns, test, missing)
}

pub fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A set of namespaces with a common prefix, deleted (with their veths) when dropped.
pub struct Netns {
    pub names: Vec<String>,
}

impl Netns {
    /// Creates namespaces `{prefix}-{name}` with loopback up.
    pub fn new(prefix: &str, names: &[&str]) -> Self {
        let names: Vec<String> = names.iter().map(|n| format!("{prefix}-{n}")).collect();
        let ns = Netns { names };
        for n in &ns.names {
            // A leftover from an interrupted run would make `add` fail.
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
            sh(&format!("ip netns add {n} && ip -n {n} link set lo up"));
        }
        ns
    }

    pub fn name(&self, short: &str) -> String {
        self.names
            .iter()
            .find(|n| n.ends_with(&format!("-{short}")))
            .unwrap()
            .clone()
    }

    /// A veth pair between two namespaces with the given addresses (CIDR).
    pub fn link(&self, a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
        let (na, nb) = (self.name(a), self.name(b));
        sh(&format!(
            "ip link add {a_if} netns {na} type veth peer name {b_if} netns {nb} && \
             ip -n {na} addr add {a_addr} dev {a_if} && ip -n {na} link set {a_if} up && \
             ip -n {nb} addr add {b_addr} dev {b_if} && ip -n {nb} link set {b_if} up"
        ));
    }

    /// Runs a shell command inside namespace `short`.
    pub fn exec(&self, short: &str, cmd: &str) {
        sh(&format!(
            "ip netns exec {} sh -c '{}'",
            self.name(short),
            cmd.replace('\'', "'\\''")
        ));
    }

    /// A `Command` that runs `program` inside namespace `short`.
    pub fn command(&self, short: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name(short), program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            // Killing what still runs inside, then deleting the namespace, removes its veths.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "ip netns pids {n} | xargs -r kill -9; ip netns del {n}"
                ))
                .status();
        }
    }
}
