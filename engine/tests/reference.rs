//! Greedy output on the real test models against llama.cpp's (tests/fixtures/llamacpp-greedy.jsonl
//! from a CPU with AVX-512, llamacpp-greedy-avx2.jsonl from one without: llama.cpp's float code,
//! and so its results, differ between the two; both made by scripts/llamacpp-fixtures.sh), and the
//! same output from the model split into 2 and 3 shards.
//!
//! The fixture holds, for every step, llama.cpp's token, its runner-up and the gap between their
//! logits. Every token must equal llama.cpp's; where the gap is below [`NEAR_TIE`] the runner-up is
//! right too, and the texts may part there (float summation order decides a near-tie), so the
//! comparison ends at the first such step where they do.
//!
//! [`KNOWN_DIVERGENCES`] lists where the engine parts from llama.cpp today on a wider margin: those
//! prompts must still match up to that step, and an entry that no longer applies fails the test
//! until it is removed.

mod common;

use candle_core::Device;
use common::{greedy, test_model};
use exo_engine::{ggml_vec::VecPath, LocalRing, ModelInfo};

/// A logit gap below which llama.cpp's top two tokens are both right answers.
const NEAR_TIE: f32 = 0.05;

const QWEN_1_5B: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

/// (model, prompt, step): where the engine's token differs from llama.cpp's (flash attention on,
/// no repack) at `step` although llama.cpp's margin there is above [`NEAR_TIE`]: the engine's
/// numerics to fix, not the reference's. Empty since the engine follows `--no-repack` Q4_K/Q4_0
/// accumulation, ggml's tiled attention for batches and the CPU's own vector path
/// (`exo_engine::ggml_vec`); an entry pins a divergence found later until it is fixed.
const KNOWN_DIVERGENCES: &[(&str, &str, usize)] = &[];

/// The AVX-512 fixture (tests/fixtures/llamacpp-greedy.jsonl) was last compared on an AVX-512 CPU
/// before the engine took ggml's 512-bit vector forms, and no such CPU was at hand since: the
/// divergences seen then are tolerated on that path (reported loudly, never required) until a run
/// there re-checks them and this list goes.
const AVX512_UNCHECKED: &[(&str, &str, usize)] = &[
    (common::GEMMA, "In 1492, Columbus", 7),
    (common::QWEN, "The quick brown fox", 5),
    (common::QWEN, "Water boils at", 13),
    (QWEN_1_5B, "The quick brown fox", 6),
    (QWEN_1_5B, "def fibonacci(n):", 10),
];

/// Where `case` is pinned to part from llama.cpp, and whether the pin is required (an entry of
/// [`KNOWN_DIVERGENCES`]) or only tolerated ([`AVX512_UNCHECKED`]).
fn known_divergence(case: &Case) -> Option<(usize, bool)> {
    let find = |list: &[(&str, &str, usize)]| {
        list.iter()
            .find(|(m, p, _)| *m == case.model && *p == case.prompt)
            .map(|&(_, _, step)| step)
    };
    if let Some(step) = find(KNOWN_DIVERGENCES) {
        return Some((step, true));
    }
    let unchecked = exo_engine::ggml_vec::path() == VecPath::Avx512;
    find(AVX512_UNCHECKED)
        .filter(|_| unchecked)
        .map(|step| (step, false))
}

#[derive(serde::Deserialize)]
struct Case {
    model: String,
    prompt: String,
    max_tokens: usize,
    bos: bool,
    prompt_ids: Vec<u32>,
    /// llama.cpp's tokens; shorter than `max_tokens` when it stopped at an end-of-generation one.
    ids: Vec<u32>,
    second_ids: Vec<u32>,
    gaps: Vec<f32>,
}

/// llama.cpp's results depend on the vector code its build runs (see `exo_engine::ggml_vec`):
/// the fixture made by a native build on a CPU of the same path as this one.
fn fixture() -> &'static str {
    match exo_engine::ggml_vec::path() {
        VecPath::Avx512 => concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/llamacpp-greedy.jsonl"
        ),
        // No fixture of an ARM build is kept: aarch64 is compared with the AVX2 one (the ids
        // of llama.cpp's ARM build equalled x86's where the README's ARM section checked).
        VecPath::Avx2 | VecPath::Neon => concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/llamacpp-greedy-avx2.jsonl"
        ),
    }
}

fn cases(model: &str) -> Vec<Case> {
    let path = fixture();
    let cases: Vec<Case> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|c: &Case| c.model == model)
        .collect();
    assert!(
        !cases.is_empty(),
        "no llama.cpp cases for {model} in {path}"
    );
    cases
}

/// How far `ours` agrees with llama.cpp's greedy run.
#[derive(Debug, PartialEq)]
enum Agreement {
    /// Every token matches.
    All,
    /// Every token matches up to `step`, where llama.cpp's top two were within [`NEAR_TIE`] and
    /// we took its runner-up: both are right, and the continuations part there.
    NearTie { step: usize },
    /// At `step` we chose a token llama.cpp did not have as a near-tie.
    Differs { step: usize },
}

