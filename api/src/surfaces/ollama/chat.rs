//! `POST /api/chat` and `POST /api/generate`: streamed by default, one JSON object a line, the
//! last with `done: true`, the reason and the token counts and durations.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::backend::{GenerateRequest, Prompt};
use crate::core::chat::{self as vocab, ChatMessage, FinishReason, Tool, ToolCall, ToolChoice};
use crate::core::framing::{self, Frames};
use crate::core::generate::{self, new_id, unix_now, Run, Usage};
use crate::core::AppState;
use crate::error::ApiError;
use crate::extract::{typed, JsonObject};
use crate::middleware::RequestContext;
use crate::surfaces::ollama::options::{self, Options};
use crate::surfaces::ollama::rfc3339;

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    #[serde(default)]
    pub messages: Vec<InputMessage>,
    pub stream: Option<bool>,
    pub format: Option<Value>,
    pub options: Option<Options>,
    pub tools: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
pub struct InputMessage {
    pub role: String,
    #[serde(default)]
    pub content: String,
    pub images: Option<Vec<Value>>,
    pub tool_calls: Option<Vec<InputToolCall>>,
    /// A `tool` turn: the function that answered.
    pub tool_name: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct InputToolCall {
    pub function: InputFunction,
}

#[derive(Debug, Deserialize)]
pub struct InputFunction {
    pub name: String,
    #[serde(default)]
    pub arguments: Value,
}

#[derive(Debug, Deserialize)]
pub struct GenerateBody {
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    pub system: Option<String>,
    /// The prompt as is, without the chat template.
    pub raw: Option<bool>,
    pub stream: Option<bool>,
    pub format: Option<Value>,
    pub options: Option<Options>,
    pub images: Option<Vec<Value>>,
}

/// Ollama's tools are OpenAI's chat tools.
fn tools(defs: Option<Vec<Value>>) -> Result<Vec<Tool>, ApiError> {
    defs.unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let f = d.get("function").unwrap_or(&d);
            let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
                ApiError::invalid_param(
                    &format!("tools[{i}]"),
                    format!("invalid tool {i}: a function needs a name"),
                )
            })?;
            Ok(Tool {
                name: name.to_owned(),
                description: f
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                parameters: f
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object"})),
            })
        })
        .collect()
}

fn no_images(images: &Option<Vec<Value>>) -> Result<(), ApiError> {
    match images {
        Some(i) if !i.is_empty() => Err(ApiError::invalid_param(
            "images",
            "images are not supported: this server serves text models",
        )),
        _ => Ok(()),
    }
}

pub async fn chat(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let req: ChatRequest = typed(body)?;
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        no_images(&m.images)?;
        let mut msg = ChatMessage::new(m.role, m.content);
        msg.tool_calls = m
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(|c| vocab::tool_call(c.function.name, &c.function.arguments))
            .collect();
        msg.name = m.tool_name;
        messages.push(msg);
    }
    if messages.is_empty() {
        // Ollama answers an empty chat by loading the model: say it is there.
        return Ok(Json(json!({
            "model": req.model, "created_at": rfc3339(unix_now()),
            "message": {"role": "assistant", "content": ""},
            "done_reason": "load", "done": true,
        }))
        .into_response());
    }
    let output = vocab::plan(
        tools(req.tools)?,
        ToolChoice::Auto,
        options::format(req.format)?,
        "tools",
    )?;
    let mut gen = GenerateRequest {
        tools: output.tools,
        grammar: output.grammar,
        ..GenerateRequest::new(new_id("chat"), req.model.clone(), Prompt::Chat(messages))
    };
    req.options.unwrap_or_default().apply(&mut gen)?;
    let run = generate::start(&state, ctx.received, gen, output.mode).await?;
    respond(run, Shape::Chat, req.model, ctx.received, req.stream).await
}

