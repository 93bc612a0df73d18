//! A running node: the network, the shard host answering activation frames, and what the
//! driver of a request needs (topology, local models).

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use exo_engine::RunnerLimits;
use exo_protocol::{ActivationResponse, CapabilityRecord, ErrorKind, Plan};
use libp2p::{pnet::PreSharedKey, Multiaddr};
use tokio::sync::watch;

use crate::{
    host::ShardHost,
    identity,
    metrics::Metrics,
    models::ModelRegistry,
    network::{self, Client, Inbound, NetworkConfig},
    ring::Ring,
    sysinfo,
    topology::Topology,
};

pub struct NodeOptions {
    pub home: PathBuf,
    pub models: Vec<PathBuf>,
    pub listen: Vec<Multiaddr>,
    pub peers: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub relays: Vec<Multiaddr>,
    pub mdns: bool,
    pub tailscale: bool,
    pub psk: Option<PreSharedKey>,
    /// Memory to advertise instead of the machine's.
    pub memory: Option<u64>,
    pub api_port: Option<u16>,
    pub threads: usize,
    pub limits: RunnerLimits,
}

pub struct Node {
    pub client: Client,
    pub host: Arc<ShardHost>,
    pub topology: watch::Receiver<Topology>,
    pub models: Arc<ModelRegistry>,
    pub metrics: Arc<Metrics>,
}

impl Node {
    pub async fn start(opts: NodeOptions) -> Result<Self> {
        let key = identity::load_or_create(&opts.home)?;
        let models = {
            let paths = opts.models.clone();
            Arc::new(tokio::task::spawn_blocking(move || ModelRegistry::load(&paths)).await??)
        };
        let mut net = NetworkConfig::new(key);
        net.listen = opts.listen;
        net.peers = opts.peers;
        net.bootstrap = opts.bootstrap;
        net.relays = opts.relays;
        net.mdns = opts.mdns;
        net.tailscale = opts.tailscale;
        net.psk = opts.psk;
        let (client, mut inbound, topology) = network::spawn(net)?;
        tracing::info!(peer_id = %client.local_peer_id(), "node started");

        let (total, available) = sysinfo::memory();
        let mut record = CapabilityRecord::new(client.local_peer_id().to_string());
        record.memory_total = opts.memory.unwrap_or(total);
        record.memory_available = opts.memory.map_or(available, |m| m.min(available));
        record.compute_score = tokio::task::spawn_blocking(sysinfo::compute_score).await?;
        record.cpu = sysinfo::cpu_description(opts.threads);
        record.models = models.offers();
        record.api_port = opts.api_port;
        record.software = crate::cli::VERSION.to_string();
        let metrics = Arc::new(Metrics::default());
        let host = Arc::new(ShardHost::new(
            client.clone(),
            models.clone(),
            opts.limits.clone(),
            record,
            metrics.clone(),
        ));
        host.publish(|_| {}).await;

        // Every inbound frame runs in its own task; the reply goes back through the swarm.
        let (h, c) = (host.clone(), client.clone());
        tokio::spawn(async move {
            while let Some(msg) = inbound.recv().await {
                let (host, client) = (h.clone(), c.clone());
                tokio::spawn(async move {
                    match msg.request {
                        Inbound::Request(req) => {
                            let response = host.handle(*req).await;
                            client.respond(msg.channel, response).await;
                        }
                        Inbound::Invalid(reason) => {
                            // A peer that sends garbage gets an error reply and is cut off;
                            // everyone else is served as before.
                            tracing::warn!(peer = %msg.peer, %reason, "malformed activation frame; disconnecting the peer");
                            let local = host.local().to_string();
                            let response =
                                ActivationResponse::error(ErrorKind::BadRequest, local, reason);
                            client.respond(msg.channel, response).await;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            client.disconnect(msg.peer).await;
                        }
                    }
                });
            }
        });

        // Housekeeping: free caches of vanished drivers, keep available memory current.
        let (h, memory) = (host.clone(), opts.memory);
        let every = (opts.limits.idle_timeout / 2)
            .clamp(Duration::from_millis(500), Duration::from_secs(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                h.sweep().await;
                let (_, available) = sysinfo::memory();
                h.publish(|r| r.memory_available = memory.map_or(available, |m| m.min(available)))
                    .await;
            }
        });

        Ok(Self {
            client,
            host,
            topology,
            models,
            metrics,
        })
    }

    /// What a driver needs to run requests on the mesh.
    pub fn ring(&self) -> Ring {
        Ring {
            host: self.host.clone(),
            topology: self.topology.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The ring for `model` according to the current topology.
    pub fn plan(&self, model: &str) -> Result<Plan> {
        Ok(self.topology.borrow().plan(model)?)
    }

    /// Waits until `n` other nodes serving `model` are in the topology.
    pub async fn wait_for_peers(&self, model: &str, n: usize, timeout: Duration) -> Result<()> {
        let local = self.client.local_peer_id().to_string();
        let mut topo = self.topology.clone();
        let count = |t: &Topology| {
            t.serving(model)
                .filter(|e| e.record.peer_id != local)
                .count()
        };
        let reached = tokio::time::timeout(timeout, async {
            topo.wait_for(|t| count(t) >= n).await.is_ok()
        })
        .await;
        match reached {
            Ok(true) => Ok::<(), anyhow::Error>(()),
            Ok(false) => bail!("the network stopped"),
            Err(_) => {
                let found = count(&self.topology.borrow());
                bail!(
                    "timed out after {}s waiting for {n} other node(s) serving {model}: found {found}",
                    timeout.as_secs()
                )
            }
        }
        .context("not enough peers")
    }
}
