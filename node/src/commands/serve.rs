//! `exo-p2p serve`: a node that runs until Ctrl-C.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, Result};
use exo_engine::RunnerLimits;

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
    opts.api_port = Some(args.api_port);
    opts.limits.idle_timeout = Duration::from_secs(args.kv_idle_timeout.max(1));
    opts.limits.max_kv_bytes = args.max_kv_memory as usize;
    // Bind the API first: a port already in use is an error before anything else starts.
    let listener = tokio::net::TcpListener::bind((args.api_host.as_str(), args.api_port))
        .await
        .with_context(|| {
            format!(
                "cannot listen for the API on {}:{}",
                args.api_host, args.api_port
            )
        })?;
    let config = exo_api::ApiConfig {
        api_key: args.api_key.clone(),
        max_concurrent: args.max_concurrent.max(1),
        upstream: exo_api::UpstreamConfig::from_file_and_env(args.upstream_config.as_deref())?,
        ..Default::default()
    };
    let node = Arc::new(Node::start(opts).await?);
    let backend = Arc::new(NodeBackend::new(node.clone()));
    eprintln!(
        "exo-p2p node {} is up; API and chat page on http://{}:{}",
        node.client.local_peer_id(),
        args.api_host,
        args.api_port
    );
    exo_api::serve_with_shutdown(listener, backend, config, shutdown_signal()).await?;
    eprintln!("shutting down");
    // Give in-flight replies a moment to leave.
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(())
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
