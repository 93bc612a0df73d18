//! Anthropic's Messages API: `POST /v1/messages`, streamed as named server-sent events
//! (`message_start`, `content_block_*`, `message_delta`, `message_stop`, `ping`); the key as
//! `x-api-key` (or `Authorization: Bearer`); errors as `{"type": "error", "error": {"type",
//! "message"}}`. Served by the mesh only: upstream providers are OpenAI-compatible and are not
//! reached from this surface.

pub mod messages;
pub mod stream;
pub mod types;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::core::chat::FinishReason;
use crate::core::{auth, errors, AppState};
use crate::error::ApiError;

pub fn routes(state: &AppState) -> Router<AppState> {
    let router = Router::new()
        .route("/v1/messages", post(messages::messages))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ));
    errors::shaped(router, render)
}

async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .or_else(|| auth::bearer(headers));
    match auth::check(&state, key, "'x-api-key: YOUR_KEY'") {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// Anthropic's error type for a status.
fn kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Anthropic's error body; also the data of a stream's `error` event.
pub fn render(e: &ApiError) -> Value {
    json!({
        "type": "error",
        "error": { "type": kind(e.status), "message": e.message },
    })
}

/// Anthropic's name of a finish reason.
pub fn stop_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
    }
}
