//! What chat and completions share: sampling fields and their checks, and turning a
//! [`Generation`] into either one collected answer or an SSE stream, with timing logs.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use tracing::{info, warn, Span};

use crate::backend::{GenerationEvent, TokenLogprob};
use crate::error::ApiError;
use crate::limit::Slot;
use crate::openai::{Stop, Usage};
use crate::{AppState, Generation};

/// OpenAI's defaults, and llama.cpp's for its extras (0 top_k: off; 1.0 repeat_penalty: off).
pub struct Sampling {
    pub max_tokens: Option<usize>,
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: u32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
}

/// The sampling fields as a request sent them, before any check.
pub struct SamplingFields {
    /// The field name the value came from, for `param` in errors.
    pub max_tokens: Option<(&'static str, i64)>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub n: Option<i64>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
}

/// How many stop strings a request may carry (OpenAI allows 4; llama.cpp any).
const MAX_STOPS: usize = 16;

fn in_range(param: &str, value: Option<f32>, lo: f32, hi: f32) -> Result<(), ApiError> {
    match value {
        Some(v) if !(v.is_finite() && (lo..=hi).contains(&v)) => Err(ApiError::invalid_param(
            param,
            format!("Invalid '{param}': {v} is not between {lo} and {hi}."),
        )),
        _ => Ok(()),
    }
}

impl SamplingFields {
    pub fn check(self, default_max_tokens: Option<usize>) -> Result<Sampling, ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::invalid_param(
                    "n",
                    format!(
                        "Invalid 'n': {n}. This server generates one choice per request (n=1)."
                    ),
                ));
            }
        }
        let max_tokens = match self.max_tokens {
            Some((param, v)) if v < 1 => {
                return Err(ApiError::invalid_param(
                    param,
                    format!("Invalid '{param}': {v}. It must be at least 1."),
                ))
            }
            Some((_, v)) => Some(usize::try_from(v).unwrap_or(usize::MAX)),
            None => default_max_tokens,
        };
        in_range("temperature", self.temperature, 0.0, 2.0)?;
        in_range("top_p", self.top_p, 0.0, 1.0)?;
        in_range("min_p", self.min_p, 0.0, 1.0)?;
        in_range("repeat_penalty", self.repeat_penalty, 0.0, 10.0)?;
        in_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        in_range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        let stop: Vec<String> = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid_param(
                "stop",
                format!("Invalid 'stop': at most {MAX_STOPS} stop sequences are allowed."),
            ));
        }
        Ok(Sampling {
            max_tokens,
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            // llama.cpp: top_k <= 0 disables it.
            top_k: self
                .top_k
                .map_or(0, |k| u32::try_from(k.max(0)).unwrap_or(u32::MAX)),
            min_p: self.min_p.unwrap_or(0.0),
            repeat_penalty: self.repeat_penalty.unwrap_or(1.0),
            // Negative seeds are valid in OpenAI's API; keep their bits.
            seed: self.seed.map(|s| s as u64),
            stop: stop.into_iter().filter(|s| !s.is_empty()).collect(),
        })
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A random id such as `chatcmpl-3f9a…`: unique per response, also the backend's request id.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:024x}", rand::random::<u128>() >> 32)
}

/// One generation in flight: its slot, its log span and its clock.
pub struct Run {
    pub state: AppState,
    pub span: Span,
    pub model: String,
    /// When the request arrived (queueing included).
    pub received: Instant,
    /// When the slot was granted.
    pub admitted: Instant,
    pub first_token: Option<Instant>,
    /// Held until the answer is sent or the client leaves.
    pub _slot: Slot,
}

impl Run {
    fn saw_token(&mut self) {
        if self.first_token.is_none() {
            let now = Instant::now();
            self.first_token = Some(now);
            self.state.metrics.first_token(now - self.received);
        }
    }

    fn finished(&self, finish_reason: &str, usage: Usage) {
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
            finish_reason,
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            queue_ms = format_args!("{:.1}", ms(self.admitted - self.received)),
            ttft_ms = format_args!("{:.1}", ttft.unwrap_or(f64::NAN)),
            tok_per_s = format_args!("{:.2}", tok_s.unwrap_or(f64::NAN)),
            total_ms = format_args!("{:.1}", ms(now - self.received)),
            "generation finished"
        );
    }

    fn failed(&self, error: &ApiError) {
        let _entered = self.span.enter();
        warn!(model = %self.model, status = error.status.as_u16(), %error, "generation failed");
    }
}

/// A whole answer, for `stream: false`.
pub struct Collected {
    pub text: String,
    pub tokens: Vec<(TokenLogprob, Vec<TokenLogprob>)>,
    pub finish_reason: String,
    pub usage: Usage,
}

