//! exo-p2p's OpenAI-compatible HTTP API and web chat page. It serves any [`Backend`]; the node
//! provides one backed by the mesh.
//!
//! ```ignore
//! let listener = tokio::net::TcpListener::bind(("0.0.0.0", exo_api::DEFAULT_PORT)).await?;
//! exo_api::serve(listener, backend, ApiConfig::default()).await?;
//! ```

pub mod backend;
mod config;
mod core;
pub mod error;
mod extract;
mod middleware;
mod server;
mod status;
mod surfaces;
mod web;

/// The `/metrics` writer and the value types a backend keeps its metrics in.
pub mod metrics {
    pub use crate::core::metrics::{
        Counter, CounterFamily, Exposition, Histogram, HistogramFamily, Label, Labels,
    };
}

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

pub use backend::{
    Backend, BackendError, ChatMessage, FinishReason, GenerateRequest, Generation, GenerationEvent,
    Health, ModelCard, Prompt, SamplingParams, TokenLogprob, Tool, ToolCall,
};
pub use config::{ApiConfig, Cors, DEFAULT_PORT};
pub use error::ApiError;
pub use server::{serve, serve_router, serve_with_shutdown, ServerOptions};
pub use surfaces::openai::{types as openai, upstream};
pub use upstream::{ConfigFormat, Provider, UpstreamConfig, UpstreamConfigError};

use crate::core::limit::Limiter;
use crate::core::metrics::ApiMetrics;
use crate::core::{errors, AppState};
use surfaces::openai::upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot set up the upstream HTTP client: {0}")]
    UpstreamClient(String),
    #[error("invalid CORS origin `{0}`")]
    CorsOrigin(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn cors_layer(cors: &Cors) -> Result<Option<CorsLayer>, ServeError> {
    let expose = [HeaderName::from_static(middleware::REQUEST_ID)];
    Ok(match cors {
        Cors::Disabled => None,
        Cors::Permissive => Some(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods(Any)
                .allow_headers(Any)
                .expose_headers(expose),
        ),
        Cors::AllowOrigins(origins) => {
            let origins = origins
                .iter()
                .map(|o| HeaderValue::from_str(o).map_err(|_| ServeError::CorsOrigin(o.clone())))
                .collect::<Result<Vec<_>, _>>()?;
            Some(
                CorsLayer::new()
                    .allow_origin(AllowOrigin::list(origins))
                    .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                    .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
                    .expose_headers(expose),
            )
        }
    })
}

/// The API as an axum router, for the node to serve (see [`serve_router`]) or merge into its
/// own. Routes: `/`, `/health`, each surface's (see [`surfaces`]), and the node's own views
/// `/v1/topology`, `/v1/downloads`, `/metrics` (behind the API key, OpenAI-shaped errors).
pub fn router(backend: Arc<dyn Backend>, config: ApiConfig) -> Result<Router, ServeError> {
    let cors = cors_layer(&config.cors)?;
    let upstream = Upstream::new(config.upstream.clone())
        .map_err(|e| ServeError::UpstreamClient(e.to_string()))?;
    let state = AppState {
        backend,
        limiter: Arc::new(Limiter::new(
            config.max_concurrent,
            config.max_queued,
            config.queue_timeout,
        )),
        config: Arc::new(config),
        metrics: Arc::new(ApiMetrics::default()),
        upstream: Arc::new(upstream),
    };
    let node_views = surfaces::openai::protect(
        &state,
        Router::new()
            .route("/v1/topology", get(status::topology))
            .route("/v1/downloads", get(status::downloads))
            .route("/metrics", get(status::metrics)),
    );
    let open = errors::shaped(
        Router::new()
            .route("/", get(web::index))
            .route("/static/{file}", get(web::static_file))
            .route("/health", get(status::health)),
        surfaces::openai::render,
    );
    let app = open
        .merge(surfaces::openai::routes(&state))
        .merge(surfaces::anthropic::routes(&state))
        .merge(surfaces::ollama::routes(&state))
        .merge(node_views)
        .fallback(not_found)
        .with_state(state.clone())
        .layer(tower::util::option_layer(cors))
        .layer(axum::middleware::from_fn_with_state(
            state,
            middleware::request_context,
        ));
    Ok(app)
}

/// `404` for paths no route knows, in the shape of the surface the path belongs to.
async fn not_found(req: Request) -> Response {
    let path = req.uri().path();
    let error = ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("Unknown route: {} {path}", req.method()),
    )
    .with_code("unknown_url");
    let render: errors::Render = if path.starts_with("/api/") {
        surfaces::ollama::render
    } else if path.starts_with("/v1/messages") {
        surfaces::anthropic::render
    } else {
        surfaces::openai::render
    };
    errors::response(&error, render)
}
