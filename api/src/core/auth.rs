//! The API key check every surface applies to the header(s) its clients send the key in.

use crate::core::AppState;
use crate::error::ApiError;

/// `Ok` when no key is configured or `given` is the key. `hint` names how this surface's
/// clients send it, for the error when none was sent.
pub fn check(state: &AppState, given: Option<&str>, hint: &str) -> Result<(), ApiError> {
    let Some(expected) = state.config.api_key.as_deref() else {
        return Ok(());
    };
    match given {
        Some(key) if constant_time_eq(key.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("Incorrect API key provided.")),
        None => Err(ApiError::unauthorized(format!(
            "You didn't provide an API key. Send it as {hint}."
        ))),
    }
}

/// Middleware for the surfaces whose clients send the key as `Authorization: Bearer` (OpenAI,
/// Ollama).
pub async fn require_bearer(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match check(
        &state,
        bearer(req.headers()),
        "'Authorization: Bearer YOUR_KEY'",
    ) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without an early exit so timing does not reveal how much of a key matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
