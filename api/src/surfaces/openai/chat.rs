//! `POST /v1/chat/completions`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use exo_protocol::SamplingParams;

use crate::backend::{ChatMessage, GenerateRequest, Prompt, TokenLogprob};
use crate::core::chat::{self as vocab, FinishReason, ToolCall};
use crate::core::generate::{self, new_id, unix_now};
use crate::core::AppState;
use crate::error::ApiError;
use crate::extract::{typed, JsonObject};
use crate::middleware::RequestContext;
use crate::surfaces::openai::sampling::SamplingFields;
use crate::surfaces::openai::stream::{self, ChunkHead, Chunks};
use crate::surfaces::openai::tools::{self, finish_reason};
use crate::surfaces::openai::types::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionRequest, ChatLogprobs,
    ChatTokenLogprob, ChunkChoice, Delta, MessageContent, RequestMessage, ResponseToolCall,
};

/// Most alternatives per token OpenAI returns.
const MAX_TOP_LOGPROBS: i64 = 20;

pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    if let Some(response) = super::upstream_route(&state, &body, "chat/completions").await? {
        return Ok(response);
    }
    let req: ChatCompletionRequest = typed(body)?;
    let messages = messages(req.messages)?;
    let output = vocab::plan(
        tools::tools(req.tools)?,
        tools::tool_choice(req.tool_choice, "tool_choice")?,
        tools::response_format(req.response_format, "response_format")?,
        "tool_choice",
    )?;
    let logprobs = req.logprobs.unwrap_or(false);
    let top_logprobs = match req.top_logprobs {
        None => 0,
        Some(n) if !(0..=MAX_TOP_LOGPROBS).contains(&n) => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                format!(
                    "Invalid 'top_logprobs': {n}. It must be between 0 and {MAX_TOP_LOGPROBS}."
                ),
            ))
        }
        Some(n) if n > 0 && !logprobs => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "'top_logprobs' needs 'logprobs' to be true.",
            ))
        }
        Some(n) => n as u8,
    };
    // `max_completion_tokens` replaced `max_tokens`; the newer wins when both are sent.
    let max_tokens = req
        .max_completion_tokens
        .map(|v| ("max_completion_tokens", v))
        .or(req.max_tokens.map(|v| ("max_tokens", v)));
    let sampling = SamplingFields {
        max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        min_p: req.min_p,
        repeat_penalty: req.repeat_penalty,
        seed: req.seed,
        stop: req.stop,
        n: req.n,
        frequency_penalty: req.frequency_penalty,
        presence_penalty: req.presence_penalty,
    }
    .check(None)?;
    let stream = req.stream.unwrap_or(false);
    let include_usage = req
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);

    let id = new_id("chatcmpl");
    let run = generate::start(
        &state,
        ctx.received,
        GenerateRequest {
            max_tokens: sampling.max_tokens,
            stop: sampling.stop,
            sampling: SamplingParams {
                logprobs,
                top_logprobs,
                ..sampling.params
            },
            tools: output.tools,
            grammar: output.grammar,
            ..GenerateRequest::new(id.clone(), req.model.clone(), Prompt::Chat(messages))
        },
        output.mode,
    )
    .await?;
    let created = unix_now();
    if stream {
        let chunks = ChatChunks {
            head: ChunkHead {
                id,
                object: "chat.completion.chunk",
                created,
                model: req.model,
                include_usage,
            },
            logprobs,
        };
        return Ok(stream::stream(run, chunks, include_usage));
    }
    let done = run.collect().await?;
    let logprobs = logprobs.then(|| ChatLogprobs {
        content: done
            .tokens
            .iter()
            .map(|(t, top)| ChatTokenLogprob::new(t, top))
            .collect(),
        refusal: None,
    });
    Ok(Json(ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model: req.model,
        system_fingerprint: None,
        choices: vec![ChatChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: (done.calls.is_empty() || !done.text.is_empty()).then_some(done.text),
                refusal: None,
                tool_calls: done
                    .calls
                    .iter()
                    .map(|c| ResponseToolCall::new(c, None))
                    .collect(),
            },
            logprobs,
            finish_reason: finish_reason(done.finish_reason).to_owned(),
        }],
        usage: done.usage.into(),
    })
    .into_response())
}

