//! What the node decides about the API: key, limits, CORS, timeouts, upstream providers.

use std::time::Duration;

use crate::upstream::UpstreamConfig;

/// exo's port.
pub const DEFAULT_PORT: u16 = 52415;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// When set, every `/v1` route and `/metrics` need `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Generations (mesh or upstream) running at once; at least 1.
    pub max_concurrent: usize,
    /// Requests that may wait for a slot; beyond that they get 429 at once.
    pub max_queued: usize,
    /// How long a queued request waits for a slot before it gets 429.
    pub queue_timeout: Duration,
    /// Largest request body in bytes (413 beyond).
    pub body_limit: usize,
    pub upstream: UpstreamConfig,
    pub cors: Cors,
    /// A client must send its request headers within this; then the connection is closed.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for open connections (streams) to finish.
    pub shutdown_grace: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            api_key: None,
            max_concurrent: 8,
            max_queued: 32,
            queue_timeout: Duration::from_secs(10),
            body_limit: 8 * 1024 * 1024,
            upstream: UpstreamConfig::default(),
            cors: Cors::Permissive,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cors {
    /// Any origin, method and header (browsers on other origins can use the API).
    Permissive,
    /// No CORS headers: only same-origin pages (like the embedded chat page).
    Disabled,
    /// Only these origins, e.g. `https://chat.example.com`.
    AllowOrigins(Vec<String>),
}
