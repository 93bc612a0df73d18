//! `POST /v1/responses`, OpenAI's Responses API: `input` as text or items (messages,
//! `function_call`, `function_call_output`), `instructions`, function `tools`, `text.format`
//! for structured output; streamed as named events (`response.created` …
//! `response.output_text.delta` … `response.completed`). Nothing is stored: there is no
//! `previous_response_id`.

use axum::extract::State;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::backend::{GenerateRequest, Prompt};
use crate::core::chat::{self as vocab, ChatMessage, FinishReason, ToolCall};
use crate::core::framing::{self, Frames};
use crate::core::generate::{self, new_id, unix_now, Usage};
use crate::core::AppState;
use crate::error::ApiError;
use crate::extract::{typed, JsonObject};
use crate::middleware::RequestContext;
use crate::surfaces::openai::sampling::SamplingFields;
use crate::surfaces::openai::tools;

#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    pub model: String,
    pub input: Value,
    pub instructions: Option<String>,
    pub max_output_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub stream: Option<bool>,
    pub tools: Option<Vec<ResponsesTool>>,
    pub tool_choice: Option<Value>,
    pub text: Option<TextOptions>,
    pub previous_response_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ResponsesTool {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: Option<String>,
    pub description: Option<String>,
    pub parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct TextOptions {
    pub format: Option<Value>,
}

pub async fn responses(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    if let Some(response) = super::upstream_route(&state, &body, "responses").await? {
        return Ok(response);
    }
    let req: ResponsesRequest = typed(body)?;
    if req.previous_response_id.is_some() {
        return Err(ApiError::invalid_param(
            "previous_response_id",
            "This server stores no responses: send the whole conversation in 'input'.",
        ));
    }
    let mut messages = Vec::new();
    if let Some(instructions) = req.instructions.filter(|s| !s.is_empty()) {
        messages.push(ChatMessage::new("system", instructions));
    }
    input(req.input, &mut messages)?;
    let defs = req
        .tools
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t.kind != "function" {
                return Err(ApiError::invalid_param(
                    &format!("tools[{i}].type"),
                    format!(
                        "Tools of type '{}' are not supported; use 'function'.",
                        t.kind
                    ),
                ));
            }
            tools::tool(
                t.name.unwrap_or_default(),
                t.description,
                t.parameters,
                &format!("tools[{i}].name"),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let output = vocab::plan(
        defs,
        tools::tool_choice(req.tool_choice, "tool_choice")?,
        tools::response_format(req.text.and_then(|t| t.format), "text.format")?,
        "tool_choice",
    )?;
    let sampling = SamplingFields {
        max_tokens: req.max_output_tokens.map(|v| ("max_output_tokens", v)),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: None,
        min_p: None,
        repeat_penalty: None,
        seed: None,
        stop: None,
        n: None,
        frequency_penalty: None,
        presence_penalty: None,
    }
    .check(None)?;
    let id = new_id("resp");
    let run = generate::start(
        &state,
        ctx.received,
        GenerateRequest {
            max_tokens: sampling.max_tokens,
            sampling: sampling.params,
            tools: output.tools,
            grammar: output.grammar,
            ..GenerateRequest::new(id.clone(), req.model.clone(), Prompt::Chat(messages))
        },
        output.mode,
    )
    .await?;
    let mut turn = Turn {
        id,
        model: req.model,
        created: unix_now(),
        message_id: new_id("msg"),
        text: String::new(),
        text_open: false,
        seq: 0,
    };
    if req.stream.unwrap_or(false) {
        return Ok(framing::sse(framing::frames(run, turn)));
    }
    let done = run.collect().await?;
    turn.text = done.text;
    Ok(Json(turn.response(
        "completed",
        done.finish_reason,
        &done.calls,
        Some(done.usage),
    ))
    .into_response())
}

/// The text of a content value: a string or `input_text` / `output_text` parts.
fn content_text(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("input_text" | "output_text" | "text"), Some(Value::String(t))) => {
                        texts.push(t.clone())
                    }
                    (kind, _) => {
                        return Err(ApiError::invalid_param(
                            &format!("{param}[{j}]"),
                            format!(
                                "Content parts of type '{}' are not supported: this server \
                                 serves text models.",
                                kind.unwrap_or("(none)")
                            ),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(ApiError::invalid_param(
            param,
            "Expected a string or content parts.",
        )),
    }
}

/// `input` as shared messages: a string is one user turn; items are messages, calls and
/// call outputs (consecutive calls join one assistant turn).
fn input(input: Value, out: &mut Vec<ChatMessage>) -> Result<(), ApiError> {
    let items = match input {
        Value::String(s) => {
            out.push(ChatMessage::new("user", s));
            return Ok(());
        }
        Value::Array(items) if !items.is_empty() => items,
        _ => {
            return Err(ApiError::invalid_param(
                "input",
                "'input' must be a string or a non-empty list of items.",
            ))
        }
    };
    for (i, item) in items.into_iter().enumerate() {
        let param = format!("input[{i}]");
        let field = |k: &str| item.get(k).and_then(Value::as_str).map(str::to_owned);
        match item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message")
        {
            "message" => {
                let role = match field("role").as_deref() {
                    Some("developer") | Some("system") => "system",
                    Some("user") => "user",
                    Some("assistant") => "assistant",
                    _ => return Err(ApiError::invalid_param(
                        &format!("{param}.role"),
                        "A message's role must be 'user', 'assistant', 'system' or 'developer'.",
                    )),
                };
                let text = content_text(
                    item.get("content").unwrap_or(&Value::Null),
                    &format!("{param}.content"),
                )?;
                out.push(ChatMessage::new(role, text));
            }
            "function_call" => {
                let (Some(call_id), Some(name)) = (field("call_id"), field("name")) else {
                    return Err(ApiError::invalid_param(
                        &param,
                        "A function_call item needs 'call_id' and 'name'.",
                    ));
                };
                let call = ToolCall {
                    id: call_id,
                    name,
                    arguments: field("arguments").unwrap_or_else(|| "{}".into()),
                };
                match out.last_mut() {
                    Some(last) if last.role == "assistant" => last.tool_calls.push(call),
                    _ => {
                        let mut m = ChatMessage::new("assistant", "");
                        m.tool_calls.push(call);
                        out.push(m);
                    }
                }
            }
            "function_call_output" => {
                let Some(call_id) = field("call_id") else {
                    return Err(ApiError::invalid_param(
                        &param,
                        "A function_call_output item needs 'call_id'.",
                    ));
                };
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => content_text(v, &format!("{param}.output"))?,
                    None => String::new(),
                };
                let mut m = ChatMessage::new("tool", output);
                m.tool_call_id = Some(call_id);
                out.push(m);
            }
            "reasoning" => {}
            other => {
                return Err(ApiError::invalid_param(
                    &format!("{param}.type"),
                    format!("Input items of type '{other}' are not supported."),
                ))
            }
        }
    }
    Ok(())
}

/// One response being built (and streamed).
struct Turn {
    id: String,
    model: String,
    created: u64,
    message_id: String,
    text: String,
    text_open: bool,
    seq: u64,
}

impl Turn {
    fn message_item(&self, status: &str) -> Value {
        let content = if self.text_open || status == "completed" {
            vec![json!({"type": "output_text", "text": self.text, "annotations": []})]
        } else {
            Vec::new()
        };
        json!({"type": "message", "id": self.message_id, "status": status, "role": "assistant", "content": content})
    }

    fn call_item(call: &ToolCall, arguments: &str, status: &str) -> Value {
        json!({"type": "function_call", "id": format!("fc_{}", call.id), "call_id": call.id,
               "name": call.name, "arguments": arguments, "status": status})
    }

    fn response(
        &self,
        status: &str,
        reason: FinishReason,
        calls: &[ToolCall],
        usage: Option<Usage>,
    ) -> Value {
        let mut output = Vec::new();
        if !self.text.is_empty() || (calls.is_empty() && status == "completed") {
            output.push(self.message_item("completed"));
        }
        output.extend(
            calls
                .iter()
                .map(|c| Self::call_item(c, &c.arguments, "completed")),
        );
        let (status, incomplete) = match (status, reason) {
            ("completed", FinishReason::Length) => {
                ("incomplete", json!({"reason": "max_output_tokens"}))
            }
            (s, _) => (s, Value::Null),
        };
        let usage = usage.map(|u| {
            json!({
                "input_tokens": u.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": u.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u.prompt_tokens + u.completion_tokens,
            })
        });
        json!({
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "error": null, "incomplete_details": incomplete, "instructions": null,
            "model": self.model, "output": output, "parallel_tool_calls": true,
            "tool_choice": "auto", "tools": [], "text": {"format": {"type": "text"}},
            "usage": usage, "metadata": {},
        })
    }

    fn event(&mut self, kind: &str, mut data: Value) -> SseEvent {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        SseEvent::default().event(kind).data(data.to_string())
    }
}

impl Frames for Turn {
    type Frame = SseEvent;

    fn start(&mut self) -> Vec<SseEvent> {
        let r = self.response("in_progress", FinishReason::Stop, &[], None);
        vec![
            self.event("response.created", json!({"response": r.clone()})),
            self.event("response.in_progress", json!({"response": r})),
        ]
    }

    fn text(&mut self, text: &str) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if !self.text_open {
            let item = self.message_item("in_progress");
            out.push(self.event(
                "response.output_item.added",
                json!({"output_index": 0, "item": item}),
            ));
            self.text_open = true;
            let id = self.message_id.clone();
            out.push(self.event(
                "response.content_part.added",
                json!({
                    "item_id": id, "output_index": 0, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []},
                }),
            ));
        }
        self.text.push_str(text);
        let id = self.message_id.clone();
        out.push(self.event(
            "response.output_text.delta",
            json!({
                "item_id": id, "output_index": 0, "content_index": 0, "delta": text, "logprobs": [],
            }),
        ));
        out
    }

    fn done(&mut self, reason: FinishReason, usage: Usage, calls: &[ToolCall]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let mut index = 0;
        if self.text_open {
            let id = self.message_id.clone();
            let text = self.text.clone();
            out.push(self.event("response.output_text.done", json!({
                "item_id": id, "output_index": 0, "content_index": 0, "text": text, "logprobs": [],
            })));
            out.push(self.event(
                "response.content_part.done",
                json!({
                    "item_id": id, "output_index": 0, "content_index": 0,
                    "part": {"type": "output_text", "text": text, "annotations": []},
                }),
            ));
            let item = self.message_item("completed");
            out.push(self.event(
                "response.output_item.done",
                json!({"output_index": 0, "item": item}),
            ));
            index = 1;
        }
        for call in calls {
            let item_id = format!("fc_{}", call.id);
            let added = Self::call_item(call, "", "in_progress");
            out.push(self.event(
                "response.output_item.added",
                json!({"output_index": index, "item": added}),
            ));
            out.push(self.event(
                "response.function_call_arguments.delta",
                json!({
                    "item_id": item_id, "output_index": index, "delta": call.arguments,
                }),
            ));
            out.push(self.event(
                "response.function_call_arguments.done",
                json!({
                    "item_id": item_id, "output_index": index, "arguments": call.arguments,
                }),
            ));
            let item = Self::call_item(call, &call.arguments, "completed");
            out.push(self.event(
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            ));
            index += 1;
        }
        let r = self.response("completed", reason, calls, Some(usage));
        let kind = if r["status"] == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        out.push(self.event(kind, json!({"response": r})));
        out
    }

    fn failed(&mut self, error: &ApiError) -> Vec<SseEvent> {
        let data = json!({"code": error.code, "message": error.message, "param": error.param});
        vec![self.event("error", data)]
    }
}
