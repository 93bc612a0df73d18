//! Upstream OpenAI-compatible providers: their config (a TOML or JSON file plus the
//! `OPENAI_API_KEY` / `ANTHROPIC_API_KEY` built-ins) and the proxy that forwards requests for
//! their models, streams included.
//!
//! ```toml
//! connect_timeout_secs = 10   # optional
//! read_timeout_secs = 300     # optional: longest silence between two reads of a response
//!
//! [[providers]]
//! name = "openrouter"
//! base_url = "https://openrouter.ai/api/v1"
//! api_key_env = "OPENROUTER_API_KEY"   # optional: the variable holding the key
//! prefix = "openrouter/"               # optional: "openrouter/X" is sent upstream as "X"
//! models = ["meta-llama/llama-3.1-8b-instruct"]  # optional: listed (and routed if no prefix)
//! list_models = true                   # optional: also list the provider's GET /models
//! headers = { "X-Title" = "exo-p2p" }  # optional: extra request headers
//! ```
//!
//! `[providers.NAME]` tables work too, and JSON files take the same keys.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use tracing::{info, warn, Span};

use crate::backend::ModelCard;
use crate::core::limit::Slot;
use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub providers: Vec<Provider>,
    pub connect_timeout: Duration,
    /// Longest silence between two reads of an upstream response (headers included).
    pub read_timeout: Duration,
    /// How long a provider's `GET /models` answer is reused.
    pub models_cache_ttl: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            providers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(300),
            models_cache_ttl: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub name: String,
    /// Up to and including the version, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: Option<String>,
    /// Requests for `PREFIX + X` go to this provider as `X`.
    pub prefix: Option<String>,
    /// Listed in `/v1/models` (with the prefix); routed here by exact name when there is no
    /// prefix.
    pub models: Vec<String>,
    /// Also list what the provider's `GET /models` returns.
    pub list_models: bool,
    pub headers: Vec<(String, String)>,
}

impl Provider {
    /// The name clients use for an upstream model.
    pub fn public_name(&self, upstream_model: &str) -> String {
        match &self.prefix {
            Some(prefix) => format!("{prefix}{upstream_model}"),
            None => upstream_model.to_owned(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamConfigError {
    #[error("cannot read upstream config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("upstream config {path} is not valid {format}: {message}")]
    Syntax {
        path: PathBuf,
        format: &'static str,
        message: String,
    },
    #[error("upstream config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigFormat {
    Toml,
    Json,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default, alias = "provider")]
    providers: Option<Value>,
    connect_timeout_secs: Option<f64>,
    read_timeout_secs: Option<f64>,
    models_cache_secs: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProvider {
    name: Option<String>,
    base_url: String,
    api_key_env: Option<String>,
    prefix: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    list_models: Option<bool>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn secs(
    field: &str,
    value: Option<f64>,
    default: Duration,
) -> Result<Duration, UpstreamConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v)),
        Some(v) => Err(UpstreamConfigError::Invalid(format!(
            "`{field}` must be a positive number of seconds, not {v}"
        ))),
    }
}