fn agreement(case: &Case, ours: &[u32]) -> Agreement {
    for (step, (&got, &want)) in ours.iter().zip(&case.ids).enumerate() {
        if got == want {
            continue;
        }
        return if case.gaps[step] < NEAR_TIE && got == case.second_ids[step] {
            Agreement::NearTie { step }
        } else {
            Agreement::Differs { step }
        };
    }
    Agreement::All
}

fn check_model(file: &str) {
    let path = test_model(file);
    let info = ModelInfo::load(&path).unwrap();
    let whole = LocalRing::load(&path, 1, &Device::Cpu).unwrap();
    let split2 = LocalRing::load(&path, 2, &Device::Cpu).unwrap();
    let split3 = LocalRing::load(&path, 3, &Device::Cpu).unwrap();
    let mut failures = Vec::new();
    for case in cases(file) {
        let ids = info.tokenizer.encode(&case.prompt, case.bos).unwrap();
        assert_eq!(
            ids, case.prompt_ids,
            "{file} {:?}: the prompt's tokens differ from llama.cpp's",
            case.prompt
        );
        let out = greedy(&whole, "whole", &ids, case.max_tokens);
        let text = info.tokenizer.decode(&out).unwrap();
        let agreement = agreement(&case, &out);
        eprintln!("{file} {:?}: {agreement:?} {text:?}", case.prompt);
        let reference = info.tokenizer.decode(&case.ids).unwrap();
        match (agreement, known_divergence(&case)) {
            (Agreement::Differs { step }, Some((known, required)))
                if step == known || (!required && step > known) =>
            {
                // Past the harness's capture: an open difference is seen even when it passes.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "KNOWN DIVERGENCE from llama.cpp: {file} {:?} at token {step} (gap {:.3})",
                    case.prompt,
                    case.gaps[step]
                );
            }
            (Agreement::Differs { step }, _) => failures.push(format!(
                "{:?}: token {step} is {} where llama.cpp has {} (runner-up {}, gap {:.3})\n  \
                 ours:      {text:?}\n  llama.cpp: {reference:?}",
                case.prompt,
                out[step],
                case.ids[step],
                case.second_ids[step],
                case.gaps[step]
            )),
            (Agreement::All | Agreement::NearTie { .. }, Some((_, false))) => {}
            (agreement, Some((known, _))) => failures.push(format!(
                "{:?}: KNOWN_DIVERGENCES expects a difference at token {known}, but now {agreement:?}: \
                 remove the entry\n  ours: {text:?}",
                case.prompt
            )),
            (_, None) => {}
        }
        assert_eq!(
            greedy(&split2, "s2", &ids, case.max_tokens),
            out,
            "{:?}: 2 shards differ from the whole model",
            case.prompt
        );
        assert_eq!(
            greedy(&split3, "s3", &ids, case.max_tokens),
            out,
            "{:?}: 3 shards differ from the whole model",
            case.prompt
        );
    }
    assert!(
        failures.is_empty(),
        "{file} differs from llama.cpp's greedy output:\n{}",
        failures.join("\n")
    );
}

#[test]
fn gemma_matches_llama_cpp_and_splits_agree() {
    check_model(common::GEMMA);
}

#[test]
fn qwen_matches_llama_cpp_and_splits_agree() {
    check_model(common::QWEN);
}

/// The 1.1 GB 1.5B model (not fetched in CI): `flock /tmp/exo-big.lock cargo test -p exo-engine
/// --test reference -- --ignored`.
#[test]
#[ignore = "needs qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (1.1 GB) in EXO_TEST_MODELS"]
fn qwen_1_5b_matches_llama_cpp_and_splits_agree() {
    check_model(QWEN_1_5B);
}

#[test]
fn agreement_ends_only_at_a_near_tie() {
    let case = Case {
        model: String::new(),
        prompt: String::new(),
        max_tokens: 4,
        bos: false,
        prompt_ids: vec![],
        ids: vec![1, 2, 3, 4],
        second_ids: vec![9, 8, 7, 6],
        gaps: vec![1.0, 0.01, 0.01, 1.0],
    };
    assert_eq!(agreement(&case, &[1, 2, 3, 4]), Agreement::All);
    // A near-tie taken the same way does not end the comparison.
    assert_eq!(
        agreement(&case, &[1, 2, 7, 0]),
        Agreement::NearTie { step: 2 }
    );
    assert_eq!(
        agreement(&case, &[1, 8, 0, 0]),
        Agreement::NearTie { step: 1 }
    );
    // A clear margin, or a third token at a near-tie, is a difference.
    assert_eq!(
        agreement(&case, &[9, 2, 3, 4]),
        Agreement::Differs { step: 0 }
    );
    assert_eq!(
        agreement(&case, &[1, 5, 3, 4]),
        Agreement::Differs { step: 1 }
    );
    assert_eq!(
        agreement(&case, &[1, 2, 3, 6]),
        Agreement::Differs { step: 3 }
    );
}
