//! The Anthropic, Ollama and Responses surfaces and tool calls on every surface, over real HTTP
//! against the fake backend: shapes, stream framing, auth headers and error shapes.

mod common;

use common::{client, sse_json, TestServer};
use exo_api::{ApiConfig, Prompt};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn post(
    server: &TestServer,
    path: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (StatusCode, String, String) {
    let mut req = client().post(server.url(path)).json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `(event name, data)` of a named-event SSE body.
fn named_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event:"))?
                .trim()
                .to_owned();
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|l| l.strip_prefix(' ').unwrap_or(l))
                .collect();
            Some((name, json_of(&data)))
        })
        .collect()
}

fn weather_tool_openai() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

#[tokio::test]
async fn anthropic_message_shape_and_stream_events() {
    let server = TestServer::start(ApiConfig::default()).await;
    let body = json!({"model": "fake-model", "max_tokens": 64, "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello"},
                     {"role": "user", "content": [{"type": "text", "text": "again"}]}]});
    let (status, _, text) = post(&server, "/v1/messages", &body, &[]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v = json_of(&text);
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert!(v["id"].as_str().unwrap().starts_with("msg-"));
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "Hello! You said: again"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert_eq!(v["usage"]["output_tokens"], 4);
    // System first, then the turns in order.
    let Prompt::Chat(msgs) = server.backend.last_request().prompt else {
        panic!("chat")
    };
    let roles: Vec<&str> = msgs.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    stream["max_tokens"] = json!(2);
    let (status, ct, text) = post(&server, "/v1/messages", &stream, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let events = named_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str());
    }
    let deltas: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(deltas, "Hello! You");
    assert_eq!(events[6].1["delta"]["stop_reason"], "max_tokens");
    assert_eq!(events[6].1["usage"]["output_tokens"], 2);
    server.stop().await;
}

