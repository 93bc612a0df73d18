//! The generation loop run by the node that takes a request: feed the prompt, then each sampled
//! token, through a [`Stepper`] (an in-process ring or the mesh) and turn tokens into text.
//!
//! With a [`Speculator`] and greedy sampling, each step feeds the sampled token together with the
//! tokens the speculator guesses follow it; the ring answers what it samples after each of them
//! in one pass, and the guesses it agrees with are taken as if decoded one by one (the text is
//! the same as plain greedy decoding). The next step's position rolls every stage's KV cache
//! back past the rejected guesses. With temperature sampling, a repetition penalty or a grammar
//! there is no speculation: every step is a plain one.

use std::{future::Future, time::Instant};

use anyhow::Result;
use exo_engine::{
    speculative::accepted_prefix, FinishReason, Speculator, TextStream, TextTokenizer,
};
use exo_protocol::{SamplingParams, TokenOut};

/// Runs one step of a request over some ring of shards.
pub trait Stepper: Send {
    /// Feeds `tokens` at `position` (0 starts the request) and returns the sampled next token.
    fn step(
        &mut self,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> impl Future<Output = Result<TokenOut>> + Send;
    /// Feeds `tokens` at `position` (rolling the caches back to it when they are past it) and
    /// returns the token sampled after each of them: one pass that verifies speculative drafts.
    fn verify(
        &mut self,
        _position: usize,
        _tokens: &[u32],
        _sampling: &SamplingParams,
    ) -> impl Future<Output = Result<Vec<TokenOut>>> + Send {
        async { anyhow::bail!("this ring cannot verify speculative drafts") }
    }
    /// Whether [`Stepper::verify`] works here.
    fn can_verify(&self) -> bool {
        false
    }
    /// Frees the request's state on every shard.
    fn release(&mut self) -> impl Future<Output = ()> + Send;
}

#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    pub max_tokens: usize,
    pub stop: Vec<String>,
}

/// Where streamed output goes. `send` returns false when the receiver has gone away, which
/// cancels the generation.
pub trait DeltaSink: Send {
    fn send(&mut self, delta: Delta) -> impl Future<Output = bool> + Send;
}

/// A piece of streamed output.
#[derive(Debug, Clone)]
pub struct Delta {
    pub text: String,
    pub token: TokenOut,
}

#[derive(Debug, Clone)]
pub struct Summary {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub finish: FinishReason,
    /// Seconds from the start to the first generated token.
    pub ttft: f64,
    /// Generated tokens per second after the first one.
    pub tokens_per_second: f64,
    /// Speculative draft tokens proposed and accepted (0 without speculation).
    pub drafted: usize,
    pub accepted: usize,
}

/// Whether speculation keeps the output exactly what plain decoding gives: greedy, with no
/// state carried from token to token on the sampling stage (no repetition penalty) and no
/// grammar mask computed per step.
pub fn speculates(s: &SamplingParams) -> bool {
    s.temperature <= 0.0
        && (s.repeat_penalty == 1.0 || s.repeat_penalty <= 0.0)
        && s.allowed.is_none()
}

/// Generates until an end-of-generation token, a stop string or `max_tokens`, sending text to
/// `sink`; a sink that refuses cancels. The request is released on every shard either way.
pub async fn generate<S: Stepper>(
    stepper: &mut S,
    tokenizer: &TextTokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    sink: &mut impl DeltaSink,
) -> Result<Summary> {
    generate_speculative(stepper, tokenizer, prompt, params, sink, None).await
}

/// [`generate`] with a speculator proposing draft tokens (used when [`speculates`] allows).
pub async fn generate_speculative<S: Stepper>(
    stepper: &mut S,
    tokenizer: &TextTokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    sink: &mut impl DeltaSink,
    speculator: Option<&mut Speculator>,
) -> Result<Summary> {
    let speculator = speculator.filter(|_| speculates(&params.sampling) && stepper.can_verify());
    let result = run(stepper, tokenizer, prompt, params, sink, speculator).await;
    stepper.release().await;
    result
}

