//! `exo-p2p run`: one prompt, streamed to stdout.

use std::{
    io::{IsTerminal, Write},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result};
use candle_core::Device;
use exo_engine::{ChatMessage, LocalRing, ModelInfo};
use exo_protocol::SamplingParams;

use crate::{
    cli::{RunArgs, SamplingArgs},
    generate::{generate_speculative, Delta, DeltaSink, GenerateParams, Stepper},
    local::LocalStepper,
    node::Node,
    ring::RingStepper,
};

impl SamplingArgs {
    pub fn params(&self) -> GenerateParams {
        GenerateParams {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                seed: self.seed.unwrap_or_else(rand_seed),
                ..SamplingParams::default()
            },
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
        }
    }
}

/// Streams text to stdout; a closed stdout (e.g. `| head`) ends the generation.
struct Stdout;

impl DeltaSink for Stdout {
    async fn send(&mut self, delta: Delta) -> bool {
        let mut out = std::io::stdout();
        out.write_all(delta.text.as_bytes())
            .and_then(|_| out.flush())
            .is_ok()
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

pub async fn run(args: RunArgs, threads: usize) -> Result<()> {
    if args.mesh.joins() || args.wait_peers > 0 {
        return run_on_ring(args, threads).await;
    }
    let path = crate::models::resolve_standalone(&args.model).await?;
    let (info, ring) = tokio::task::spawn_blocking(move || -> Result<_> {
        let info = ModelInfo::load(&path)?;
        let ring = LocalRing::load(&path, 1, &Device::Cpu)?;
        Ok((info, ring))
    })
    .await??;
    let prompt = encode(&args, &info)?;
    let stepper = LocalStepper::new(Arc::new(ring));
    stream_to_stdout(stepper, &info, &prompt, &args).await
}

/// Joins the mesh, waits for the peers asked for, and runs over the ring of every node that
/// serves the model.
async fn run_on_ring(args: RunArgs, threads: usize) -> Result<()> {
    let opts = args
        .mesh
        .node_options(vec![args.model.clone()], 0, threads)?;
    let node = Node::start(opts).await?;
    let model = node
        .models
        .ids()
        .next()
        .cloned()
        .context("no model loaded")?;
    let info = node
        .models
        .get(&model)
        .context("no model loaded")?
        .info
        .clone();
    if args.wait_peers > 0 {
        node.wait_for_peers(
            &model,
            args.wait_peers,
            Duration::from_secs(args.wait_timeout),
        )
        .await?;
    }
    let plan = node.plan(&model)?;
    for s in &plan.stages {
        tracing::info!(peer = %s.peer, start = s.layers.start, end = s.layers.end, "ring stage");
    }
    let prompt = encode(&args, &info)?;
    let stepper = RingStepper::new(node.ring(), plan);
    stream_to_stdout(stepper, &info, &prompt, &args).await
}

fn encode(args: &RunArgs, info: &ModelInfo) -> Result<Vec<u32>> {
    let prompt = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", &args.prompt));
        info.encode_chat(&messages)?
    } else {
        info.encode_prompt(&args.prompt)?
    };
    if prompt.len() >= info.context_length() {
        anyhow::bail!(
            "the prompt is {} tokens but {} holds at most {} tokens of context",
            prompt.len(),
            info.id,
            info.context_length()
        );
    }
    Ok(prompt)
}

async fn stream_to_stdout(
    mut stepper: impl Stepper,
    info: &ModelInfo,
    prompt: &[u32],
    args: &RunArgs,
) -> Result<()> {
    let speculation = args.speculation.load(info).await?;
    let mut speculator = speculation.map(|s| s.speculator(info.context_length()));
    let summary = generate_speculative(
        &mut stepper,
        &info.tokenizer,
        prompt,
        &args.sampling.params(),
        &mut Stdout,
        speculator.as_mut(),
    )
    .await
    .context("generation failed")?;
    if std::io::stdout().is_terminal() {
        println!();
    }
    if let Some(s) = &speculator {
        tracing::info!(
            drafted = s.proposed,
            accepted = s.accepted,
            acceptance = format!("{:.2}", s.acceptance()),
            passes = s.rounds,
            "speculative decoding"
        );
    }
    tracing::debug!(?summary, "run finished");
    Ok(())
}