#[tokio::test]
async fn anthropic_tools_round_trip_and_errors() {
    let server = TestServer::start(ApiConfig::default()).await;
    let tools = json!([{"name": "get_weather", "description": "Weather now",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let body = json!({"model": "fake-model", "max_tokens": 64, "tools": tools,
        "tool_choice": {"type": "tool", "name": "get_weather"},
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let (status, _, text) = post(&server, "/v1/messages", &body, &[]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v = json_of(&text);
    assert_eq!(v["stop_reason"], "tool_use");
    let block = &v["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "get_weather");
    assert_eq!(block["input"], json!({"city": "Paris"}));
    // The forced tool became a grammar for its call.
    let req = server.backend.last_request();
    let grammar = req.grammar.expect("a grammar for the forced tool");
    assert_eq!(grammar["properties"]["name"]["const"], "get_weather");
    assert_eq!(req.tools[0].name, "get_weather");

    let id = block["id"].as_str().unwrap();
    let follow = json!({"model": "fake-model", "max_tokens": 64, "tools": tools, "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [block]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": id, "content": "21C sunny"}]},
    ]});
    let (status, _, text) = post(&server, "/v1/messages", &follow, &[]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        json_of(&text)["content"][0]["text"],
        "The tool said: 21C sunny"
    );
    let Prompt::Chat(msgs) = server.backend.last_request().prompt else {
        panic!("chat")
    };
    assert_eq!(msgs[1].tool_calls[0].name, "get_weather");
    assert_eq!(msgs[2].role, "tool");
    assert_eq!(msgs[2].tool_call_id.as_deref(), Some(id));

    // Streamed, the call is a tool_use block with its input as one JSON delta.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let (_, _, text) = post(&server, "/v1/messages", &stream, &[]).await;
    let events = named_events(&text);
    let start = events
        .iter()
        .find(|(n, _)| n == "content_block_start")
        .unwrap();
    assert_eq!(start.1["content_block"]["type"], "tool_use");
    let partial = events
        .iter()
        .find_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .unwrap();
    assert_eq!(json_of(partial), json!({"city": "Paris"}));

    // Errors in Anthropic's shape.
    let (status, _, text) = post(
        &server,
        "/v1/messages",
        &json!({"model": "nope", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let e = json_of(&text);
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "not_found_error");
    let (status, _, text) = post(
        &server,
        "/v1/messages",
        &json!({"model": "fake-model", "messages": [{"role": "user", "content": "x"}]}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&text)["error"]["type"], "invalid_request_error");
    assert!(json_of(&text)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_tokens"));
    server.stop().await;
}

#[tokio::test]
async fn every_surface_takes_the_key_in_its_own_header() {
    let config = ApiConfig {
        api_key: Some("k3y".into()),
        ..ApiConfig::default()
    };
    let server = TestServer::start(config).await;
    let msg = json!({"model": "fake-model", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]});
    for headers in [
        vec![("x-api-key", "k3y")],
        vec![("authorization", "Bearer k3y")],
    ] {
        let (status, _, text) = post(&server, "/v1/messages", &msg, &headers).await;
        assert_eq!(status, StatusCode::OK, "{headers:?}: {text}");
    }
    let (status, _, text) = post(&server, "/v1/messages", &msg, &[("x-api-key", "wrong")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json_of(&text)["error"]["type"], "authentication_error");

    let ollama = json!({"model": "fake-model", "stream": false, "messages": [{"role": "user", "content": "x"}]});
    let (status, _, text) = post(&server, "/api/chat", &ollama, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        json_of(&text)["error"]
            .as_str()
            .unwrap()
            .contains("API key"),
        "{text}"
    );
    let (status, _, _) = post(
        &server,
        "/api/chat",
        &ollama,
        &[("authorization", "Bearer k3y")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, text) = post(
        &server,
        "/v1/responses",
        &json!({"model": "fake-model", "input": "x"}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(json_of(&text)["error"]["message"].is_string());
    server.stop().await;
}

#[tokio::test]
async fn ollama_models_chat_generate_and_errors() {
    let server = TestServer::start(ApiConfig::default()).await;
    let tags = json_of(
        &client()
            .get(server.url("/api/tags"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"fake-model"), "{tags}");
    assert_eq!(tags["models"][0]["modified_at"], "2023-11-14T22:13:20Z");
    let ps = json_of(
        &client()
            .get(server.url("/api/ps"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(!ps["models"].as_array().unwrap().is_empty());
    let version = json_of(
        &client()
            .get(server.url("/api/version"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(version["version"].is_string());
    let (status, _, text) = post(&server, "/api/show", &json!({"model": "fake-model"}), &[]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(json_of(&text)["model_info"]["context_length"], 4096);
    let (status, _, text) = post(&server, "/api/show", &json!({"model": "nope"}), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json_of(&text), json!({"error": "model 'nope' not found"}));

    // Streaming is the default: NDJSON lines, the last one done with counts.
    let body = json!({"model": "fake-model", "messages": [{"role": "user", "content": "hi there"}],
                      "options": {"temperature": 0, "num_predict": 3, "seed": 7, "stop": ["zzz"], "top_p": 0.5}});
    let (status, ct, text) = post(&server, "/api/chat", &body, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ct, "application/x-ndjson");
    let lines: Vec<Value> = text.lines().map(json_of).collect();
    assert_eq!(lines.len(), 4, "{text}");
    let streamed: String = lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(streamed, "Hello! You said:");
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "length");
    assert_eq!(last["eval_count"], 3);
    assert!(last["prompt_eval_count"].as_u64().unwrap() > 0);
    assert!(last["total_duration"].as_u64().unwrap() > 0);
    let req = server.backend.last_request();
    assert_eq!(
        (
            req.sampling.temperature,
            req.sampling.top_p,
            req.sampling.seed,
            req.max_tokens
        ),
        (0.0, 0.5, 7, Some(3))
    );
    assert_eq!(req.stop, ["zzz"]);

    let (status, _, text) = post(
        &server,
        "/api/generate",
        &json!({"model": "fake-model", "prompt": "hey", "system": "sys", "stream": false}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v = json_of(&text);
    assert_eq!(v["response"], "Hello! You said: hey");
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "stop");
    let (status, _, text) = post(
        &server,
        "/api/generate",
        &json!({"model": "fake-model", "prompt": "raw text", "raw": true, "stream": false}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(&text)["response"], "Hello! You said: raw text");
    assert!(matches!(
        server.backend.last_request().prompt,
        Prompt::Text(_)
    ));

    // Tools: calls come back with their arguments as objects.
    let (status, _, text) = post(
        &server,
        "/api/chat",
        &json!({"model": "fake-model", "stream": false,
        "tools": weather_tool_openai(), "messages": [{"role": "user", "content": "Weather?"}]}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v = json_of(&text);
    assert_eq!(
        v["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(
        v["message"]["tool_calls"][0]["function"]["arguments"],
        json!({"city": "Paris"})
    );
    assert_eq!(v["message"]["content"], "");
    // `format` becomes a grammar.
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    post(
        &server,
        "/api/chat",
        &json!({"model": "fake-model", "stream": false, "format": schema,
        "messages": [{"role": "user", "content": "x"}]}),
        &[],
    )
    .await;
    assert_eq!(server.backend.last_request().grammar, Some(schema));

    // Errors: Ollama's shape, also as the last line of a failing stream.
    let (status, _, text) = post(
        &server,
        "/api/chat",
        &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json_of(&text)["error"].as_str().unwrap().contains("nope"));
    let (status, _, text) = post(&server, "/api/chat", &json!({"model": "fake-model", "messages": [{"role": "user", "content": "x"}], "options": {"temperature": 9}}), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json_of(&text)["error"]
        .as_str()
        .unwrap()
        .contains("temperature"));
    let (_, _, text) = post(
        &server,
        "/api/chat",
        &json!({"model": "fake-fails", "messages": [{"role": "user", "content": "x"}]}),
        &[],
    )
    .await;
    let last = json_of(text.lines().last().unwrap());
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("shard 2 went away"),
        "{text}"
    );
    let resp = client()
        .get(server.url("/api/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(json_of(&resp.text().await.unwrap())["error"].is_string());
    server.stop().await;
}

#[tokio::test]
async fn openai_chat_tool_calls_streamed_and_not() {
    let server = TestServer::start(ApiConfig::default()).await;
    let body = json!({"model": "fake-model", "tools": weather_tool_openai(),
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let (status, _, text) = post(&server, "/v1/chat/completions", &body, &[]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v = json_of(&text);
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        json_of(call["function"]["arguments"].as_str().unwrap()),
        json!({"city": "Paris"})
    );

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let (_, _, text) = post(&server, "/v1/chat/completions", &stream, &[]).await;
    let (chunks, done) = sse_json(&text);
    assert!(done);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "", "the call's text is not content");
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0][0]["index"], 0);
    assert_eq!(calls[0][0]["function"]["name"], "get_weather");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // The result goes back as a tool message.
    let id = call["id"].as_str().unwrap();
    let follow = json!({"model": "fake-model", "tools": weather_tool_openai(), "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": id, "content": "21C"},
    ]});
    let (status, _, text) = post(&server, "/v1/chat/completions", &follow, &[]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v = json_of(&text);
    assert_eq!(v["choices"][0]["message"]["content"], "The tool said: 21C");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let Prompt::Chat(msgs) = server.backend.last_request().prompt else {
        panic!("chat")
    };
    assert_eq!(
        msgs[1].tool_calls[0].arguments_value(),
        json!({"city": "Paris"})
    );
    assert_eq!(msgs[2].tool_call_id.as_deref(), Some(id));

    // Formats become grammars; a forced tool the request lacks is a 400.
    let schema =
        json!({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]});
    let (status, _, _) = post(&server, "/v1/chat/completions", &json!({"model": "fake-model",
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema, "strict": true}}}), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.backend.last_request().grammar, Some(schema));
    let (status, _, text) = post(
        &server,
        "/v1/chat/completions",
        &json!({"model": "fake-model",
        "messages": [{"role": "user", "content": "x"}], "tools": weather_tool_openai(),
        "tool_choice": {"type": "function", "function": {"name": "other"}}}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json_of(&text)["error"]["param"], "tool_choice");
    server.stop().await;
}

#[tokio::test]
async fn responses_text_items_stream_and_tools() {
    let server = TestServer::start(ApiConfig::default()).await;
    let (status, _, text) = post(
        &server,
        "/v1/responses",
        &json!({"model": "fake-model", "input": "hello", "instructions": "Be brief."}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v = json_of(&text);
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(
        v["output"][0]["content"][0],
        json!({"type": "output_text", "text": "Hello! You said: hello", "annotations": []})
    );
    assert_eq!(v["usage"]["output_tokens"], 4);
    let Prompt::Chat(msgs) = server.backend.last_request().prompt else {
        panic!("chat")
    };
    assert_eq!(msgs[0].role, "system");

    let (_, ct, text) = post(&server, "/v1/responses",
        &json!({"model": "fake-model", "input": [{"role": "user", "content": [{"type": "input_text", "text": "yo"}]}],
                "stream": true, "max_output_tokens": 2}), &[]).await;
    assert!(ct.starts_with("text/event-stream"));
    let events = named_events(&text);
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"response.created"));
    assert_eq!(names.last(), Some(&"response.incomplete"));
    let deltas: String = events
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "Hello! You");
    let seqs: Vec<u64> = events
        .iter()
        .map(|(_, d)| d["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());

    let tools = json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}]);
    let (status, _, text) = post(
        &server,
        "/v1/responses",
        &json!({"model": "fake-model", "input": "Weather?",
        "tools": tools, "tool_choice": "required"}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v = json_of(&text);
    let call = &v["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(
        json_of(call["arguments"].as_str().unwrap()),
        json!({"city": "Paris"})
    );
    let (status, _, text) = post(&server, "/v1/responses", &json!({"model": "fake-model", "tools": tools, "input": [
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": call["call_id"], "name": "get_weather", "arguments": call["arguments"]},
        {"type": "function_call_output", "call_id": call["call_id"], "output": "21C"},
    ]}), &[]).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        json_of(&text)["output"][0]["content"][0]["text"],
        "The tool said: 21C"
    );
    let (status, _, text) = post(
        &server,
        "/v1/responses",
        &json!({"model": "nope", "input": "x"}),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json_of(&text)["error"]["message"].is_string());
    server.stop().await;
}
