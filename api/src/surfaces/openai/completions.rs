//! `POST /v1/completions`: a plain prompt, no chat template.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use exo_protocol::SamplingParams;

use crate::backend::{GenerateRequest, Prompt, TokenLogprob};
use crate::core::chat::{FinishReason, ToolMode};
use crate::core::generate::{self, new_id, unix_now};
use crate::core::AppState;
use crate::error::ApiError;
use crate::extract::{typed, JsonObject};
use crate::middleware::RequestContext;
use crate::surfaces::openai::sampling::SamplingFields;
use crate::surfaces::openai::stream::{self, ChunkHead, Chunks};
use crate::surfaces::openai::tools::finish_reason;
use crate::surfaces::openai::types::{
    CompletionRequest, PromptInput, TextChoice, TextCompletion, TextLogprobs,
};

/// OpenAI's default for this endpoint (chat has none).
const DEFAULT_MAX_TOKENS: usize = 16;
/// The legacy API's limit on `logprobs`.
const MAX_LOGPROBS: i64 = 5;

pub async fn completions(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    if let Some(response) = super::upstream_route(&state, &body, "completions").await? {
        return Ok(response);
    }
    let req: CompletionRequest = typed(body)?;
    let prompt = prompt(req.prompt)?;
    if let Some(best_of) = req.best_of.filter(|&b| b != 1) {
        return Err(ApiError::invalid_param(
            "best_of",
            format!("Invalid 'best_of': {best_of}. This server generates one choice (best_of=1)."),
        ));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid_param(
            "suffix",
            "'suffix' (insertion) is not supported by this server.",
        ));
    }
    let logprobs = match req.logprobs {
        None => None,
        Some(n) if (0..=MAX_LOGPROBS).contains(&n) => Some(n as u8),
        Some(n) => {
            return Err(ApiError::invalid_param(
                "logprobs",
                format!("Invalid 'logprobs': {n}. It must be between 0 and {MAX_LOGPROBS}."),
            ))
        }
    };
    let sampling = SamplingFields {
        max_tokens: req.max_tokens.map(|v| ("max_tokens", v)),
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
    .check(Some(DEFAULT_MAX_TOKENS))?;
    let stream = req.stream.unwrap_or(false);
    let include_usage = req
        .stream_options
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    let echo = req.echo.unwrap_or(false);

    let id = new_id("cmpl");
    let run = generate::start(
        &state,
        ctx.received,
        GenerateRequest {
            max_tokens: sampling.max_tokens,
            stop: sampling.stop,
            sampling: SamplingParams {
                logprobs: logprobs.is_some(),
                top_logprobs: logprobs.unwrap_or(0),
                ..sampling.params
            },
            ..GenerateRequest::new(id.clone(), req.model.clone(), Prompt::Text(prompt.clone()))
        },
        ToolMode::Off,
    )
    .await
    .map_err(|e| {
        if e.code == Some("context_length_exceeded") {
            e.with_param("prompt")
        } else {
            e
        }
    })?;
    let created = unix_now();
    let echoed = if echo { prompt } else { String::new() };
    if stream {
        let chunks = TextChunks {
            head: ChunkHead {
                id,
                object: "text_completion",
                created,
                model: req.model,
                include_usage,
            },
            logprobs: logprobs.is_some(),
            offset: echoed.len(),
            echo: echo.then_some(echoed),
        };
        return Ok(stream::stream(run, chunks, include_usage));
    }
    let done = run.collect().await?;
    let logprobs = logprobs.map(|_| {
        let mut lp = TextLogprobs::default();
        let mut offset = echoed.len();
        for (token, top) in &done.tokens {
            lp.push(token, top, offset);
            offset += token.token.len();
        }
        lp
    });
    Ok(Json(TextCompletion {
        id,
        object: "text_completion",
        created,
        model: req.model,
        system_fingerprint: None,
        choices: vec![TextChoice {
            text: echoed + &done.text,
            index: 0,
            logprobs,
            finish_reason: Some(finish_reason(done.finish_reason).to_owned()),
        }],
        usage: Some(Some(done.usage.into())),
    })
    .into_response())
}

fn prompt(input: PromptInput) -> Result<String, ApiError> {
    match input {
        PromptInput::Text(text) => Ok(text),
        PromptInput::Texts(mut texts) if texts.len() == 1 => Ok(texts.remove(0)),
        PromptInput::Texts(texts) if texts.is_empty() => Err(ApiError::invalid_param(
            "prompt",
            "'prompt' must not be empty.",
        )),
        PromptInput::Texts(_) => Err(ApiError::invalid_param(
            "prompt",
            "This server takes one prompt per request.",
        )),
        PromptInput::Tokens(_) | PromptInput::TokenBatches(_) => Err(ApiError::invalid_param(
            "prompt",
            "Prompts as token ids are not supported; send text.",
        )),
    }
}

struct TextChunks {
    head: ChunkHead,
    logprobs: bool,
    /// Byte offset of the next token in the text (the echoed prompt included).
    offset: usize,
    echo: Option<String>,
}

impl TextChunks {
    fn chunk(
        &self,
        text: String,
        logprobs: Option<TextLogprobs>,
        finish: Option<FinishReason>,
    ) -> String {
        let choice = TextChoice {
            text,
            index: 0,
            logprobs,
            finish_reason: finish.map(|r| finish_reason(r).to_owned()),
        };
        self.head.chunk(Some(choice), None)
    }
}

impl Chunks for TextChunks {
    fn head(&self) -> &ChunkHead {
        &self.head
    }

    fn start(&mut self) -> Option<String> {
        let text = self.echo.take()?;
        Some(self.chunk(text, None, None))
    }

    fn delta(
        &mut self,
        text: &str,
        logprob: Option<&TokenLogprob>,
        top: &[TokenLogprob],
    ) -> String {
        let logprobs = match (self.logprobs, logprob) {
            (true, Some(lp)) => {
                let mut out = TextLogprobs::default();
                out.push(lp, top, self.offset);
                Some(out)
            }
            _ => None,
        };
        self.offset += text.len();
        self.chunk(text.to_owned(), logprobs, None)
    }

    fn finish(&mut self, reason: FinishReason) -> String {
        self.chunk(String::new(), None, Some(reason))
    }
}
