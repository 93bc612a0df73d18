//! One `NetworkBehaviour` with a field per concern, each configured here.

use std::{num::NonZeroUsize, time::Duration};

use libp2p::{
    autonat, dcutr, gossipsub, identify, identity::Keypair, kad, mdns, peer_store, ping, relay,
    request_response, swarm::behaviour::toggle::Toggle, swarm::NetworkBehaviour, StreamProtocol,
};

use super::codec::{ActivationCodec, FileCodec, ACTIVATION_PROTOCOL, FILES_PROTOCOL};

pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/exo-p2p/kad/1.0.0");
pub const IDENTIFY_PROTOCOL: &str = "/exo-p2p/id/1.0.0";
pub const CAPABILITY_TOPIC: &str = "exo-p2p/capabilities/1";

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Addresses learnt for peers (capability records, identify, mDNS, Tailscale) through
    /// `Swarm::add_peer_address`: every dial, the ring's own requests included, tries them. No
    /// other behaviour keeps those, so without it a peer met only through a record (e.g. its
    /// relay circuit address) could be dialled only at addresses Kademlia happened to hold.
    pub addresses: peer_store::Behaviour<peer_store::memory_store::MemoryStore>,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    pub activation: request_response::Behaviour<ActivationCodec>,
    pub files: request_response::Behaviour<FileCodec>,
    pub relay_client: relay::client::Behaviour,
    pub dcutr: dcutr::Behaviour,
    pub autonat: autonat::v1::Behaviour,
    /// Only on relay nodes (`exo-p2p relay`).
    pub relay_server: Toggle<relay::Behaviour>,
}

pub struct BehaviourConfig {
    pub mdns: bool,
    pub relay_server: bool,
    /// How long a node waits for the rest of the ring to answer an activation frame.
    pub request_timeout: Duration,
}

/// Relay resource limits: enough for a ring's activation traffic, bounded so a public relay
/// cannot be abused.
pub fn relay_limits() -> relay::Config {
    relay::Config {
        max_reservations: 128,
        max_reservations_per_peer: 4,
        reservation_duration: Duration::from_secs(60 * 60),
        max_circuits: 64,
        max_circuits_per_peer: 8,
        max_circuit_duration: Duration::from_secs(60 * 60),
        max_circuit_bytes: 4 << 30,
        ..Default::default()
    }
}

impl Behaviour {
    pub fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        cfg: &BehaviourConfig,
    ) -> anyhow::Result<Self> {
        let peer_id = key.public().to_peer_id();
        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                .with_agent_version(format!("exo-p2p/{}", env!("CARGO_PKG_VERSION")))
                .with_push_listen_addr_updates(true),
        );
        // Frequent pings so a vanished peer is noticed within seconds.
        let ping = ping::Behaviour::new(
            ping::Config::new()
                .with_interval(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(3)),
        );
        let mdns = if cfg.mdns {
            let mdns_cfg = mdns::Config {
                ttl: Duration::from_secs(30),
                query_interval: Duration::from_secs(5),
                ..Default::default()
            };
            Some(mdns::tokio::Behaviour::new(mdns_cfg, peer_id)?)
        } else {
            None
        };
        let mut kad_cfg = kad::Config::new(KAD_PROTOCOL);
        kad_cfg.set_query_timeout(Duration::from_secs(30));
        kad_cfg.set_periodic_bootstrap_interval(Some(Duration::from_secs(30)));
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_cfg);
        kad.set_mode(Some(kad::Mode::Server));

        let gossip_cfg = gossipsub::ConfigBuilder::default()
            .heartbeat_interval(Duration::from_millis(500))
            .validation_mode(gossipsub::ValidationMode::Strict)
            .max_transmit_size(exo_protocol::capability::MAX_RECORD_BYTES)
            // Small clusters: keep the mesh requirements within reach of a few nodes.
            .mesh_n_low(1)
            .mesh_n(4)
            .mesh_n_high(8)
            .mesh_outbound_min(0)
            .build()
            .map_err(|e| anyhow::anyhow!("gossipsub config: {e}"))?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_cfg,
        )
        .map_err(|e| anyhow::anyhow!("gossipsub: {e}"))?;

        let activation = request_response::Behaviour::with_codec(
            ActivationCodec,
            [(ACTIVATION_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(cfg.request_timeout)
                .with_max_concurrent_streams(256),
        );
        let files = request_response::Behaviour::with_codec(
            FileCodec,
            [(FILES_PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(60))
                .with_max_concurrent_streams(64),
        );
        let autonat = autonat::v1::Behaviour::new(
            peer_id,
            autonat::v1::Config {
                only_global_ips: false,
                boot_delay: Duration::from_secs(2),
                retry_interval: Duration::from_secs(30),
                ..Default::default()
            },
        );
        let relay_server = cfg
            .relay_server
            .then(|| relay::Behaviour::new(peer_id, relay_limits()));
        // A node has a few addresses per transport and interface plus one circuit per relay.
        let addresses = peer_store::Behaviour::new(peer_store::memory_store::MemoryStore::new(
            peer_store::memory_store::Config::default()
                .set_record_capacity(NonZeroUsize::new(32).expect("32 > 0")),
        ));
        Ok(Self {
            addresses,
            identify,
            ping,
            mdns: mdns.into(),
            kad,
            gossipsub,
            activation,
            files,
            relay_client,
            dcutr: dcutr::Behaviour::new(peer_id),
            autonat,
            relay_server: relay_server.into(),
        })
    }
}
