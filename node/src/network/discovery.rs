//! Static peers (redialled with exponential backoff while they are down) and Tailscale peers
//! (from `tailscale status --json`).

use std::time::{Duration, Instant};

use libp2p::{multiaddr::Protocol, swarm::ConnectionId, Multiaddr, PeerId};

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct StaticPeer {
    addr: Multiaddr,
    peer: Option<PeerId>,
    /// The dial in flight, if any.
    dialing: Option<ConnectionId>,
    connected: bool,
    backoff: Duration,
    next_attempt: Instant,
}

/// Keeps static peers connected.
#[derive(Debug, Default)]
pub struct Redialer {
    peers: Vec<StaticPeer>,
}

/// The `/p2p/<id>` at the end of an address, if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().last().and_then(|p| match p {
        Protocol::P2p(id) => Some(id),
        _ => None,
    })
}

impl Redialer {
    pub fn add(&mut self, addr: Multiaddr) {
        if self.peers.iter().any(|p| p.addr == addr) {
            return;
        }
        self.peers.push(StaticPeer {
            peer: peer_of(&addr),
            addr,
            dialing: None,
            connected: false,
            backoff: MIN_BACKOFF,
            next_attempt: Instant::now(),
        });
    }

    /// Addresses to dial now; `dial` returns the connection id of each attempt.
    pub fn due(&mut self, mut dial: impl FnMut(&Multiaddr) -> Option<ConnectionId>) {
        let now = Instant::now();
        for p in &mut self.peers {
            if !p.connected && p.dialing.is_none() && now >= p.next_attempt {
                p.dialing = dial(&p.addr);
                if p.dialing.is_none() {
                    p.fail(now);
                }
            }
        }
    }

    pub fn established(&mut self, conn: ConnectionId, peer: PeerId) {
        for p in &mut self.peers {
            if p.dialing == Some(conn) || p.peer == Some(peer) {
                p.dialing = None;
                p.connected = true;
                p.peer = Some(peer);
                p.backoff = MIN_BACKOFF;
            }
        }
    }

    pub fn dial_failed(&mut self, conn: ConnectionId) {
        let now = Instant::now();
        for p in &mut self.peers {
            if p.dialing == Some(conn) {
                p.dialing = None;
                p.fail(now);
            }
        }
    }

    /// The last connection to `peer` closed: try again after the backoff.
    pub fn disconnected(&mut self, peer: PeerId) {
        let now = Instant::now();
        for p in &mut self.peers {
            if p.peer == Some(peer) && p.connected {
                p.connected = false;
                p.next_attempt = now + p.backoff;
            }
        }
    }
}

impl StaticPeer {
    fn fail(&mut self, now: Instant) {
        self.next_attempt = now + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        tracing::debug!(addr = %self.addr, retry_in = ?self.backoff, "static peer unreachable");
    }
}

/// Addresses of online Tailscale peers, on `port`, from `tailscale status --json` (the
/// `tailscale` binary on PATH).
pub async fn tailscale_peers(port: u16) -> Result<Vec<Multiaddr>, String> {
    let run = tokio::process::Command::new("tailscale")
        .args(["status", "--json"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .map_err(|_| "`tailscale status --json` timed out".to_string())?
        .map_err(|e| format!("cannot run `tailscale status --json`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`tailscale status --json` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("cannot parse `tailscale status --json`: {e}"))?;
    Ok(parse_tailscale(&status, port))
}

fn parse_tailscale(status: &serde_json::Value, port: u16) -> Vec<Multiaddr> {
    let Some(peers) = status["Peer"].as_object() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for peer in peers.values() {
        if peer["Online"].as_bool() == Some(false) {
            continue;
        }
        for ip in peer["TailscaleIPs"].as_array().into_iter().flatten() {
            let Some(ip) = ip.as_str().and_then(|s| s.parse::<std::net::IpAddr>().ok()) else {
                continue;
            };
            let mut addr = Multiaddr::from(ip);
            addr.push(Protocol::Tcp(port));
            out.push(addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tailscale_status_gives_online_peers() {
        let status = serde_json::json!({
            "Self": {"TailscaleIPs": ["100.64.0.1"]},
            "Peer": {
                "a": {"HostName": "a", "Online": true, "TailscaleIPs": ["100.64.0.2", "fd7a:115c:a1e0::2"]},
                "b": {"HostName": "b", "Online": false, "TailscaleIPs": ["100.64.0.3"]}
            }
        });
        let got: Vec<String> = parse_tailscale(&status, 52416)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "/ip4/100.64.0.2/tcp/52416",
                "/ip6/fd7a:115c:a1e0::2/tcp/52416"
            ]
        );
    }

    #[test]
    fn failed_dials_back_off_and_reconnects_are_scheduled() {
        let mut r = Redialer::default();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        r.add(addr.clone());
        r.add(addr);
        let mut dials = 0;
        let id = ConnectionId::new_unchecked(1);
        r.due(|_| {
            dials += 1;
            Some(id)
        });
        assert_eq!(dials, 1);
        r.dial_failed(id);
        // Backing off: not due again immediately.
        r.due(|_| {
            dials += 1;
            Some(id)
        });
        assert_eq!(dials, 1);
        assert_eq!(r.peers[0].backoff, MIN_BACKOFF * 2);
    }
}
