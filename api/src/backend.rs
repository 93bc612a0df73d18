//! What the HTTP API needs from a node. The node implements [`Backend`]; the API never depends
//! on the node crate.

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::core::metrics::Exposition;
pub use exo_protocol::SamplingParams;

/// A model the backend can serve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    /// Who serves it: `exo-p2p` for the mesh, the provider name for upstream models.
    pub owned_by: String,
    /// Unix seconds.
    pub created: u64,
    pub context_length: Option<u32>,
}

pub use crate::core::chat::{ChatMessage, FinishReason, Tool, ToolCall};

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A plain prompt (`/v1/completions`).
    Text(String),
    /// A conversation, rendered through the model's chat template with the request's `tools`.
    Chat(Vec<ChatMessage>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// Unique id of this request (also used in logs).
    pub request_id: String,
    pub model: String,
    pub prompt: Prompt,
    /// None: until end of generation or the context is full.
    pub max_tokens: Option<usize>,
    /// Temperature (0 is greedy), top-k/p, min-p, repetition penalty, seed and whether to
    /// return log-probabilities (and up to 20 alternatives), as the ring's last stage applies
    /// them. `allowed` stays `None`: the node computes the grammar's mask per step.
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
    /// Functions the model may call, shown to it through the chat template.
    pub tools: Vec<Tool>,
    /// A JSON schema the output must match, enforced token by token while sampling.
    pub grammar: Option<serde_json::Value>,
}

impl GenerateRequest {
    /// A request with the defaults of a surface that sets nothing: greedy with a random seed,
    /// no limit but the context, no stop strings, no tools.
    pub fn new(request_id: String, model: String, prompt: Prompt) -> Self {
        GenerateRequest {
            request_id,
            model,
            prompt,
            max_tokens: None,
            sampling: Self::default_sampling(),
            stop: Vec::new(),
            tools: Vec::new(),
            grammar: None,
        }
    }

    /// Greedy, no penalties, no log-probabilities, a random seed.
    pub fn default_sampling() -> SamplingParams {
        SamplingParams {
            seed: rand::random(),
            ..SamplingParams::greedy()
        }
    }
}

/// An alternative token and its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// New text (possibly empty while a character or stop string is incomplete).
    Delta {
        text: String,
        /// The sampled token's text and log-probability, when logprobs were asked for.
        logprob: Option<TokenLogprob>,
        top_logprobs: Vec<TokenLogprob>,
    },
    /// The generation ended normally.
    Done {
        /// `Stop` or `Length` (the API decides `ToolCalls` from the text).
        finish_reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The generation failed after it started.
    Error(BackendError),
}

/// A running generation. Dropping `events` cancels it on every node involved.
pub struct Generation {
    pub prompt_tokens: usize,
    pub events: mpsc::Receiver<GenerationEvent>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BackendError {
    /// 404
    #[error("model `{0}` does not exist")]
    ModelNotFound(String),
    /// 400
    #[error("{0}")]
    BadRequest(String),
    /// 400, code `context_length_exceeded`
    #[error("this model's maximum context length is {context} tokens, the request needs {needed}")]
    ContextLength { needed: usize, context: usize },
    /// 429
    #[error("{0}")]
    Busy(String),
    /// 503: the mesh cannot serve the model right now (no plan fits, peers missing).
    #[error("{0}")]
    Unavailable(String),
    /// 500
    #[error("{0}")]
    Internal(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub ready: bool,
    pub peer_id: String,
    pub version: String,
}

/// The node behind the API.
pub trait Backend: Send + Sync + 'static {
    /// Models the mesh can serve now.
    fn models(&self) -> BoxFuture<'_, Vec<ModelCard>>;
    /// Starts a generation; errors before the first token come back here.
    fn generate(&self, req: GenerateRequest) -> BoxFuture<'_, Result<Generation, BackendError>>;
    /// `GET /v1/topology`: this node, every known node and the ring per model.
    fn topology(&self) -> BoxFuture<'_, serde_json::Value>;
    /// `GET /v1/downloads`: model download progress.
    fn downloads(&self) -> BoxFuture<'_, serde_json::Value>;
    fn health(&self) -> BoxFuture<'_, Health>;
    /// `GET /metrics`: writes the backend's metrics; the API's own follow them.
    fn metrics<'a>(&'a self, out: &'a mut Exposition) -> BoxFuture<'a, ()>;
}