pub async fn generate(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let req: GenerateBody = typed(body)?;
    no_images(&req.images)?;
    if req.prompt.is_empty() {
        return Ok(Json(json!({
            "model": req.model, "created_at": rfc3339(unix_now()),
            "response": "", "done_reason": "load", "done": true,
        }))
        .into_response());
    }
    let prompt = if req.raw.unwrap_or(false) {
        Prompt::Text(req.prompt)
    } else {
        let mut messages = Vec::new();
        if let Some(system) = req.system.filter(|s| !s.is_empty()) {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", req.prompt));
        Prompt::Chat(messages)
    };
    let format = options::format(req.format)?;
    let output = vocab::plan(Vec::new(), ToolChoice::Auto, format, "format")?;
    let mut gen = GenerateRequest {
        grammar: output.grammar,
        ..GenerateRequest::new(new_id("gen"), req.model.clone(), prompt)
    };
    req.options.unwrap_or_default().apply(&mut gen)?;
    let run = generate::start(&state, ctx.received, gen, output.mode).await?;
    respond(run, Shape::Generate, req.model, ctx.received, req.stream).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `message: {role, content, tool_calls}`.
    Chat,
    /// `response: "..."`.
    Generate,
}

async fn respond(
    run: Run,
    shape: Shape,
    model: String,
    received: Instant,
    stream: Option<bool>,
) -> Result<Response, ApiError> {
    let frames = Lines {
        shape,
        model,
        received,
        first_token: None,
    };
    if stream.unwrap_or(true) {
        return Ok(framing::ndjson(framing::frames(run, frames)));
    }
    let done = run.collect().await?;
    let mut last = frames.line(&done.text, &done.calls);
    frames.end(&mut last, done.finish_reason, done.usage);
    Ok(Json(last).into_response())
}

struct Lines {
    shape: Shape,
    model: String,
    received: Instant,
    first_token: Option<Instant>,
}

impl Lines {
    fn line(&self, text: &str, calls: &[ToolCall]) -> Value {
        let mut line = json!({ "model": self.model, "created_at": rfc3339(unix_now()) });
        match self.shape {
            Shape::Chat => {
                let mut message = json!({ "role": "assistant", "content": text });
                if !calls.is_empty() {
                    message["tool_calls"] = calls
                        .iter()
                        .map(|c| json!({"function": {"name": c.name, "arguments": c.arguments_value()}}))
                        .collect();
                }
                line["message"] = message;
            }
            Shape::Generate => line["response"] = json!(text),
        }
        line["done"] = json!(false);
        line
    }

    /// Makes `line` the last one: the reason, counts and durations (nanoseconds).
    fn end(&self, line: &mut Value, reason: FinishReason, usage: Usage) {
        let now = Instant::now();
        let ns = |d: std::time::Duration| d.as_nanos() as u64;
        let first = self.first_token.unwrap_or(now);
        line["done"] = json!(true);
        line["done_reason"] = json!(match reason {
            FinishReason::Length => "length",
            FinishReason::Stop | FinishReason::ToolCalls => "stop",
        });
        line["total_duration"] = json!(ns(now - self.received));
        line["load_duration"] = json!(0);
        line["prompt_eval_count"] = json!(usage.prompt_tokens);
        line["prompt_eval_duration"] = json!(ns(first - self.received));
        line["eval_count"] = json!(usage.completion_tokens);
        line["eval_duration"] = json!(ns(now - first));
    }
}

impl Frames for Lines {
    type Frame = Value;

    fn start(&mut self) -> Vec<Value> {
        Vec::new()
    }

    fn text(&mut self, text: &str) -> Vec<Value> {
        self.first_token.get_or_insert_with(Instant::now);
        vec![self.line(text, &[])]
    }

    fn done(&mut self, reason: FinishReason, usage: Usage, calls: &[ToolCall]) -> Vec<Value> {
        let mut last = self.line("", calls);
        self.end(&mut last, reason, usage);
        vec![last]
    }

    fn failed(&mut self, error: &ApiError) -> Vec<Value> {
        vec![super::render(error)]
    }
}
