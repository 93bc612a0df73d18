//! The API over real HTTP on 127.0.0.1 against the deterministic fake backend: every route,
//! OpenAI's shapes, errors, limits, disconnects and slow clients.

mod common;

use std::time::{Duration, Instant};

use common::fake::FakeBackend;
use common::{assert_openai_error, client, keys, sse_json, TestServer};
use exo_api::{ApiConfig, Cors, Prompt};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn chat(content: &str) -> Value {
    json!({"model": "fake-model", "messages": [{"role": "user", "content": content}]})
}

async fn post(server: &TestServer, path: &str, body: &Value) -> (StatusCode, Value) {
    let resp = client()
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, value)
}

async fn post_raw(server: &TestServer, path: &str, body: &'static str) -> (StatusCode, Value) {
    let resp = client()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

async fn stream_body(
    server: &TestServer,
    path: &str,
    body: &Value,
) -> (StatusCode, String, String) {
    let resp = client()
        .post(server.url(path))
        .json(body)
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

#[tokio::test]
async fn health_follows_readiness() {
    let server = TestServer::start(ApiConfig::default()).await;
    let resp = client().get(server.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["ready"], true);
    assert_eq!(body["peer_id"], "12D3KooWFakeSelf");

    server
        .backend
        .ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let resp = client().get(server.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    server.stop().await;
}

#[tokio::test]
async fn web_page_is_embedded() {
    let server = TestServer::start(ApiConfig::default()).await;
    let resp = client().get(server.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(resp.headers().contains_key("content-security-policy"));
    let html = resp.text().await.unwrap();
    assert!(html.contains("/static/app.js"), "{html}");
    assert!(
        !html.contains("https://"),
        "the page must not load anything from elsewhere"
    );
    for (file, ct) in [
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let resp = client()
            .get(server.url(&format!("/static/{file}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{file}");
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(ct));
        assert!(!resp.text().await.unwrap().is_empty());
    }
    let resp = client()
        .get(server.url("/static/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_openai_error(&resp.json().await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn models_list_and_lookup() {
    let server = TestServer::start(ApiConfig::default()).await;
    let body: Value = client()
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        ["fake-model", "fake-tiny", "fake-endless", "fake-fails"]
    );
    for m in data {
        assert_eq!(m["object"], "model");
        assert_eq!(m["owned_by"], "exo-p2p");
        assert_eq!(m["created"], 1_700_000_000);
        assert!(m["context_length"].is_u64());
    }

    let resp = client()
        .get(server.url("/v1/models/fake-model"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let model: Value = resp.json().await.unwrap();
    assert_eq!(model["id"], "fake-model");
    assert_eq!(model["object"], "model");

    let resp = client()
        .get(server.url("/v1/models/org/no-such"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(assert_openai_error(&body)["code"], "model_not_found");
    server.stop().await;
}

#[tokio::test]
async fn topology_downloads_metrics_pass_through() {
    let server = TestServer::start(ApiConfig::default()).await;
    let topo: Value = client()
        .get(server.url("/v1/topology"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(topo, common::fake::topology());
    let downloads: Value = client()
        .get(server.url("/v1/downloads"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(downloads["downloads"][0]["model"], "fake-model");

    let (status, _) = post(&server, "/v1/chat/completions", &chat("hi")).await;
    assert_eq!(status, 200);
    let resp = client().get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = resp.text().await.unwrap();
    assert!(text.contains("fake_backend_up 1"), "{text}");
    assert!(
        text.contains("exo_api_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("exo_api_completion_tokens_total 4"), "{text}");
    assert!(text.contains("exo_api_generations_in_flight 0"), "{text}");
    server.stop().await;
}

#[tokio::test]
async fn chat_completion_shape_and_defaults() {
    let server = TestServer::start(ApiConfig::default()).await;
    let (status, body) = post(&server, "/v1/chat/completions", &chat("hi there")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        keys(&body),
        [
            "choices",
            "created",
            "id",
            "model",
            "object",
            "system_fingerprint",
            "usage"
        ]
    );
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "fake-model");
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    let choice = &body["choices"][0];
    assert_eq!(
        keys(choice),
        ["finish_reason", "index", "logprobs", "message"]
    );
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], "Hello! You said: hi there");
    // "<user> hi there" is 3 words; the answer 5.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    );

    let req = server.backend.last_request();
    assert_eq!(req.request_id, body["id"].as_str().unwrap());
    assert_eq!(
        req.sampling.temperature, 1.0,
        "OpenAI's default temperature"
    );
    assert_eq!(req.sampling.top_p, 1.0);
    assert_eq!(req.sampling.top_k, 0);
    assert_eq!(req.sampling.min_p, 0.0);
    assert_eq!(req.sampling.repeat_penalty, 1.0);
    assert_eq!(req.max_tokens, None);
    assert!(req.stop.is_empty());
    assert!(!req.sampling.logprobs);
    // No seed given: each request draws its own (a 1 in 2^64 chance of a false failure).
    let (status, _) = post(&server, "/v1/chat/completions", &chat("hi there")).await;
    assert_eq!(status, 200);
    assert_ne!(
        server.backend.last_request().sampling.seed,
        req.sampling.seed
    );
    server.stop().await;
}

#[tokio::test]
async fn chat_parameters_reach_the_backend() {
    let server = TestServer::start(ApiConfig::default()).await;
    let body = json!({
        "model": "fake-model",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "one two"},
                {"type": "text", "text": "three four five"}
            ]}
        ],
        "temperature": 0.25, "top_p": 0.5, "seed": 42, "stop": ["five", "zzz"],
        "max_tokens": 5, "max_completion_tokens": 20,
        "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1,
        "frequency_penalty": 0.5, "presence_penalty": 0.0, "n": 1, "user": "ignored",
    });
    let (status, out) = post(&server, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{out}");
    let req = server.backend.last_request();
    assert_eq!(
        req.prompt,
        Prompt::Chat(vec![
            exo_api::ChatMessage::new("system", "be brief"),
            exo_api::ChatMessage::new("user", "one two\nthree four five"),
        ])
    );
    assert_eq!(req.sampling.temperature, 0.25);
    assert_eq!(req.sampling.top_p, 0.5);
    assert_eq!(req.sampling.seed, 42);
    assert_eq!(req.stop, ["five", "zzz"]);
    assert_eq!(
        req.max_tokens,
        Some(20),
        "max_completion_tokens wins over max_tokens"
    );
    assert_eq!(req.sampling.top_k, 40);
    assert_eq!(req.sampling.min_p, 0.05);
    assert_eq!(req.sampling.repeat_penalty, 1.1);
    // The stop string cut the answer before "five".
    assert_eq!(
        out["choices"][0]["message"]["content"],
        "Hello! You said: one two\nthree four"
    );

    // A single stop string; max_tokens cuts the answer with finish_reason "length".
    let body = json!({"model": "fake-model", "messages": [{"role": "user", "content": "a b c"}],
                      "stop": "c", "max_tokens": 2});
    let (status, out) = post(&server, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert_eq!(server.backend.last_request().stop, ["c"]);
    assert_eq!(out["choices"][0]["message"]["content"], "Hello! You");
    assert_eq!(out["choices"][0]["finish_reason"], "length");
    assert_eq!(out["usage"]["completion_tokens"], 2);
    server.stop().await;
}

#[tokio::test]
async fn chat_stream_has_openai_shape() {
    let server = TestServer::start(ApiConfig::default()).await;
    let mut body = chat("hi there");
    body["stream"] = json!(true);
    let (status, ct, text) = stream_body(&server, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let (events, done) = sse_json(&text);
    assert!(done, "ends with [DONE]: {text}");
    assert_eq!(events.len(), 1 + 5 + 1, "{text}");
    let id = events[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for e in &events {
        assert_eq!(
            keys(e),
            [
                "choices",
                "created",
                "id",
                "model",
                "object",
                "system_fingerprint"
            ],
            "no usage key without include_usage: {e}"
        );
        assert_eq!(e["object"], "chat.completion.chunk");
        assert_eq!(e["id"], id);
        assert_eq!(e["model"], "fake-model");
        assert_eq!(e["choices"].as_array().unwrap().len(), 1);
        assert_eq!(
            keys(&e["choices"][0]),
            ["delta", "finish_reason", "index", "logprobs"]
        );
    }
    // The role chunk first.
    assert_eq!(
        events[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(events[0]["choices"][0]["finish_reason"], Value::Null);
    // Content deltas, no role.
    let content: String = events[1..6]
        .iter()
        .map(|e| {
            assert_eq!(keys(&e["choices"][0]["delta"]), ["content"]);
            assert_eq!(e["choices"][0]["finish_reason"], Value::Null);
            e["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(content, "Hello! You said: hi there");
    // finish_reason on the last chunk, with an empty delta.
    let last = &events[6]["choices"][0];
    assert_eq!(last["delta"], json!({}));
    assert_eq!(last["finish_reason"], "stop");
    server.stop().await;
}

#[tokio::test]
async fn chat_stream_include_usage() {
    let server = TestServer::start(ApiConfig::default()).await;
    let mut body = chat("hi there");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (_, _, text) = stream_body(&server, "/v1/chat/completions", &body).await;
    let (events, done) = sse_json(&text);
    assert!(done);
    assert_eq!(events.len(), 1 + 5 + 1 + 1, "{text}");
    for e in &events[..7] {
        assert_eq!(
            e["usage"],
            Value::Null,
            "usage is null before the last chunk: {e}"
        );
        assert!(e.as_object().unwrap().contains_key("usage"));
    }
    assert_eq!(events[6]["choices"][0]["finish_reason"], "stop");
    let last = &events[7];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["object"], "chat.completion.chunk");
    assert_eq!(
        last["usage"],
        json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    );
    server.stop().await;
}

#[tokio::test]
async fn chat_logprobs_have_openai_shape() {
    let server = TestServer::start(ApiConfig::default()).await;
    let mut body = chat("x");
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let (status, out) = post(&server, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{out}");
    let req = server.backend.last_request();
    assert!(req.sampling.logprobs);
    assert_eq!(req.sampling.top_logprobs, 2);
    let lp = &out["choices"][0]["logprobs"];
    assert_eq!(keys(lp), ["content", "refusal"]);
    let content = lp["content"].as_array().unwrap();
    assert_eq!(content.len(), 4, "one entry per token: {lp}");
    assert_eq!(
        content[0],
        json!({"token": "Hello!", "logprob": -0.125, "bytes": [72, 101, 108, 108, 111, 33],
        "top_logprobs": [
            {"token": "Hello!", "logprob": -0.125, "bytes": [72, 101, 108, 108, 111, 33]},
            {"token": "alt1", "logprob": -1.125, "bytes": [97, 108, 116, 49]}
        ]})
    );
    assert_eq!(content[1]["token"], " You");
    assert_eq!(content[1]["logprob"], -0.25);

    // Streaming: each content chunk carries its token's logprobs.
    body["stream"] = json!(true);
    let (_, _, text) = stream_body(&server, "/v1/chat/completions", &body).await;
    let (events, done) = sse_json(&text);
    assert!(done);
    assert_eq!(events[0]["choices"][0]["logprobs"], Value::Null);
    for (i, e) in events[1..5].iter().enumerate() {
        let c = &e["choices"][0]["logprobs"]["content"];
        assert_eq!(c.as_array().unwrap().len(), 1, "{e}");
        assert_eq!(c[0]["token"], e["choices"][0]["delta"]["content"]);
        assert_eq!(c[0]["logprob"], json!(-((i + 1) as f32) / 8.0));
        assert_eq!(c[0]["top_logprobs"].as_array().unwrap().len(), 2);
    }
    server.stop().await;
}

#[tokio::test]
async fn completions_plain_prompt() {
    let server = TestServer::start(ApiConfig::default()).await;
    let (status, out) = post(
        &server,
        "/v1/completions",
        &json!({"model": "fake-model", "prompt": "once upon"}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        keys(&out),
        [
            "choices",
            "created",
            "id",
            "model",
            "object",
            "system_fingerprint",
            "usage"
        ]
    );
    assert!(out["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(out["object"], "text_completion");
    assert_eq!(
        keys(&out["choices"][0]),
        ["finish_reason", "index", "logprobs", "text"]
    );
    assert_eq!(out["choices"][0]["text"], "Hello! You said: once upon");
    assert_eq!(out["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        out["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7})
    );
    let req = server.backend.last_request();
    assert_eq!(req.prompt, Prompt::Text("once upon".into()));
    assert_eq!(req.max_tokens, Some(16), "OpenAI's default for completions");

    // echo, a one-element prompt list, legacy logprobs.
    let (status, out) = post(
        &server,
        "/v1/completions",
        &json!({"model": "fake-model", "prompt": ["go"], "echo": true, "logprobs": 1,
                "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["choices"][0]["text"], "goHello! You");
    assert_eq!(out["choices"][0]["finish_reason"], "length");
    assert_eq!(
        out["choices"][0]["logprobs"],
        json!({"tokens": ["Hello!", " You"], "token_logprobs": [-0.125, -0.25],
               "top_logprobs": [{"Hello!": -0.125}, {" You": -0.25}], "text_offset": [2, 8]})
    );
    server.stop().await;
}

#[tokio::test]
async fn completions_stream() {
    let server = TestServer::start(ApiConfig::default()).await;
    let body = json!({"model": "fake-model", "prompt": "a b", "stream": true,
                      "stream_options": {"include_usage": true}});
    let (status, ct, text) = stream_body(&server, "/v1/completions", &body).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/event-stream"));
    let (events, done) = sse_json(&text);
    assert!(done);
    assert_eq!(events.len(), 5 + 1 + 1, "{text}");
    let text: String = events[..5]
        .iter()
        .map(|e| {
            assert_eq!(e["object"], "text_completion");
            assert_eq!(e["choices"][0]["finish_reason"], Value::Null);
            assert_eq!(e["usage"], Value::Null);
            e["choices"][0]["text"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(text, "Hello! You said: a b");
    assert_eq!(events[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(events[6]["choices"], json!([]));
    assert_eq!(events[6]["usage"]["total_tokens"], 7);
    server.stop().await;
}

#[tokio::test]
async fn request_errors_are_openai_shaped() {
    let server = TestServer::start(ApiConfig::default()).await;
    // (path, body, status, param, code)
    type Case = (
        &'static str,
        &'static str,
        u16,
        Option<&'static str>,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "/v1/chat/completions",
            "{not json",
            400,
            None,
            Some("invalid_json"),
        ),
        ("/v1/chat/completions", "", 400, None, None),
        ("/v1/chat/completions", "[1, 2]", 400, None, None),
        (
            "/v1/chat/completions",
            r#"{"messages": []}"#,
            400,
            Some("model"),
            Some("missing_required_parameter"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": 7, "messages": []}"#,
            400,
            Some("model"),
            Some("invalid_type"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-model", "messages": "hi"}"#,
            400,
            Some("messages"),
            Some("invalid_type"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-model", "messages": []}"#,
            400,
            Some("messages"),
            Some("invalid_value"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}"#,
            400,
            Some("temperature"),
            Some("invalid_type"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "temperature": 3}"#,
            400,
            Some("temperature"),
            Some("invalid_value"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}"#,
            400,
            Some("stream"),
            Some("invalid_type"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "n": 2}"#,
            400,
            Some("n"),
            Some("invalid_value"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}"#,
            400,
            Some("max_tokens"),
            Some("invalid_value"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}"#,
            400,
            Some("top_logprobs"),
            Some("invalid_value"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 21}"#,
            400,
            Some("top_logprobs"),
            Some("invalid_value"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-model", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}"#,
            400,
            Some("messages[0].content[0]"),
            Some("invalid_value"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}"#,
            404,
            Some("model"),
            Some("model_not_found"),
        ),
        (
            "/v1/chat/completions",
            r#"{"model": "fake-tiny", "messages": [{"role": "user", "content": "one two three four five six seven eight nine"}]}"#,
            400,
            Some("messages"),
            Some("context_length_exceeded"),
        ),
        (
            "/v1/completions",
            r#"{"model": "fake-model"}"#,
            400,
            Some("prompt"),
            Some("missing_required_parameter"),
        ),
        (
            "/v1/completions",
            r#"{"model": "fake-model", "prompt": [1, 2, 3]}"#,
            400,
            Some("prompt"),
            Some("invalid_value"),
        ),
        (
            "/v1/completions",
            r#"{"model": "fake-model", "prompt": ["a", "b"]}"#,
            400,
            Some("prompt"),
            Some("invalid_value"),
        ),
        (
            "/v1/completions",
            r#"{"model": "fake-model", "prompt": "x", "n": 3}"#,
            400,
            Some("n"),
            Some("invalid_value"),
        ),
        (
            "/v1/completions",
            r#"{"model": "fake-model", "prompt": "x", "logprobs": 6}"#,
            400,
            Some("logprobs"),
            Some("invalid_value"),
        ),
        (
            "/v1/completions",
            r#"{"model": "fake-tiny", "prompt": "one two three four five six seven eight nine"}"#,
            400,
            Some("prompt"),
            Some("context_length_exceeded"),
        ),
        (
            "/v1/completions",
            r#"{"model": "nope", "prompt": "x"}"#,
            404,
            Some("model"),
            Some("model_not_found"),
        ),
    ];
    for (path, body, status, param, code) in cases {
        let (got, out) = post_raw(&server, path, body).await;
        assert_eq!(got.as_u16(), status, "{path} {body}: {out}");
        let error = assert_openai_error(&out);
        assert_eq!(error["param"].as_str(), param, "{body}: {out}");
        assert_eq!(error["code"].as_str(), code, "{body}: {out}");
        assert_eq!(error["type"], "invalid_request_error", "{body}");
    }

    // Unknown route and wrong method: JSON too, never axum's plain text.
    let resp = client()
        .get(server.url("/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_openai_error(&resp.json().await.unwrap());
    let resp = client()
        .get(server.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert!(resp.headers().contains_key("allow"));
    assert_openai_error(&resp.json().await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn huge_bodies_get_413() {
    let config = ApiConfig {
        body_limit: 64 * 1024,
        ..ApiConfig::default()
    };
    let server = TestServer::start(config).await;
    let big = "x".repeat(256 * 1024);
    let body = chat(&big);
    // With a Content-Length.
    let (status, out) = post(&server, "/v1/chat/completions", &body).await;
    assert_eq!(status, 413);
    assert_eq!(assert_openai_error(&out)["code"], "request_too_large");
    // Chunked, with no declared length.
    let bytes = serde_json::to_vec(&body).unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(8192).map(|c| Ok(c.to_vec())).collect();
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_openai_error(&resp.json().await.unwrap());
    // A body under the limit still works.
    let (status, _) = post(&server, "/v1/chat/completions", &chat("small")).await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test]
async fn error_after_streaming_began_is_an_event() {
    let server = TestServer::start(ApiConfig::default()).await;
    let body = json!({"model": "fake-fails", "messages": [{"role": "user", "content": "x"}],
                      "stream": true});
    let (status, _, text) = stream_body(&server, "/v1/chat/completions", &body).await;
    assert_eq!(status, 200);
    let (events, done) = sse_json(&text);
    assert!(!done, "no [DONE] after an error: {text}");
    assert_eq!(events.len(), 3, "{text}");
    assert_eq!(events[1]["choices"][0]["delta"]["content"], "Partial");
    let error = assert_openai_error(&events[2]);
    assert_eq!(error["type"], "server_error");
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("shard 2 went away"));

    // Not streaming: the same failure is a 500.
    let body = json!({"model": "fake-fails", "messages": [{"role": "user", "content": "x"}]});
    let (status, out) = post(&server, "/v1/chat/completions", &body).await;
    assert_eq!(status, 500);
    assert_openai_error(&out);
    server.stop().await;
}

#[tokio::test]
async fn api_key_guards_v1_and_metrics() {
    let config = ApiConfig {
        api_key: Some("sekrit".into()),
        ..ApiConfig::default()
    };
    let server = TestServer::start(config).await;
    for path in [
        "/v1/models",
        "/v1/topology",
        "/v1/downloads",
        "/metrics",
        "/v1/models/fake-model",
    ] {
        let resp = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(assert_openai_error(&body)["code"], "invalid_api_key");

        let resp = client()
            .get(server.url(path))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path}");
        let resp = client()
            .get(server.url(path))
            .bearer_auth("sekrit")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        server.backend.requests.lock().unwrap().len(),
        0,
        "rejected before the backend"
    );
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth("sekrit")
        .json(&chat("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The page and health stay open.
    for path in ["/", "/health", "/static/app.js"] {
        let resp = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    server.stop().await;
}

#[tokio::test]
async fn cors_and_request_ids() {
    let config = ApiConfig {
        api_key: Some("k".into()),
        ..ApiConfig::default()
    };
    let server = TestServer::start(config).await;
    // A browser's preflight is answered without the key.
    let resp = client()
        .request(reqwest::Method::OPTIONS, server.url("/v1/chat/completions"))
        .header("origin", "http://example.test")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let resp = client()
        .get(server.url("/v1/models"))
        .header("origin", "http://example.test")
        .bearer_auth("k")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("x-request-id"));

    // Request ids: echoed when given, made when not (errors included).
    let resp = client()
        .get(server.url("/health"))
        .header("x-request-id", "my-trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "my-trace-123");
    let resp = client().get(server.url("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let made = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(made.starts_with("req-"), "{made}");
    let other = client().get(server.url("/health")).send().await.unwrap();
    assert_ne!(other.headers()["x-request-id"].to_str().unwrap(), made);
    server.stop().await;

    // CORS off: no headers.
    let server = TestServer::start(ApiConfig {
        cors: Cors::Disabled,
        ..ApiConfig::default()
    })
    .await;
    let resp = client()
        .get(server.url("/v1/models"))
        .header("origin", "http://example.test")
        .send()
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    server.stop().await;
}

#[tokio::test]
async fn fifty_streams_against_eight_slots() {
    let config = ApiConfig {
        max_concurrent: 8,
        max_queued: 8,
        queue_timeout: Duration::from_secs(5),
        ..ApiConfig::default()
    };
    let backend = FakeBackend::new(Duration::from_millis(25));
    let server = TestServer::start_with(config, backend).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let url = server.url("/v1/chat/completions");
            tokio::spawn(async move {
                let body = json!({"model": "fake-model", "stream": true,
                                  "messages": [{"role": "user", "content": format!("n{i}")}]});
                let resp = client().post(url).json(&body).send().await.unwrap();
                let status = resp.status();
                let retry_after = resp.headers().get("retry-after").cloned();
                let text = resp.text().await.unwrap();
                (status, retry_after, text)
            })
        })
        .collect();
    let mut ok = 0;
    let mut busy = 0;
    for task in tasks {
        let (status, retry_after, text) = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("no request hangs")
            .unwrap();
        match status.as_u16() {
            200 => {
                let (events, done) = sse_json(&text);
                assert!(done, "{text}");
                assert_eq!(
                    events.last().unwrap()["choices"][0]["finish_reason"],
                    "stop"
                );
                ok += 1;
            }
            429 => {
                assert!(retry_after.is_some());
                let body: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(assert_openai_error(&body)["code"], "rate_limit_exceeded");
                busy += 1;
            }
            other => panic!("unexpected {other}: {text}"),
        }
    }
    assert_eq!(ok + busy, 50);
    assert!(
        ok >= 8,
        "at least the slots and some of the queue were served: {ok} ok"
    );
    assert!(
        busy >= 50 - 16,
        "beyond 8 running and 8 queued, requests are refused: {busy}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // Afterwards the server serves normally and every slot is free.
    let (status, _) = post(&server, "/v1/chat/completions", &chat("after")).await;
    assert_eq!(status, 200);
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("exo_api_generations_in_flight 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("exo_api_generations_queued 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("exo_api_rejected_total {busy}")),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn client_disconnect_cancels_the_generation() {
    let config = ApiConfig {
        max_concurrent: 1,
        queue_timeout: Duration::ZERO,
        ..ApiConfig::default()
    };
    let server = TestServer::start_with(config, FakeBackend::new(Duration::from_millis(10))).await;
    let body = json!({"model": "fake-endless", "stream": true,
                      "messages": [{"role": "user", "content": "go"}]});
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    while seen.matches("tick").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("tokens flow")
            .expect("stream open")
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert_eq!(server.backend.cancelled(), 0);
    drop(stream);
    assert!(
        server
            .backend
            .wait_cancelled(1, Duration::from_secs(5))
            .await,
        "the backend saw its receiver dropped"
    );
    // The slot is free again: the single slot takes a new request at once.
    let (status, out) = post(&server, "/v1/chat/completions", &chat("again")).await;
    assert_eq!(status, 200, "{out}");
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("exo_api_client_disconnects_total 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn slow_header_clients_do_not_block_others() {
    let config = ApiConfig {
        header_read_timeout: Duration::from_secs(3),
        ..ApiConfig::default()
    };
    let server = TestServer::start(config).await;
    let opened = Instant::now();
    let mut slow = Vec::new();
    for i in 0..20 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        if i % 2 == 0 {
            // Half a request head, then silence.
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
        }
        slow.push(s);
    }
    // Others are served meanwhile.
    let t = Instant::now();
    for _ in 0..5 {
        let resp = client().get(server.url("/health")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // And the slow connections are closed once the header timeout passes.
    for mut s in slow {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the server closed the slow connection");
        assert!(
            opened.elapsed() >= Duration::from_millis(2500),
            "closed by the timeout, not before"
        );
        let head = String::from_utf8_lossy(&buf);
        assert!(buf.is_empty() || head.starts_with("HTTP/1.1 408"), "{head}");
    }
    let resp = client().get(server.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn client_leaving_a_non_streaming_request_cancels_it() {
    let server = TestServer::start_with(
        ApiConfig::default(),
        FakeBackend::new(Duration::from_millis(10)),
    )
    .await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let body = json!({"model": "fake-endless", "messages": [{"role": "user", "content": "go"}]});
    let err = impatient
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(
        server
            .backend
            .wait_cancelled(1, Duration::from_secs(5))
            .await,
        "the handler (and its Generation) was dropped with the connection"
    );
    server.stop().await;
}

#[tokio::test]
async fn queued_requests_wait_briefly_then_get_429() {
    let config = ApiConfig {
        max_concurrent: 1,
        max_queued: 1,
        queue_timeout: Duration::from_secs(1),
        ..ApiConfig::default()
    };
    let server = TestServer::start_with(config, FakeBackend::new(Duration::from_millis(10))).await;
    // One endless stream holds the only slot.
    let body = json!({"model": "fake-endless", "stream": true,
                      "messages": [{"role": "user", "content": "go"}]});
    let holder = client()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(holder.status(), 200);

    let queued = {
        let url = server.url("/v1/chat/completions");
        tokio::spawn(async move {
            let t = Instant::now();
            let resp = client().post(url).json(&chat("wait")).send().await.unwrap();
            (resp.status(), t.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The queue (of one) is full: refused at once.
    let t = Instant::now();
    let (status, body) = post(&server, "/v1/chat/completions", &chat("no room")).await;
    assert_eq!(status, 429, "{body}");
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    // The queued one waited its bounded time, then was refused too.
    let (status, waited) = queued.await.unwrap();
    assert_eq!(status, 429);
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // Once the slot frees, a queued request is served.
    let queued = {
        let url = server.url("/v1/chat/completions");
        tokio::spawn(async move {
            client()
                .post(url)
                .json(&chat("next"))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(holder);
    assert_eq!(queued.await.unwrap(), 200);
    server.stop().await;
}
