//! The node behind the HTTP API: requests run on the ring of every node serving the model.
//! A request with a grammar (a JSON schema: structured output, a forced tool call) is
//! constrained here, on the driver: each step carries the grammar's token mask to the stage
//! that samples.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Instant, SystemTime},
};

use anyhow::Result;
use exo_api::metrics::Exposition;
use exo_api::{
    Backend, BackendError, FinishReason, GenerateRequest, Generation, GenerationEvent, Health,
    ModelCard, Prompt, TokenLogprob,
};
use exo_engine::{Constraint, ConstraintVocab, ModelInfo};
use exo_protocol::{ErrorKind, SamplingParams, TokenOut};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{
    generate::{generate, generate_speculative, Delta, DeltaSink, GenerateParams, Stepper},
    node::Node,
    ring::{RingError, RingStepper},
};

pub struct NodeBackend {
    node: Arc<Node>,
    started: u64,
    /// Each model's vocabulary as the grammar engine sees it, built on first use.
    vocabs: Mutex<HashMap<String, Arc<ConstraintVocab>>>,
    /// Speculative decoding per model id (`--draft` / `--lookup`), for greedy requests.
    speculation: HashMap<String, exo_engine::Speculation>,
}

/// A stepper that constrains each sampled token to a grammar: before a step it computes the
/// allowed tokens, after it moves the grammar past the token sampled.
struct Constrained<S> {
    inner: S,
    constraint: Constraint,
    /// Time spent computing masks, for the log line at the end.
    mask_time: std::time::Duration,
    steps: usize,
}

impl<S: Stepper> Stepper for Constrained<S> {
    async fn step(
        &mut self,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<TokenOut> {
        let started = Instant::now();
        let mask = tokio::task::block_in_place(|| self.constraint.mask())?;
        self.mask_time += started.elapsed();
        self.steps += 1;
        let sampling = SamplingParams {
            allowed: Some(mask),
            ..sampling.clone()
        };
        let token = self.inner.step(position, tokens, &sampling).await?;
        self.constraint.advance(token.id)?;
        Ok(token)
    }

    async fn release(&mut self) {
        tracing::debug!(
            steps = self.steps,
            mask_ms_per_token = format!(
                "{:.3}",
                self.mask_time.as_secs_f64() * 1e3 / self.steps.max(1) as f64
            ),
            "constrained generation"
        );
        self.inner.release().await
    }
}

impl NodeBackend {
    pub fn new(node: Arc<Node>) -> Self {
        let started = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            node,
            started,
            vocabs: Mutex::new(HashMap::new()),
            speculation: HashMap::new(),
        }
    }

    /// Speculates for the requests to these models.
    pub fn with_speculation(
        mut self,
        speculation: HashMap<String, exo_engine::Speculation>,
    ) -> Self {
        self.speculation = speculation;
        self
    }

    /// The grammar for `schema` over `model`'s vocabulary.
    async fn constraint(
        &self,
        model: &str,
        info: &Arc<ModelInfo>,
        schema: serde_json::Value,
    ) -> Result<Constraint, BackendError> {
        let cached = self
            .vocabs
            .lock()
            .expect("vocabs poisoned")
            .get(model)
            .cloned();
        let vocab = match cached {
            Some(v) => v,
            None => {
                let info = info.clone();
                let started = Instant::now();
                let vocab =
                    tokio::task::spawn_blocking(move || ConstraintVocab::new(&info.tokenizer))
                        .await
                        .map_err(|e| BackendError::Internal(e.to_string()))?
                        .map_err(|e| {
                            BackendError::Internal(format!("grammar vocabulary of {model}: {e}"))
                        })?;
                tracing::info!(
                    model,
                    ms = started.elapsed().as_millis() as u64,
                    "grammar vocabulary built"
                );
                let vocab = Arc::new(vocab);
                self.vocabs
                    .lock()
                    .expect("vocabs poisoned")
                    .insert(model.to_string(), vocab.clone());
                vocab
            }
        };
        tokio::task::spawn_blocking(move || Constraint::json_schema(&vocab, &schema))
            .await
            .map_err(|e| BackendError::Internal(e.to_string()))?
            .map_err(|e| BackendError::BadRequest(e.to_string()))
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
                    let tools: Vec<serde_json::Value> =
                        req.tools.iter().map(|t| t.to_template()).collect();
                    info.encode_chat_with_tools(msgs, &tools)
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
                    top_logprobs: req.sampling.top_logprobs.min(20),
                    allowed: None,
                    ..req.sampling.clone()
                },
                max_tokens: max_tokens.min(context - prompt.len()),
                stop: req.stop.clone(),
            };
            let constraint = match req.grammar.clone() {
                Some(schema) => Some(self.constraint(&req.model, &info, schema).await?),
                None => None,
            };
            let (tx, mut rx) = mpsc::channel(64);
            let prompt_tokens = prompt.len();
            let stepper = RingStepper::new(self.node.ring(), plan);
            let speculation = self.speculation.get(&req.model).cloned();
            let metrics = self.node.metrics.clone();
            metrics.requests.inc();
            let span =
                tracing::info_span!("generation", request_id = %req.request_id, model = %req.model);
            tokio::spawn(
                async move {
                    let mut sink = ChannelSink {
                        tx: tx.clone(),
                        info: info.clone(),
                        logprobs: req.sampling.logprobs,
                    };
                    let result = match constraint {
                        Some(constraint) => {
                            let mut stepper = Constrained {
                                inner: stepper,
                                constraint,
                                mask_time: Default::default(),
                                steps: 0,
                            };
                            generate(&mut stepper, &info.tokenizer, &prompt, &params, &mut sink)
                                .await
                        }
                        None => {
                            let mut stepper = stepper;
                            let mut speculator =
                                speculation.map(|s| s.speculator(info.context_length()));
                            generate_speculative(
                                &mut stepper,
                                &info.tokenizer,
                                &prompt,
                                &params,
                                &mut sink,
                                speculator.as_mut(),
                            )
                            .await
                        }
                    };
                    let event = match result {
                        Ok(s) => {
                            metrics.tokens.inc_by(s.completion_tokens as u64);
                            GenerationEvent::Done {
                                finish_reason: match s.finish {
                                    exo_engine::FinishReason::Stop => FinishReason::Stop,
                                    exo_engine::FinishReason::Length => FinishReason::Length,
                                },
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
        Box::pin(async move {
            serde_json::to_value(self.node.topology.borrow().view()).expect("plain data")
        })
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

    fn metrics<'a>(&'a self, out: &'a mut Exposition) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (requests, bytes) = self.node.host.kv_usage().await;
            out.gauge(
                "exo_kv_cache_requests",
                "Requests holding a KV cache on this node.",
                requests as u64,
            );
            out.gauge(
                "exo_kv_cache_bytes",
                "Bytes of KV cache held on this node.",
                bytes as u64,
            );
            self.node.metrics.write(out);
        })
    }
}
