//! The task that owns the `Swarm`: it runs every swarm event and client command, keeps the
//! topology, and publishes this node's capability record.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use exo_protocol::{
    capability::MAX_RECORD_BYTES, decode, encode, ActivationResponse, CapabilityRecord, ErrorKind,
    FileRequest, FileResponse, FileResponseBody, NodeId,
};
use futures::StreamExt;
use libp2p::{
    autonat, dcutr, gossipsub, identify, kad, mdns,
    multiaddr::Protocol,
    ping, relay, request_response,
    request_response::ResponseChannel,
    swarm::{dial_opts::DialOpts, ConnectionId, SwarmEvent},
    Multiaddr, PeerId, Swarm,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    behaviour::{Behaviour, BehaviourConfig, BehaviourEvent, CAPABILITY_TOPIC, KAD_PROTOCOL},
    discovery::{self, Redialer},
    transport::build_swarm,
    Client, Command, Inbound, InboundActivation, InboundFile, NetError, NetworkConfig,
};
use crate::topology::{Connection, Topology};

/// Default libp2p port (TCP and QUIC), used to reach Tailscale peers.
pub const DEFAULT_PORT: u16 = 52416;

/// The channels between the event loop and the rest of the node.
pub struct Channels {
    pub commands: mpsc::Receiver<Command>,
    pub activations: mpsc::Sender<InboundActivation>,
    pub files: mpsc::Sender<InboundFile>,
    pub topology: watch::Sender<Topology>,
}

/// Requests sent on one request-response protocol, by id, with who waits for the reply.
type Pending<R> =
    HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<R, NetError>>>;

/// A peer's request as the node's queue for that protocol holds it.
trait Queued<Req, Resp> {
    fn new(peer: PeerId, request: Req, channel: ResponseChannel<Resp>) -> Self;
    fn channel(self) -> ResponseChannel<Resp>;
}

impl Queued<Inbound, ActivationResponse> for InboundActivation {
    fn new(peer: PeerId, request: Inbound, channel: ResponseChannel<ActivationResponse>) -> Self {
        Self {
            peer,
            request,
            channel,
        }
    }

    fn channel(self) -> ResponseChannel<ActivationResponse> {
        self.channel
    }
}

impl Queued<FileRequest, FileResponse> for InboundFile {
    fn new(peer: PeerId, request: FileRequest, channel: ResponseChannel<FileResponse>) -> Self {
        Self {
            peer,
            request,
            channel,
        }
    }

    fn channel(self) -> ResponseChannel<FileResponse> {
        self.channel
    }
}

/// One event of a request-response protocol: a peer's request goes to the node's queue (and
/// is answered `busy()` when the queue is full), a reply or failure to whoever waits for it.
fn exchange<C, Q>(
    behaviour: &mut request_response::Behaviour<C>,
    event: request_response::Event<C::Request, C::Response>,
    queue: &mpsc::Sender<Q>,
    pending: &mut Pending<C::Response>,
    busy: impl FnOnce() -> C::Response,
    protocol: &str,
) where
    C: request_response::Codec + Send + Clone + 'static,
    Q: Queued<C::Request, C::Response>,
{
    match event {
        request_response::Event::Message { peer, message, .. } => match message {
            request_response::Message::Request {
                request, channel, ..
            } => {
                if let Err(e) = queue.try_send(Q::new(peer, request, channel)) {
                    let (mpsc::error::TrySendError::Full(q) | mpsc::error::TrySendError::Closed(q)) =
                        e;
                    let _ = behaviour.send_response(q.channel(), busy());
                }
            }
            request_response::Message::Response {
                request_id,
                response,
            } => {
                if let Some(reply) = pending.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                }
            }
        },
        request_response::Event::OutboundFailure {
            peer,
            request_id,
            error,
            ..
        } => {
            if let Some(reply) = pending.remove(&request_id) {
                let _ = reply.send(Err(NetError::Unreachable {
                    peer,
                    reason: error.to_string(),
                }));
            }
        }
        request_response::Event::InboundFailure { peer, error, .. } => {
            tracing::debug!(%peer, %error, "inbound {protocol} failed");
        }
        request_response::Event::ResponseSent { .. } => {}
    }
}

pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<InboundActivation>,
    inbound_files: mpsc::Sender<InboundFile>,
    pending_files: Pending<FileResponse>,
    topo_tx: watch::Sender<Topology>,
    topology: Topology,
    client: Client,
    topic: gossipsub::IdentTopic,
    record: Option<CapabilityRecord>,
    seq: u64,
    last_publish: Instant,
    record_interval: Duration,
    record_ttl: Duration,
    pending: Pending<ActivationResponse>,
    /// Open connections per peer, and whether each is relayed.
    connections: HashMap<PeerId, HashMap<ConnectionId, bool>>,
    redialer: Redialer,
    bootstrap: Vec<Multiaddr>,
    relays: Vec<Multiaddr>,
    relay_listening: HashSet<Multiaddr>,
    tailscale: Option<u16>,
    private: bool,
    /// Last sequence number seen per peer, so replayed records are ignored after a removal.
    seen_seq: HashMap<NodeId, u64>,
    warned_versions: HashSet<String>,
    started: Instant,
}

fn is_circuit(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| p == Protocol::P2pCircuit)
}

/// Whether a connection runs through a relay (an inbound relayed connection shows the circuit
/// in its local address only).
fn is_relayed(endpoint: &libp2p::core::ConnectedPoint) -> bool {
    match endpoint {
        libp2p::core::ConnectedPoint::Dialer { address, .. } => is_circuit(address),
        libp2p::core::ConnectedPoint::Listener {
            local_addr,
            send_back_addr,
        } => is_circuit(local_addr) || is_circuit(send_back_addr),
    }
}

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic))
}

