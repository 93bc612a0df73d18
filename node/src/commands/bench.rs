//! `exo-p2p bench`: prompt processing (pp) and generation (tg) speed in a llama-bench-like
//! table. With `--shards K`, also the model split into K in-process shards whose hidden states
//! pass through the wire encoding; with `--peer`/`--wait-peers`, also the ring of this node and
//! its peers, plus several concurrent requests on that ring. Every figure sits beside the
//! single-node one from the same run.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use candle_core::Device;
use exo_engine::{LocalRing, ModelInfo};
use exo_protocol::SamplingParams;

use crate::{
    cli::BenchArgs, generate::Stepper, local::LocalStepper, node::Node, ring::RingStepper,
};

struct Row {
    config: String,
    test: String,
    mean: f64,
    stddev: f64,
}

fn mean_stddev(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

/// Tokens per second for a `prompt` prefill, and for `gen` one-token steps after a 1-token prompt.
async fn measure(stepper: &mut impl Stepper, prompt: &[u32], gen: usize) -> Result<(f64, f64)> {
    let p = SamplingParams::greedy();
    let t = Instant::now();
    stepper.step(0, prompt, &p).await?;
    let pp = prompt.len() as f64 / t.elapsed().as_secs_f64();
    stepper.release().await;

    let mut tok = stepper.step(0, &prompt[..1], &p).await?;
    let t = Instant::now();
    for pos in 1..=gen {
        tok = stepper.step(pos, &[tok.id], &p).await?;
    }
    let tg = gen as f64 / t.elapsed().as_secs_f64();
    stepper.release().await;
    Ok((pp, tg))
}

async fn measure_rows(
    rows: &mut Vec<Row>,
    config: &str,
    make: impl Fn() -> BoxedStepper,
    prompt: &[u32],
    args: &BenchArgs,
) -> Result<()> {
    let mut warm = make();
    measure(&mut warm, &prompt[..prompt.len().min(8)], 4).await?;
    let (mut pps, mut tgs) = (Vec::new(), Vec::new());
    for _ in 0..args.repetitions.max(1) {
        let mut s = make();
        let (pp, tg) = measure(&mut s, prompt, args.gen_tokens).await?;
        pps.push(pp);
        tgs.push(tg);
    }
    for (test, xs) in [
        (format!("pp{}", prompt.len()), pps),
        (format!("tg{}", args.gen_tokens), tgs),
    ] {
        let (mean, stddev) = mean_stddev(&xs);
        rows.push(Row {
            config: config.to_string(),
            test,
            mean,
            stddev,
        });
    }
    Ok(())
}

/// Either kind of stepper, so the measuring code is written once.
pub enum BoxedStepper {
    Local(LocalStepper),
    Ring(RingStepper),
}

impl Stepper for BoxedStepper {
    async fn step(
        &mut self,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<exo_protocol::TokenOut> {
        match self {
            BoxedStepper::Local(s) => s.step(position, tokens, sampling).await,
            BoxedStepper::Ring(s) => s.step(position, tokens, sampling).await,
        }
    }
    async fn release(&mut self) {
        match self {
            BoxedStepper::Local(s) => s.release().await,
            BoxedStepper::Ring(s) => s.release().await,
        }
    }
}

/// Total generated tokens per second of `n` requests generating `gen` tokens at once.
async fn concurrent_tg(
    node: &Node,
    model: &str,
    n: usize,
    prompt: &[u32],
    gen: usize,
) -> Result<f64> {
    let plan = node.plan(model)?;
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let mut s = RingStepper::new(node.ring(), plan.clone());
            let prompt = prompt[..1].to_vec();
            tokio::spawn(async move {
                let p = SamplingParams::greedy();
                let mut tok = s.step(0, &prompt, &p).await?;
                for pos in 1..=gen {
                    tok = s.step(pos, &[tok.id], &p).await?;
                }
                s.release().await;
                anyhow::Ok(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok((n * gen) as f64 / start.elapsed().as_secs_f64())
}

pub async fn bench(args: BenchArgs, threads: usize) -> Result<()> {
    let model_path = crate::models::resolve_standalone(&args.model).await?;
    let info = ModelInfo::load(&model_path)?;
    // An ordinary token sequence: the encoding of repeated text, cut to length.
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(args.prompt_tokens);
    let mut prompt = info.encode_prompt(&text)?;
    prompt.truncate(args.prompt_tokens.max(1));

    let mut rows = Vec::new();
    let mut configs = vec![1];
    if args.shards > 1 {
        configs.push(args.shards);
    }
    for k in configs {
        let path = model_path.clone();
        let ring = Arc::new(
            tokio::task::spawn_blocking(move || LocalRing::load(&path, k, &Device::Cpu))
                .await??
                .through_wire(k > 1),
        );
        let name = if k == 1 {
            "1 node".to_string()
        } else {
            format!("{k} in-process shards")
        };
        measure_rows(
            &mut rows,
            &name,
            || BoxedStepper::Local(LocalStepper::new(ring.clone())),
            &prompt,
            &args,
        )
        .await?;
    }

    let mut extra = Vec::new();
    if args.mesh.joins() || args.wait_peers > 0 {
        let opts = args
            .mesh
            .node_options(vec![args.model.clone()], 0, threads)?;
        let node = Node::start(opts).await?;
        node.wait_for_peers(
            &info.id,
            args.wait_peers,
            Duration::from_secs(args.wait_timeout),
        )
        .await?;
        let plan = node.plan(&info.id).context("no ring for the model")?;
        let name = format!("ring of {}", plan.stages.len());
        let ring = node.ring();
        measure_rows(
            &mut rows,
            &name,
            || BoxedStepper::Ring(RingStepper::new(ring.clone(), plan.clone())),
            &prompt,
            &args,
        )
        .await?;
        let single = concurrent_tg(&node, &info.id, 1, &prompt, args.gen_tokens).await?;
        let four = concurrent_tg(&node, &info.id, 4, &prompt, args.gen_tokens).await?;
        extra.push(format!(
            "{name}: 4 concurrent requests generate {four:.2} tok/s in total, {:.2}x one request ({single:.2} tok/s)",
            four / single
        ));
    }

    let size = info.weight_bytes as f64 / (1 << 20) as f64;
    let kernels = exo_engine::quant::Isa::current().name();
    println!("| model | size | kernels | threads | config | test | t/s | vs 1 node |");
    println!("| --- | ---: | --- | ---: | --- | --- | ---: | ---: |");
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| b.config == "1 node" && b.test == r.test)
            .map_or(1.0, |b| r.mean / b.mean);
        println!(
            "| {} | {size:.0} MiB | {kernels} | {threads} | {} | {} | {:.2} ± {:.2} | {base:.3} |",
            info.id, r.config, r.test, r.mean, r.stddev
        );
    }
    for line in extra {
        println!("\n{line}");
    }
    Ok(())
}
