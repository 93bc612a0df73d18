//! The architectures and quant types of issues 14 and 21 on tiny random-weight GGUFs committed
//! in tests/fixtures (qwen3, qwen3moe, Mixtral-style llama MoE in Q8_0; qwen3 in Q2_K, Q3_K,
//! IQ4_NL and IQ4_XS; gpt-oss with MXFP4 experts), made by scripts/tiny-fixtures.sh with
//! llama.cpp's greedy output beside them (tests/fixtures/tiny-greedy.jsonl):
//!
//! - the prompt's tokens and every greedy token equal llama.cpp's, up to the first step where
//!   llama.cpp's top two were within [`NEAR_TIE`] and we took its runner-up;
//! - the model split into 2 shards gives the same tokens;
//! - a batched prompt (a mixture groups its tokens by expert) gives the logits of feeding the
//!   tokens one at a time;
//! - perplexity on KJV Genesis 1–8 is within 1 % of llama-perplexity's
//!   (tests/fixtures/tiny-perplexity.jsonl);
//! - a tensor of a type nothing here computes with fails the load in one line naming it.

mod common;

use std::path::PathBuf;

use candle_core::Device;
use common::greedy;
use exo_engine::{perplexity, LocalRing, Logits, ModelInfo, ShardInput, ShardModel};

/// A logit gap below which llama.cpp's top two tokens are both right answers.
const NEAR_TIE: f32 = 0.05;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures")).join(name)
}

#[derive(serde::Deserialize)]
struct Case {
    model: String,
    prompt: String,
    max_tokens: usize,
    prompt_ids: Vec<u32>,
    ids: Vec<u32>,
    second_ids: Vec<u32>,
    gaps: Vec<f32>,
}

fn cases(model: &str) -> Vec<Case> {
    let path = fixture("tiny-greedy.jsonl");
    let cases: Vec<Case> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|c: &Case| c.model == model)
        .collect();
    assert!(
        !cases.is_empty(),
        "no cases for {model} in {}",
        path.display()
    );
    cases
}

/// The first step where `ours` leaves llama.cpp's tokens, and whether it is a near-tie taken
/// the other way (both right).
fn first_difference(case: &Case, ours: &[u32]) -> Option<(usize, bool)> {
    ours.iter()
        .zip(&case.ids)
        .position(|(a, b)| a != b)
        .map(|step| {
            let tie = case.gaps[step] < NEAR_TIE && ours[step] == case.second_ids[step];
            (step, tie)
        })
}

fn check(file: &str) {
    let path = fixture(file);
    let info = ModelInfo::load(&path).unwrap();
    let whole = LocalRing::load(&path, 1, &Device::Cpu).unwrap();
    let split = LocalRing::load(&path, 2, &Device::Cpu).unwrap();
    let mut failures = Vec::new();
    for case in cases(file) {
        let ids = info.tokenizer.encode(&case.prompt, false).unwrap();
        assert_eq!(
            ids, case.prompt_ids,
            "{file} {:?}: prompt tokens",
            case.prompt
        );
        let n = case.max_tokens.min(case.ids.len());
        let out = greedy(&whole, "whole", &ids, n);
        match first_difference(&case, &out) {
            None => {}
            Some((step, true)) => eprintln!("{file} {:?}: near-tie at {step}", case.prompt),
            Some((step, false)) => failures.push(format!(
                "{:?}: token {step} is {} where llama.cpp has {} (runner-up {}, gap {:.3})\n  \
                 ours      {:?}\n  llama.cpp {:?}",
                case.prompt,
                out[step],
                case.ids[step],
                case.second_ids[step],
                case.gaps[step],
                out,
                case.ids
            )),
        }
        assert_eq!(
            greedy(&split, "split", &ids, n),
            out,
            "{file} {:?}: 2 shards differ from the whole model",
            case.prompt
        );
    }
    assert!(
        failures.is_empty(),
        "{file} differs from llama.cpp:\n{}",
        failures.join("\n")
    );
}

#[test]
fn qwen3_q8_0_matches_llama_cpp() {
    check("tiny-qwen3-q8_0.gguf");
}

#[test]
fn qwen3moe_matches_llama_cpp() {
    check("tiny-qwen3moe-q8_0.gguf");
}

#[test]
fn mixtral_style_llama_moe_matches_llama_cpp() {
    check("tiny-mixtral-q8_0.gguf");
}

#[test]
fn q2_k_matches_llama_cpp() {
    check("tiny-qwen3-q2_k.gguf");
}

#[test]
fn q3_k_matches_llama_cpp() {
    check("tiny-qwen3-q3_k.gguf");
}

#[test]
fn iq4_nl_matches_llama_cpp() {
    check("tiny-qwen3-iq4_nl.gguf");
}

#[test]
fn iq4_xs_matches_llama_cpp() {
    check("tiny-qwen3-iq4_xs.gguf");
}

#[test]
fn gpt_oss_mxfp4_matches_llama_cpp() {
    check("tiny-gpt-oss-mxfp4.gguf");
}

