//! OpenAI's stream framing: data-only server-sent events, one JSON chunk each, an error as an
//! `{"error": …}` event, and `data: [DONE]` at the end.

use axum::response::sse::Event as SseEvent;
use axum::response::Response;

use crate::backend::TokenLogprob;
use crate::core::framing;
use crate::core::generate::{Event, Run, Usage};

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
                }) => {
                    s.stage = if s.include_usage {
                        Stage::Usage(usage)
                    } else {
                        Stage::Done
                    };
                    data(s.chunks.finish(&finish_reason))
                }
                // Too late for a status: the error is an event, then the stream ends.
                Some(Event::Failed(error)) => {
                    s.stage = Stage::End;
                    data(super::render(&error).to_string())
                }
                None => None,
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

pub fn stream<C: Chunks>(run: Run, chunks: C, include_usage: bool) -> Response {
    let state = Streaming {
        run,
        chunks,
        include_usage,
        stage: Stage::Start,
    };
    framing::sse(futures::stream::unfold(state, step))
}
