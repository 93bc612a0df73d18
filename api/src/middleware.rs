//! Per-request plumbing: request ids and spans, the API key, and OpenAI-shaped errors for the
//! responses axum makes itself (unknown route, wrong method).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::{debug, field, info_span, Instrument};

use crate::error::ApiError;
use crate::generate::new_id;
use crate::AppState;

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

/// The metrics label for a path: only known routes, so label cardinality stays fixed.
fn route_label(path: &str) -> &'static str {
    match path {
        "/" => "/",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/v1/models" => "/v1/models",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/topology" => "/v1/topology",
        "/v1/downloads" => "/v1/downloads",
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        p if p.starts_with("/static/") => "/static",
        _ => "other",
    }
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
    let route = route_label(req.uri().path());
    let received = Instant::now();
    req.extensions_mut().insert(RequestContext { received });
    let mut response = next.run(req).instrument(span.clone()).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let status = response.status();
    state.metrics.request(route, status.as_u16());
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

/// `Authorization: Bearer KEY` when a key is configured.
pub async fn require_api_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(expected) = state.config.api_key.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => {
            next.run(req).await
        }
        Some(_) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
        None => ApiError::unauthorized(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
        )
        .into_response(),
    }
}

/// Compares without an early exit so timing does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Any error response that is not JSON (axum's 404/405, a proxy's HTML page) becomes an
/// OpenAI-shaped one with the same status.
pub async fn openai_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, _) = response.into_parts();
    let mut error = ApiError::for_status(status);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        error.message = "This method is not allowed on this route.".into();
    }
    let mut fresh = error.into_response();
    // Keep headers such as `Allow` on 405.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fresh
}

/// `404` for paths no route knows.
pub async fn not_found(req: Request<Body>) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("Unknown route: {} {}", req.method(), req.uri().path()),
    )
    .with_code("unknown_url")
}