async fn run<S: Stepper>(
    stepper: &mut S,
    tokenizer: &TextTokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    sink: &mut impl DeltaSink,
    mut speculator: Option<&mut Speculator>,
) -> Result<Summary> {
    let start = Instant::now();
    let mut stream = TextStream::new(
        tokenizer.clone(),
        prompt,
        params.stop.clone(),
        params.max_tokens.max(1),
    )?;
    let mut token = stepper.step(0, prompt, &params.sampling).await?;
    let ttft = start.elapsed().as_secs_f64();
    let first_at = Instant::now();
    let mut position = prompt.len();
    // The prompt and every token generated: what the speculator guesses from.
    let mut context = prompt.to_vec();
    let (mut drafted, mut accepted) = (0, 0);
    let finish = 'decode: loop {
        if let Some(finish) = emit(&mut stream, &mut context, sink, token).await? {
            break finish;
        }
        let last = *context.last().expect("a token was just emitted");
        let room = params.max_tokens.saturating_sub(stream.generated()) + 1;
        let drafts = match speculator.as_deref_mut() {
            // The draft model's forward passes are CPU-bound: off the async worker's queue.
            Some(s) => tokio::task::block_in_place(|| s.propose(&context, room))?,
            None => Vec::new(),
        };
        if drafts.is_empty() {
            token = stepper.step(position, &[last], &params.sampling).await?;
            position += 1;
            continue;
        }
        let mut input = Vec::with_capacity(drafts.len() + 1);
        input.push(last);
        input.extend_from_slice(&drafts);
        let mut outs = stepper.verify(position, &input, &params.sampling).await?;
        if outs.len() != input.len() {
            anyhow::bail!(
                "the ring verified {} of {} positions",
                outs.len(),
                input.len()
            );
        }
        let ids: Vec<u32> = outs.iter().map(|t| t.id).collect();
        let n = accepted_prefix(&drafts, &ids);
        if let Some(s) = speculator.as_deref_mut() {
            s.record(drafts.len(), n);
        }
        drafted += drafts.len();
        accepted += n;
        tracing::trace!(
            position,
            proposed = drafts.len(),
            accepted = n,
            "verified drafts"
        );
        // Positions `position..=position + n` now hold `last` and the accepted drafts; the
        // next step starts right after them, which rolls every stage's cache back past the
        // rejected ones.
        position += 1 + n;
        outs.truncate(n + 1);
        token = outs.pop().expect("n + 1 tokens");
        // The accepted drafts are the target's own tokens: emitted as plain steps would be.
        for t in outs {
            if let Some(finish) = emit(&mut stream, &mut context, sink, t).await? {
                break 'decode finish;
            }
        }
    };
    let completion = stream.generated();
    let secs = first_at.elapsed().as_secs_f64();
    let summary = Summary {
        prompt_tokens: prompt.len(),
        completion_tokens: completion,
        finish,
        ttft,
        tokens_per_second: if completion > 1 && secs > 0.0 {
            (completion - 1) as f64 / secs
        } else {
            0.0
        },
        drafted,
        accepted,
    };
    tracing::info!(
        prompt_tokens = summary.prompt_tokens,
        completion_tokens = completion,
        ttft_ms = (ttft * 1000.0) as u64,
        tok_per_s = format!("{:.1}", summary.tokens_per_second),
        finish = finish.as_str(),
        drafted,
        accepted,
        "generation done"
    );
    Ok(summary)
}

/// Streams one generated token; returns why generation ends, if it does. A sink that refuses
/// cancels.
async fn emit(
    stream: &mut TextStream,
    context: &mut Vec<u32>,
    sink: &mut impl DeltaSink,
    token: TokenOut,
) -> Result<Option<FinishReason>> {
    let piece = stream.push(token.id)?;
    context.push(token.id);
    let keep_going = sink
        .send(Delta {
            text: piece.text,
            token,
        })
        .await;
    if piece.finish.is_some() {
        return Ok(piece.finish);
    }
    if !keep_going {
        anyhow::bail!("generation cancelled");
    }
    Ok(None)
}
