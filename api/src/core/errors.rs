//! Error shaping: each surface's router is [`shaped`] with its own renderer, which turns the
//! [`ApiError`] a handler, extractor or middleware returned — and any non-JSON error axum made
//! itself (405, a bad path) — into that surface's JSON body.

use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;

use crate::error::ApiError;

/// A surface's error body for an error (the status is the error's).
pub type Render = fn(&ApiError) -> Value;

/// The full response for an error in a surface's shape, with the headers clients act on.
pub fn response(error: &ApiError, render: Render) -> Response {
    let mut response = (error.status, axum::Json(render(error))).into_response();
    let headers = response.headers_mut();
    match error.status {
        StatusCode::TOO_MANY_REQUESTS => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        StatusCode::UNAUTHORIZED => {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        _ => {}
    }
    response
}

/// Renders errors leaving `next` with `render`.
pub async fn shape(render: Render, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let error = match response.extensions().get::<ApiError>() {
        Some(e) => e.clone(),
        None => {
            let is_json = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if is_json {
                return response;
            }
            let mut error = ApiError::for_status(status);
            if status == StatusCode::METHOD_NOT_ALLOWED {
                error.message = "This method is not allowed on this route.".into();
            }
            error
        }
    };
    let (parts, _) = response.into_parts();
    let mut fresh = self::response(&error, render);
    // Keep headers such as `Allow` on 405.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
    }
    fresh
}

/// `router` with its errors rendered by `render`.
pub fn shaped<S: Clone + Send + Sync + 'static>(router: Router<S>, render: Render) -> Router<S> {
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| shape(render, req, next),
    ))
}
