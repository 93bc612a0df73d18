//! Ollama's API: `/api/tags`, `/api/show`, `/api/ps`, `/api/version`, `/api/chat` and
//! `/api/generate`, streamed as newline-delimited JSON (the default, as in Ollama); the key, when
//! the node has one, as `Authorization: Bearer`; errors as `{"error": "message"}` (also the
//! last line of a stream that fails). Served by the mesh only: upstream providers are
//! OpenAI-compatible and are not reached from this surface.

pub mod chat;
pub mod models;
pub mod options;

use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use crate::core::{auth, errors, AppState};
use crate::error::ApiError;

/// The Ollama API version this surface follows (clients such as Open WebUI check it).
pub const OLLAMA_VERSION: &str = "0.9.0";

pub fn routes(state: &AppState) -> Router<AppState> {
    let router = Router::new()
        .route("/api/tags", get(models::tags))
        .route("/api/show", post(models::show))
        .route("/api/ps", get(models::ps))
        .route("/api/version", get(models::version))
        .route("/api/chat", post(chat::chat))
        .route("/api/generate", post(chat::generate))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_bearer,
        ));
    errors::shaped(router, render)
}

/// Ollama's error body.
pub fn render(e: &ApiError) -> Value {
    json!({ "error": e.message })
}

/// RFC 3339 UTC time of unix seconds (`2026-12-03T14:53:08Z`), as Ollama writes times.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_309_588), "2026-12-03T14:53:08Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
