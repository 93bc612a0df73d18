//! OpenAI's API: `/v1/chat/completions`, `/v1/completions`, `/v1/models`, streamed as
//! data-only server-sent events ending with `[DONE]`, and `/v1/responses` (named events); the key as `Authorization: Bearer`;
//! errors as `{"error": {"message", "type", "param", "code"}}`. Requests for an upstream
//! provider's model are forwarded to it.

pub mod chat;
pub mod completions;
pub mod models;
pub mod responses;
pub mod sampling;
pub mod stream;
pub mod tools;
pub mod types;
pub mod upstream;

use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tracing::{info, Span};

use crate::core::{auth, errors, AppState};
use crate::error::ApiError;

pub fn routes(state: &AppState) -> Router<AppState> {
    protect(
        state,
        Router::new()
            .route("/v1/models", get(models::list_models))
            .route("/v1/models/{*id}", get(models::get_model))
            .route("/v1/chat/completions", post(chat::chat_completions))
            .route("/v1/completions", post(completions::completions))
            .route("/v1/responses", post(responses::responses)),
    )
}

/// `router` behind the API key (as a bearer token), with OpenAI-shaped errors.
pub fn protect(state: &AppState, router: Router<AppState>) -> Router<AppState> {
    let router = router.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_bearer,
    ));
    errors::shaped(router, render)
}

/// OpenAI's error body; also what an SSE error event carries.
pub fn render(e: &ApiError) -> Value {
    json!({
        "error": {
            "message": e.message,
            "type": e.kind,
            "param": e.param,
            "code": e.code,
        }
    })
}

/// Forwards the request if an upstream provider serves its model; `None` leaves it to the
/// mesh.
pub async fn upstream_route(
    state: &AppState,
    body: &Value,
    endpoint: &str,
) -> Result<Option<Response>, ApiError> {
    let Some(model) = body.get("model").and_then(Value::as_str) else {
        return Ok(None);
    };
    let Some((provider, upstream_model)) = state.upstream.config.route(model) else {
        return Ok(None);
    };
    let slot = state.acquire().await?;
    Span::current().record("completion_id", "upstream");
    info!(provider = %provider.name, model, "forwarding to upstream provider");
    state
        .upstream
        .forward(provider, endpoint, body.clone(), upstream_model, slot)
        .await
        .map(Some)
}
