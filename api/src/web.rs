//! The chat page at `/`, embedded in the binary (machines may be offline: no CDN).

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE_CSS: &str = include_str!("web/style.css");
const FAVICON_SVG: &str = include_str!("web/favicon.svg");
const MARKDOWN_JS: &str = include_str!("web/markdown.js");

/// Model output is rendered as HTML by the page's own markdown renderer; this policy keeps any
/// escape that slipped through from running scripts or loading anything from elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The page changes with the binary; always revalidate.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

pub async fn static_file(Path(file): Path<String>) -> Response {
    match file.as_str() {
        "app.js" => asset("text/javascript; charset=utf-8", APP_JS),
        "markdown.js" => asset("text/javascript; charset=utf-8", MARKDOWN_JS),
        "style.css" => asset("text/css; charset=utf-8", STYLE_CSS),
        "favicon.svg" => asset("image/svg+xml", FAVICON_SVG),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
