//! `exo-p2p bench`: prompt processing (pp) and generation (tg) speed in a llama-bench-like
//! table, for the whole model and, with `--shards K`, for K in-process shards whose hidden
//! states pass through the wire encoding.

use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use exo_engine::{LocalRing, ModelInfo};
use exo_protocol::SamplingParams;

use crate::cli::BenchArgs;

struct Row {
    shards: u32,
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

/// Tokens per second for `prompt` prefill, and for `gen` one-token steps after a 1-token prompt.
fn measure(ring: &LocalRing, prompt: &[u32], gen: usize) -> Result<(f64, f64)> {
    let p = SamplingParams::greedy();
    let t = Instant::now();
    ring.step("bench-pp", 0, prompt, &p)?;
    let pp = prompt.len() as f64 / t.elapsed().as_secs_f64();
    ring.release("bench-pp");

    let mut tok = ring.step("bench-tg", 0, &prompt[..1], &p)?;
    let t = Instant::now();
    for pos in 1..=gen {
        tok = ring.step("bench-tg", pos, &[tok.id], &p)?;
    }
    let tg = gen as f64 / t.elapsed().as_secs_f64();
    ring.release("bench-tg");
    Ok((pp, tg))
}

pub fn bench(args: BenchArgs, threads: usize) -> Result<()> {
    let info = ModelInfo::load(&args.model)?;
    // A fixed, ordinary token sequence (the tokenizer's encoding of repeated text).
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(args.prompt_tokens);
    let mut prompt = info.encode_prompt(&text)?;
    prompt.truncate(args.prompt_tokens.max(1));

    let mut configs = vec![1];
    if args.shards > 1 {
        configs.push(args.shards);
    }
    let mut rows = Vec::new();
    for &k in &configs {
        let ring = LocalRing::load(&args.model, k, &Device::Cpu)?.through_wire(k > 1);
        measure(&ring, &prompt[..prompt.len().min(8)], 4)?; // warm-up
        let (mut pps, mut tgs) = (Vec::new(), Vec::new());
        for _ in 0..args.repetitions.max(1) {
            let (pp, tg) = measure(&ring, &prompt, args.gen_tokens)?;
            pps.push(pp);
            tgs.push(tg);
        }
        for (test, xs) in [
            (format!("pp{}", prompt.len()), pps),
            (format!("tg{}", args.gen_tokens), tgs),
        ] {
            let (mean, stddev) = mean_stddev(&xs);
            rows.push(Row {
                shards: k,
                test,
                mean,
                stddev,
            });
        }
    }
    let size = info.weight_bytes as f64 / (1 << 20) as f64;
    println!("| model | size | threads | shards | test | t/s | vs 1 shard |");
    println!("| --- | ---: | ---: | ---: | --- | ---: | ---: |");
    for r in &rows {
        let base = rows
            .iter()
            .find(|b| b.shards == 1 && b.test == r.test)
            .map_or(1.0, |b| r.mean / b.mean);
        println!(
            "| {} | {size:.0} MiB | {threads} | {} | {} | {:.2} ± {:.2} | {base:.3} |",
            info.id, r.shards, r.test, r.mean, r.stddev
        );
    }
    Ok(())
}