pub async fn collect(mut run: Run, mut generation: Generation) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    loop {
        match generation.events.recv().await {
            Some(GenerationEvent::Delta {
                text: delta,
                logprob,
                top_logprobs,
            }) => {
                run.saw_token();
                text.push_str(&delta);
                if let Some(lp) = logprob {
                    tokens.push((lp, top_logprobs));
                }
            }
            Some(GenerationEvent::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
            }) => {
                let usage = Usage::new(prompt_tokens, completion_tokens);
                run.finished(&finish_reason, usage);
                return Ok(Collected {
                    text,
                    tokens,
                    finish_reason,
                    usage,
                });
            }
            Some(GenerationEvent::Error(e)) => {
                let error = ApiError::from(e);
                run.failed(&error);
                return Err(error);
            }
            None => {
                let error = ApiError::internal("The generation ended without finishing.");
                run.failed(&error);
                return Err(error);
            }
        }
    }
}

/// How one endpoint writes its stream's `data:` payloads.
pub trait Chunks: Send + 'static {
    /// Sent before any token (chat: the role chunk).
    fn start(&mut self) -> Option<String>;
    fn delta(&mut self, text: &str, logprob: Option<&TokenLogprob>, top: &[TokenLogprob])
        -> String;
    fn finish(&mut self, finish_reason: &str) -> String;
    /// The extra last chunk of `stream_options.include_usage`: no choices, the usage.
    fn usage(&mut self, usage: Usage) -> String;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    Tokens,
    Usage(Usage),
    Done,
    End,
}

struct Streaming<C: Chunks> {
    run: Run,
    generation: Generation,
    chunks: C,
    include_usage: bool,
    stage: Stage,
}

impl<C: Chunks> Drop for Streaming<C> {
    fn drop(&mut self) {
        // Dropped before the end: the client left. Dropping `generation` (its receiver) here is
        // what tells the node to cancel on every shard.
        if matches!(self.stage, Stage::Start | Stage::Tokens) {
            self.run.state.metrics.disconnect();
            let _entered = self.run.span.enter();
            info!(model = %self.run.model, "client disconnected mid-stream; generation cancelled");
        }
    }
}

fn data(payload: String) -> Option<Result<Event, Infallible>> {
    Some(Ok(Event::default().data(payload)))
}

async fn step<C: Chunks>(mut s: Streaming<C>) -> Option<(Result<Event, Infallible>, Streaming<C>)> {
    loop {
        let event = match s.stage {
            Stage::Start => {
                s.stage = Stage::Tokens;
                match s.chunks.start() {
                    Some(chunk) => data(chunk),
                    None => continue,
                }
            }
            Stage::Tokens => match s.generation.events.recv().await {
                Some(GenerationEvent::Delta {
                    text,
                    logprob,
                    top_logprobs,
                }) => {
                    // Nothing to say yet (a split character or a partial stop string).
                    if text.is_empty() && logprob.is_none() {
                        continue;
                    }
                    s.run.saw_token();
                    data(s.chunks.delta(&text, logprob.as_ref(), &top_logprobs))
                }
                Some(GenerationEvent::Done {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                }) => {
                    let usage = Usage::new(prompt_tokens, completion_tokens);
                    s.run.finished(&finish_reason, usage);
                    s.stage = if s.include_usage {
                        Stage::Usage(usage)
                    } else {
                        Stage::Done
                    };
                    data(s.chunks.finish(&finish_reason))
                }
                Some(GenerationEvent::Error(e)) => {
                    // Too late for a status: the error is an event, then the stream ends.
                    let error = ApiError::from(e);
                    s.run.failed(&error);
                    s.stage = Stage::End;
                    data(error.to_json().to_string())
                }
                None => {
                    let error = ApiError::internal("The generation ended without finishing.");
                    s.run.failed(&error);
                    s.stage = Stage::End;
                    data(error.to_json().to_string())
                }
            },
            Stage::Usage(usage) => {
                s.stage = Stage::Done;
                data(s.chunks.usage(usage))
            }
            Stage::Done => {
                s.stage = Stage::End;
                data("[DONE]".to_owned())
            }
            Stage::End => None,
        };
        return event.map(|e| (e, s));
    }
}

fn events<C: Chunks>(
    run: Run,
    generation: Generation,
    chunks: C,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    let state = Streaming {
        run,
        generation,
        chunks,
        include_usage,
        stage: Stage::Start,
    };
    futures::stream::unfold(state, step)
}

pub fn stream<C: Chunks>(
    run: Run,
    generation: Generation,
    chunks: C,
    include_usage: bool,
) -> Response {
    // Comments keep proxies and clients from timing out while a long prompt is processed.
    let sse = Sse::new(events(run, generation, chunks, include_usage))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
    let mut response = sse.into_response();
    // Tell nginx-style proxies not to buffer the stream.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}
