//! exo-p2p's OpenAI-compatible HTTP API and web chat page. It serves any [`Backend`]; the node
//! provides one backed by the mesh.
//!
//! ```ignore
//! let listener = tokio::net::TcpListener::bind(("0.0.0.0", exo_api::DEFAULT_PORT)).await?;
//! exo_api::serve(listener, backend, ApiConfig::default()).await?;
//! ```

pub mod backend;
mod chat;
mod completions;
mod config;
pub mod error;
mod extract;
mod generate;
mod limit;
mod metrics;
mod middleware;
mod models;
pub mod openai;
mod server;
mod status;
pub mod upstream;
mod web;

use std::sync::Arc;

use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::{info, Span};

pub use backend::{
    Backend, BackendError, ChatMessage, GenerateRequest, Generation, GenerationEvent, Health,
    ModelCard, Prompt, TokenLogprob,
};
pub use config::{ApiConfig, Cors, DEFAULT_PORT};
pub use error::ApiError;
pub use server::{serve, serve_router, serve_with_shutdown, ServerOptions};
pub use upstream::{ConfigFormat, Provider, UpstreamConfig, UpstreamConfigError};

use limit::{Limiter, Slot};
use metrics::ApiMetrics;
use upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot set up the upstream HTTP client: {0}")]
    UpstreamClient(String),
    #[error("invalid CORS origin `{0}`")]
    CorsOrigin(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    backend: Arc<dyn Backend>,
    config: Arc<ApiConfig>,
    limiter: Arc<Limiter>,
    metrics: Arc<ApiMetrics>,
    upstream: Arc<Upstream>,
}

impl AppState {
    async fn acquire(&self) -> Result<Slot, ApiError> {
        self.limiter.acquire().await
    }

    /// Forwards the request if an upstream provider serves its model; `None` leaves it to the
    /// mesh.
    async fn upstream_route(
        &self,
        body: &Value,
        endpoint: &str,
    ) -> Result<Option<Response>, ApiError> {
        let Some(model) = body.get("model").and_then(Value::as_str) else {
            return Ok(None);
        };
        let Some((provider, upstream_model)) = self.upstream.config.route(model) else {
            return Ok(None);
        };
        let slot = self.acquire().await?;
        Span::current().record("completion_id", "upstream");
        info!(provider = %provider.name, model, "forwarding to upstream provider");
        self.upstream
            .forward(provider, endpoint, body.clone(), upstream_model, slot)
            .await
            .map(Some)
    }
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
/// own. Routes: `/`, `/health`, `/metrics`, `/v1/models[/{id}]`, `/v1/chat/completions`,
/// `/v1/completions`, `/v1/topology`, `/v1/downloads`.
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
    let protected = Router::new()
        .route("/v1/models", get(models::list_models))
        .route("/v1/models/{*id}", get(models::get_model))
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/topology", get(status::topology))
        .route("/v1/downloads", get(status::downloads))
        .route("/metrics", get(status::metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_api_key,
        ));
    let open = Router::new()
        .route("/", get(web::index))
        .route("/static/{file}", get(web::static_file))
        .route("/health", get(status::health));
    let app = open
        .merge(protected)
        .fallback(middleware::not_found)
        .with_state(state.clone())
        .layer(axum::middleware::from_fn(middleware::openai_errors))
        .layer(tower::util::option_layer(cors))
        .layer(axum::middleware::from_fn_with_state(
            state,
            middleware::request_context,
        ));
    Ok(app)
}