impl UpstreamConfig {
    /// The node's setup: the file given with `--upstream-config` (if any), then the built-in
    /// providers whose key is in the environment.
    pub fn from_file_and_env(path: Option<&Path>) -> Result<Self, UpstreamConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        let config = match path {
            Some(path) => Self::load(path, env)?,
            None => Self::default(),
        };
        Ok(config.with_builtin_providers(env))
    }

    /// Reads a file: `.json` is JSON, `.toml` is TOML, anything else is sniffed.
    pub fn load(
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, UpstreamConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| UpstreamConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => ConfigFormat::Json,
            Some(e) if e.eq_ignore_ascii_case("toml") => ConfigFormat::Toml,
            _ if text.trim_start().starts_with('{') => ConfigFormat::Json,
            _ => ConfigFormat::Toml,
        };
        Self::parse(&text, format, env).map_err(|e| match e {
            UpstreamConfigError::Syntax {
                format, message, ..
            } => UpstreamConfigError::Syntax {
                path: path.to_owned(),
                format,
                message,
            },
            other => other,
        })
    }

    /// Parses a config; `env` looks up the variables named by `api_key_env`.
    pub fn parse(
        text: &str,
        format: ConfigFormat,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, UpstreamConfigError> {
        let syntax = |format: &'static str, message: String| UpstreamConfigError::Syntax {
            path: PathBuf::new(),
            format,
            message,
        };
        // Both formats go through JSON values, so both accept the same keys.
        let value: Value = match format {
            ConfigFormat::Json => {
                serde_json::from_str(text).map_err(|e| syntax("JSON", e.to_string()))?
            }
            ConfigFormat::Toml => {
                toml::from_str(text).map_err(|e| syntax("TOML", e.to_string()))?
            }
        };
        let file: FileConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            UpstreamConfigError::Invalid(format!("at `{}`: {}", e.path(), e.inner()))
        })?;
        let defaults = UpstreamConfig::default();
        let mut config = UpstreamConfig {
            providers: Vec::new(),
            connect_timeout: secs(
                "connect_timeout_secs",
                file.connect_timeout_secs,
                defaults.connect_timeout,
            )?,
            read_timeout: secs(
                "read_timeout_secs",
                file.read_timeout_secs,
                defaults.read_timeout,
            )?,
            models_cache_ttl: secs(
                "models_cache_secs",
                file.models_cache_secs,
                defaults.models_cache_ttl,
            )?,
        };
        let entries: Vec<(Option<String>, Value)> = match file.providers {
            None => Vec::new(),
            Some(Value::Array(list)) => list.into_iter().map(|v| (None, v)).collect(),
            Some(Value::Object(map)) => map.into_iter().map(|(k, v)| (Some(k), v)).collect(),
            Some(_) => {
                return Err(UpstreamConfigError::Invalid(
                    "`providers` must be a list or a table of providers".into(),
                ))
            }
        };
        for (i, (key, value)) in entries.into_iter().enumerate() {
            let at = key.clone().unwrap_or_else(|| format!("providers[{i}]"));
            let p: FileProvider = serde_path_to_error::deserialize(value).map_err(|e| {
                UpstreamConfigError::Invalid(format!("{at}: at `{}`: {}", e.path(), e.inner()))
            })?;
            let name = p.name.or(key).ok_or_else(|| {
                UpstreamConfigError::Invalid(format!("{at}: a provider needs a `name`"))
            })?;
            let api_key = match &p.api_key_env {
                Some(var) => {
                    let key = env(var).filter(|k| !k.is_empty());
                    if key.is_none() {
                        warn!(provider = %name, var = %var, "upstream API key variable is not set; sending no key");
                    }
                    key
                }
                None => None,
            };
            let provider = Provider {
                name,
                base_url: p.base_url.trim_end_matches('/').to_owned(),
                api_key,
                prefix: p.prefix,
                list_models: p.list_models.unwrap_or(p.models.is_empty()),
                models: p.models,
                headers: p.headers.into_iter().collect(),
            };
            config.add(provider)?;
        }
        Ok(config)
    }

    /// Adds a provider after checking it.
    pub fn add(&mut self, provider: Provider) -> Result<(), UpstreamConfigError> {
        let invalid =
            |m: String| UpstreamConfigError::Invalid(format!("provider `{}`: {m}", provider.name));
        if provider.name.is_empty() {
            return Err(UpstreamConfigError::Invalid(
                "a provider's `name` is empty".into(),
            ));
        }
        if self.providers.iter().any(|p| p.name == provider.name) {
            return Err(invalid("the name is used twice".into()));
        }
        if !(provider.base_url.starts_with("http://") || provider.base_url.starts_with("https://"))
        {
            return Err(invalid(format!(
                "`base_url` must start with http:// or https://, not `{}`",
                provider.base_url
            )));
        }
        if provider.prefix.as_deref() == Some("") {
            return Err(invalid("`prefix` must not be empty".into()));
        }
        if provider.prefix.is_none() && provider.models.is_empty() {
            return Err(invalid(
                "it needs a `prefix` or a list of `models` to route".into(),
            ));
        }
        for (name, value) in &provider.headers {
            if header::HeaderName::try_from(name.as_str()).is_err()
                || HeaderValue::try_from(value.as_str()).is_err()
            {
                return Err(invalid(format!("invalid header `{name}`")));
            }
        }
        self.providers.push(provider);
        Ok(())
    }

    /// exo's built-ins, each enabled when its key variable is set (and no provider of the same
    /// name is configured): `openai/…` and `anthropic/…`.
    pub fn with_builtin_providers(mut self, env: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        if let Some(key) = set("OPENAI_API_KEY") {
            if !self.providers.iter().any(|p| p.name == "openai") {
                self.providers.push(Provider {
                    name: "openai".into(),
                    base_url: set("OPENAI_BASE_URL")
                        .unwrap_or_else(|| "https://api.openai.com/v1".into())
                        .trim_end_matches('/')
                        .to_owned(),
                    api_key: Some(key),
                    prefix: Some("openai/".into()),
                    models: Vec::new(),
                    list_models: true,
                    headers: Vec::new(),
                });
            }
        }
        if let Some(key) = set("ANTHROPIC_API_KEY") {
            if !self.providers.iter().any(|p| p.name == "anthropic") {
                self.providers.push(Provider {
                    name: "anthropic".into(),
                    base_url: set("ANTHROPIC_BASE_URL")
                        .unwrap_or_else(|| "https://api.anthropic.com/v1".into())
                        .trim_end_matches('/')
                        .to_owned(),
                    // Its OpenAI-compatible endpoints take the bearer key; its native model
                    // list wants these two headers.
                    headers: vec![
                        ("x-api-key".into(), key.clone()),
                        ("anthropic-version".into(), "2023-06-01".into()),
                    ],
                    api_key: Some(key),
                    prefix: Some("anthropic/".into()),
                    models: Vec::new(),
                    list_models: true,
                });
            }
        }
        self
    }

    /// Which provider serves `model`, and the name to send it: exact names first, then the
    /// longest matching prefix.
    pub fn route(&self, model: &str) -> Option<(&Provider, String)> {
        if let Some(p) = self
            .providers
            .iter()
            .find(|p| p.prefix.is_none() && p.models.iter().any(|m| m == model))
        {
            return Some((p, model.to_owned()));
        }
        self.providers
            .iter()
            .filter_map(|p| {
                let prefix = p.prefix.as_deref()?;
                let rest = model.strip_prefix(prefix)?;
                (!rest.is_empty()).then_some((prefix.len(), p, rest))
            })
            .max_by_key(|(len, ..)| *len)
            .map(|(_, p, rest)| (p, rest.to_owned()))
    }
}

