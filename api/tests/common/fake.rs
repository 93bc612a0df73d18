//! A deterministic fake [`Backend`] for the API's tests and the `fake_server` example: no model,
//! just predictable text, token counts and log-probabilities, and a record of what happened.
//!
//! Models:
//! - `fake-model`: answers `Hello! You said: <last message>` word by word.
//! - `fake-tiny`: the same with an 8-token context (longer prompts fail before the first token).
//! - `fake-endless`: `tick ` forever (until the receiver is dropped, or 60 s).
//! - `fake-fails`: one token, then an error event.
//!
//! With `tools`, a user turn is answered with a Hermes-style call of the first tool
//! (`<tool_call>{"name": …, "arguments": {"city": "Paris"}}</tool_call>`), and a tool result with
//! `The tool said: <result>`.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use exo_api::metrics::Exposition;
use exo_api::{
    Backend, BackendError, FinishReason, GenerateRequest, Generation, GenerationEvent, Health,
    ModelCard, Prompt, TokenLogprob,
};
use futures::future::BoxFuture;
use serde_json::json;
use tokio::sync::{mpsc, Notify};

pub struct FakeBackend {
    pub ready: AtomicBool,
    /// Pause before each token.
    pub token_delay: Duration,
    /// Every request `generate` was given.
    pub requests: Mutex<Vec<GenerateRequest>>,
    pub events: Arc<Events>,
}

/// What the producer tasks report; shared with them, since they outlive `generate`.
#[derive(Default)]
pub struct Events {
    /// Generations whose receiver was dropped before they ended.
    pub cancelled: AtomicUsize,
    pub cancel_notify: Notify,
    /// Generations whose producer is still running.
    pub running: AtomicUsize,
}

impl FakeBackend {
    pub fn new(token_delay: Duration) -> Arc<Self> {
        Arc::new(FakeBackend {
            ready: AtomicBool::new(true),
            token_delay,
            requests: Mutex::new(Vec::new()),
            events: Arc::default(),
        })
    }

    pub fn last_request(&self) -> GenerateRequest {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }

    pub fn cancelled(&self) -> usize {
        self.events.cancelled.load(Ordering::SeqCst)
    }

