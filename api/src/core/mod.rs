//! What every API surface shares: the state handlers see, generation runs with their timing
//! and metrics, the concurrency limit, API-key checks, error shaping and stream framing.

pub mod auth;
pub mod chat;
pub mod errors;
pub mod framing;
pub mod generate;
pub mod limit;
pub mod metrics;
pub mod tools;

use std::sync::Arc;

use crate::backend::Backend;
use crate::config::ApiConfig;
use crate::error::ApiError;
use crate::surfaces::openai::upstream::Upstream;
use limit::{Limiter, Slot};
use metrics::ApiMetrics;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub backend: Arc<dyn Backend>,
    pub config: Arc<ApiConfig>,
    pub limiter: Arc<Limiter>,
    pub metrics: Arc<ApiMetrics>,
    pub upstream: Arc<Upstream>,
}

impl AppState {
    pub async fn acquire(&self) -> Result<Slot, ApiError> {
        self.limiter.acquire().await
    }
}
