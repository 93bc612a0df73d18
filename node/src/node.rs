//! A running node: the network, the shard host answering activation frames, and what the
//! driver of a request needs (topology, local models).

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use exo_engine::RunnerLimits;
use exo_protocol::{ActivationResponse, CapabilityRecord, ErrorKind, Plan};
use tokio::sync::watch;

use exo_store::{
    parse_reference, DownloadTracker, Downloader, ModelRef, ModelStore, TerminalReporter,
};

use crate::{
    files::{self, PeerFiles},
    host::ShardHost,
    identity,
    metrics::Metrics,
    models::{self, Fetcher, ModelRegistry},
    network::{self, Client, Discovery, Inbound, NetworkConfig},
    ring::Ring,
    stage::transport::StageTransport,
    sysinfo,
    topology::Topology,
};

pub struct NodeOptions {
    pub home: PathBuf,
    /// Models to serve: paths, or references to fetch (`owner/repo[:QUANT]`, catalog names).
    pub models: Vec<String>,
    pub discovery: Discovery,
    /// Memory to advertise instead of the machine's.
    pub memory: Option<u64>,
    pub api_port: Option<u16>,
    pub threads: usize,
    pub limits: RunnerLimits,
}

pub struct Node {
    pub downloads: Arc<DownloadTracker>,
    pub client: Client,
    pub host: Arc<ShardHost>,
    pub topology: watch::Receiver<Topology>,
    pub models: Arc<ModelRegistry>,
    pub metrics: Arc<Metrics>,
}

impl Node {
    pub async fn start(opts: NodeOptions) -> Result<Self> {
        let key = identity::load_or_create(&opts.home)?;
        // Peers worth waiting for when a model must be fetched: explicitly configured ones, or
        // the LAN's.
        let peer_wait = if opts.discovery.has_explicit_peers() {
            Duration::from_secs(8)
        } else if opts.discovery.mdns {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        };
        let mut net = NetworkConfig::new(key);
        net.discovery = opts.discovery.clone();
        let network::Network {
            client,
            activations: mut inbound,
            files,
            topology,
        } = network::spawn(net)?;
        tracing::info!(peer_id = %client.local_peer_id(), "node started");

        // Model files: served to peers from the store; models named by reference are fetched
        // (from peers first, then the hub) before this node offers them. Of a safetensors model
        // with an index only the description is fetched now: the weight files of the layers this
        // node is given come when it is given them (see `ShardHost`).
        let store = ModelStore::from_env();
        files::serve(store.clone(), client.clone(), files);
        let downloads = DownloadTracker::new();
        let fetcher = {
            let (client, topology, downloads) =
                (client.clone(), topology.clone(), downloads.clone());
            Arc::new(Fetcher::new(store.clone(), move || {
                Ok(Downloader::from_env()?
                    .with_alt_source(Arc::new(PeerFiles {
                        client: client.clone(),
                        topology: topology.clone(),
                        wait: peer_wait,
                    }))
                    .with_progress(downloads.clone())
                    .with_progress(Arc::new(TerminalReporter::new())))
            }))
        };
        let mut paths = Vec::new();
        for reference in &opts.models {
            if let Some(path) = models::resolve_local(reference, &store, true).await? {
                paths.push(path);
                continue;
            }
            let dl = fetcher.downloader().await?;
            paths.push(models::resolve(reference, dl, true).await?);
        }
        let loaded = paths.clone();
        let mut registry =
            tokio::task::spawn_blocking(move || ModelRegistry::load(&loaded)).await??;
        for (reference, path) in opts.models.iter().zip(&paths) {
            let id = exo_engine::model_id(path);
            registry.alias(reference, &id);
            if let ModelRef::Hub(hub) = parse_reference(reference) {
                registry.fetch_from(&id, hub);
            }
        }
        let models = Arc::new(registry);
        let held = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.held_files()).await??
        };

        let (total, available) = sysinfo::memory();
        let mut record = CapabilityRecord::new(client.local_node());
        record.memory_total = opts.memory.unwrap_or(total);
        record.memory_available = opts.memory.map_or(available, |m| m.min(available));
        record.compute_score = tokio::task::spawn_blocking(sysinfo::compute_score).await?;
        record.cpu = sysinfo::cpu_description(opts.threads);
        record.models = models.offers();
        record.files = files::offers(held);
        record.api_port = opts.api_port;
        record.software = crate::cli::VERSION.to_string();
        client.set_record(record).await;
        let metrics = Arc::new(Metrics::default());
        let host = Arc::new(ShardHost::new(
            client.clone(),
            models.clone(),
            fetcher,
            opts.limits.clone(),
            metrics.clone(),
        ));

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
                            let local = host.local();
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
                h.publish(move |r| {
                    r.memory_available = memory.map_or(available, |m| m.min(available))
                })
                .await;
            }
        });

        Ok(Self {
            downloads,
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
            transport: self.host.clone(),
            topology: self.topology.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The ring for `model` according to the current topology.
    pub fn plan(&self, model: &str) -> Result<Plan> {
        Ok(self.topology.borrow().plan(model)?)
    }

    /// Waits until `n` other nodes serving `model`, and this node itself, are in the topology.
    pub async fn wait_for_peers(&self, model: &str, n: usize, timeout: Duration) -> Result<()> {
        let local = self.client.local_node();
        let mut topo = self.topology.clone();
        let count = |t: &Topology| {
            t.serving(model)
                .filter(|e| e.record.peer_id != local)
                .count()
        };
        let reached = tokio::time::timeout(timeout, async {
            topo.wait_for(|t| count(t) >= n && t.nodes.contains_key(&local))
                .await
                .is_ok()
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
