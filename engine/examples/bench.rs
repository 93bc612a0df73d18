//! Prompt-processing and generation speed of one model, measured like llama-bench's `pp` and
//! `tg` tests: a prefill of `--pp` tokens, then `--tg` single-token greedy decode steps.
//!
//! `cargo run --release -p exo-engine --example bench -- MODEL.gguf [--pp 128] [--tg 64]
//! [--reps 3] [--threads 2]`; prints one JSON line per model with tokens per second (the best of
//! the repetitions, after a warm-up).

use std::time::Instant;

use candle_core::Device;
use exo_engine::LocalRing;
use exo_protocol::SamplingParams;

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = std::path::PathBuf::from(args.first().expect("usage: bench MODEL.gguf [options]"));
    let pp = arg(&args, "--pp", 128);
    let tg = arg(&args, "--tg", 64);
    let reps = arg(&args, "--reps", 3).max(1);
    let threads = arg(&args, "--threads", 2);
    // Before candle or rayon start: candle re-reads /proc/cpuinfo unless this is set.
    if std::env::var("RAYON_NUM_THREADS").is_err() {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }

    let ring = LocalRing::load(&path, 1, &Device::Cpu).expect("load model");
    let greedy = SamplingParams::greedy();
    // Arbitrary token ids well inside every vocabulary, like llama-bench's random tokens.
    let prompt: Vec<u32> = (0..pp as u32).map(|i| 1000 + (i * 7919) % 20000).collect();

    let mut best_pp = f64::MAX;
    let mut best_tg = f64::MAX;
    for rep in 0..=reps {
        let key = format!("bench-{rep}");
        let t = Instant::now();
        let mut tok = ring.step(&key, 0, &prompt, &greedy).expect("prefill");
        let pp_s = t.elapsed().as_secs_f64();
        ring.release(&key);

        let key = format!("bench-tg-{rep}");
        let t = Instant::now();
        for pos in 0..tg {
            let input = [if pos == 0 { prompt[0] } else { tok.id }];
            tok = ring.step(&key, pos, &input, &greedy).expect("decode");
        }
        let tg_s = t.elapsed().as_secs_f64();
        ring.release(&key);
        if rep > 0 {
            // rep 0 warms up caches and thread pools
            best_pp = best_pp.min(pp_s);
            best_tg = best_tg.min(tg_s);
        }
    }
    let name = path.file_name().unwrap().to_string_lossy();
    println!(
        "{{\"model\": \"{name}\", \"pp\": {pp}, \"pp_tok_s\": {:.2}, \"tg\": {tg}, \"tg_tok_s\": {:.2}, \"isa\": \"{:?}\", \"threads\": {}}}",
        pp as f64 / best_pp,
        tg as f64 / best_tg,
        exo_engine::quant::Isa::current(),
        rayon::current_num_threads()
    );
}
