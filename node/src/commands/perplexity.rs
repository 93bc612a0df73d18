//! `exo-p2p perplexity MODEL FILE`: accuracy measured, not assumed. Same chunking and scoring as
//! llama.cpp's llama-perplexity, so the two figures on the same file can be compared.

use std::io::Write;

use anyhow::{Context, Result};
use candle_core::Device;
use exo_engine::{ModelInfo, Perplexity, ShardModel};

use crate::cli::PerplexityArgs;

pub async fn perplexity(args: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let path = crate::models::resolve_standalone(&args.model).await?;
    let result = tokio::task::spawn_blocking(move || -> Result<Perplexity> {
        let info = ModelInfo::load(&path)?;
        let model = ShardModel::load(&path, None, &Device::Cpu)?;
        let started = std::time::Instant::now();
        let r =
            exo_engine::perplexity(&model, &info.tokenizer, &text, args.ctx, args.chunks, |r| {
                // llama-perplexity's running figures: [chunk]ppl,
                eprint!("[{}]{:.4},", r.chunks, r.ppl);
                let _ = std::io::stderr().flush();
            })?;
        eprintln!();
        tracing::info!(
            chunks = r.chunks,
            seconds = started.elapsed().as_secs_f64(),
            "perplexity done"
        );
        Ok(r)
    })
    .await??;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "ppl": result.ppl,
                "stderr": result.stderr,
                "chunks": result.chunks,
                "scored_tokens": result.scored,
                "ctx": args.ctx,
            })
        );
    } else {
        println!(
            "Final estimate: PPL = {:.4} +/- {:.5} ({} chunks of {} tokens, {} tokens scored)",
            result.ppl, result.stderr, result.chunks, args.ctx, result.scored
        );
    }
    Ok(())
}
