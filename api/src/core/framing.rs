//! How streamed answers go on the wire: server-sent events (with or without event names) and
//! newline-delimited JSON. Surfaces choose the frames; these set the headers and keep-alives.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};

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
