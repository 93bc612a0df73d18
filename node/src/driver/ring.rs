//! The driver's side of a request: a [`Stepper`] that sends each step around the plan's ring
//! and, when a node of the ring is lost, rebuilds the ring over the survivors and replays the
//! request's tokens (prompt and generated) as one batched prefill, so generation continues where
//! it stopped.

use std::{collections::HashSet, sync::Arc, time::Instant};

use anyhow::Result;
use exo_protocol::{
    ActivationRequest, ErrorKind, NodeId, Outcome, Payload, Plan, SamplingParams, TokenOut,
};
use tokio::sync::watch;

use crate::{
    generate::Stepper, metrics::Metrics, stage::transport::StageTransport, topology::Topology,
};

/// How many times one request may rebuild its ring.
const MAX_RECOVERIES: usize = 4;

/// What a driver needs to run requests on the mesh.
#[derive(Clone)]
pub struct Ring {
    /// The shard host in a node.
    pub transport: Arc<dyn StageTransport>,
    pub topology: watch::Receiver<Topology>,
    pub metrics: Arc<Metrics>,
}

/// A failure of the ring that recovery could not (or should not) hide.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?} error on node {peer}: {message}")]
pub struct RingError {
    pub kind: ErrorKind,
    pub peer: NodeId,
    pub message: String,
}

pub struct RingStepper {
    ring: Ring,
    plan: Plan,
    request_id: u64,
    /// Every token fed so far, by position: what a replay sends.
    history: Vec<u32>,
    lost: HashSet<NodeId>,
    recoveries: usize,
}