/// Files whose perplexity is off by more than 1 % today, to be fixed: each must stay within 2 %,
/// and an entry that is within 1 % again fails until it is removed. Empty since the engine took
/// ggml's vector forms for this CPU (Q2_K was 1.2 % off before; now equal to llama.cpp's).
const KNOWN_PPL_OFF: &[&str] = &[];

#[derive(serde::Deserialize)]
struct PplCase {
    model: String,
    text: String,
    ctx: usize,
    chunks: usize,
    ppl: f64,
}

#[test]
fn perplexity_is_within_one_percent_of_llama_cpp() {
    let path = fixture("tiny-perplexity.jsonl");
    let cases: Vec<PplCase> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        cases.len() >= 8,
        "{} cases in {}",
        cases.len(),
        path.display()
    );
    let mut failures = Vec::new();
    for c in cases {
        let file = fixture(&c.model);
        let info = ModelInfo::load(&file).unwrap();
        let model = ShardModel::load(&file, None, &Device::Cpu).unwrap();
        let text = std::fs::read_to_string(fixture(&c.text)).unwrap();
        let ours = perplexity(
            &model,
            &info.tokenizer,
            &text,
            c.ctx,
            Some(c.chunks),
            |_| {},
        )
        .unwrap()
        .ppl;
        let ratio = ours / c.ppl;
        eprintln!(
            "{}: {ours:.4} vs llama.cpp {:.4} ({ratio:.5})",
            c.model, c.ppl
        );
        let off = (ratio - 1.0).abs();
        let known = KNOWN_PPL_OFF.contains(&c.model.as_str());
        if known && off <= 0.01 {
            failures.push(format!(
                "{}: within 1 % now: remove it from KNOWN_PPL_OFF",
                c.model
            ));
        } else if off > if known { 0.02 } else { 0.01 } {
            failures.push(format!("{}: {ours:.4} vs llama.cpp {:.4}", c.model, c.ppl));
        } else if known {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "KNOWN: {} perplexity {ours:.1} vs llama.cpp {:.1} ({ratio:.4})",
                c.model,
                c.ppl
            );
        }
    }
    assert!(
        failures.is_empty(),
        "perplexity off by more than 1 %:\n{}",
        failures.join("\n")
    );
}

/// Last-position logits of `prompt` fed at once and fed one token at a time.
fn batched_and_stepped(file: &str, prompt: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let model = ShardModel::load(&fixture(file), None, &Device::Cpu).unwrap();
    let logits = |t: candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut cache = model.new_cache();
    let batched = logits(
        model
            .forward(ShardInput::Tokens(prompt), &mut cache, Logits::Last)
            .unwrap(),
    );
    let mut cache = model.new_cache();
    let mut stepped = Vec::new();
    for t in prompt {
        stepped = logits(
            model
                .forward(ShardInput::Tokens(&[*t]), &mut cache, Logits::Last)
                .unwrap(),
        );
    }
    (batched, stepped)
}

#[test]
fn a_batched_prompt_through_the_experts_equals_one_token_at_a_time() {
    let prompt: Vec<u32> = (0..24).map(|i| (i * 37 + 5) % 1000).collect();
    for file in [
        "tiny-qwen3moe-q8_0.gguf",
        "tiny-mixtral-q8_0.gguf",
        "tiny-gpt-oss-mxfp4.gguf",
    ] {
        let (batched, stepped) = batched_and_stepped(file, &prompt);
        let worst = batched
            .iter()
            .zip(&stepped)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Batched matmuls may sum in another order than single rows; no more than that.
        assert!(worst < 1e-3, "{file}: logits differ by up to {worst}");
    }
}

#[test]
fn an_unsupported_tensor_type_fails_the_load_naming_the_tensor() {
    // The tiny qwen3 with `blk.1.ffn_up.weight` relabelled IQ2_XXS (its bytes still fit).
    let bytes = std::fs::read(fixture("tiny-qwen3-q8_0.gguf")).unwrap();
    let name = b"blk.1.ffn_up.weight";
    let mut key = (name.len() as u64).to_le_bytes().to_vec();
    key.extend_from_slice(name);
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_slice())
        .expect("the tensor's info")
        + key.len();
    let n_dims = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    let ty_at = at + 4 + 8 * n_dims;
    assert_eq!(
        u32::from_le_bytes(bytes[ty_at..ty_at + 4].try_into().unwrap()),
        8
    );
    let mut patched = bytes.clone();
    patched[ty_at..ty_at + 4].copy_from_slice(&16u32.to_le_bytes());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq2.gguf");
    std::fs::write(&path, patched).unwrap();

    // The layer's shard fails; the other shard loads.
    let range = |s, e| exo_protocol::LayerRange::new(s, e, 2);
    let e = match ShardModel::load(&path, Some(range(1, 2)), &Device::Cpu) {
        Ok(_) => panic!("an IQ2_XXS tensor loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.starts_with("tensor `blk.1.ffn_up.weight` of")
            && e.contains("iq2.gguf")
            && e.contains("has type IQ2_XXS, which exo-p2p cannot load yet"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    ShardModel::load(&path, Some(range(0, 1)), &Device::Cpu).unwrap();
}
