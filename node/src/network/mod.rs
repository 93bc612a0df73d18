//! The libp2p side of a node. A cheap, cloneable [`Client`] sends [`Command`]s to the
//! [`EventLoop`](event_loop::EventLoop), which alone owns the `Swarm` (rust-libp2p's
//! file-sharing example layout). Inbound activation frames come out of a channel; the mesh's
//! topology is published through a `watch` channel.

pub mod behaviour;
pub mod codec;
mod discovery;
mod event_loop;
mod transport;

use std::time::Duration;

use anyhow::{anyhow, Result};
use exo_protocol::{
    ActivationRequest, ActivationResponse, CapabilityRecord, FileRequest, FileResponse, NodeId,
};
use libp2p::{
    identity::Keypair, pnet::PreSharedKey, request_response::ResponseChannel, Multiaddr, PeerId,
};
use tokio::sync::{mpsc, oneshot, watch};

pub use codec::Inbound;

use crate::topology::Topology;

/// Where a node listens and how it finds and admits peers.
#[derive(Clone, Default)]
pub struct Discovery {
    pub listen: Vec<Multiaddr>,
    /// Static peers, redialled with backoff when they drop.
    pub peers: Vec<Multiaddr>,
    /// Kademlia bootstrap nodes.
    pub bootstrap: Vec<Multiaddr>,
    /// Relays to reserve a slot on and listen through.
    pub relays: Vec<Multiaddr>,
    pub mdns: bool,
    pub tailscale: bool,
    /// Private swarm key: only nodes holding it can connect.
    pub psk: Option<PreSharedKey>,
}

impl Discovery {
    /// Whether peers were named explicitly (worth waiting for when a model must be fetched).
    pub fn has_explicit_peers(&self) -> bool {
        !self.peers.is_empty() || !self.bootstrap.is_empty() || !self.relays.is_empty()
    }
}

pub struct NetworkConfig {
    pub key: Keypair,
    pub discovery: Discovery,
    /// Run a relay server (relay nodes).
    pub relay_server: bool,
    pub request_timeout: Duration,
    /// How often this node republishes its capability record.
    pub record_interval: Duration,
    /// Records not refreshed for this long are dropped.
    pub record_ttl: Duration,
}

impl NetworkConfig {
    pub fn new(key: Keypair) -> Self {
        Self {
            key,
            discovery: Discovery {
                mdns: true,
                ..Discovery::default()
            },
            relay_server: false,
            request_timeout: Duration::from_secs(120),
            record_interval: Duration::from_secs(2),
            record_ttl: Duration::from_secs(8),
        }
    }
}

/// A file request from a peer, to be answered through [`Client::respond_file`].
pub struct InboundFile {
    pub peer: PeerId,
    pub request: FileRequest,
    pub channel: ResponseChannel<FileResponse>,
}

/// What [`spawn`] gives the rest of the node.
pub struct Network {
    pub client: Client,
    pub activations: mpsc::Receiver<InboundActivation>,
    pub files: mpsc::Receiver<InboundFile>,
    pub topology: watch::Receiver<Topology>,
}

/// An activation frame from a peer, to be answered through [`Client::respond`].
pub struct InboundActivation {
    pub peer: PeerId,
    pub request: Inbound,
    pub channel: ResponseChannel<ActivationResponse>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("peer {peer} is unreachable: {reason}")]
    Unreachable { peer: PeerId, reason: String },
    #[error("the network has shut down")]
    Shutdown,
}

/// A change to this node's capability record, applied by the event loop that holds it.
pub(crate) type RecordUpdate = Box<dyn FnOnce(&mut CapabilityRecord) + Send>;

pub(crate) enum Command {
    Request {
        peer: PeerId,
        request: Box<ActivationRequest>,
        reply: oneshot::Sender<Result<ActivationResponse, NetError>>,
    },
    Respond {
        channel: ResponseChannel<ActivationResponse>,
        response: ActivationResponse,
    },
    FileRequest {
        peer: PeerId,
        request: FileRequest,
        reply: oneshot::Sender<Result<FileResponse, NetError>>,
    },
    RespondFile {
        channel: ResponseChannel<FileResponse>,
        response: FileResponse,
    },
    SetRecord(Box<CapabilityRecord>),
    UpdateRecord(RecordUpdate),
    Dial(Multiaddr),
    AddStaticPeers(Vec<Multiaddr>),
    AddExternal(Multiaddr),
    Disconnect(PeerId),
    ListenAddrs(oneshot::Sender<Vec<Multiaddr>>),
}