impl EventLoop {
    pub fn new(cfg: NetworkConfig, channels: Channels, client: Client) -> anyhow::Result<Self> {
        let NetworkConfig {
            key,
            discovery: d,
            relay_server,
            request_timeout,
            record_interval,
            record_ttl,
        } = cfg;
        let local = key.public().to_peer_id();
        let private = d.psk.is_some();
        let mut swarm = build_swarm(
            key,
            d.psk,
            BehaviourConfig {
                mdns: d.mdns,
                relay_server,
                request_timeout,
            },
        )?;
        let topic = gossipsub::IdentTopic::new(CAPABILITY_TOPIC);
        swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
        let mut tailscale_port = None;
        for addr in &d.listen {
            // QUIC has its own encryption and cannot carry the private-swarm handshake.
            if private && is_quic(addr) {
                tracing::warn!(%addr, "not listening on QUIC in a private swarm");
                continue;
            }
            swarm
                .listen_on(addr.clone())
                .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
            if let Some(Protocol::Tcp(port)) = addr.iter().find(|p| matches!(p, Protocol::Tcp(_))) {
                tailscale_port.get_or_insert(if port == 0 { DEFAULT_PORT } else { port });
            }
        }
        let mut redialer = Redialer::default();
        for addr in d.peers.iter().chain(&d.bootstrap).chain(&d.relays) {
            redialer.add(addr.clone());
        }
        for addr in &d.bootstrap {
            if let Some(peer) = discovery::peer_of(addr) {
                swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            }
        }
        let topology = Topology::new(local.to_string());
        Ok(Self {
            swarm,
            commands: channels.commands,
            inbound: channels.activations,
            inbound_files: channels.files,
            pending_files: HashMap::new(),
            topo_tx: channels.topology,
            topology,
            client,
            topic,
            record: None,
            seq: 0,
            last_publish: Instant::now(),
            record_interval,
            record_ttl,
            pending: HashMap::new(),
            connections: HashMap::new(),
            redialer,
            bootstrap: d.bootstrap,
            relays: d.relays,
            relay_listening: HashSet::new(),
            tailscale: d
                .tailscale
                .then_some(tailscale_port.unwrap_or(DEFAULT_PORT)),
            private,
            seen_seq: HashMap::new(),
            warned_versions: HashSet::new(),
            started: Instant::now(),
        })
    }

    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut walk = tokio::time::interval(Duration::from_secs(5));
        let mut tailscale = tokio::time::interval(Duration::from_secs(15));
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                _ = tick.tick() => self.on_tick(),
                _ = walk.tick() => self.random_walk(),
                _ = tailscale.tick(), if self.tailscale.is_some() => self.poll_tailscale(),
            }
        }
        tracing::debug!("network event loop stopped");
    }

    fn publish_topology(&mut self) {
        self.topo_tx.send_replace(self.topology.clone());
    }

    fn dial_addr(&mut self, addr: &Multiaddr) -> Option<ConnectionId> {
        if self.private && is_quic(addr) {
            return None;
        }
        let opts = match discovery::peer_of(addr) {
            Some(peer) if peer == *self.swarm.local_peer_id() => return None,
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(vec![addr.clone()])
                .build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => Some(id),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "dial failed");
                None
            }
        }
    }

    fn dial_peer(&mut self, peer: PeerId) {
        if peer == *self.swarm.local_peer_id() || self.swarm.is_connected(&peer) {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .condition(libp2p::swarm::dial_opts::PeerCondition::DisconnectedAndNotDialing)
            .build();
        let _ = self.swarm.dial(opts);
    }

    fn add_peer_addresses(&mut self, peer: PeerId, addrs: impl IntoIterator<Item = Multiaddr>) {
        let ours: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        for addr in addrs {
            if self.private && is_quic(&addr) {
                continue;
            }
            // A peer's loopback or LAN address that is also ours (same host and port) would
            // only reach ourselves.
            let bare: Multiaddr = addr
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            if ours.contains(&bare) {
                continue;
            }
            self.swarm.add_peer_address(peer, addr);
        }
    }

    fn on_tick(&mut self) {
        // Dial only once listening: outgoing TCP connections then leave from the listening
        // port, so NATs map them to a port peers can punch through to.
        let tcp_listening = self
            .swarm
            .listeners()
            .any(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))));
        if tcp_listening || self.started.elapsed() > Duration::from_secs(2) {
            let mut redialer = std::mem::take(&mut self.redialer);
            redialer.due(|addr| self.dial_addr(addr));
            self.redialer = redialer;
        }
        self.listen_on_relays();
        if self.last_publish.elapsed() >= self.record_interval {
            self.publish_record();
        }
        let gone = self.topology.expire(self.record_ttl);
        if !gone.is_empty() {
            tracing::info!(peers = ?gone, "nodes left the topology (records expired)");
            self.publish_topology();
        }
    }

    fn random_walk(&mut self) {
        if self.connections.is_empty() {
            return;
        }
        self.swarm
            .behaviour_mut()
            .kad
            .get_closest_peers(PeerId::random());
    }

    fn poll_tailscale(&mut self) {
        let Some(port) = self.tailscale else { return };
        let client = self.client.clone();
        tokio::spawn(async move {
            match discovery::tailscale_peers(port).await {
                Ok(addrs) => client.add_static_peers(addrs).await,
                Err(e) => tracing::warn!("tailscale discovery: {e}"),
            }
        });
    }

    /// Reserves a slot on each relay once connected to it, and listens through it.
    fn listen_on_relays(&mut self) {
        for relay in self.relays.clone() {
            let Some(peer) = discovery::peer_of(&relay) else {
                continue;
            };
            if self.relay_listening.contains(&relay) || !self.swarm.is_connected(&peer) {
                continue;
            }
            match self
                .swarm
                .listen_on(relay.clone().with(Protocol::P2pCircuit))
            {
                Ok(_) => {
                    self.relay_listening.insert(relay);
                }
                Err(e) => tracing::warn!(%relay, error = %e, "cannot listen through relay"),
            }
        }
    }

    fn our_addrs(&self) -> Vec<String> {
        let mut addrs: Vec<String> = self
            .swarm
            .listeners()
            .chain(self.swarm.external_addresses())
            .map(|a| a.to_string())
            .collect();
        addrs.sort();
        addrs.dedup();
        addrs
    }

    fn publish_record(&mut self) {
        self.last_publish = Instant::now();
        let Some(mut record) = self.record.clone() else {
            return;
        };
        // Wall-clock based, so a node restarted with the same identity is not mistaken for a
        // replay of its old records.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.seq = (self.seq + 1).max(now_ms);
        record.seq = self.seq;
        record.addrs = self.our_addrs();
        self.topology.upsert(record.clone(), Connection::Local);
        self.publish_topology();
        let bytes = match encode(&record) {
            Ok(b) => b,
            Err(e) => return tracing::error!("cannot encode capability record: {e}"),
        };
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), bytes)
        {
            Ok(_) | Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {}
            Err(e) => tracing::debug!("capability publish: {e}"),
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Request {
                peer,
                request,
                reply,
            } => {
                if peer == *self.swarm.local_peer_id() {
                    let _ = reply.send(Err(NetError::Unreachable {
                        peer,
                        reason: "cannot send a frame to this node itself".into(),
                    }));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .activation
                    .send_request(&peer, super::Inbound::Request(request));
                self.pending.insert(id, reply);
            }
            Command::Respond { channel, response } => {
                if self
                    .swarm
                    .behaviour_mut()
                    .activation
                    .send_response(channel, response)
                    .is_err()
                {
                    tracing::debug!("activation reply dropped: the requester went away");
                }
            }
            Command::FileRequest {
                peer,
                request,
                reply,
            } => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .files
                    .send_request(&peer, request);
                self.pending_files.insert(id, reply);
            }
            Command::RespondFile { channel, response } => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .files
                    .send_response(channel, response);
            }
            Command::SetRecord(record) => {
                self.record = Some(*record);
                self.publish_record();
            }
            Command::UpdateRecord(update) => match &mut self.record {
                Some(record) => {
                    update(record);
                    self.publish_record();
                }
                None => tracing::warn!("capability record changed before it was set; ignored"),
            },
            Command::Dial(addr) => {
                self.dial_addr(&addr);
            }
            Command::AddStaticPeers(addrs) => {
                for a in addrs {
                    self.redialer.add(a);
                }
            }
            Command::Disconnect(peer) => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::AddExternal(addr) => {
                self.swarm.add_external_address(addr);
            }
            Command::ListenAddrs(tx) => {
                let _ = tx.send(self.swarm.listeners().cloned().collect());
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.publish_record();
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                let relayed = is_relayed(&endpoint);
                self.connections
                    .entry(peer_id)
                    .or_default()
                    .insert(connection_id, relayed);
                self.redialer.established(connection_id, peer_id);
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), relayed, "connected");
                if !relayed {
                    self.drop_relayed_connections(peer_id);
                }
                if self
                    .bootstrap
                    .iter()
                    .any(|b| discovery::peer_of(b) == Some(peer_id))
                {
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
                self.refresh_connection(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                if let Some(conns) = self.connections.get_mut(&peer_id) {
                    conns.remove(&connection_id);
                }
                if num_established == 0 {
                    self.connections.remove(&peer_id);
                    self.redialer.disconnected(peer_id);
                    self.relay_listening
                        .retain(|r| discovery::peer_of(r) != Some(peer_id));
                    if self.topology.remove(&peer_id.to_string()) {
                        tracing::info!(peer = %peer_id, cause = ?cause.map(|c| c.to_string()), "node left the topology (disconnected)");
                        self.publish_topology();
                    }
                } else {
                    self.refresh_connection(peer_id);
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                self.redialer.dial_failed(connection_id);
                tracing::debug!(peer = ?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                if self.private {
                    // Peers without the swarm key fail the PSK handshake and end up here.
                    tracing::warn!(from = %send_back_addr, %error, "incoming connection refused (a node with another swarm key cannot join)");
                } else {
                    tracing::debug!(from = %send_back_addr, %error, "incoming connection failed");
                }
            }
            SwarmEvent::ListenerClosed {
                addresses, reason, ..
            } => {
                tracing::info!(?addresses, ?reason, "listener closed");
                // A relay circuit listener closes when the relay goes away: listen again once
                // the relay is back.
                self.relay_listening.retain(|r| {
                    !addresses
                        .iter()
                        .any(|a| a.to_string().starts_with(&r.to_string()))
                });
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                tracing::info!(%address, "external address confirmed");
                self.publish_record();
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    /// Once a peer is reachable directly (e.g. after a hole punch), its relayed connections go:
    /// activation traffic then takes the direct path and the relay's capacity is freed.
    fn drop_relayed_connections(&mut self, peer: PeerId) {
        let relayed: Vec<ConnectionId> = self
            .connections
            .get(&peer)
            .map(|c| c.iter().filter(|(_, r)| **r).map(|(id, _)| *id).collect())
            .unwrap_or_default();
        for id in relayed {
            tracing::info!(%peer, "direct connection established; closing the relayed one");
            self.swarm.close_connection(id);
        }
    }

    /// Records whether `peer` is reachable directly or only through a relay.
    fn refresh_connection(&mut self, peer: PeerId) {
        let kind = match self.connections.get(&peer) {
            Some(c) if c.values().any(|relayed| !relayed) => Connection::Direct,
            Some(c) if !c.is_empty() => Connection::Relayed,
            _ => Connection::None,
        };
        self.topology.set_connection(&peer.to_string(), kind);
        self.publish_topology();
    }

    fn connection_of(&self, peer: &PeerId) -> Connection {
        match self.connections.get(peer) {
            Some(c) if c.values().any(|relayed| !relayed) => Connection::Direct,
            Some(c) if !c.is_empty() => Connection::Relayed,
            _ => Connection::None,
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. }) => {
                self.on_record(message);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, .. }) => {
                tracing::debug!(peer = %peer_id, "peer subscribed to capabilities");
                // Tell newcomers about us right away instead of at the next period.
                self.publish_record();
            }
            BehaviourEvent::Activation(event) => {
                let local = *self.swarm.local_peer_id();
                exchange(
                    &mut self.swarm.behaviour_mut().activation,
                    event,
                    &self.inbound,
                    &mut self.pending,
                    || {
                        ActivationResponse::error(
                            ErrorKind::Busy,
                            local.to_string(),
                            "too many activation frames queued on this node",
                        )
                    },
                    "activation",
                );
            }
            BehaviourEvent::Files(event) => exchange(
                &mut self.swarm.behaviour_mut().files,
                event,
                &self.inbound_files,
                &mut self.pending_files,
                || {
                    FileResponse::new(FileResponseBody::Error(
                        "too many file requests queued".into(),
                    ))
                },
                "file request",
            ),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let kad = info.protocols.contains(&KAD_PROTOCOL);
                for addr in &info.listen_addrs {
                    if kad {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer_id, addr.clone());
                    }
                }
                self.add_peer_addresses(peer_id, info.listen_addrs);
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                for (peer, addr) in list {
                    tracing::debug!(%peer, %addr, "found by mDNS");
                    self.add_peer_addresses(peer, [addr]);
                    self.dial_peer(peer);
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. }) => {
                self.dial_peer(peer);
            }
            // A peer that stops answering pings is gone (sleeping laptop, dead process behind
            // a NAT that keeps the TCP connection): drop it so rings notice within seconds. A
            // peer that does not speak ping at all is not a failure.
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e @ (ping::Failure::Timeout | ping::Failure::Other { .. })),
            }) => {
                tracing::info!(%peer, error = %e, "ping failed; closing the connection");
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => {
                    tracing::info!(peer = %remote_peer_id, "hole punch succeeded: direct connection")
                }
                Err(e) => {
                    tracing::info!(peer = %remote_peer_id, error = %e, "hole punch failed; staying on the relay")
                }
            },
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
            }
            BehaviourEvent::Autonat(autonat::v1::Event::StatusChanged { new, .. }) => {
                tracing::info!(status = ?new, "NAT status");
            }
            _ => {}
        }
    }

    fn on_record(&mut self, message: gossipsub::Message) {
        let record: CapabilityRecord = match decode(&message.data, MAX_RECORD_BYTES) {
            Ok(r) => r,
            Err(e) => {
                let from = message.source.map(|s| s.to_string()).unwrap_or_default();
                if self.warned_versions.insert(from.clone()) {
                    tracing::warn!(peer = %from, error = %e, "ignoring capability record");
                }
                return;
            }
        };
        // Records are signed by their author; a node may only describe itself.
        if message.source.map(|s| s.to_string()).as_deref() != Some(record.peer_id.as_str()) {
            tracing::warn!(claimed = %record.peer_id, "ignoring a capability record published by another peer");
            return;
        }
        let Ok(peer) = record.peer_id.parse::<PeerId>() else {
            return;
        };
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let last = self.seen_seq.entry(record.peer_id.clone()).or_insert(0);
        if record.seq <= *last {
            return;
        }
        *last = record.seq;
        let addrs: Vec<Multiaddr> = record.addrs.iter().filter_map(|a| a.parse().ok()).collect();
        self.add_peer_addresses(peer, addrs);
        let connection = self.connection_of(&peer);
        if self.topology.upsert(record, connection) {
            tracing::info!(%peer, "node joined the topology");
        }
        self.publish_topology();
        self.dial_peer(peer);
    }
}