/// Flattens each message's content: a string, or text parts joined by newlines.
fn messages(messages: Vec<RequestMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "'messages' must hold at least one message.",
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            if m.role.is_empty() {
                return Err(ApiError::invalid_param(
                    &format!("messages[{i}].role"),
                    "A message's role must not be empty.",
                ));
            }
            let content = match m.content {
                None => String::new(),
                Some(MessageContent::Text(text)) => text,
                Some(MessageContent::Parts(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for (j, part) in parts.into_iter().enumerate() {
                        let param = format!("messages[{i}].content[{j}]");
                        match (part.kind.as_str(), part.text) {
                            ("text", Some(text)) => texts.push(text),
                            ("text", None) => {
                                return Err(ApiError::invalid_param(
                                    &param,
                                    "A text content part needs a 'text' field.",
                                ))
                            }
                            (kind, _) => {
                                return Err(ApiError::invalid_param(
                                    &param,
                                    format!(
                                        "Content parts of type '{kind}' are not supported: \
                                         this server serves text models."
                                    ),
                                ))
                            }
                        }
                    }
                    texts.join("\n")
                }
            };
            let tool_calls = m
                .tool_calls
                .unwrap_or_default()
                .into_iter()
                .map(|c| ToolCall {
                    id: c.id.unwrap_or_else(|| new_id("call")),
                    name: c.function.name,
                    // OpenAI sends the arguments as JSON text; an object is taken as is.
                    arguments: match c.function.arguments {
                        serde_json::Value::String(s) => s,
                        v => v.to_string(),
                    },
                })
                .collect();
            Ok(ChatMessage {
                role: m.role,
                content,
                tool_calls,
                tool_call_id: m.tool_call_id,
                name: m.name,
            })
        })
        .collect()
}

struct ChatChunks {
    head: ChunkHead,
    logprobs: bool,
}

impl ChatChunks {
    fn chunk(
        &self,
        delta: Delta,
        logprobs: Option<ChatLogprobs>,
        finish: Option<FinishReason>,
    ) -> String {
        let choice = ChunkChoice {
            index: 0,
            delta,
            logprobs,
            finish_reason: finish.map(|r| finish_reason(r).to_owned()),
        };
        self.head.chunk(Some(choice), None)
    }
}

impl Chunks for ChatChunks {
    fn head(&self) -> &ChunkHead {
        &self.head
    }

    fn start(&mut self) -> Option<String> {
        let delta = Delta {
            role: Some("assistant"),
            content: Some(String::new()),
            tool_calls: None,
        };
        Some(self.chunk(delta, None, None))
    }

    fn delta(
        &mut self,
        text: &str,
        logprob: Option<&TokenLogprob>,
        top: &[TokenLogprob],
    ) -> String {
        let logprobs = match (self.logprobs, logprob) {
            (true, Some(lp)) => Some(ChatLogprobs {
                content: vec![ChatTokenLogprob::new(lp, top)],
                refusal: None,
            }),
            _ => None,
        };
        let delta = Delta {
            role: None,
            content: Some(text.to_owned()),
            tool_calls: None,
        };
        self.chunk(delta, logprobs, None)
    }

    fn calls(&mut self, calls: &[ToolCall]) -> Option<String> {
        if calls.is_empty() {
            return None;
        }
        // Each call whole, in one delta: clients append argument pieces, one piece is valid.
        let delta = Delta {
            tool_calls: Some(
                calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| ResponseToolCall::new(c, Some(i as u32)))
                    .collect(),
            ),
            ..Delta::default()
        };
        Some(self.chunk(delta, None, None))
    }

    fn finish(&mut self, reason: FinishReason) -> String {
        self.chunk(Delta::default(), None, Some(reason))
    }
}
