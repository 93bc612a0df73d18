//! Shards chained inside one process: the whole model is a ring of one. With `through_wire`,
//! hidden states between shards go through the protocol's CBOR frames, which measures what a ring
//! costs without the network.

use std::{path::Path, sync::Arc};

use candle_core::Device;
use exo_protocol::{
    decode, encode, ActivationRequest, LayerRange, Payload, Plan, SamplingParams, Stage, TokenOut,
    MAX_FRAME_BYTES,
};

use crate::{
    error::{EngineError, Result},
    frame::{from_frame, to_frame},
    model::ShardModel,
    runner::{RunnerLimits, ShardRunner, StepOutput},
    source::Source,
};

pub struct LocalRing {
    runners: Vec<ShardRunner>,
    through_wire: bool,
}

/// Splits `n_layers` into `k` contiguous ranges of near-equal size.
pub fn even_split(n_layers: u32, k: u32) -> Vec<LayerRange> {
    let k = k.clamp(1, n_layers.max(1));
    (0..k)
        .map(|i| LayerRange::new(n_layers * i / k, n_layers * (i + 1) / k, n_layers))
        .collect()
}

impl LocalRing {
    /// Loads the model at `path` as `k` shards.
    pub fn load(path: &Path, k: u32, device: &Device) -> Result<Self> {
        let src = Source::open(path)?;
        let n = crate::models::spec(&src)?.hp.n_layers as u32;
        let models = even_split(n, k)
            .into_iter()
            .map(|r| ShardModel::from_source(&src, Some(r), device))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::new(models))
    }

    pub fn new(models: Vec<ShardModel>) -> Self {
        let runners = models
            .into_iter()
            .map(|m| ShardRunner::new(Arc::new(m), RunnerLimits::default()))
            .collect();
        Self {
            runners,
            through_wire: false,
        }
    }

    /// Pass hidden states through the wire encoding between shards.
    pub fn through_wire(mut self, on: bool) -> Self {
        self.through_wire = on;
        self
    }

    pub fn shards(&self) -> usize {
        self.runners.len()
    }

    /// Feeds `tokens` at `position` through every shard; returns the sampled token.
    pub fn step(
        &self,
        key: &str,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<TokenOut> {
        match self.run(key, position, tokens, sampling, None)? {
            StepOutput::Token(t) => Ok(t),
            _ => Err(EngineError::Invalid("the last shard sent no token".into())),
        }
    }

    /// Feeds `tokens` at `position` through every shard; returns the token sampled after each
    /// of them from the `from`-th on (speculative verification). A position behind the
    /// request's rolls every shard's cache back to it first.
    pub fn verify(
        &self,
        key: &str,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
        from: usize,
    ) -> Result<Vec<TokenOut>> {
        match self.run(key, position, tokens, sampling, Some(from))? {
            StepOutput::Tokens(t) => Ok(t),
            _ => Err(EngineError::Invalid("the last shard sent no tokens".into())),
        }
    }

    fn run(
        &self,
        key: &str,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
        from: Option<usize>,
    ) -> Result<StepOutput> {
        let mut hidden = None;
        for runner in &self.runners {
            if let (true, Some(h)) = (self.through_wire, &hidden) {
                hidden = Some(self.wire_round_trip(key, position, tokens, h, runner)?);
            }
            match runner.step(key, position, tokens, hidden.take(), sampling, from)? {
                StepOutput::Hidden(h) => hidden = Some(h),
                out => return Ok(out),
            }
        }
        Err(EngineError::Invalid("the ring has no last shard".into()))
    }

    fn wire_round_trip(
        &self,
        key: &str,
        position: usize,
        tokens: &[u32],
        h: &candle_core::Tensor,
        runner: &ShardRunner,
    ) -> Result<candle_core::Tensor> {
        let plan = Plan {
            model: key.to_string(),
            stages: self
                .runners
                .iter()
                .map(|r| Stage {
                    peer: "local".into(),
                    layers: r.model().range(),
                })
                .collect(),
        };
        let req = ActivationRequest::new(
            0,
            "local",
            plan,
            position as u32,
            tokens.to_vec(),
            Payload::Hidden(to_frame(h)?),
            SamplingParams::default(),
        );
        let bytes = encode(&req).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let req: ActivationRequest =
            decode(&bytes, MAX_FRAME_BYTES).map_err(|e| EngineError::Invalid(e.to_string()))?;
        match req.payload {
            Payload::Hidden(f) => from_frame(&f, runner.model().device()),
            _ => Err(EngineError::Invalid("frame lost its payload".into())),
        }
    }

    pub fn runners(&self) -> &[ShardRunner] {
        &self.runners
    }

    pub fn release(&self, key: &str) {
        for r in &self.runners {
            r.release(key);
        }
    }
}
