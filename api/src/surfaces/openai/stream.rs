//! OpenAI's stream framing: data-only server-sent events, one JSON chunk each, an error as an
//! `{"error": …}` event, and `data: [DONE]` at the end.

use axum::response::sse::Event as SseEvent;
use axum::response::Response;
use serde::Serialize;

use crate::backend::TokenLogprob;
use crate::core::chat::{FinishReason, ToolCall};
use crate::core::framing;
use crate::core::generate::{Event, Run, Usage};
use crate::surfaces::openai::types::Completion;

/// What every chunk of one stream repeats.
pub struct ChunkHead {
    pub id: String,
    /// `chat.completion.chunk` or `text_completion`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub include_usage: bool,
}

impl ChunkHead {
    /// One chunk's JSON: `choice` (none for the usage chunk) under the head.
    pub fn chunk<C: Serialize>(&self, choice: Option<C>, usage: Option<Usage>) -> String {
        let chunk = Completion {
            id: self.id.clone(),
            object: self.object,
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices: choice.into_iter().collect(),
            usage: self.include_usage.then(|| usage.map(Into::into)),
        };
        serde_json::to_string(&chunk).expect("chunks serialize")
    }
}

/// How one endpoint writes its stream's `data:` payloads.
pub trait Chunks: Send + 'static {
    fn head(&self) -> &ChunkHead;
    /// Sent before any token (chat: the role chunk).
    fn start(&mut self) -> Option<String>;
    fn delta(&mut self, text: &str, logprob: Option<&TokenLogprob>, top: &[TokenLogprob])
        -> String;
    /// The turn's tool calls, before the finish chunk (none for plain completions).
    fn calls(&mut self, _calls: &[ToolCall]) -> Option<String> {
        None
    }
    fn finish(&mut self, finish_reason: FinishReason) -> String;
    /// The extra last chunk of `stream_options.include_usage`: no choices, the usage.
    fn usage(&mut self, usage: Usage) -> String {
        self.head().chunk::<()>(None, Some(usage))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    Tokens,
    Finish(FinishReason, Usage),
    Usage(Usage),
    Done,
    End,
}

struct Streaming<C: Chunks> {
    run: Run,
    chunks: C,
    include_usage: bool,
    stage: Stage,
}

fn data(payload: String) -> Option<SseEvent> {
    Some(SseEvent::default().data(payload))
}

async fn step<C: Chunks>(mut s: Streaming<C>) -> Option<(SseEvent, Streaming<C>)> {
    loop {
        let event = match s.stage {
            Stage::Start => {
                s.stage = Stage::Tokens;
                match s.chunks.start() {
                    Some(chunk) => data(chunk),
                    None => continue,
                }
            }
            Stage::Tokens => match s.run.next().await {
                Some(Event::Text {
                    text,
                    logprob,
                    top_logprobs,
                }) => data(s.chunks.delta(&text, logprob.as_ref(), &top_logprobs)),
                Some(Event::Done {
                    finish_reason,
                    usage,
                    calls,
                }) => {
                    s.stage = Stage::Finish(finish_reason, usage);
                    match s.chunks.calls(&calls) {
                        Some(chunk) => data(chunk),
                        None => continue,
                    }
                }
                // Too late for a status: the error is an event, then the stream ends.
                Some(Event::Failed(error)) => {
                    s.stage = Stage::End;
                    data(super::render(&error).to_string())
                }
                None => None,
            },
            Stage::Finish(finish_reason, usage) => {
                s.stage = if s.include_usage {
                    Stage::Usage(usage)
                } else {
                    Stage::Done
                };
                data(s.chunks.finish(finish_reason))
            }
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

pub fn stream<C: Chunks>(run: Run, chunks: C, include_usage: bool) -> Response {
    let state = Streaming {
        run,
        chunks,
        include_usage,
        stage: Stage::Start,
    };
    framing::sse(futures::stream::unfold(state, step))
}
