//! The driver's side of a request: a [`Stepper`] that sends each step around the plan's ring.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use exo_protocol::{ActivationRequest, Outcome, Payload, Plan, SamplingParams, TokenOut};

use crate::{generate::Stepper, host::ShardHost};

pub struct RingStepper {
    host: Arc<ShardHost>,
    plan: Plan,
    request_id: u64,
}

impl RingStepper {
    pub fn new(host: Arc<ShardHost>, plan: Plan) -> Self {
        Self {
            host,
            plan,
            request_id: rand::random(),
        }
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
            self.host.local().to_string(),
            self.plan.clone(),
            position as u32,
            tokens,
            payload,
            sampling,
        )
    }
}

impl Stepper for RingStepper {
    async fn step(
        &mut self,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<TokenOut> {
        let req = self.request(position, tokens.to_vec(), Payload::Tokens, sampling.clone());
        match self.host.send_stage(req).await.outcome {
            Outcome::Token(t) => Ok(t),
            Outcome::Error {
                kind,
                peer,
                message,
            } => Err(anyhow!("{kind:?} error on node {peer}: {message}")),
            Outcome::Released => Err(anyhow!("unexpected reply from the ring")),
        }
    }

    async fn release(&mut self) {
        let req = self.request(0, Vec::new(), Payload::Release, SamplingParams::default());
        let _ = self.host.send_stage(req).await;
    }
}
