//! The node behind the HTTP API: requests run on the ring of every node serving the model.

use std::{sync::Arc, time::SystemTime};

use exo_api::{
    Backend, BackendError, GenerateRequest, Generation, GenerationEvent, Health, ModelCard, Prompt,
    TokenLogprob,
};
use exo_engine::{ChatMessage, ModelInfo};
use exo_protocol::{ErrorKind, SamplingParams};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{
    generate::{generate, Delta, DeltaSink, GenerateParams},
    node::Node,
    ring::{RingError, RingStepper},
};

pub struct NodeBackend {
    node: Arc<Node>,
    started: u64,
}

impl NodeBackend {
    pub fn new(node: Arc<Node>) -> Self {
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self { node, started }
    }

    fn model_info(&self, model: &str) -> Result<Arc<ModelInfo>, BackendError> {
        if let Some(m) = self.node.models.get(model) {
            return Ok(m.info.clone());
        }
        if self.node.topology.borrow().offer(model).is_some() {
            return Err(BackendError::Unavailable(format!(
                "this node does not hold model {model}'s files (tokenizer and chat template); \
                 send the request to a node started with --model for it"
            )));
        }
        Err(BackendError::ModelNotFound(model.to_string()))
    }
}

/// Sends deltas to the HTTP handler; a dropped receiver (the client left) cancels.
struct ChannelSink {
    tx: mpsc::Sender<GenerationEvent>,
    info: Arc<ModelInfo>,
    logprobs: bool,
}

impl DeltaSink for ChannelSink {
    async fn send(&mut self, delta: Delta) -> bool {
        let text_of = |id: u32| self.info.tokenizer.decode(&[id]).unwrap_or_default();
        let logprob = delta
            .token
            .logprob
            .filter(|_| self.logprobs)
            .map(|lp| TokenLogprob {
                token: text_of(delta.token.id),
                logprob: lp,
            });
        let top_logprobs = delta
            .token
            .top
            .iter()
            .map(|&(id, lp)| TokenLogprob {
                token: text_of(id),
                logprob: lp,
            })
            .collect();
        self.tx
            .send(GenerationEvent::Delta {
                text: delta.text,
                logprob,
                top_logprobs,
            })
            .await
            .is_ok()
    }
}

/// The HTTP-facing error for a failed generation.
fn backend_error(e: &anyhow::Error) -> BackendError {
    match e.downcast_ref::<RingError>() {
        Some(r) => match r.kind {
            ErrorKind::Busy => BackendError::Busy(r.to_string()),
            ErrorKind::ContextFull => BackendError::BadRequest(r.to_string()),
            ErrorKind::Unreachable => BackendError::Unavailable(r.to_string()),
            _ => BackendError::Internal(r.to_string()),
        },
        None => BackendError::Internal(format!("{e:#}")),
    }
}

fn error_kind(e: &BackendError) -> &'static str {
    match e {
        BackendError::ModelNotFound(_) => "model_not_found",
        BackendError::BadRequest(_) | BackendError::ContextLength { .. } => "bad_request",
        BackendError::Busy(_) => "busy",
        BackendError::Unavailable(_) => "unavailable",
        BackendError::Internal(_) => "internal",
    }
}