/// The proxy: one HTTP client for every provider, and each provider's model list.
pub(crate) struct Upstream {
    pub config: UpstreamConfig,
    client: reqwest::Client,
    models: Mutex<HashMap<String, (Instant, Vec<ModelCard>)>>,
}

/// Largest upstream error body read to build an error message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// A provider's model list must answer within this, or `/v1/models` goes on without it.
const MODELS_TIMEOUT: Duration = Duration::from_secs(5);
/// A failed model list is retried after this.
const MODELS_RETRY: Duration = Duration::from_secs(30);

impl Upstream {
    pub fn new(config: UpstreamConfig) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .user_agent(concat!("exo-p2p/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Upstream {
            config,
            client,
            models: Mutex::new(HashMap::new()),
        })
    }

    fn request(
        &self,
        provider: &Provider,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}/{path}", provider.base_url);
        let mut req = self.client.request(method, url);
        if let Some(key) = &provider.api_key {
            req = req.bearer_auth(key);
        }
        for (name, value) in &provider.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        req
    }

    /// Forwards `body` (with the upstream model name) to `provider`'s `endpoint`; the response,
    /// streamed or not, goes back as the provider sent it. `slot` is held until it is sent.
    pub async fn forward(
        &self,
        provider: &Provider,
        endpoint: &str,
        mut body: Value,
        upstream_model: String,
        slot: Slot,
    ) -> Result<Response, ApiError> {
        body["model"] = Value::String(upstream_model);
        let bytes = serde_json::to_vec(&body).map_err(|e| ApiError::internal(e.to_string()))?;
        let started = Instant::now();
        let response = self
            .request(provider, reqwest::Method::POST, endpoint)
            .header(header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .send()
            .await
            .map_err(|e| send_error(provider, &e))?;
        let status = response.status();
        info!(
            provider = %provider.name,
            status = status.as_u16(),
            ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            "upstream answered"
        );
        if !status.is_success() {
            return Err(upstream_status_error(provider, status, response).await);
        }
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("application/json"));
        let sse = content_type
            .to_str()
            .is_ok_and(|v| v.starts_with("text/event-stream"));
        let body = relay(
            response.bytes_stream(),
            sse,
            provider.name.clone(),
            slot,
            Span::current(),
        );
        let mut out = Response::new(Body::from_stream(body));
        *out.status_mut() = status;
        out.headers_mut().insert(header::CONTENT_TYPE, content_type);
        if sse {
            out.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            out.headers_mut()
                .insert("x-accel-buffering", HeaderValue::from_static("no"));
        }
        Ok(out)
    }

    /// Every provider's models, fetched concurrently; a provider that fails is left out.
    pub async fn models(&self) -> Vec<ModelCard> {
        let lists = futures::future::join_all(
            self.config
                .providers
                .iter()
                .map(|p| self.provider_models(p)),
        )
        .await;
        lists.into_iter().flatten().collect()
    }

    async fn provider_models(&self, provider: &Provider) -> Vec<ModelCard> {
        let card = |id: String, created: u64| ModelCard {
            id,
            owned_by: provider.name.clone(),
            created,
            context_length: None,
        };
        let mut cards: Vec<ModelCard> = provider
            .models
            .iter()
            .map(|m| card(provider.public_name(m), 0))
            .collect();
        if !provider.list_models {
            return cards;
        }
        let cached = {
            let cache = self.models.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&provider.name)
                .filter(|(until, _)| Instant::now() < *until)
                .map(|(_, list)| list.clone())
        };
        let listed = match cached {
            Some(list) => list,
            None => {
                let (list, ttl) = match self.fetch_models(provider).await {
                    Ok(ids) => (
                        ids.into_iter()
                            .map(|(id, created)| card(provider.public_name(&id), created))
                            .collect::<Vec<_>>(),
                        self.config.models_cache_ttl,
                    ),
                    Err(e) => {
                        warn!(provider = %provider.name, error = %e, "cannot list upstream models");
                        (Vec::new(), MODELS_RETRY.min(self.config.models_cache_ttl))
                    }
                };
                let mut cache = self.models.lock().unwrap_or_else(|e| e.into_inner());
                cache.insert(provider.name.clone(), (Instant::now() + ttl, list.clone()));
                list
            }
        };
        for c in listed {
            if !cards.iter().any(|have| have.id == c.id) {
                cards.push(c);
            }
        }
        cards
    }

    async fn fetch_models(&self, provider: &Provider) -> Result<Vec<(String, u64)>, String> {
        let response = self
            .request(provider, reqwest::Method::GET, "models")
            .timeout(MODELS_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("GET /models answered {}", response.status()));
        }
        let body: Value =
            serde_json::from_slice(&response.bytes().await.map_err(|e| e.to_string())?)
                .map_err(|e| format!("GET /models is not JSON: {e}"))?;
        let data = body
            .get("data")
            .and_then(Value::as_array)
            .ok_or("GET /models has no `data` list")?;
        Ok(data
            .iter()
            .filter_map(|m| {
                let id = m.get("id")?.as_str()?.to_owned();
                let created = m.get("created").and_then(Value::as_u64).unwrap_or(0);
                Some((id, created))
            })
            .collect())
    }
}

