//! The activation service every node runs: it holds this node's shards (loaded on first use),
//! runs the frames addressed to it, and passes hidden states on to the next stage of the
//! request's plan, which may be this node again or a peer.

use std::{collections::HashMap, sync::Arc};

use candle_core::Device;
use exo_engine::{
    frame::{from_frame, to_frame},
    EngineError, RunnerLimits, ShardModel, ShardRunner, StepOutput,
};
use exo_protocol::{
    ActivationRequest, ActivationResponse, CapabilityRecord, ErrorKind, LayerRange, LoadedShard,
    NodeId, Outcome, Payload,
};
use libp2p::PeerId;
use tokio::sync::Mutex;

use super::transport::StageTransport;
use crate::{
    files,
    metrics::Metrics,
    models::{Fetcher, ModelRegistry},
    network::Client,
};

pub struct ShardHost {
    /// This node, as plans name it.
    local: NodeId,
    client: Client,
    models: Arc<ModelRegistry>,
    /// Fetches the weight files of a layer range before it is loaded.
    fetcher: Arc<Fetcher>,
    limits: RunnerLimits,
    /// Held while a shard is fetched and loaded: requests needing a shard that is on its way
    /// wait for it (as long as their driver's request timeout allows) rather than fetch again.
    loading: Mutex<()>,
    /// One loaded layer range per model; a new plan for the model replaces it (requests still
    /// using the old range keep it alive until they finish).
    shards: Mutex<HashMap<String, Arc<ShardRunner>>>,
    metrics: Arc<Metrics>,
}

/// Layers two ranges have in common.
fn overlap(a: LayerRange, b: LayerRange) -> u32 {
    a.end.min(b.end).saturating_sub(a.start.max(b.start))
}

fn engine_error(peer: &NodeId, e: EngineError) -> ActivationResponse {
    let kind = match &e {
        EngineError::Busy(_) => ErrorKind::Busy,
        EngineError::ContextFull { .. } => ErrorKind::ContextFull,
        EngineError::Invalid(_) => ErrorKind::BadRequest,
        EngineError::MissingCache { .. } => ErrorKind::CacheMissing,
        _ => ErrorKind::Compute,
    };
    ActivationResponse::error(kind, peer.clone(), e.to_string())
}

