//! Upstream routing against a mock OpenAI-compatible provider on 127.0.0.1: listing, proxying
//! (streamed and not), failures, and the config file formats.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post as route_post};
use axum::{Json, Router};
use common::{assert_openai_error, client, sse_json, TestServer};
use exo_api::{ApiConfig, ConfigFormat, Provider, UpstreamConfig, UpstreamConfigError};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const KEY: &str = "up-key";

#[derive(Default)]
struct Mock {
    /// (Authorization header, body) of every completion request.
    seen: Mutex<Vec<(String, Value)>>,
}

fn sse(events: &[Value]) -> String {
    let mut out = String::new();
    for e in events {
        out.push_str(&format!("data: {e}\n\n"));
    }
    out.push_str("data: [DONE]\n\n");
    out
}

fn mock_chunks(model: &str) -> Vec<Value> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "Hi from"}), Value::Null),
        chunk(json!({"content": " upstream"}), Value::Null),
        chunk(json!({}), json!("stop")),
    ]
}

async fn mock_completion(
    State(mock): State<Arc<Mock>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    mock.seen.lock().unwrap().push((auth.clone(), body.clone()));
    if auth != format!("Bearer {KEY}") {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})),
        )
            .into_response();
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    match model.as_str() {
        "missing" => {
            return (
                StatusCode::NOT_FOUND,
                Json(json!({"error": {"message": "The model `missing` does not exist", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}})),
            )
                .into_response()
        }
        "broken" => return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "breaks-midway" => {
            let first = format!("data: {}\n\n", mock_chunks(&model)[1]);
            // The first event is flushed before the failure, as with a provider that dies.
            let body = futures::stream::unfold(0, move |step| {
                let first = first.clone();
                async move {
                    match step {
                        0 => Some((Ok(bytes::Bytes::from(first)), 1)),
                        1 => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Some((Err(std::io::Error::other("upstream crashed")), 2))
                        }
                        _ => None,
                    }
                }
            });
            return Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(body))
                .unwrap();
        }
        _ => {}
    }
    if stream {
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from(sse(&mock_chunks(&model))))
            .unwrap();
    }
    if body.get("messages").is_some() {
        Json(
            json!({"id": "up-1", "object": "chat.completion", "created": 1, "model": model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "Hi from upstream"}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}}),
        )
        .into_response()
    } else {
        Json(json!({"id": "up-2", "object": "text_completion", "created": 1, "model": model,
                    "choices": [{"index": 0, "text": "upstream text", "finish_reason": "stop", "logprobs": null}]}))
        .into_response()
    }
}

async fn mock_models(headers: HeaderMap) -> Response {
    if headers.get("authorization").is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(json!({"object": "list", "data": [
        {"id": "remote-1", "object": "model", "created": 123, "owned_by": "mock"}
    ]}))
    .into_response()
}

/// Starts the mock; returns its `/v1` base URL.
async fn start_mock() -> (String, Arc<Mock>) {
    let mock = Arc::new(Mock::default());
    let app = Router::new()
        .route("/v1/models", get(mock_models))
        .route("/v1/chat/completions", route_post(mock_completion))
        .route("/v1/completions", route_post(mock_completion))
        .with_state(mock.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/v1"), mock)
}

/// A provider that accepts connections and never answers.
async fn start_silent() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    format!("http://{addr}/v1")
}

/// An address where nothing listens.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

fn provider(
    name: &str,
    base_url: &str,
    key: &str,
    prefix: Option<&str>,
    models: &[&str],
) -> Provider {
    Provider {
        name: name.into(),
        base_url: base_url.into(),
        api_key: Some(key.into()),
        prefix: prefix.map(str::to_owned),
        models: models.iter().map(|m| (*m).to_owned()).collect(),
        list_models: prefix.is_some(),
        headers: vec![("x-extra".into(), "1".into())],
    }
}

async fn server_with(providers: Vec<Provider>, read_timeout: Duration) -> TestServer {
    let mut upstream = UpstreamConfig {
        read_timeout,
        connect_timeout: Duration::from_secs(2),
        ..UpstreamConfig::default()
    };
    for p in providers {
        upstream.add(p).unwrap();
    }
    TestServer::start(ApiConfig {
        upstream,
        api_key: Some("local".into()),
        ..ApiConfig::default()
    })
    .await
}