fn send_error(provider: &Provider, e: &reqwest::Error) -> ApiError {
    let name = &provider.name;
    if e.is_timeout() {
        ApiError::gateway_timeout(format!(
            "The upstream provider `{name}` did not answer in time."
        ))
    } else if e.is_connect() {
        ApiError::bad_gateway(format!(
            "Could not connect to the upstream provider `{name}` at {}: {}",
            provider.base_url,
            error_chain(e)
        ))
    } else {
        ApiError::bad_gateway(format!(
            "The request to the upstream provider `{name}` failed: {}",
            error_chain(e)
        ))
    }
}

/// reqwest's top-level message is generic; its sources say what happened.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// An upstream error status: the client's own mistakes (400, 404, 429…) pass through with the
/// provider's message; the provider's failures (5xx, and 401/403, which concern this server's
/// key, not the client's) become 502.
async fn upstream_status_error(
    provider: &Provider,
    status: StatusCode,
    mut response: reqwest::Response,
) -> ApiError {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    let parsed: Option<Value> = serde_json::from_slice(&body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let message = error
        .and_then(|e| e.get("message").or(Some(e)))
        .and_then(|m| m.as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(500)])
                .trim()
                .to_owned()
        });
    let name = &provider.name;
    warn!(provider = %name, status = status.as_u16(), %message, "upstream error");
    match status.as_u16() {
        400 | 404 | 409 | 413 | 422 | 429 => {
            let mut e = ApiError::new(status, "invalid_request_error", message);
            if status == StatusCode::TOO_MANY_REQUESTS {
                e.kind = "rate_limit_error";
            }
            if let Some(error) = error {
                e.param = error
                    .get("param")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                e.code = match error.get("code").and_then(Value::as_str) {
                    Some("model_not_found") => Some("model_not_found"),
                    Some("context_length_exceeded") => Some("context_length_exceeded"),
                    Some("rate_limit_exceeded") => Some("rate_limit_exceeded"),
                    _ => e.code,
                };
            }
            e
        }
        401 | 403 => ApiError::bad_gateway(format!(
            "The upstream provider `{name}` refused this server's credentials ({status}): {message}"
        )),
        _ => ApiError::bad_gateway(format!(
            "The upstream provider `{name}` failed ({status}): {message}"
        )),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Relays the upstream body. A failure mid-stream ends an SSE stream with an error event;
/// any other body is cut off, so the client sees it incomplete.
fn relay(
    upstream: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
    sse: bool,
    provider: String,
    slot: Slot,
    span: Span,
) -> impl Stream<Item = Result<Bytes, BoxError>> + Send {
    struct State<S> {
        upstream: std::pin::Pin<Box<S>>,
        _slot: Slot,
    }
    let state = State {
        upstream: Box::pin(upstream),
        _slot: slot,
    };
    futures::stream::unfold(Some(state), move |state| {
        let provider = provider.clone();
        let span = span.clone();
        async move {
            let mut state = state?;
            match state.upstream.next().await {
                Some(Ok(bytes)) => Some((Ok(bytes), Some(state))),
                None => None,
                Some(Err(e)) => {
                    let _entered = span.enter();
                    warn!(provider = %provider, error = %error_chain(&e), "upstream stream failed");
                    let item = if sse {
                        let error = if e.is_timeout() {
                            ApiError::gateway_timeout(format!(
                                "The upstream provider `{provider}` stopped sending."
                            ))
                        } else {
                            ApiError::bad_gateway(format!(
                                "The upstream provider `{provider}` broke off the stream: {}",
                                error_chain(&e)
                            ))
                        };
                        Ok(Bytes::from(format!("data: {}\n\n", super::render(&error))))
                    } else {
                        Err(Box::new(e) as BoxError)
                    };
                    Some((item, None))
                }
            }
        }
    })
}