impl ShardHost {
    pub fn new(
        client: Client,
        models: Arc<ModelRegistry>,
        fetcher: Arc<Fetcher>,
        limits: RunnerLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            local: client.local_node(),
            client,
            models,
            fetcher,
            limits,
            loading: Mutex::new(()),
            shards: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    pub fn models(&self) -> &Arc<ModelRegistry> {
        &self.models
    }

    /// Changes this node's capability record and publishes it with the shards loaded now.
    pub async fn publish(&self, update: impl FnOnce(&mut CapabilityRecord) + Send + 'static) {
        let loaded = self.loaded().await;
        self.client
            .update_record(move |r| {
                update(r);
                r.loaded = loaded;
            })
            .await;
    }

    pub async fn loaded(&self) -> Vec<LoadedShard> {
        self.shards
            .lock()
            .await
            .iter()
            .map(|(model, r)| LoadedShard {
                model: model.clone(),
                layers: r.model().range(),
            })
            .collect()
    }

    /// KV-cache use across this node's shards: (requests, bytes).
    pub async fn kv_usage(&self) -> (usize, usize) {
        self.shards
            .lock()
            .await
            .values()
            .map(|r| r.usage())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// Frees KV caches of requests whose driver went quiet.
    pub async fn sweep(&self) {
        for r in self.shards.lock().await.values() {
            r.sweep();
        }
    }

    /// The loaded runner for `range` of `model`, if that is what this node holds.
    async fn current(&self, model: &str, range: LayerRange) -> Option<Arc<ShardRunner>> {
        let shards = self.shards.lock().await;
        shards
            .get(model)
            .filter(|r| r.model().range() == range)
            .cloned()
    }

    /// The runner for `range` of `model`, fetching its weight files and loading it on first
    /// use. This runs in the frame's own task: the network goes on meanwhile.
    async fn shard(
        &self,
        model: &str,
        range: LayerRange,
    ) -> Result<Arc<ShardRunner>, ActivationResponse> {
        if let Some(r) = self.current(model, range).await {
            return Ok(r);
        }
        let _loading = self.loading.lock().await;
        if let Some(r) = self.current(model, range).await {
            return Ok(r);
        }
        let fail = |kind, msg: String| ActivationResponse::error(kind, self.local.clone(), msg);
        let (path, hub) = self
            .models
            .get(model)
            .map(|m| (m.path.clone(), m.hub.clone()))
            .ok_or_else(|| {
                fail(
                    ErrorKind::Load,
                    format!("model {model} is not available on this node"),
                )
            })?;
        if let Some(hub) = hub {
            let fetched = self.fetcher.shard_files(&hub, range).await.map_err(|e| {
                tracing::warn!(model, %range, "{e:#}");
                fail(ErrorKind::Load, format!("{e:#}"))
            })?;
            if !fetched.is_empty() {
                // Peers that need the same files can now get them from this node.
                self.publish_held_files().await;
            }
        }
        // Layers this node already holds for the model are taken over, not read again.
        let previous = self
            .shards
            .lock()
            .await
            .get(model)
            .map(|r| r.model().clone());
        let kept = previous.as_ref().map_or(0, |p| overlap(p.range(), range));
        tracing::info!(model, %range, kept_layers = kept, "loading shard");
        let start = std::time::Instant::now();
        let loaded = tokio::task::spawn_blocking(move || {
            ShardModel::load_reusing(&path, range, &Device::Cpu, previous.as_deref())
        })
        .await
        .map_err(|e| fail(ErrorKind::Load, e.to_string()))?
        .map_err(|e| fail(ErrorKind::Load, format!("cannot load {model} {range}: {e}")))?;
        tracing::info!(model, %range, kept_layers = kept, secs = start.elapsed().as_secs_f32(), "shard loaded");
        let runner = Arc::new(ShardRunner::new(Arc::new(loaded), self.limits.clone()));
        self.shards
            .lock()
            .await
            .insert(model.to_string(), runner.clone());
        self.publish(|_| {}).await;
        Ok(runner)
    }

    async fn publish_held_files(&self) {
        let store = self.fetcher.store().clone();
        match tokio::task::spawn_blocking(move || store.held_files()).await {
            Ok(Ok(held)) => self.publish(move |r| r.files = files::offers(held)).await,
            Ok(Err(e)) => tracing::warn!("cannot list the files held: {e}"),
            Err(e) => tracing::warn!("cannot list the files held: {e}"),
        }
    }

    /// Runs a frame addressed to this node and returns the ring's answer.
    pub async fn handle(&self, req: ActivationRequest) -> ActivationResponse {
        let local = self.local.clone();
        let bad =
            |msg: String| ActivationResponse::error(ErrorKind::BadRequest, local.clone(), msg);
        if let Err(e) = req.plan.validate() {
            return bad(e.to_string());
        }
        let Some(stage) = req.plan.stages.get(req.stage as usize) else {
            return bad(format!("stage {} is not in the plan", req.stage));
        };
        if stage.peer != local {
            return bad(format!(
                "stage {} is {}, not this node",
                req.stage, stage.peer
            ));
        }
        let key = req.key().to_string();
        let has_next = (req.stage as usize) + 1 < req.plan.stages.len();
        if req.payload == Payload::Release {
            if let Some(r) = self.shards.lock().await.get(&req.plan.model) {
                if r.release(&key) {
                    tracing::debug!(request = %key, "released KV cache");
                }
            }
            if has_next {
                let _ = self.send_stage(req.next_stage(Payload::Release)).await;
            }
            return ActivationResponse::new(Outcome::Released);
        }
        let runner = match self.shard(&req.plan.model, stage.layers).await {
            Ok(r) => r,
            Err(resp) => return resp,
        };
        let hidden = match &req.payload {
            Payload::Hidden(frame) => match from_frame(frame, &Device::Cpu) {
                Ok(h) => Some(h),
                Err(e) => return bad(format!("bad hidden-state frame: {e}")),
            },
            _ => None,
        };
        let (position, tokens, sampling, logits_from) = (
            req.position as usize,
            req.tokens.clone(),
            req.sampling.clone(),
            req.logits_from.map(|i| i as usize),
        );
        let step_key = key.clone();
        self.metrics.frames.inc();
        // The forward pass runs on this worker thread (the runtime hands its other tasks to
        // another worker): no hand-off to a blocking-pool thread that must first be woken,
        // which on idle cores is a large part of a decode step's hop latency.
        let out = tokio::task::block_in_place(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runner.step(&step_key, position, &tokens, hidden, &sampling, logits_from)
            }))
        });
        match out {
            Ok(Ok(StepOutput::Token(t))) => ActivationResponse::new(Outcome::Token(t)),
            Ok(Ok(StepOutput::Tokens(t))) => ActivationResponse::new(Outcome::Tokens(t)),
            Ok(Ok(StepOutput::Hidden(h))) => {
                if !has_next {
                    return bad("the last stage produced hidden states".into());
                }
                match to_frame(&h) {
                    Ok(frame) => {
                        self.send_stage(req.next_stage(Payload::Hidden(frame)))
                            .await
                    }
                    Err(e) => engine_error(&self.local, e),
                }
            }
            Ok(Err(e)) => engine_error(&self.local, e),
            Err(panic) => ActivationResponse::error(
                ErrorKind::Compute,
                local,
                format!(
                    "forward pass panicked: {}",
                    exo_engine::scheduler::panic_message(&*panic)
                ),
            ),
        }
    }

    /// Sends a frame to the stage it names: this node, or a peer over the network.
    pub async fn send_stage(&self, req: ActivationRequest) -> ActivationResponse {
        let Some(stage) = req.plan.stages.get(req.stage as usize) else {
            return ActivationResponse::error(
                ErrorKind::BadRequest,
                self.local.clone(),
                "stage out of range",
            );
        };
        if stage.peer == self.local {
            return Box::pin(self.handle(req)).await;
        }
        let peer_str = stage.peer.clone();
        let Ok(peer) = peer_str.parse::<PeerId>() else {
            return ActivationResponse::error(
                ErrorKind::BadRequest,
                peer_str,
                "invalid peer id in plan",
            );
        };
        let bytes = match &req.payload {
            Payload::Hidden(f) => f.data.len() as u64,
            _ => 0,
        } + 4 * req.tokens.len() as u64;
        let started = std::time::Instant::now();
        let result = self.client.request(peer, req).await;
        self.metrics
            .hop(peer_str.as_str(), started.elapsed(), bytes);
        match result {
            Ok(resp) => resp,
            Err(e) => ActivationResponse::error(ErrorKind::Unreachable, peer_str, e.to_string()),
        }
    }
}

#[async_trait::async_trait]
impl StageTransport for ShardHost {
    fn local(&self) -> NodeId {
        self.local.clone()
    }

    async fn send(&self, req: ActivationRequest) -> ActivationResponse {
        self.send_stage(req).await
    }
}
