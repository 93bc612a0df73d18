//! `POST /v1/messages`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};

use crate::backend::{GenerateRequest, Prompt, SamplingParams};
use crate::core::chat::{self, ChatMessage, OutputFormat, Tool, ToolCall, ToolChoice};
use crate::core::generate::{self, new_id};
use crate::core::AppState;
use crate::error::ApiError;
use crate::extract::{typed, JsonObject};
use crate::middleware::RequestContext;
use crate::surfaces::anthropic::stop_reason;
use crate::surfaces::anthropic::stream::MessageFrames;
use crate::surfaces::anthropic::types::{self, MessagesRequest};

/// How many stop sequences a request may carry.
const MAX_STOPS: usize = 16;

pub async fn messages(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let req: MessagesRequest = typed(body)?;
    if req.max_tokens < 1 {
        return Err(ApiError::invalid_param(
            "max_tokens",
            format!("max_tokens: {} must be at least 1.", req.max_tokens),
        ));
    }
    let range = |name: &str, v: Option<f32>, hi: f32| match v {
        Some(x) if !(x.is_finite() && (0.0..=hi).contains(&x)) => Err(ApiError::invalid_param(
            name,
            format!("{name}: {x} is not between 0 and {hi}."),
        )),
        _ => Ok(()),
    };
    range("temperature", req.temperature, 1.0)?;
    range("top_p", req.top_p, 1.0)?;
    let stop: Vec<String> = req
        .stop_sequences
        .unwrap_or_default()
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect();
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid_param(
            "stop_sequences",
            format!("stop_sequences: at most {MAX_STOPS} are allowed."),
        ));
    }
    let mut messages = Vec::new();
    if let Some(system) = req.system {
        let text = text_of(&system, "system")?;
        if !text.is_empty() {
            messages.push(ChatMessage::new("system", text));
        }
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "messages: at least one message is required.",
        ));
    }
    for (i, m) in req.messages.into_iter().enumerate() {
        convert(m, i, &mut messages)?;
    }
    let tools = req
        .tools
        .unwrap_or_default()
        .into_iter()
        .map(|t| Tool {
            name: t.name,
            description: t.description,
            parameters: t.input_schema.unwrap_or_else(|| json!({"type": "object"})),
        })
        .collect();
    let choice = match req.tool_choice {
        None => ToolChoice::Auto,
        Some(c) => match (c.kind.as_str(), c.name) {
            ("auto", _) => ToolChoice::Auto,
            ("any", _) => ToolChoice::Required,
            ("none", _) => ToolChoice::None,
            ("tool", Some(name)) => ToolChoice::Function(name),
            _ => {
                return Err(ApiError::invalid_param(
                    "tool_choice",
                    "tool_choice: use {\"type\": \"auto\" | \"any\" | \"none\"} or \
                     {\"type\": \"tool\", \"name\": ...}.",
                ))
            }
        },
    };
    let output = chat::plan(tools, choice, OutputFormat::Text, "tool_choice")?;
    let id = new_id("msg");
    let run = generate::start(
        &state,
        ctx.received,
        GenerateRequest {
            max_tokens: Some(usize::try_from(req.max_tokens).unwrap_or(usize::MAX)),
            sampling: SamplingParams {
                // Anthropic's default temperature is 1.0.
                temperature: req.temperature.unwrap_or(1.0),
                top_p: req.top_p.unwrap_or(1.0),
                top_k: req
                    .top_k
                    .map_or(0, |k| u32::try_from(k.max(0)).unwrap_or(u32::MAX)),
                ..GenerateRequest::default_sampling()
            },
            stop,
            tools: output.tools,
            grammar: output.grammar,
            ..GenerateRequest::new(id.clone(), req.model.clone(), Prompt::Chat(messages))
        },
        output.mode,
    )
    .await?;
    if req.stream.unwrap_or(false) {
        let frames = MessageFrames::new(id, req.model, run.prompt_tokens());
        return Ok(crate::core::framing::sse(crate::core::framing::frames(
            run, frames,
        )));
    }
    let done = run.collect().await?;
    let mut content: Vec<Value> = Vec::new();
    if !done.text.is_empty() {
        content.push(json!({ "type": "text", "text": done.text }));
    }
    content.extend(done.calls.iter().map(tool_use));
    Ok(Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": stop_reason(done.finish_reason),
        "stop_sequence": null,
        "usage": {
            "input_tokens": done.usage.prompt_tokens,
            "output_tokens": done.usage.completion_tokens,
        },
    }))
    .into_response())
}