impl RingStepper {
    pub fn new(ring: Ring, plan: Plan) -> Self {
        Self {
            ring,
            plan,
            request_id: rand::random(),
            history: Vec::new(),
            lost: HashSet::new(),
            recoveries: 0,
        }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    fn request(
        &self,
        position: usize,
        tokens: Vec<u32>,
        payload: Payload,
        sampling: SamplingParams,
    ) -> ActivationRequest {
        ActivationRequest::new(
            self.request_id,
            self.ring.transport.local(),
            self.plan.clone(),
            position as u32,
            tokens,
            payload,
            sampling,
        )
    }

    /// A new ring without the lost nodes. Errors when the survivors cannot hold the model.
    fn rebuild(&mut self, lost_peer: &NodeId, why: &str) -> Result<(), RingError> {
        if self.recoveries >= MAX_RECOVERIES {
            return Err(RingError {
                kind: ErrorKind::Unreachable,
                peer: lost_peer.clone(),
                message: format!("gave up after {MAX_RECOVERIES} ring recoveries: {why}"),
            });
        }
        self.recoveries += 1;
        if !lost_peer.is_empty() && *lost_peer != self.ring.transport.local() {
            self.lost.insert(lost_peer.clone());
        }
        let plan = self
            .ring
            .topology
            .borrow()
            .plan_excluding(&self.plan.model, &self.lost)
            .map_err(|e| RingError {
                kind: ErrorKind::Unreachable,
                peer: lost_peer.clone(),
                message: format!(
                    "node {lost_peer} was lost ({why}) and no ring fits on the rest: {e}"
                ),
            })?;
        let stages: Vec<String> = plan
            .stages
            .iter()
            .map(|s| format!("{}[{}..{})", s.peer.short(), s.layers.start, s.layers.end))
            .collect();
        tracing::warn!(
            request = self.request_id,
            lost = %lost_peer,
            reason = why,
            new_ring = %stages.join(" "),
            replay_tokens = self.history.len(),
            "recovering request on a new ring"
        );
        self.ring.metrics.recoveries.inc();
        self.plan = plan;
        Ok(())
    }
}

impl RingStepper {
    /// Sends `tokens` at `position` around the ring; with `all`, asks for a token after each
    /// of them. On a lost node, rebuilds the ring and replays every token fed so far as one
    /// prefill, asking for the same positions' tokens.
    async fn send(
        &mut self,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
        all: bool,
    ) -> Result<Outcome> {
        // Tokens past `position` were rejected drafts (or a failed step): a replay never
        // sends them.
        self.history.truncate(position);
        self.history.extend_from_slice(tokens);
        let (mut position, mut sent) = (position, tokens.to_vec());
        loop {
            let started = Instant::now();
            // The step's own tokens are the last `tokens.len()` of what is sent.
            let from = all.then(|| (sent.len() - tokens.len()) as u32);
            let req = self
                .request(position, sent.clone(), Payload::Tokens, sampling.clone())
                .with_logits_from(from);
            let (kind, peer, message) = match self.ring.transport.send(req).await.outcome {
                out @ (Outcome::Token(_) | Outcome::Tokens(_)) => return Ok(out),
                Outcome::Released => (
                    ErrorKind::BadRequest,
                    NodeId::default(),
                    "unexpected reply".into(),
                ),
                Outcome::Error {
                    kind,
                    peer,
                    message,
                } => (kind, peer, message),
            };
            let recoverable = matches!(kind, ErrorKind::Unreachable | ErrorKind::CacheMissing);
            if !recoverable {
                return Err(RingError {
                    kind,
                    peer,
                    message,
                }
                .into());
            }
            tracing::info!(request = self.request_id, %peer, ?kind, after_ms = started.elapsed().as_millis() as u64, %message, "ring step failed");
            // A node that lost our cache (it restarted) stays in the ring; a vanished one goes.
            let lost = if kind == ErrorKind::Unreachable {
                peer.clone()
            } else {
                NodeId::default()
            };
            self.rebuild(&lost, &message)?;
            // Replay everything fed so far as one prefill on the new ring.
            position = 0;
            sent = self.history.clone();
        }
    }
}

fn unexpected(out: Outcome) -> anyhow::Error {
    anyhow::anyhow!("the ring answered a step with {out:?}")
}

impl Stepper for RingStepper {
    async fn step(
        &mut self,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<TokenOut> {
        match self.send(position, tokens, sampling, false).await? {
            Outcome::Token(t) => Ok(t),
            out => Err(unexpected(out)),
        }
    }

    async fn verify(
        &mut self,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<Vec<TokenOut>> {
        match self.send(position, tokens, sampling, true).await? {
            Outcome::Tokens(t) => Ok(t),
            out => Err(unexpected(out)),
        }
    }

    fn can_verify(&self) -> bool {
        true
    }

    async fn release(&mut self) {
        let req = self.request(0, Vec::new(), Payload::Release, SamplingParams::default());
        let _ = self.ring.transport.send(req).await;
    }
}

#[cfg(test)]
mod tests {
    //! Recovery against a scripted ring: each fake stage keeps a KV cache of the tokens it was
    //! fed, so a replay that sends the wrong tokens, or the right ones at the wrong position,
    //! changes the tokens that come out.

    use std::{
        collections::{BTreeMap, HashMap},
        sync::Mutex,
    };

    use exo_protocol::{ActivationResponse, CapabilityRecord, ModelOffer};

    use super::*;
    use crate::topology::Connection;

    const MODEL: &str = "m";

    /// A ring of fake stages: a stage answers for its peer from its own cache, as a shard does.
    #[derive(Default)]
    struct FakeMesh {
        /// Tokens each peer's cache holds for the request, by position.
        caches: Mutex<HashMap<NodeId, Vec<u32>>>,
        /// Peers that no longer answer.
        dead: Mutex<HashSet<NodeId>>,
        /// Peers whose next frame finds its cache gone (the node restarted).
        forget: Mutex<HashSet<NodeId>>,
        /// Peers whose forward pass fails.
        broken: Mutex<HashSet<NodeId>>,
        /// Every frame the driver sent.
        sent: Mutex<Vec<Sent>>,
    }

    /// A frame as the fake ring saw it: (position, tokens, the stages' peers).
    type Sent = (u32, Vec<u32>, Vec<NodeId>);

    /// The token a model would sample after `context`: depends on every token and its order.
    fn next_token(context: &[u32]) -> u32 {
        context
            .iter()
            .fold(17u32, |h, &t| h.wrapping_mul(31).wrapping_add(t))
            % 1000
    }

    #[async_trait::async_trait]
    impl StageTransport for FakeMesh {
        fn local(&self) -> NodeId {
            "a".into()
        }

        async fn send(&self, req: ActivationRequest) -> ActivationResponse {
            let peers: Vec<NodeId> = req.plan.stages.iter().map(|s| s.peer.clone()).collect();
            self.sent
                .lock()
                .unwrap()
                .push((req.position, req.tokens.clone(), peers.clone()));
            let mut caches = self.caches.lock().unwrap();
            if req.payload == Payload::Release {
                for p in &peers {
                    caches.remove(p);
                }
                return ActivationResponse::new(Outcome::Released);
            }
            let position = req.position as usize;
            let mut last = Vec::new();
            for p in &peers {
                if self.dead.lock().unwrap().contains(p) {
                    return ActivationResponse::error(ErrorKind::Unreachable, p, "timed out");
                }
                if self.broken.lock().unwrap().contains(p) {
                    return ActivationResponse::error(ErrorKind::Compute, p, "forward failed");
                }
                if self.forget.lock().unwrap().remove(p) {
                    caches.remove(p);
                }
                let cache = caches.entry(p.clone()).or_default();
                if position > cache.len() {
                    return ActivationResponse::error(
                        ErrorKind::CacheMissing,
                        p,
                        format!("no cache up to position {position}"),
                    );
                }
                cache.truncate(position);
                cache.extend_from_slice(&req.tokens);
                last = cache.clone();
            }
            let token = |end: usize| TokenOut {
                id: next_token(&last[..end]),
                logprob: None,
                top: Vec::new(),
            };
            match req.logits_from {
                None => ActivationResponse::new(Outcome::Token(token(last.len()))),
                Some(from) => ActivationResponse::new(Outcome::Tokens(
                    (position + from as usize + 1..=last.len())
                        .map(token)
                        .collect(),
                )),
            }
        }
    }

    fn record(peer: &str, memory: u64) -> CapabilityRecord {
        let mut r = CapabilityRecord::new(peer);
        r.memory_total = memory;
        r.models = vec![ModelOffer {
            id: MODEL.into(),
            n_layers: 24,
            bytes: 240,
            arch: "qwen2".into(),
            layer_bytes: vec![],
        }];
        r
    }

    /// Nodes a, b, c with the memory given; a drives.
    fn mesh(memory: &[(&str, u64)]) -> (Arc<FakeMesh>, RingStepper) {
        let mut topology = Topology::new("a");
        for &(peer, mem) in memory {
            let connection = if peer == "a" {
                Connection::Local
            } else {
                Connection::Direct
            };
            topology.upsert(record(peer, mem), connection);
        }
        let plan = topology.plan(MODEL).unwrap();
        let fake = Arc::new(FakeMesh::default());
        let ring = Ring {
            transport: fake.clone(),
            topology: watch::channel(topology).1,
            metrics: Arc::new(Metrics::default()),
        };
        (fake, RingStepper::new(ring, plan))
    }

    fn three_nodes() -> (Arc<FakeMesh>, RingStepper) {
        mesh(&[("a", 1000), ("b", 1000), ("c", 1000)])
    }

    fn peers(stepper: &RingStepper) -> Vec<NodeId> {
        stepper
            .plan()
            .stages
            .iter()
            .map(|s| s.peer.clone())
            .collect()
    }

    /// A prompt then `n` decode steps, each feeding the token the last step returned.
    async fn generate(
        stepper: &mut RingStepper,
        mesh: &FakeMesh,
        n: usize,
        kill: Option<(usize, &str)>,
    ) -> Vec<u32> {
        let sampling = SamplingParams::default();
        let prompt = [5u32, 6, 7, 8];
        let mut out = vec![stepper.step(0, &prompt, &sampling).await.unwrap().id];
        for i in 0..n {
            if let Some((at, peer)) = kill {
                if at == i {
                    mesh.dead.lock().unwrap().insert(peer.into());
                }
            }
            let position = prompt.len() + i;
            let t = stepper
                .step(position, &[*out.last().unwrap()], &sampling)
                .await
                .unwrap();
            out.push(t.id);
        }
        out
    }

    #[tokio::test]
    async fn a_lost_stage_is_dropped_and_the_request_replayed_on_the_survivors() {
        let (reference_mesh, mut reference) = three_nodes();
        let expected = generate(&mut reference, &reference_mesh, 6, None).await;
        assert_eq!(
            reference_mesh.sent.lock().unwrap().len(),
            7,
            "no replays without a failure"
        );

        let (fake, mut stepper) = three_nodes();
        assert_eq!(peers(&stepper), ["a", "b", "c"]);
        let got = generate(&mut stepper, &fake, 6, Some((3, "b"))).await;
        // The text goes on as if nothing happened.
        assert_eq!(got, expected);
        assert_eq!(peers(&stepper), ["a", "c"], "the ring no longer has b");
        assert_eq!(stepper.ring.metrics.recoveries.get(), 1);
        // The step that found b gone was replayed from position 0 with every token so far.
        let sent = fake.sent.lock().unwrap();
        let replay = sent.iter().position(|s| s.2 == ["a", "c"]).unwrap();
        assert_eq!(sent[replay].0, 0);
        let mut history = vec![5, 6, 7, 8];
        history.extend_from_slice(&expected[..4]);
        assert_eq!(sent[replay].1, history);
        assert_eq!(sent[replay - 1].2, ["a", "b", "c"]);
        // After the replay, steps are single tokens again.
        assert!(sent[replay + 1..]
            .iter()
            .all(|s| s.1.len() == 1 && s.2 == ["a", "c"]));
    }

    #[tokio::test]
    async fn a_stage_that_lost_its_cache_stays_in_the_ring_and_gets_a_replay() {
        let (reference_mesh, mut reference) = three_nodes();
        let expected = generate(&mut reference, &reference_mesh, 4, None).await;
        let (fake, mut stepper) = three_nodes();
        let sampling = SamplingParams::default();
        let mut got = vec![stepper.step(0, &[5, 6, 7, 8], &sampling).await.unwrap().id];
        fake.forget.lock().unwrap().insert("c".into());
        for i in 0..4 {
            let t = stepper.step(4 + i, &[got[i]], &sampling).await.unwrap();
            got.push(t.id);
        }
        assert_eq!(got, expected);
        assert_eq!(peers(&stepper), ["a", "b", "c"], "c restarted: it stays");
        assert_eq!(stepper.ring.metrics.recoveries.get(), 1);
    }

    #[tokio::test]
    async fn verification_after_a_loss_returns_the_drafts_tokens_from_the_new_ring() {
        let (fake, mut stepper) = three_nodes();
        let sampling = SamplingParams::default();
        let first = stepper.step(0, &[1, 2, 3], &sampling).await.unwrap().id;
        fake.dead.lock().unwrap().insert("c".into());
        let drafts = [first, 9, 10];
        let out = stepper.verify(3, &drafts, &sampling).await.unwrap();
        let context = [1, 2, 3, first, 9, 10];
        let want: Vec<u32> = (4..=6).map(|end| next_token(&context[..end])).collect();
        assert_eq!(out.iter().map(|t| t.id).collect::<Vec<_>>(), want);
        assert_eq!(peers(&stepper), ["a", "b"]);
        // A rejected draft is rolled back: the next step at position 4 does not replay it.
        let t = stepper.step(4, &[out[0].id], &sampling).await.unwrap();
        assert_eq!(t.id, next_token(&[1, 2, 3, first, out[0].id]));
    }

    #[tokio::test]
    async fn no_ring_fits_on_the_survivors_is_an_error_naming_the_lost_node() {
        // a alone cannot hold the model's 240 bytes.
        let (fake, mut stepper) = mesh(&[("a", 100), ("b", 1000)]);
        let sampling = SamplingParams::default();
        stepper.step(0, &[1, 2], &sampling).await.unwrap();
        fake.dead.lock().unwrap().insert("b".into());
        let err = stepper.step(2, &[3], &sampling).await.unwrap_err();
        let err = err.downcast::<RingError>().unwrap();
        assert_eq!(err.kind, ErrorKind::Unreachable);
        assert_eq!(err.peer, "b");
        assert!(err.message.contains("no ring fits"), "{}", err.message);
    }

    /// A ring whose stage b has always just lost its cache.
    struct Amnesiac;

    #[async_trait::async_trait]
    impl StageTransport for Amnesiac {
        fn local(&self) -> NodeId {
            "a".into()
        }

        async fn send(&self, _req: ActivationRequest) -> ActivationResponse {
            ActivationResponse::error(ErrorKind::CacheMissing, "b", "no cache")
        }
    }

    #[tokio::test]
    async fn recovery_gives_up_after_its_limit() {
        let (_, mut stepper) = three_nodes();
        stepper.ring.transport = Arc::new(Amnesiac);
        let err = stepper
            .step(0, &[1], &SamplingParams::default())
            .await
            .unwrap_err();
        let err = err.downcast::<RingError>().unwrap();
        assert!(err.message.contains("gave up"), "{}", err.message);
        assert_eq!(stepper.ring.metrics.recoveries.get(), MAX_RECOVERIES as u64);
    }

    #[tokio::test]
    async fn a_failed_forward_pass_is_reported_not_recovered() {
        let (fake, mut stepper) = three_nodes();
        let sampling = SamplingParams::default();
        stepper.step(0, &[1], &sampling).await.unwrap();
        fake.broken.lock().unwrap().insert("b".into());
        let err = stepper.step(1, &[2], &sampling).await.unwrap_err();
        let err = err.downcast::<RingError>().unwrap();
        assert_eq!((err.kind, err.peer.as_str()), (ErrorKind::Compute, "b"));
        assert_eq!(stepper.ring.metrics.recoveries.get(), 0);
        assert_eq!(peers(&stepper), ["a", "b", "c"]);
    }

    #[tokio::test]
    async fn release_reaches_the_current_ring() {
        let (fake, mut stepper) = three_nodes();
        let sampling = SamplingParams::default();
        stepper.step(0, &[1, 2], &sampling).await.unwrap();
        assert_eq!(fake.caches.lock().unwrap().len(), 3);
        stepper.release().await;
        let caches: BTreeMap<_, _> = fake.caches.lock().unwrap().clone().into_iter().collect();
        assert!(caches.is_empty(), "{caches:?}");
    }
}