    pub fn running(&self) -> usize {
        self.events.running.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` generations were cancelled (or `timeout` passes).
    pub async fn wait_cancelled(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.events.cancel_notify.notified();
            if self.cancelled() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.cancelled() >= n;
            }
        }
    }
}

const MODELS: &[(&str, u32)] = &[
    ("fake-model", 4096),
    ("fake-tiny", 8),
    ("fake-endless", 4096),
    ("fake-fails", 4096),
];

/// Whitespace-separated words stand in for tokens.
fn count_tokens(text: &str) -> usize {
    text.split_whitespace().count()
}

fn render(prompt: &Prompt) -> (String, String) {
    match prompt {
        Prompt::Text(text) => (text.clone(), text.clone()),
        Prompt::Chat(messages) => {
            let rendered = messages
                .iter()
                .map(|m| format!("<{}> {}", m.role, m.content))
                .collect::<Vec<_>>()
                .join("\n");
            let last = messages
                .last()
                .map(|m| m.content.clone())
                .unwrap_or_default();
            (rendered, last)
        }
    }
}

/// `"Hello! You said: hi there"` as `["Hello!", " You", " said:", " hi", " there"]`.
fn tokens(text: &str) -> Vec<String> {
    text.split(' ')
        .filter(|w| !w.is_empty())
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// Token `i` has log-probability `-(i+1)/8`; its alternatives are the token and `alt1..`.
fn logprobs(i: usize, token: &str, top: u8) -> (TokenLogprob, Vec<TokenLogprob>) {
    let lp = -((i + 1) as f32) / 8.0;
    let chosen = TokenLogprob {
        token: token.to_owned(),
        logprob: lp,
    };
    let mut alts = Vec::new();
    for k in 0..top as usize {
        alts.push(if k == 0 {
            chosen.clone()
        } else {
            TokenLogprob {
                token: format!("alt{k}"),
                logprob: lp - k as f32,
            }
        });
    }
    (chosen, alts)
}

impl Backend for FakeBackend {
    fn models(&self) -> BoxFuture<'_, Vec<ModelCard>> {
        Box::pin(async {
            MODELS
                .iter()
                .map(|(id, ctx)| ModelCard {
                    id: (*id).to_owned(),
                    owned_by: "exo-p2p".into(),
                    created: 1_700_000_000,
                    context_length: Some(*ctx),
                })
                .collect()
        })
    }

    fn generate(&self, req: GenerateRequest) -> BoxFuture<'_, Result<Generation, BackendError>> {
        Box::pin(async move {
            self.requests.lock().unwrap().push(req.clone());
            let Some(&(_, context)) = MODELS.iter().find(|(id, _)| *id == req.model) else {
                return Err(BackendError::ModelNotFound(req.model));
            };
            let (rendered, last) = render(&req.prompt);
            let prompt_tokens = count_tokens(&rendered);
            if prompt_tokens > context as usize {
                return Err(BackendError::ContextLength {
                    needed: prompt_tokens,
                    context: context as usize,
                });
            }
            let (tx, rx) = mpsc::channel(4);
            let delay = self.token_delay;
            let events = self.events.clone();
            events.running.fetch_add(1, Ordering::SeqCst);
            let model = req.model.clone();
            tokio::spawn(async move {
                let cancelled = match model.as_str() {
                    "fake-endless" => endless(&tx, delay, &req).await,
                    "fake-fails" => fails(&tx).await,
                    _ => answer(&tx, delay, &req, &last, prompt_tokens).await,
                };
                if cancelled {
                    events.cancelled.fetch_add(1, Ordering::SeqCst);
                    events.cancel_notify.notify_waiters();
                }
                events.running.fetch_sub(1, Ordering::SeqCst);
            });
            Ok(Generation {
                prompt_tokens,
                events: rx,
            })
        })
    }

    fn topology(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async { topology() })
    }

    fn downloads(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async {
            json!({"downloads": [
                {"model": "fake-model", "downloaded_bytes": 1024, "total_bytes": 1024, "done": true}
            ]})
        })
    }

    fn health(&self) -> BoxFuture<'_, Health> {
        Box::pin(async {
            Health {
                ready: self.ready.load(Ordering::SeqCst),
                peer_id: "12D3KooWFakeSelf".into(),
                version: "test".into(),
            }
        })
    }

    fn metrics<'a>(&'a self, out: &'a mut Exposition) -> BoxFuture<'a, ()> {
        Box::pin(async move { out.gauge("fake_backend_up", "The fake backend.", 1) })
    }
}

/// Sends one event; `false` when the receiver is gone (the API cancelled the generation).
async fn send(tx: &mpsc::Sender<GenerationEvent>, event: GenerationEvent) -> bool {
    tx.send(event).await.is_ok()
}

/// Returns true when cancelled.
async fn answer(
    tx: &mpsc::Sender<GenerationEvent>,
    delay: Duration,
    req: &GenerateRequest,
    last: &str,
    prompt_tokens: usize,
) -> bool {
    let last_role = match &req.prompt {
        Prompt::Chat(m) => m.last().map(|m| m.role.clone()).unwrap_or_default(),
        Prompt::Text(_) => String::new(),
    };
    let mut reply = match (req.tools.first(), last_role.as_str()) {
        (Some(_), "tool") => format!("The tool said: {last}"),
        (Some(tool), _) => format!(
            "<tool_call>\n{{\"name\": \"{}\", \"arguments\": {{\"city\": \"Paris\"}}}}\n</tool_call>",
            tool.name
        ),
        (None, _) => format!("Hello! You said: {last}"),
    };
    let mut finish = FinishReason::Stop;
    // Stop strings end the answer before them, as a real backend does.
    if let Some(cut) = req.stop.iter().filter_map(|s| reply.find(s.as_str())).min() {
        reply.truncate(cut);
    }
    let mut pieces = tokens(&reply);
    if let Some(max) = req.max_tokens {
        if pieces.len() > max {
            pieces.truncate(max);
            finish = FinishReason::Length;
        }
    }
    for (i, piece) in pieces.iter().enumerate() {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (logprob, top_logprobs) = if req.sampling.logprobs {
            let (lp, top) = logprobs(i, piece, req.sampling.top_logprobs);
            (Some(lp), top)
        } else {
            (None, Vec::new())
        };
        let event = GenerationEvent::Delta {
            text: piece.clone(),
            logprob,
            top_logprobs,
        };
        if !send(tx, event).await {
            return true;
        }
    }
    let done = GenerationEvent::Done {
        finish_reason: finish,
        prompt_tokens,
        completion_tokens: pieces.len(),
    };
    !send(tx, done).await
}

async fn endless(
    tx: &mpsc::Sender<GenerationEvent>,
    delay: Duration,
    req: &GenerateRequest,
) -> bool {
    let delay = delay.max(Duration::from_millis(5));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut n = 0usize;
    while tokio::time::Instant::now() < deadline {
        if req.max_tokens.is_some_and(|m| n >= m) {
            break;
        }
        tokio::select! {
            () = tx.closed() => return true,
            () = tokio::time::sleep(delay) => {}
        }
        let event = GenerationEvent::Delta {
            text: "tick ".into(),
            logprob: None,
            top_logprobs: Vec::new(),
        };
        if !send(tx, event).await {
            return true;
        }
        n += 1;
    }
    let done = GenerationEvent::Done {
        finish_reason: FinishReason::Length,
        prompt_tokens: 1,
        completion_tokens: n,
    };
    !send(tx, done).await
}

async fn fails(tx: &mpsc::Sender<GenerationEvent>) -> bool {
    let first = GenerationEvent::Delta {
        text: "Partial".into(),
        logprob: None,
        top_logprobs: Vec::new(),
    };
    if !send(tx, first).await {
        return true;
    }
    let error = GenerationEvent::Error(BackendError::Internal("shard 2 went away".into()));
    !send(tx, error).await
}

pub fn topology() -> serde_json::Value {
    json!({
        "peer_id": "12D3KooWFakeSelf",
        "nodes": [
            {
                "peer_id": "12D3KooWFakeSelf",
                "addrs": ["/ip4/127.0.0.1/tcp/4001"],
                "memory_total": 17179869184u64,
                "memory_available": 8589934592u64,
                "compute_score": 1.5,
                "cpu": "Fake CPU 8-core",
                "models": [{"id": "fake-model", "n_layers": 32}],
                "loaded": [{"model": "fake-model", "layers": {"start": 0, "end": 16, "n_layers": 32}}],
                "connection": "self"
            },
            {
                "peer_id": "12D3KooWFakePeer",
                "addrs": ["/ip4/127.0.0.1/tcp/4002"],
                "memory_total": 34359738368u64,
                "memory_available": 30000000000u64,
                "compute_score": 2.0,
                "cpu": "Fake CPU 16-core",
                "models": [{"id": "fake-model", "n_layers": 32}],
                "loaded": [{"model": "fake-model", "layers": {"start": 16, "end": 32, "n_layers": 32}}],
                "connection": "direct"
            }
        ],
        "rings": {
            "fake-model": [
                {"peer_id": "12D3KooWFakeSelf", "start": 0, "end": 16},
                {"peer_id": "12D3KooWFakePeer", "start": 16, "end": 32}
            ]
        }
    })
}