impl Backend for NodeBackend {
    fn models(&self) -> BoxFuture<'_, Vec<ModelCard>> {
        Box::pin(async move {
            let offers = self.node.topology.borrow().models();
            offers
                .into_values()
                .map(|m| ModelCard {
                    context_length: self
                        .node
                        .models
                        .get(&m.id)
                        .map(|l| l.info.context_length() as u32),
                    id: m.id,
                    owned_by: "exo-p2p".into(),
                    created: self.started,
                })
                .collect()
        })
    }

    fn generate(
        &self,
        mut req: GenerateRequest,
    ) -> BoxFuture<'_, Result<Generation, BackendError>> {
        Box::pin(async move {
            req.model = self.node.models.canonical(&req.model).to_string();
            let info = self.model_info(&req.model)?;
            let prompt = match &req.prompt {
                Prompt::Text(t) => info.encode_prompt(t),
                Prompt::Chat(msgs) => {
                    let msgs: Vec<ChatMessage> = msgs
                        .iter()
                        .map(|m| ChatMessage::new(&m.role, &m.content))
                        .collect();
                    info.encode_chat(&msgs)
                }
            }
            .map_err(|e| BackendError::BadRequest(e.to_string()))?;
            let context = info.context_length();
            let max_tokens = req
                .max_tokens
                .unwrap_or(context.saturating_sub(prompt.len()));
            if prompt.len() >= context {
                return Err(BackendError::ContextLength {
                    needed: prompt.len() + 1,
                    context,
                });
            }
            let plan = self
                .node
                .plan(&req.model)
                .map_err(|e| BackendError::Unavailable(e.to_string()))?;
            let params = GenerateParams {
                sampling: SamplingParams {
                    temperature: req.temperature,
                    top_k: req.top_k,
                    top_p: req.top_p,
                    min_p: req.min_p,
                    repeat_penalty: req.repeat_penalty,
                    seed: req.seed.unwrap_or_else(rand::random),
                    logprobs: req.logprobs,
                    top_logprobs: req.top_logprobs.min(20),
                    ..SamplingParams::default()
                },
                max_tokens: max_tokens.min(context - prompt.len()),
                stop: req.stop.clone(),
            };
            let (tx, mut rx) = mpsc::channel(64);
            let prompt_tokens = prompt.len();
            let mut stepper = RingStepper::new(self.node.ring(), plan);
            let metrics = self.node.metrics.clone();
            metrics.requests.inc();
            let span =
                tracing::info_span!("generation", request_id = %req.request_id, model = %req.model);
            tokio::spawn(
                async move {
                    let mut sink = ChannelSink {
                        tx: tx.clone(),
                        info: info.clone(),
                        logprobs: req.logprobs,
                    };
                    let result =
                        generate(&mut stepper, &info.tokenizer, &prompt, &params, &mut sink).await;
                    let event = match result {
                        Ok(s) => {
                            metrics.tokens.inc_by(s.completion_tokens as u64);
                            GenerationEvent::Done {
                                finish_reason: s.finish.as_str().to_string(),
                                prompt_tokens: s.prompt_tokens,
                                completion_tokens: s.completion_tokens,
                            }
                        }
                        Err(e) if tx.is_closed() => {
                            metrics.error("cancelled");
                            tracing::info!(
                                "client went away; generation cancelled and released ({e})"
                            );
                            return;
                        }
                        Err(e) => {
                            let err = backend_error(&e);
                            metrics.error(error_kind(&err));
                            tracing::warn!(error = %format!("{e:#}"), "generation failed");
                            GenerationEvent::Error(err)
                        }
                    };
                    let _ = tx.send(event).await;
                }
                .instrument(span),
            );
            // Errors before the first token (a busy ring, no room, a lost node that left no
            // plan) become the HTTP status; afterwards they travel in the stream.
            let first = rx.recv().await;
            if let Some(GenerationEvent::Error(e)) = first {
                return Err(e);
            }
            let (tx2, rx2) = mpsc::channel(64);
            tokio::spawn(async move {
                if let Some(ev) = first {
                    if tx2.send(ev).await.is_err() {
                        return;
                    }
                }
                while let Some(ev) = rx.recv().await {
                    if tx2.send(ev).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Generation {
                prompt_tokens,
                events: rx2,
            })
        })
    }

    fn topology(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async move { self.node.topology.borrow().to_json() })
    }

    fn downloads(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async move {
            serde_json::to_value(self.node.downloads.snapshot()).unwrap_or(serde_json::Value::Null)
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async move {
            Health {
                ready: true,
                peer_id: self.node.client.local_peer_id().to_string(),
                version: crate::cli::VERSION.to_string(),
            }
        })
    }

    fn metrics(&self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            let (requests, bytes) = self.node.host.kv_usage().await;
            let mut text = format!(
                "# HELP exo_kv_cache_requests Requests holding a KV cache on this node.\n\
                 # TYPE exo_kv_cache_requests gauge\nexo_kv_cache_requests {requests}\n\
                 # HELP exo_kv_cache_bytes Bytes of KV cache held on this node.\n\
                 # TYPE exo_kv_cache_bytes gauge\nexo_kv_cache_bytes {bytes}\n"
            );
            let ours = self.node.metrics.encode();
            // Our registry ends with its own `# EOF`; the API appends its counters after us.
            text.push_str(ours.trim_end().trim_end_matches("# EOF").trim_end());
            text.push('\n');
            text
        })
    }
}
