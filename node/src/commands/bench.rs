//! `exo-p2p bench`: prompt processing (pp) and generation (tg) speed in a llama-bench-like
//! table. With `--shards K`, also the model split into K in-process shards whose hidden states
//! pass through the wire encoding; with `--peer`/`--wait-peers`, also the ring of this node and
//! its peers. With `--concurrency 1,4,8` (and on a ring, by default 1,4), also that many streams
//! at once: aggregate and per-stream tok/s and time to first token. Every figure sits beside the
//! single-node one from the same run.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use candle_core::Device;
use exo_engine::{ChatMessage, LocalRing, ModelInfo, Speculation};
use exo_protocol::SamplingParams;

use crate::{
    cli::BenchArgs,
    generate::{generate_speculative, Delta, DeltaSink, GenerateParams, Stepper},
    local::LocalStepper,
    node::Node,
    ring::RingStepper,
};

/// The chat prompt of the speculative-decoding test: code writing, where a draft model and
/// prompt lookup both have something to go on.
const CODE_PROMPT: &str = "Write a Python function `summarize_orders(path)` that reads a CSV \
    file of orders with the columns id, customer, amount and date, and returns the total amount \
    per customer sorted from the largest total to the smallest. Use the csv module, type hints \
    and a docstring, then show an example call.";

/// Collects generated text.
struct Collect(String);

impl DeltaSink for Collect {
    async fn send(&mut self, delta: Delta) -> bool {
        self.0.push_str(&delta.text);
        true
    }
}

/// Greedy generation of `gen` tokens for [`CODE_PROMPT`], plainly and with `spec`, alternating,
/// `reps` times each: the table line with mean tok/s of both, their ratio, the acceptance rate,
/// tokens per verification pass and whether the two texts were the same.
async fn speculative_line(
    config: &str,
    make: impl Fn() -> BoxedStepper,
    info: &ModelInfo,
    spec: &Speculation,
    gen: usize,
    reps: usize,
) -> Result<String> {
    let prompt = info.encode_chat(&[ChatMessage::new("user", CODE_PROMPT)])?;
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: gen,
        stop: Vec::new(),
    };
    let (mut plain, mut fast) = (Vec::new(), Vec::new());
    let (mut drafted, mut accepted, mut passes, mut tokens) = (0, 0, 0, 0);
    let mut same = true;
    for _ in 0..reps.max(1) {
        let mut text = Collect(String::new());
        let base = generate_speculative(
            &mut make(),
            &info.tokenizer,
            &prompt,
            &params,
            &mut text,
            None,
        )
        .await?;
        plain.push(base.tokens_per_second);
        let mut speculator = spec.speculator(info.context_length());
        let mut spec_text = Collect(String::new());
        let s = generate_speculative(
            &mut make(),
            &info.tokenizer,
            &prompt,
            &params,
            &mut spec_text,
            Some(&mut speculator),
        )
        .await?;
        fast.push(s.tokens_per_second);
        drafted += s.drafted;
        accepted += s.accepted;
        passes += speculator.rounds;
        tokens += s.completion_tokens;
        same &= text.0 == spec_text.0;
    }
    let (p, _) = mean_stddev(&plain);
    let (f, _) = mean_stddev(&fast);
    Ok(format!(
        "| {config} | {} | {gen} | {p:.2} | {f:.2} | {:.2}x | {:.2} | {:.2} | {} |",
        spec.name(),
        f / p,
        accepted as f64 / (drafted as f64).max(1.0),
        // Tokens each pass through the ring produced (the first comes from the prefill).
        tokens.saturating_sub(reps.max(1)) as f64 / (passes as f64).max(1.0),
        if same { "yes" } else { "NO" }
    ))
}

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
    async fn verify(
        &mut self,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<Vec<exo_protocol::TokenOut>> {
        match self {
            BoxedStepper::Local(s) => s.verify(position, tokens, sampling).await,
            BoxedStepper::Ring(s) => s.verify(position, tokens, sampling).await,
        }
    }
    fn can_verify(&self) -> bool {
        true
    }
    async fn release(&mut self) {
        match self {
            BoxedStepper::Local(s) => s.release().await,
            BoxedStepper::Ring(s) => s.release().await,
        }
    }
}

/// What `n` streams run at once measured.
struct Concurrent {
    n: usize,
    /// Generated tokens of all streams over the wall time from the first start to the last end.
    aggregate: f64,
    /// Mean over streams of (tokens after the first) / (time after the first).
    per_stream: f64,
    ttft_p50: f64,
    ttft_p99: f64,
}

/// Nearest-rank percentile of sorted `xs`.
fn percentile(xs: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * xs.len() as f64).ceil() as usize;
    xs[rank.clamp(1, xs.len()) - 1]
}