#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    local: PeerId,
}

impl Client {
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// This node as plans, records and frames name it.
    pub fn local_node(&self) -> NodeId {
        self.local.to_string().into()
    }

    async fn send(&self, cmd: Command) -> Result<(), NetError> {
        self.tx.send(cmd).await.map_err(|_| NetError::Shutdown)
    }

    /// Sends an activation frame to `peer` and waits for its reply.
    pub async fn request(
        &self,
        peer: PeerId,
        request: ActivationRequest,
    ) -> Result<ActivationResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request {
            peer,
            request: Box::new(request),
            reply,
        })
        .await?;
        rx.await.map_err(|_| NetError::Shutdown)?
    }

    pub async fn respond(
        &self,
        channel: ResponseChannel<ActivationResponse>,
        response: ActivationResponse,
    ) {
        let _ = self.send(Command::Respond { channel, response }).await;
    }

    /// Asks `peer` for (part of) a model file it holds.
    pub async fn file_request(
        &self,
        peer: PeerId,
        request: FileRequest,
    ) -> Result<FileResponse, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::FileRequest {
            peer,
            request,
            reply,
        })
        .await?;
        rx.await.map_err(|_| NetError::Shutdown)?
    }

    pub async fn respond_file(
        &self,
        channel: ResponseChannel<FileResponse>,
        response: FileResponse,
    ) {
        let _ = self.send(Command::RespondFile { channel, response }).await;
    }

    /// Replaces this node's capability record (addresses and sequence are filled in) and
    /// publishes it.
    pub async fn set_record(&self, record: CapabilityRecord) {
        let _ = self.send(Command::SetRecord(Box::new(record))).await;
    }

    /// Changes this node's capability record (the one [`Self::set_record`] gave) and publishes
    /// it. The event loop is the record's one owner; everyone else sends changes.
    pub async fn update_record(&self, update: impl FnOnce(&mut CapabilityRecord) + Send + 'static) {
        let _ = self.send(Command::UpdateRecord(Box::new(update))).await;
    }

    pub async fn dial(&self, addr: Multiaddr) {
        let _ = self.send(Command::Dial(addr)).await;
    }

    pub(crate) async fn add_static_peers(&self, addrs: Vec<Multiaddr>) {
        let _ = self.send(Command::AddStaticPeers(addrs)).await;
    }

    /// Declares an address other nodes can reach this node at (relays advertise these in
    /// reservations).
    pub async fn add_external_address(&self, addr: Multiaddr) {
        let _ = self.send(Command::AddExternal(addr)).await;
    }

    /// Closes every connection to `peer` (e.g. after it sent garbage).
    pub async fn disconnect(&self, peer: PeerId) {
        let _ = self.send(Command::Disconnect(peer)).await;
    }

    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let (tx, rx) = oneshot::channel();
        if self.send(Command::ListenAddrs(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

/// Builds the swarm, starts listening and dialling, and runs the event loop on the runtime.
pub fn spawn(config: NetworkConfig) -> Result<Network> {
    let local = config.key.public().to_peer_id();
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (inbound_tx, inbound_rx) = mpsc::channel(64);
    let (files_tx, files_rx) = mpsc::channel(64);
    let (topo_tx, topo_rx) = watch::channel(Topology::new(local.to_string()));
    let client = Client { tx: cmd_tx, local };
    let channels = event_loop::Channels {
        commands: cmd_rx,
        activations: inbound_tx,
        files: files_tx,
        topology: topo_tx,
    };
    let event_loop = event_loop::EventLoop::new(config, channels, client.clone())
        .map_err(|e| anyhow!("cannot start the network: {e:#}"))?;
    tokio::spawn(event_loop.run());
    Ok(Network {
        client,
        activations: inbound_rx,
        files: files_rx,
        topology: topo_rx,
    })
}