/// A `tool_use` content block.
pub fn tool_use(call: &ToolCall) -> Value {
    json!({
        "type": "tool_use",
        "id": call.id,
        "name": call.name,
        "input": call.arguments_value(),
    })
}

/// The text of a string or of a list of text blocks.
fn text_of(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            for (j, b) in blocks.iter().enumerate() {
                match (b.get("type").and_then(Value::as_str), b.get("text")) {
                    (Some("text"), Some(Value::String(t))) => texts.push(t.clone()),
                    (kind, _) => {
                        return Err(ApiError::invalid_param(
                            &format!("{param}.{j}"),
                            format!(
                                "{param}.{j}: expected a text block, got type {}.",
                                kind.unwrap_or("(none)")
                            ),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Value::Null => Ok(String::new()),
        _ => Err(ApiError::invalid_param(
            param,
            format!("{param}: expected a string or a list of text blocks."),
        )),
    }
}

/// One Anthropic message as shared messages: `tool_result` blocks become `tool` turns (before
/// the user's text), `tool_use` blocks the assistant's calls.
fn convert(m: types::InputMessage, i: usize, out: &mut Vec<ChatMessage>) -> Result<(), ApiError> {
    let param = format!("messages.{i}");
    if m.role != "user" && m.role != "assistant" {
        return Err(ApiError::invalid_param(
            &format!("{param}.role"),
            format!("{param}.role: '{}' is not 'user' or 'assistant'.", m.role),
        ));
    }
    let blocks = match m.content {
        Value::String(s) => {
            out.push(ChatMessage::new(m.role, s));
            return Ok(());
        }
        Value::Array(blocks) => blocks,
        _ => {
            return Err(ApiError::invalid_param(
                &format!("{param}.content"),
                format!("{param}.content: expected a string or a list of content blocks."),
            ))
        }
    };
    let mut text = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let where_ = format!("{param}.content.{j}");
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push(
                b.get("text")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            ),
            Some("tool_use") if m.role == "assistant" => {
                let field = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_owned);
                let (Some(id), Some(name)) = (field("id"), field("name")) else {
                    return Err(ApiError::invalid_param(
                        &where_,
                        format!("{where_}: a tool_use block needs 'id' and 'name'."),
                    ));
                };
                let input = b.get("input").cloned().unwrap_or(json!({}));
                calls.push(ToolCall {
                    id,
                    name,
                    arguments: input.to_string(),
                });
            }
            Some("tool_result") if m.role == "user" => {
                let id = b
                    .get("tool_use_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::invalid_param(
                            &where_,
                            format!("{where_}: a tool_result block needs 'tool_use_id'."),
                        )
                    })?;
                let content = text_of(b.get("content").unwrap_or(&Value::Null), &where_)?;
                let mut result = ChatMessage::new("tool", content);
                result.tool_call_id = Some(id.to_owned());
                out.push(result);
            }
            Some("thinking") | Some("redacted_thinking") => {}
            kind => {
                return Err(ApiError::invalid_param(
                    &where_,
                    format!(
                        "{where_}: content blocks of type {} are not supported here \
                         (text, tool_use in assistant turns, tool_result in user turns).",
                        kind.unwrap_or("(none)")
                    ),
                ))
            }
        }
    }
    let text = text.join("\n");
    if !text.is_empty() || !calls.is_empty() {
        let mut msg = ChatMessage::new(m.role, text);
        msg.tool_calls = calls;
        out.push(msg);
    }
    Ok(())
}