async fn post(server: &TestServer, path: &str, body: Value) -> (StatusCode, String, String) {
    let resp = client()
        .post(server.url(path))
        .bearer_auth("local")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

fn ask(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "temperature": 0.3,
           "tools": [{"type": "function", "function": {"name": "f"}}],
           "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn upstream_models_are_listed() {
    let (base, _) = start_mock().await;
    let server = server_with(
        vec![
            provider("mock", &base, KEY, Some("mock/"), &["listed-a"]),
            provider("exact", &base, KEY, None, &["exact-model"]),
        ],
        Duration::from_secs(5),
    )
    .await;
    let body: Value = client()
        .get(server.url("/v1/models"))
        .bearer_auth("local")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let models: Vec<(String, String)> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["object"], "model");
            (
                m["id"].as_str().unwrap().into(),
                m["owned_by"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (id, owner) in [
        ("fake-model", "exo-p2p"),
        ("mock/listed-a", "mock"),
        ("mock/remote-1", "mock"),
        ("exact-model", "exact"),
    ] {
        assert!(
            models.contains(&(id.to_owned(), owner.to_owned())),
            "{id} by {owner} in {models:?}"
        );
    }
    // Any model under a prefix can be looked up.
    let resp = client()
        .get(server.url("/v1/models/mock/anything"))
        .bearer_auth("local")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let model: Value = resp.json().await.unwrap();
    assert_eq!(model["owned_by"], "mock");
    server.stop().await;
}

#[tokio::test]
async fn chat_is_proxied_with_fields_and_key() {
    let (base, mock) = start_mock().await;
    let server = server_with(
        vec![
            provider("mock", &base, KEY, Some("mock/"), &[]),
            provider("exact", &base, KEY, None, &["exact-model"]),
        ],
        Duration::from_secs(5),
    )
    .await;
    let (status, ct, text) =
        post(&server, "/v1/chat/completions", ask("mock/gpt-mock", false)).await;
    assert_eq!(status, 200, "{text}");
    assert!(ct.starts_with("application/json"));
    let out: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(out["choices"][0]["message"]["content"], "Hi from upstream");
    assert_eq!(out["model"], "gpt-mock");
    {
        let seen = mock.seen.lock().unwrap();
        let (auth, body) = seen.last().unwrap();
        assert_eq!(
            auth, "Bearer up-key",
            "the provider's key, not the client's"
        );
        assert_eq!(body["model"], "gpt-mock", "the prefix is stripped");
        assert_eq!(body["temperature"], 0.3);
        assert_eq!(
            body["tools"][0]["function"]["name"], "f",
            "unknown fields pass through"
        );
    }
    assert!(
        server.backend.requests.lock().unwrap().is_empty(),
        "the mesh was not asked"
    );

    // Exact names route without a prefix.
    let (status, _, _) = post(&server, "/v1/chat/completions", ask("exact-model", false)).await;
    assert_eq!(status, 200);
    assert_eq!(
        mock.seen.lock().unwrap().last().unwrap().1["model"],
        "exact-model"
    );

    // Completions too.
    let (status, _, text) = post(
        &server,
        "/v1/completions",
        json!({"model": "mock/base", "prompt": "x"}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let out: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(out["choices"][0]["text"], "upstream text");
    server.stop().await;
}

#[tokio::test]
async fn streams_are_proxied_as_sent() {
    let (base, _) = start_mock().await;
    let server = server_with(
        vec![provider("mock", &base, KEY, Some("mock/"), &[])],
        Duration::from_secs(5),
    )
    .await;
    let (status, ct, text) =
        post(&server, "/v1/chat/completions", ask("mock/gpt-mock", true)).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let (events, done) = sse_json(&text);
    assert!(done);
    assert_eq!(events, mock_chunks("gpt-mock"));

    // An upstream that breaks off mid-stream: the client gets an error event.
    let (status, _, text) = post(
        &server,
        "/v1/chat/completions",
        ask("mock/breaks-midway", true),
    )
    .await;
    assert_eq!(status, 200);
    let (events, done) = sse_json(&text);
    assert!(!done, "{text}");
    assert_eq!(events[0]["choices"][0]["delta"]["content"], "Hi from");
    let error = assert_openai_error(events.last().unwrap());
    assert_eq!(error["type"], "upstream_error");
    assert!(
        error["message"].as_str().unwrap().contains("mock"),
        "{error}"
    );
    server.stop().await;
}

#[tokio::test]
async fn upstream_failures_are_clear() {
    let (base, _) = start_mock().await;
    let down = closed_port().await;
    let server = server_with(
        vec![
            provider("mock", &base, KEY, Some("mock/"), &[]),
            provider("badkey", &base, "wrong", Some("badkey/"), &[]),
            provider("down", &down, KEY, Some("down/"), &[]),
        ],
        Duration::from_secs(5),
    )
    .await;
    let check = |status: StatusCode, text: &str, want: u16, needle: &str| {
        assert_eq!(status.as_u16(), want, "{text}");
        let body: Value = serde_json::from_str(text).unwrap();
        let error = assert_openai_error(&body);
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{needle:?} in {error}"
        );
        error.clone()
    };
    // The client's mistake passes through with the provider's words.
    let (status, _, text) = post(&server, "/v1/chat/completions", ask("mock/missing", false)).await;
    let error = check(status, &text, 404, "does not exist");
    assert_eq!(error["code"], "model_not_found");
    // The provider's failure is a 502 that names it.
    let (status, _, text) = post(&server, "/v1/chat/completions", ask("mock/broken", false)).await;
    check(
        status,
        &text,
        502,
        "`mock` failed (500 Internal Server Error): boom",
    );
    // Our key being refused is not the client's 401.
    let (status, _, text) = post(&server, "/v1/chat/completions", ask("badkey/x", true)).await;
    check(status, &text, 502, "refused this server's credentials");
    // Nobody listening.
    let t = Instant::now();
    let (status, _, text) = post(&server, "/v1/chat/completions", ask("down/x", false)).await;
    check(
        status,
        &text,
        502,
        "Could not connect to the upstream provider `down`",
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    server.stop().await;
}

#[tokio::test]
async fn silent_upstream_times_out_with_504() {
    let silent = start_silent().await;
    let server = server_with(
        vec![provider("silent", &silent, KEY, Some("silent/"), &["m"])],
        Duration::from_millis(300),
    )
    .await;
    let t = Instant::now();
    let (status, _, text) = post(&server, "/v1/chat/completions", ask("silent/m", true)).await;
    assert_eq!(status, 504, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(assert_openai_error(&body)["code"], "upstream_timeout");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // /v1/models still answers: a silent provider's list is skipped, its listed models kept.
    let t = Instant::now();
    let body: Value = client()
        .get(server.url("/v1/models"))
        .bearer_auth("local")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(8));
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"silent/m"), "{ids:?}");
    assert!(ids.contains(&"fake-model"), "{ids:?}");
    server.stop().await;
}

fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

#[test]
fn config_files_in_toml_and_json() {
    let toml = r#"
        connect_timeout_secs = 3
        read_timeout_secs = 60.5

        [[providers]]
        name = "openrouter"
        base_url = "https://openrouter.ai/api/v1/"
        api_key_env = "OPENROUTER_KEY"
        prefix = "or/"

        [[providers]]
        name = "local"
        base_url = "http://127.0.0.1:8080/v1"
        models = ["llama-local"]
        headers = { "X-Title" = "exo" }
    "#;
    let config = UpstreamConfig::parse(
        toml,
        ConfigFormat::Toml,
        env(&[("OPENROUTER_KEY", "or-secret")]),
    )
    .unwrap();
    assert_eq!(config.connect_timeout, Duration::from_secs(3));
    assert_eq!(config.read_timeout, Duration::from_millis(60_500));
    assert_eq!(config.providers.len(), 2);
    let or = &config.providers[0];
    assert_eq!(
        or.base_url, "https://openrouter.ai/api/v1",
        "trailing slash trimmed"
    );
    assert_eq!(or.api_key.as_deref(), Some("or-secret"));
    assert!(or.list_models, "no models listed: ask the provider");
    let local = &config.providers[1];
    assert_eq!(local.api_key, None);
    assert!(!local.list_models);
    assert_eq!(local.headers, [("X-Title".to_owned(), "exo".to_owned())]);

    assert_eq!(
        config
            .route("or/meta/llama")
            .map(|(p, m)| (p.name.as_str(), m)),
        Some(("openrouter", "meta/llama".into()))
    );
    assert_eq!(
        config
            .route("llama-local")
            .map(|(p, m)| (p.name.as_str(), m)),
        Some(("local", "llama-local".into()))
    );
    assert!(config.route("or/").is_none());
    assert!(config.route("fake-model").is_none());

    // The same as JSON, and `[providers.NAME]` tables.
    let json = r#"{"providers": {"openrouter": {"base_url": "https://openrouter.ai/api/v1", "prefix": "or/"}}}"#;
    let config = UpstreamConfig::parse(json, ConfigFormat::Json, env(&[])).unwrap();
    assert_eq!(config.providers[0].name, "openrouter");
    let toml = "[providers.x]\nbase_url = \"http://127.0.0.1:1/v1\"\nprefix = \"x/\"\n";
    let config = UpstreamConfig::parse(toml, ConfigFormat::Toml, env(&[])).unwrap();
    assert_eq!(config.providers[0].name, "x");

    // Files: by extension, or sniffed.
    let dir = std::env::temp_dir().join(format!("exo-api-upstream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in [
        ("a.json", json),
        ("b.toml", toml),
        ("c.conf", json),
        ("d.conf", toml),
    ] {
        let path = dir.join(file);
        std::fs::write(&path, text).unwrap();
        let config = UpstreamConfig::load(&path, env(&[])).unwrap();
        assert_eq!(config.providers.len(), 1, "{file}");
    }
    let err = UpstreamConfig::load(&dir.join("missing.toml"), env(&[])).unwrap_err();
    assert!(matches!(err, UpstreamConfigError::Read { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_configs_are_refused() {
    let cases = [
        ("[[providers]]\nname = \"a\"\nbase_url = \"ftp://x\"\nprefix = \"a/\"", "http:// or https://"),
        ("[[providers]]\nname = \"a\"\nbase_url = \"http://x\"", "needs a `prefix` or a list of `models`"),
        ("[[providers]]\nbase_url = \"http://x\"\nprefix = \"a/\"", "needs a `name`"),
        ("[[providers]]\nname = \"a\"\nbase_url = \"http://x\"\nprefix = \"a/\"\nbogus = 1", "bogus"),
        ("[[providers]]\nname = \"a\"\nbase_url = \"http://x\"\nprefix = \"a/\"\n[[providers]]\nname = \"a\"\nbase_url = \"http://y\"\nprefix = \"b/\"", "used twice"),
        ("read_timeout_secs = -1", "positive"),
        ("[[providers]\n", "TOML"),
    ];
    for (text, needle) in cases {
        let err = UpstreamConfig::parse(text, ConfigFormat::Toml, env(&[])).unwrap_err();
        assert!(err.to_string().contains(needle), "{needle:?} in {err}");
    }
    let err = UpstreamConfig::parse("{", ConfigFormat::Json, env(&[])).unwrap_err();
    assert!(err.to_string().contains("JSON"), "{err}");
}

#[test]
fn builtin_providers_follow_the_environment() {
    let none = UpstreamConfig::default().with_builtin_providers(env(&[]));
    assert!(none.providers.is_empty());

    let both = UpstreamConfig::default().with_builtin_providers(env(&[
        ("OPENAI_API_KEY", "sk-o"),
        ("ANTHROPIC_API_KEY", "sk-a"),
        ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"),
    ]));
    let openai = &both.providers[0];
    assert_eq!(openai.name, "openai");
    assert_eq!(openai.base_url, "http://127.0.0.1:9/v1");
    assert_eq!(openai.api_key.as_deref(), Some("sk-o"));
    assert_eq!(openai.prefix.as_deref(), Some("openai/"));
    let anthropic = &both.providers[1];
    assert_eq!(anthropic.base_url, "https://api.anthropic.com/v1");
    assert_eq!(anthropic.prefix.as_deref(), Some("anthropic/"));
    assert_eq!(
        both.route("anthropic/claude-x")
            .map(|(p, m)| (p.name.clone(), m)),
        Some(("anthropic".into(), "claude-x".into()))
    );

    // A configured provider of the same name wins over the built-in.
    let mut config = UpstreamConfig::default();
    config
        .add(provider(
            "openai",
            "http://127.0.0.1:1/v1",
            "k",
            Some("oa/"),
            &[],
        ))
        .unwrap();
    let config = config.with_builtin_providers(env(&[("OPENAI_API_KEY", "sk-o")]));
    assert_eq!(config.providers.len(), 1);
    assert_eq!(config.providers[0].prefix.as_deref(), Some("oa/"));
}
