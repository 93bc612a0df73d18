//! The node's own views, filled through the backend: health, topology, downloads, metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::core::metrics::Exposition;
use crate::core::AppState;

/// 200 when the node can serve, 503 otherwise (load balancers read the status).
pub async fn health(State(state): State<AppState>) -> Response {
    let health = state.backend.health().await;
    let status = if health.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health)).into_response()
}

pub async fn topology(State(state): State<AppState>) -> Json<Value> {
    Json(state.backend.topology().await)
}

pub async fn downloads(State(state): State<AppState>) -> Json<Value> {
    Json(state.backend.downloads().await)
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = Exposition::new();
    state.backend.metrics(&mut out).await;
    state
        .metrics
        .write(&mut out, state.limiter.in_use(), state.limiter.queued());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.finish(),
    )
        .into_response()
}
