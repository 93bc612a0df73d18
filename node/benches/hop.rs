//! Per-hop overhead of the activation protocol: one 8 KiB hidden-state frame (a 2048-wide f32
//! vector, one decode step of a mid-size model) sent to a peer on loopback and answered with a
//! token, through the real swarm, codec and event loop. Goal: < 200 µs.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use exo_p2p::network::{self, NetworkConfig};
use exo_protocol::{
    ActivationRequest, ActivationResponse, LayerRange, Outcome, Payload, Plan, SamplingParams,
    Stage, TensorDType, TensorFrame, TokenOut,
};
use libp2p::identity::Keypair;

fn config(listen: &str, peers: Vec<libp2p::Multiaddr>) -> NetworkConfig {
    let mut c = NetworkConfig::new(Keypair::generate_ed25519());
    c.discovery.listen = vec![listen.parse().unwrap()];
    c.discovery.peers = peers;
    c.discovery.mdns = false;
    c
}

fn hop(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let port = 47_000 + (std::process::id() % 1000) as u16;
    let (server, client) = rt.block_on(async {
        let net = network::spawn(config(&format!("/ip4/127.0.0.1/tcp/{port}"), vec![])).unwrap();
        let (server, mut inbound) = (net.client, net.activations);
        let s = server.clone();
        tokio::spawn(async move {
            while let Some(msg) = inbound.recv().await {
                let reply = ActivationResponse::new(Outcome::Token(TokenOut {
                    id: 1,
                    logprob: None,
                    top: vec![],
                }));
                s.respond(msg.channel, reply).await;
            }
        });
        let addr = format!("/ip4/127.0.0.1/tcp/{port}/p2p/{}", server.local_peer_id());
        let client = network::spawn(config("/ip4/127.0.0.1/tcp/0", vec![addr.parse().unwrap()]))
            .unwrap()
            .client;
        (server, client)
    });
    let peer = server.local_peer_id();
    let request = ActivationRequest::new(
        1,
        client.local_peer_id().to_string(),
        Plan {
            model: "m".into(),
            stages: vec![Stage {
                peer: peer.to_string().into(),
                layers: LayerRange::full(1),
            }],
        },
        5,
        vec![42],
        Payload::Hidden(TensorFrame {
            dtype: TensorDType::F32,
            shape: vec![1, 1, 2048],
            data: vec![7; 8192],
        }),
        SamplingParams::default(),
    );
    // Wait (bounded) until the connection is up.
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.request(peer, request.clone()).await.is_err() {
            assert!(Instant::now() < deadline, "peers did not connect");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    c.bench_function("activation hop, 8 KiB frame, loopback", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    client.request(peer, request.clone()).await.unwrap();
                }
                start.elapsed()
            })
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = hop
}
criterion_main!(benches);
