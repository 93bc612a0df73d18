//! A peer that sends garbage on the activation protocol gets an error reply and is
//! disconnected; the node keeps serving everyone else.

mod common;

use std::{io, time::Duration};

use common::*;
use exo_protocol::{decode, ActivationResponse, ErrorKind, Outcome};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{
    noise, request_response,
    swarm::{NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, StreamProtocol,
};

/// Writes requests verbatim; reads a length-prefixed reply.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<Vec<u8>> {
        Err(io::Error::other("this client takes no requests"))
    }
    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
        io.read_exact(&mut buf).await?;
        Ok(buf)
    }
    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }
    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()> {
        Ok(())
    }
}

#[derive(NetworkBehaviour)]
struct Raw {
    rr: request_response::Behaviour<RawCodec>,
}

#[test]
fn garbage_gets_an_error_reply_and_a_disconnect() {
    let mut node = Node::new("victim");
    node.start(&["--model", test_model(GEMMA).to_str().unwrap(), "--no-mdns"]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|_| Raw {
                rr: request_response::Behaviour::new(
                    [(StreamProtocol::new("/exo-p2p/activation/1"), request_response::ProtocolSupport::Outbound)],
                    request_response::Config::default(),
                ),
            })
            .unwrap()
            .build();
        let addr: Multiaddr = node.addr().parse().unwrap();
        let peer = node.peer_id.parse().unwrap();
        swarm.dial(addr.clone()).unwrap();
        // A valid length prefix followed by bytes that are not CBOR.
        let mut garbage = 16u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(b"\xff\xfe\x00garbage-garbage");
        garbage.truncate(20);
        swarm.behaviour_mut().rr.send_request(&peer, garbage);
        let mut reply = None;
        let deadline = tokio::time::sleep(Duration::from_secs(20));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                ev = swarm.select_next_some() => match ev {
                    SwarmEvent::Behaviour(RawEvent::Rr(request_response::Event::Message { message: request_response::Message::Response { response, .. }, .. })) => {
                        reply = Some(response);
                    }
                    SwarmEvent::ConnectionClosed { num_established: 0, .. } if reply.is_some() => break,
                    _ => {}
                },
                _ = &mut deadline => panic!("no reply and disconnect within 20 s (reply: {reply:?})"),
            }
        }
        let resp: ActivationResponse = decode(&reply.unwrap(), 1 << 20).unwrap();
        assert!(matches!(resp.outcome, Outcome::Error { kind: ErrorKind::BadRequest, .. }), "{resp:?}");
    });
    assert!(node
        .log_text()
        .contains("malformed activation frame; disconnecting the peer"));
    // Everyone else is still served.
    let text = complete(&node, "gemma-3-270m-q4_k_m", "Water boils at", 8);
    assert!(!text.is_empty());
}
