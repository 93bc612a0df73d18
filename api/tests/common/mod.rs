//! Test plumbing: the API on 127.0.0.1 over real HTTP, a client, and an SSE reader.

#![allow(dead_code)]

pub mod fake;

use std::sync::Arc;
use std::time::Duration;

use exo_api::ApiConfig;
use fake::FakeBackend;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestServer {
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub backend: Arc<FakeBackend>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: ApiConfig) -> Self {
        Self::start_with(config, FakeBackend::new(Duration::ZERO)).await
    }

    pub async fn start_with(config: ApiConfig, backend: Arc<FakeBackend>) -> Self {
        init_tracing();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(exo_api_serve(listener, backend.clone(), config, rx));
        TestServer {
            base: format!("http://{addr}"),
            addr,
            backend,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .expect("server stops")
                .unwrap();
        }
    }
}

async fn exo_api_serve(
    listener: TcpListener,
    backend: Arc<FakeBackend>,
    config: ApiConfig,
    stop: oneshot::Receiver<()>,
) {
    exo_api::serve_with_shutdown(listener, backend, config, async {
        let _ = stop.await;
    })
    .await
    .unwrap();
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The `data:` payloads of an SSE body, in order (comments and blank lines skipped).
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// Parses every payload but a final `[DONE]`; returns the JSON events and whether it ended so.
pub fn sse_json(body: &str) -> (Vec<Value>, bool) {
    let mut data = sse_data(body);
    let done = data.last().is_some_and(|d| d == "[DONE]");
    if done {
        data.pop();
    }
    let events = data
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("bad SSE JSON {d:?}: {e}")))
        .collect();
    (events, done)
}

/// Asserts an OpenAI-shaped error body and returns its `error` object.
pub fn assert_openai_error(body: &Value) -> &Value {
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("no `error` in {body}"));
    let obj = error.as_object().expect("error is an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(error["type"].is_string(), "{body}");
    error
}

pub fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
    k.sort();
    k
}
