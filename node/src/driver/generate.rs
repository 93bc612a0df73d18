//! The generation loop run by the node that takes a request: feed the prompt, then each sampled
//! token, through a [`Stepper`] (an in-process ring or the mesh) and turn tokens into text.

use std::{future::Future, time::Instant};

use anyhow::Result;
use exo_engine::{FinishReason, TextStream, TextTokenizer};
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
    let result = run(stepper, tokenizer, prompt, params, sink).await;
    stepper.release().await;
    result
}

async fn run<S: Stepper>(
    stepper: &mut S,
    tokenizer: &TextTokenizer,
    prompt: &[u32],
    params: &GenerateParams,
    sink: &mut impl DeltaSink,
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
    let finish = loop {
        let piece = stream.push(token.id)?;
        let keep_going = sink
            .send(Delta {
                text: piece.text,
                token: token.clone(),
            })
            .await;
        if let Some(finish) = piece.finish {
            break finish;
        }
        if !keep_going {
            anyhow::bail!("generation cancelled");
        }
        token = stepper
            .step(position, &[token.id], &params.sampling)
            .await?;
        position += 1;
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
    };
    tracing::info!(
        prompt_tokens = summary.prompt_tokens,
        completion_tokens = completion,
        ttft_ms = (ttft * 1000.0) as u64,
        tok_per_s = format!("{:.1}", summary.tokens_per_second),
        finish = finish.as_str(),
        "generation done"
    );
    Ok(summary)
}