/// `n` streams started together, each prefilling `prompt` and generating `gen` tokens.
async fn concurrent(
    n: usize,
    make: &impl Fn() -> BoxedStepper,
    prompt: &[u32],
    gen: usize,
) -> Result<Concurrent> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let mut s = make();
            let prompt = prompt.to_vec();
            tokio::spawn(async move {
                let p = SamplingParams::greedy();
                let mut tok = s.step(0, &prompt, &p).await?;
                let first = Instant::now();
                let ttft = start.elapsed().as_secs_f64();
                for pos in prompt.len()..prompt.len() + gen.saturating_sub(1) {
                    tok = s.step(pos, &[tok.id], &p).await?;
                }
                let rate = gen.saturating_sub(1) as f64 / first.elapsed().as_secs_f64();
                s.release().await;
                anyhow::Ok((ttft, rate))
            })
        })
        .collect();
    let mut ttfts = Vec::with_capacity(n);
    let mut rates = Vec::with_capacity(n);
    for t in tasks {
        let (ttft, rate) = t.await??;
        ttfts.push(ttft);
        rates.push(rate);
    }
    let wall = start.elapsed().as_secs_f64();
    ttfts.sort_by(f64::total_cmp);
    Ok(Concurrent {
        n,
        aggregate: (n * gen) as f64 / wall,
        per_stream: rates.iter().sum::<f64>() / n as f64,
        ttft_p50: percentile(&ttfts, 50.0),
        ttft_p99: percentile(&ttfts, 99.0),
    })
}

/// Runs [`concurrent`] for each count; the table lines, with each count's aggregate against
/// one stream's.
async fn concurrency_table(
    config: &str,
    counts: &[usize],
    make: impl Fn() -> BoxedStepper,
    prompt: &[u32],
    gen: usize,
) -> Result<Vec<String>> {
    let mut lines = vec![
        format!(
            "{config}: {counts:?} streams at once, pp{} + tg{gen} each",
            prompt.len()
        ),
        "| streams | aggregate t/s | per-stream t/s | TTFT p50 ms | TTFT p99 ms | vs 1 stream |"
            .to_string(),
        "| ---: | ---: | ---: | ---: | ---: | ---: |".to_string(),
    ];
    let mut one = None;
    for &n in counts {
        let c = concurrent(n.max(1), &make, prompt, gen).await?;
        let base = *one.get_or_insert(if c.n == 1 { c.aggregate } else { f64::NAN });
        lines.push(format!(
            "| {} | {:.2} | {:.2} | {:.0} | {:.0} | {:.2}x |",
            c.n,
            c.aggregate,
            c.per_stream,
            c.ttft_p50 * 1000.0,
            c.ttft_p99 * 1000.0,
            c.aggregate / base
        ));
    }
    Ok(lines)
}

pub async fn bench(args: BenchArgs, threads: usize) -> Result<()> {
    let model_path = crate::models::resolve_standalone(&args.model).await?;
    let info = ModelInfo::load(&model_path)?;
    // An ordinary token sequence: the encoding of repeated text, cut to length.
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(args.prompt_tokens);
    let mut prompt = info.encode_prompt(&text)?;
    prompt.truncate(args.prompt_tokens.max(1));

    let speculation = args.speculation.load(&info).await?;
    let mut rows = Vec::new();
    let mut extra = Vec::new();
    let mut spec_lines = Vec::new();
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
        if let (1, Some(spec)) = (k, &speculation) {
            let make = || BoxedStepper::Local(LocalStepper::new(ring.clone()));
            spec_lines.push(
                speculative_line(&name, make, &info, spec, args.gen_tokens, args.repetitions)
                    .await?,
            );
        }
        if k == 1 && !args.concurrency.is_empty() {
            let make = || BoxedStepper::Local(LocalStepper::new(ring.clone()));
            let table = concurrency_table(&name, &args.concurrency, make, &prompt, args.gen_tokens);
            extra.extend(table.await?);
        }
    }

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
        let counts = if args.concurrency.is_empty() {
            vec![1, 4]
        } else {
            args.concurrency.clone()
        };
        let make = || BoxedStepper::Ring(RingStepper::new(ring.clone(), plan.clone()));
        extra.extend(concurrency_table(&name, &counts, make, &prompt, args.gen_tokens).await?);
        if let Some(spec) = &speculation {
            let make = || BoxedStepper::Ring(RingStepper::new(ring.clone(), plan.clone()));
            spec_lines.push(
                speculative_line(&name, make, &info, spec, args.gen_tokens, args.repetitions)
                    .await?,
            );
        }
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
        let gap = if line.starts_with('|') { "" } else { "\n" };
        println!("{gap}{line}");
    }
    if !spec_lines.is_empty() {
        println!("\nspeculative decoding: greedy chat answer to a code-writing prompt, plain and speculating");
        println!("| config | speculation | max tokens | plain t/s | speculative t/s | speedup | acceptance | tokens/pass | same text |");
        println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
        for line in spec_lines {
            println!("{line}");
        }
    }
    Ok(())
}
