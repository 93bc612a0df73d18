//! The swarm: TCP (optionally inside a private-swarm PSK handshake) and QUIC, noise, yamux, DNS
//! and the relay client transport.

use std::time::Duration;

use either::Either;
use libp2p::{
    core::{muxing::StreamMuxerBox, upgrade::Version},
    identity::Keypair,
    noise,
    pnet::{PnetConfig, PreSharedKey},
    tcp, yamux, Swarm, Transport,
};

use super::behaviour::{Behaviour, BehaviourConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub fn build_swarm(
    key: Keypair,
    psk: Option<PreSharedKey>,
    cfg: BehaviourConfig,
) -> anyhow::Result<Swarm<Behaviour>> {
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_quic()
        .with_other_transport(|key| -> Result<_, BoxError> {
            let base = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
            let maybe_private = match psk {
                Some(psk) => Either::Left(
                    base.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket)),
                ),
                None => Either::Right(base),
            };
            Ok(maybe_private
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                .timeout(Duration::from_secs(20))
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer))))
        })?
        .with_dns()?
        .with_relay_client(noise::Config::new, yamux::Config::default)?
        .with_behaviour(|key, relay_client| -> Result<_, BoxError> {
            Ok(Behaviour::new(key, relay_client, &cfg)?)
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}
