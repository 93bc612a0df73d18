//! The driver's side of a request: a [`Stepper`] that sends each step around the plan's ring
//! and, when a node of the ring is lost, rebuilds the ring over the survivors and replays the
//! request's tokens (prompt and generated) as one batched prefill, so generation continues where
//! it stopped.

use std::{collections::HashSet, sync::Arc, time::Instant};

use anyhow::Result;
use exo_protocol::{
    ActivationRequest, ErrorKind, Outcome, Payload, Plan, SamplingParams, TokenOut,
};
use tokio::sync::watch;

use crate::{generate::Stepper, host::ShardHost, metrics::Metrics, topology::Topology};

/// How many times one request may rebuild its ring.
const MAX_RECOVERIES: usize = 4;

/// What a driver needs to run requests on the mesh.
#[derive(Clone)]
pub struct Ring {
    pub host: Arc<ShardHost>,
    pub topology: watch::Receiver<Topology>,
    pub metrics: Arc<Metrics>,
}

/// A failure of the ring that recovery could not (or should not) hide.
#[derive(Debug, thiserror::Error)]
#[error("{kind:?} error on node {peer}: {message}")]
pub struct RingError {
    pub kind: ErrorKind,
    pub peer: String,
    pub message: String,
}

pub struct RingStepper {
    ring: Ring,
    plan: Plan,
    request_id: u64,
    /// Every token fed so far, by position: what a replay sends.
    history: Vec<u32>,
    lost: HashSet<String>,
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
            self.ring.host.local().to_string(),
            self.plan.clone(),
            position as u32,
            tokens,
            payload,
            sampling,
        )
    }

    /// A new ring without the lost nodes. Errors when the survivors cannot hold the model.
    fn rebuild(&mut self, lost_peer: &str, why: &str) -> Result<(), RingError> {
        if self.recoveries >= MAX_RECOVERIES {
            return Err(RingError {
                kind: ErrorKind::Unreachable,
                peer: lost_peer.into(),
                message: format!("gave up after {MAX_RECOVERIES} ring recoveries: {why}"),
            });
        }
        self.recoveries += 1;
        if !lost_peer.is_empty() && lost_peer != self.ring.host.local().to_string() {
            self.lost.insert(lost_peer.to_string());
        }
        let plan = self
            .ring
            .topology
            .borrow()
            .plan_excluding(&self.plan.model, &self.lost)
            .map_err(|e| RingError {
                kind: ErrorKind::Unreachable,
                peer: lost_peer.into(),
                message: format!(
                    "node {lost_peer} was lost ({why}) and no ring fits on the rest: {e}"
                ),
            })?;
        let stages: Vec<String> = plan
            .stages
            .iter()
            .map(|s| format!("{}[{}..{})", short(&s.peer), s.layers.start, s.layers.end))
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

fn short(peer: &str) -> &str {
    &peer[peer.len().saturating_sub(6)..]
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
            let (kind, peer, message) = match self.ring.host.send_stage(req).await.outcome {
                out @ (Outcome::Token(_) | Outcome::Tokens(_)) => return Ok(out),
                Outcome::Released => (
                    ErrorKind::BadRequest,
                    String::new(),
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
                String::new()
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
        let _ = self.ring.host.send_stage(req).await;
    }
}
