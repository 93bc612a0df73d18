//! Per-request plumbing: request ids, spans and the per-route request counter.

use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use tracing::{debug, field, info_span, Instrument};

use crate::core::generate::new_id;
use crate::core::AppState;

pub const REQUEST_ID: &str = "x-request-id";

/// Set on every request by [`request_context`].
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub received: Instant,
}

/// A client's id is kept if it is short printable ASCII; otherwise one is made.
fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| new_id("req"), str::to_owned)
}

pub async fn request_context(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = request_id(&req);
    let remote = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let span = info_span!(
        "request",
        id = %id,
        method = %req.method(),
        path = %req.uri().path(),
        remote = %remote,
        completion_id = field::Empty,
    );
    // The route as the router matched it (`/v1/models/{*id}`), so labels stay few.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("other", |p| p.as_str())
        .to_owned();
    let received = Instant::now();
    req.extensions_mut().insert(RequestContext { received });
    let mut response = next.run(req).instrument(span.clone()).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status();
    state.metrics.request(&route, status.as_u16());
    if status == StatusCode::TOO_MANY_REQUESTS {
        state.metrics.rejected();
    }
    span.in_scope(|| {
        debug!(
            status = status.as_u16(),
            elapsed_ms = format_args!("{:.1}", received.elapsed().as_secs_f64() * 1e3),
            "response headers sent"
        )
    });
    response
}
