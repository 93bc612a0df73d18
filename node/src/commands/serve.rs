//! `exo-p2p serve`: a node that runs until Ctrl-C.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use exo_engine::RunnerLimits;
use libp2p::Multiaddr;

use crate::{
    backend::NodeBackend,
    cli::{MeshArgs, ServeArgs},
    identity,
    network::Discovery,
    node::{Node, NodeOptions},
    private_swarm,
};

/// TCP and QUIC on `port` on every interface.
pub fn default_listen(port: u16) -> Vec<libp2p::Multiaddr> {
    vec![
        format!("/ip4/0.0.0.0/tcp/{port}")
            .parse()
            .expect("valid address"),
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1")
            .parse()
            .expect("valid address"),
    ]
}

impl MeshArgs {
    pub fn node_options(
        &self,
        models: Vec<String>,
        default_port: u16,
        threads: usize,
    ) -> Result<NodeOptions> {
        let listen = if self.listen.is_empty() {
            default_listen(default_port)
        } else {
            self.listen.clone()
        };
        let (mut relays, mut bootstrap) = (self.relay.clone(), self.bootstrap.clone());
        let mut psk = self
            .swarm_key
            .as_deref()
            .map(private_swarm::read_key)
            .transpose()?;
        if let Some(token) = &self.join {
            let invite = private_swarm::Invite::from_token(token)?;
            psk = Some(invite.psk()?);
            relays.extend(invite.relay_addrs()?);
            bootstrap.extend(invite.bootstrap_addrs()?);
        }
        if let Some(k) = &psk {
            tracing::info!(fingerprint = %k.fingerprint(), "private swarm");
        }
        Ok(NodeOptions {
            home: identity::exo_home(),
            models,
            discovery: Discovery {
                listen,
                peers: self.peer.clone(),
                bootstrap,
                relays,
                mdns: !self.no_mdns,
                tailscale: self.tailscale,
                psk,
            },
            memory: self.memory,
            api_port: None,
            threads,
            limits: RunnerLimits::default(),
        })
    }
}

pub async fn serve(args: ServeArgs, threads: usize) -> Result<()> {
    let mut opts = args.mesh.node_options(args.model.clone(), 52416, threads)?;
    opts.limits.idle_timeout = Duration::from_secs(args.kv_idle_timeout.max(1));
    opts.limits.max_kv_bytes = args.kv_memory.unwrap_or_else(default_kv_memory) as usize;
    tracing::info!(bytes = opts.limits.max_kv_bytes, "KV-cache budget");
    // Bind the API first: a port already in use is an error before anything else starts.
    let listener = tokio::net::TcpListener::bind((args.api_host.as_str(), args.api_port))
        .await
        .with_context(|| {
            format!(
                "cannot listen for the API on {}:{}",
                args.api_host, args.api_port
            )
        })?;
    // The port in use (`--api-port 0` lets the OS choose) is the one peers are told.
    let api_port = listener.local_addr()?.port();
    opts.api_port = Some(api_port);
    let config = exo_api::ApiConfig {
        api_key: args.api_key.clone(),
        max_concurrent: args.max_concurrent.max(1),
        upstream: exo_api::UpstreamConfig::from_file_and_env(args.upstream_config.as_deref())?,
        ..Default::default()
    };
    let wanted = opts.discovery.listen.clone();
    let node = Arc::new(Node::start(opts).await?);
    let mut speculation = std::collections::HashMap::new();
    for id in node.models.ids().cloned().collect::<Vec<_>>() {
        let Some(model) = node.models.get(&id) else {
            continue;
        };
        if let Some(s) = args.speculation.load(&model.info).await? {
            speculation.insert(id, s);
        }
    }
    let backend = Arc::new(NodeBackend::new(node.clone()).with_speculation(speculation));
    // Readiness lines, with the real ports: scripts and tests wait on them.
    let peer = node.client.local_peer_id();
    for addr in bound_listen_addrs(&node, &wanted).await {
        eprintln!("listening on {addr}/p2p/{peer}");
    }
    eprintln!(
        "exo-p2p node {peer}: API ready on http://{}:{api_port} (chat page at /)",
        args.api_host
    );
    exo_api::serve_with_shutdown(listener, backend, config, shutdown_signal()).await?;
    eprintln!("shutting down");
    // Give in-flight replies a moment to leave.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
}

/// Half the memory available now (what the weights take comes out of the other half, or out of
/// this budget on a small machine), and at least 256 MiB.
fn default_kv_memory() -> u64 {
    let (_, available) = crate::sysinfo::memory();
    (available / 2).max(256 << 20)
}

/// The swarm's listen addresses once each of `wanted` is bound (port 0 resolved), or what is
/// bound after a few seconds.
async fn bound_listen_addrs(node: &Node, wanted: &[Multiaddr]) -> Vec<Multiaddr> {
    // Same transport: the same protocols in the same order, whatever their values.
    let shape = |a: &Multiaddr| a.iter().map(|p| p.tag()).collect::<Vec<_>>();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let bound = node.client.listen_addrs().await;
        let all = wanted
            .iter()
            .all(|w| bound.iter().any(|b| shape(b) == shape(w)));
        if all || tokio::time::Instant::now() > deadline {
            return bound;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot install the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
