//! `exo-p2p relay`, `keygen` and `invite`: the pieces for meshes that span NATed networks.

use std::{path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use libp2p::{multiaddr::Protocol, Multiaddr};

use crate::{
    cli::{InviteArgs, KeygenArgs, RelayArgs},
    identity,
    network::{self, NetworkConfig},
    private_swarm::{self, Invite},
    serve::{default_listen, shutdown_signal},
};

/// Where a relay records the addresses it can be reached at, for `invite`.
fn relay_addrs_file() -> PathBuf {
    identity::exo_home().join("relay.addrs")
}

fn default_key_file() -> PathBuf {
    identity::exo_home().join("swarm.key")
}

pub async fn relay(args: RelayArgs) -> Result<()> {
    let home = identity::exo_home();
    let key = identity::load_or_create(&home)?;
    let peer = key.public().to_peer_id();
    let mut cfg = NetworkConfig::new(key);
    cfg.discovery.listen = if args.listen.is_empty() {
        default_listen(52416)
    } else {
        args.listen.clone()
    };
    cfg.discovery.mdns = false;
    cfg.relay_server = true;
    cfg.discovery.psk = args
        .swarm_key
        .as_deref()
        .map(private_swarm::read_key)
        .transpose()?;
    let network = network::spawn(cfg)?;
    let client = network.client.clone();
    // Give the listeners a moment to report their concrete addresses.
    let mut addrs = Vec::new();
    for _ in 0..50 {
        addrs = client.listen_addrs().await;
        if !addrs.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut reachable: Vec<Multiaddr> = if args.external.is_empty() {
        addrs
    } else {
        args.external.clone()
    };
    for a in &mut reachable {
        if !matches!(a.iter().last(), Some(Protocol::P2p(_))) {
            a.push(Protocol::P2p(peer));
        }
    }
    for a in &reachable {
        // Reservations tell clients how to reach the relay: it must know its own addresses.
        client.add_external_address(a.clone()).await;
    }
    let text: String = reachable.iter().map(|a| format!("{a}\n")).collect();
    std::fs::write(relay_addrs_file(), &text)
        .with_context(|| format!("cannot write {}", relay_addrs_file().display()))?;
    eprintln!("exo-p2p relay {peer} is up; nodes can use:");
    for a in &reachable {
        eprintln!("  --relay {a}");
    }
    shutdown_signal().await;
    Ok(())
}

pub fn keygen(args: KeygenArgs) -> Result<()> {
    let path = args.output.unwrap_or_else(default_key_file);
    if path.exists() && !args.force {
        bail!(
            "{} already exists (use --force to replace it)",
            path.display()
        );
    }
    let key = private_swarm::generate_key();
    private_swarm::write_key(&path, &key)?;
    println!("{}", path.display());
    eprintln!("swarm key fingerprint {}", key.fingerprint());
    Ok(())
}

pub fn invite(args: InviteArgs) -> Result<()> {
    let key_path = args.swarm_key.unwrap_or_else(default_key_file);
    let key =
        private_swarm::read_key(&key_path).with_context(|| "create one with `exo-p2p keygen`")?;
    let mut relays = args.relay;
    if relays.is_empty() {
        if let Ok(text) = std::fs::read_to_string(relay_addrs_file()) {
            relays = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        }
    }
    if relays.is_empty() && args.bootstrap.is_empty() {
        bail!("no relay or bootstrap address to invite to: pass --relay ADDR (or run `exo-p2p relay` with this EXO_HOME first)");
    }
    let bootstrap = if args.bootstrap.is_empty() {
        relays.clone()
    } else {
        args.bootstrap
    };
    println!("{}", Invite::new(&key, &relays, &bootstrap).to_token());
    Ok(())
}
