//! One generation as every surface sees it: admitted under the limit, started on the backend,
//! its events read with timing logs and metrics, then collected into one answer or streamed by
//! the surface in its own framing.

use std::time::{Duration, Instant};

use tracing::{info, warn, Span};

use crate::backend::{GenerateRequest, Generation, GenerationEvent, TokenLogprob};
use crate::core::chat::{FinishReason, ToolCall, ToolMode};
use crate::core::limit::Slot;
use crate::core::tools::ToolParser;
use crate::core::AppState;
use crate::error::ApiError;

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random id such as `chatcmpl-3f9a…`: unique per response, also the backend's request id.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// What a surface reads from a running generation.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// New text (never empty unless it carries a log-probability).
    Text {
        text: String,
        logprob: Option<TokenLogprob>,
        top_logprobs: Vec<TokenLogprob>,
    },
    /// The end; `calls` are the turn's tool calls (then `finish_reason` is `ToolCalls`).
    Done {
        finish_reason: FinishReason,
        usage: Usage,
        calls: Vec<ToolCall>,
    },
    /// The generation failed after it started; nothing follows.
    Failed(ApiError),
}

/// One generation in flight: its slot, its log span, its clock and its events. Dropped before
/// its end (the client left), it cancels the generation on every node involved.
pub struct Run {
    state: AppState,
    span: Span,
    model: String,
    /// When the request arrived (queueing included).
    received: Instant,
    /// When the slot was granted.
    admitted: Instant,
    first_token: Option<Instant>,
    generation: Generation,
    /// Reads tool calls out of the text (passes it through when the request has no tools).
    tools: Option<ToolParser>,
    /// The end, held while the last content goes out first.
    done: Option<Event>,
    ended: bool,
    /// Held until the answer is sent or the client leaves.
    _slot: Slot,
}

/// Waits for a slot, then starts `req` on the backend. Errors before the first token (unknown
/// model, context too long, a busy mesh) come back here, as the response's status. `mode`
/// says whether the text is read for calls of `req.tools`.
pub async fn start(
    state: &AppState,
    received: Instant,
    req: GenerateRequest,
    mode: ToolMode,
) -> Result<Run, ApiError> {
    let tools = ToolParser::new(mode, &req.tools);
    let slot = state.acquire().await?;
    let admitted = Instant::now();
    Span::current().record("completion_id", tracing::field::display(&req.request_id));
    let model = req.model.clone();
    let generation = state.backend.generate(req).await?;
    Ok(Run {
        state: state.clone(),
        span: Span::current(),
        model,
        received,
        admitted,
        first_token: None,
        generation,
        tools: Some(tools),
        done: None,
        ended: false,
        _slot: slot,
    })
}

/// A whole answer, for requests that do not stream.
pub struct Collected {
    pub text: String,
    pub tokens: Vec<(TokenLogprob, Vec<TokenLogprob>)>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    pub calls: Vec<ToolCall>,
}

impl Run {
    /// Tokens of the prompt as the backend encoded it.
    pub fn prompt_tokens(&self) -> usize {
        self.generation.prompt_tokens
    }

    /// The next event; `None` once `Done` or `Failed` was returned.
    pub async fn next(&mut self) -> Option<Event> {
        if let Some(done) = self.done.take() {
            return Some(done);
        }
        if self.ended {
            return None;
        }
        loop {
            let event = match self.generation.events.recv().await {
                Some(GenerationEvent::Delta {
                    text,
                    logprob,
                    top_logprobs,
                }) => {
                    let text = match self.tools.as_mut() {
                        Some(parser) => parser.push(&text),
                        None => text,
                    };
                    // Nothing to say yet (a split character, a partial stop string, text that
                    // may be a tool call).
                    if text.is_empty() && logprob.is_none() {
                        continue;
                    }
                    self.saw_token();
                    Event::Text {
                        text,
                        logprob,
                        top_logprobs,
                    }
                }
                Some(GenerationEvent::Done {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    let usage = Usage {
                        prompt_tokens,
                        completion_tokens,
                    };
                    let parsed = self.tools.take().map(ToolParser::finish);
                    let (rest, calls) = match parsed {
                        Some(p) => (p.content_unsent, p.calls),
                        None => (String::new(), Vec::new()),
                    };
                    let finish_reason = if calls.is_empty() {
                        finish_reason
                    } else {
                        FinishReason::ToolCalls
                    };
                    self.finished(finish_reason, usage);
                    let done = Event::Done {
                        finish_reason,
                        usage,
                        calls,
                    };
                    if rest.is_empty() {
                        done
                    } else {
                        // Held-back text that was no call after all goes out before the end.
                        self.done = Some(done);
                        Event::Text {
                            text: rest,
                            logprob: None,
                            top_logprobs: Vec::new(),
                        }
                    }
                }
                Some(GenerationEvent::Error(e)) => self.failed(ApiError::from(e)),
                None => self.failed(ApiError::internal(
                    "The generation ended without finishing.",
                )),
            };
            return Some(event);
        }
    }

    /// Reads the whole answer.
    pub async fn collect(mut self) -> Result<Collected, ApiError> {
        let mut text = String::new();
        let mut tokens = Vec::new();
        while let Some(event) = self.next().await {
            match event {
                Event::Text {
                    text: delta,
                    logprob,
                    top_logprobs,
                } => {
                    text.push_str(&delta);
                    if let Some(lp) = logprob {
                        tokens.push((lp, top_logprobs));
                    }
                }
                Event::Done {
                    finish_reason,
                    usage,
                    calls,
                } => {
                    return Ok(Collected {
                        text,
                        tokens,
                        finish_reason,
                        usage,
                        calls,
                    })
                }
                Event::Failed(e) => return Err(e),
            }
        }
        Err(ApiError::internal(
            "The generation ended without finishing.",
        ))
    }

    fn saw_token(&mut self) {
        if self.first_token.is_none() {
            let now = Instant::now();
            self.first_token = Some(now);
            self.state.metrics.first_token(now - self.received);
        }
    }

    fn finished(&mut self, finish_reason: FinishReason, usage: Usage) {
        self.ended = true;
        self.state
            .metrics
            .tokens(usage.prompt_tokens, usage.completion_tokens);
        let now = Instant::now();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let ttft = self.first_token.map(|t| ms(t - self.received));
        // Decode speed: tokens after the first over the time since the first.
        let tok_s = self.first_token.and_then(|t| {
            let secs = (now - t).as_secs_f64();
            (usage.completion_tokens > 1 && secs > 0.0)
                .then(|| (usage.completion_tokens - 1) as f64 / secs)
        });
        let _entered = self.span.enter();
        info!(
            model = %self.model,
            ?finish_reason,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            queue_ms = format_args!("{:.1}", ms(self.admitted - self.received)),
            ttft_ms = format_args!("{:.1}", ttft.unwrap_or(f64::NAN)),
            tok_per_s = format_args!("{:.2}", tok_s.unwrap_or(f64::NAN)),
            total_ms = format_args!("{:.1}", ms(now - self.received)),
            "generation finished"
        );
    }

    fn failed(&mut self, error: ApiError) -> Event {
        self.ended = true;
        let _entered = self.span.enter();
        warn!(model = %self.model, status = error.status.as_u16(), %error, "generation failed");
        Event::Failed(error)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Dropped before the end: the client left. Dropping `generation` (its receiver) here is
        // what tells the node to cancel on every shard.
        if !self.ended {
            self.state.metrics.disconnect();
            let _entered = self.span.enter();
            info!(model = %self.model, "client disconnected; generation cancelled");
        }
    }
}
