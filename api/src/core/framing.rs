//! How streamed answers go on the wire: server-sent events (with or without event names) and
//! newline-delimited JSON. Surfaces choose the frames; these set the headers and keep-alives.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};

use crate::core::chat::{FinishReason, ToolCall};
use crate::core::generate::{Event as RunEvent, Run, Usage};
use crate::error::ApiError;

/// An SSE response. Comments every 15 s keep proxies and clients from timing out while a long
/// prompt is processed.
pub fn sse(events: impl Stream<Item = Event> + Send + 'static) -> Response {
    let sse = Sse::new(events.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
    let mut response = sse.into_response();
    no_buffering(&mut response);
    response
}

/// Tells nginx-style proxies not to buffer the stream.
fn no_buffering(response: &mut Response) {
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// A newline-delimited JSON response (`application/x-ndjson`), one value a line.
pub fn ndjson(lines: impl Stream<Item = serde_json::Value> + Send + 'static) -> Response {
    let body = axum::body::Body::from_stream(lines.map(|v| {
        let mut line = serde_json::to_vec(&v).expect("JSON values serialize");
        line.push(b'\n');
        Ok::<_, Infallible>(bytes::Bytes::from(line))
    }));
    let mut response = Response::new(body);
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    no_buffering(&mut response);
    response
}

/// How a surface writes a streamed turn: each reaction may give any number of frames.
pub trait Frames: Send + 'static {
    type Frame: Send + 'static;
    /// Before any token.
    fn start(&mut self) -> Vec<Self::Frame>;
    fn text(&mut self, text: &str) -> Vec<Self::Frame>;
    fn done(
        &mut self,
        finish_reason: FinishReason,
        usage: Usage,
        calls: &[ToolCall],
    ) -> Vec<Self::Frame>;
    /// The generation failed after it started; the stream ends after these.
    fn failed(&mut self, error: &ApiError) -> Vec<Self::Frame>;
}

/// The frames of a running generation, in order.
pub fn frames<F: Frames>(run: Run, frames: F) -> impl Stream<Item = F::Frame> + Send {
    struct S<F: Frames> {
        run: Run,
        frames: F,
        queue: VecDeque<F::Frame>,
        started: bool,
        over: bool,
    }
    let s = S {
        run,
        frames,
        queue: VecDeque::new(),
        started: false,
        over: false,
    };
    futures::stream::unfold(s, |mut s| async move {
        loop {
            if let Some(frame) = s.queue.pop_front() {
                return Some((frame, s));
            }
            if s.over {
                return None;
            }
            if !s.started {
                s.started = true;
                s.queue.extend(s.frames.start());
                continue;
            }
            match s.run.next().await {
                Some(RunEvent::Text { text, .. }) => s.queue.extend(s.frames.text(&text)),
                Some(RunEvent::Done {
                    finish_reason,
                    usage,
                    calls,
                }) => {
                    s.over = true;
                    s.queue.extend(s.frames.done(finish_reason, usage, &calls));
                }
                Some(RunEvent::Failed(e)) => {
                    s.over = true;
                    s.queue.extend(s.frames.failed(&e));
                }
                None => s.over = true,
            }
        }
    })
}
