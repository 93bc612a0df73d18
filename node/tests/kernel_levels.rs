//! The quantized kernels give the same bits at every level this CPU can run, in a real run:
//! `exo-p2p run` with `EXO_QUANT_ISA` forcing each level writes the forward pass's tensors
//! (`EXO_DUMP_DIR`: every layer's attention and FFN outputs) for a prompt (prefill: many rows,
//! repacked and pre-decoded kernels) and for one decoding step (one row); each tensor must equal
//! the scalar level's byte for byte, and the text too. The kernel property tests in
//! engine/src/quant check the same per kernel; this checks the dispatch a real run takes.
//! Levels the CPU lacks cannot run here: the test names them.

mod common;

use std::{collections::BTreeMap, path::Path, process::Command};

use common::*;
use exo_engine::quant::Isa;

const PROMPT: &str = "Write a Python function that returns the n-th Fibonacci number, with a \
                      docstring and a short example of how to call it from the command line.";

/// The level's name for `EXO_QUANT_ISA`.
fn env_name(isa: Isa) -> &'static str {
    match isa {
        Isa::Scalar => "scalar",
        Isa::Avx2 => "avx2",
        Isa::AvxVnni => "avxvnni",
        Isa::Avx512 => "avx512",
        Isa::Neon => "neon",
        Isa::NeonDotprod => "dotprod",
        Isa::NeonI8mm => "i8mm",
    }
}

/// Every dumped tensor (name → bytes) and the text of `exo-p2p run` at `isa`, generating
/// `tokens` tokens (the dumps are the last forward pass's).
fn run_at(model: &Path, isa: Isa, tokens: u32, dir: &Path) -> (BTreeMap<String, Vec<u8>>, String) {
    let dump = dir.join(format!("{}-{tokens}", env_name(isa)));
    let out = Command::new(bin())
        .arg("run")
        .arg(model)
        .args([
            "-p",
            PROMPT,
            "-n",
            &tokens.to_string(),
            "--temperature",
            "0",
        ])
        .env("EXO_QUANT_ISA", env_name(isa))
        .env("EXO_DUMP_DIR", &dump)
        .env_remove("EXO_NO_AVX512")
        .env_remove("RUST_LOG")
        .env("DEBUG", "1")
        .output_within(CHILD_TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The switch took effect: the engine names the level it dispatches to.
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("quantized kernels") && l.contains(&format!("{isa:?}"))),
        "EXO_QUANT_ISA={} did not select {isa:?}:\n{stderr}",
        env_name(isa)
    );
    let tensors: BTreeMap<String, Vec<u8>> = std::fs::read_dir(&dump)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    assert!(
        tensors.keys().any(|k| k.starts_with("ffn_out-")),
        "no layer dumps in {}: {:?}",
        dump.display(),
        tensors.keys()
    );
    (tensors, String::from_utf8(out.stdout).unwrap())
}

fn check_model(file: &str) {
    let model = test_model(file);
    let dir = temp_dir("kernel-levels");
    let levels = Isa::available();
    let missing: Vec<Isa> = [Isa::Avx2, Isa::AvxVnni, Isa::Avx512]
        .into_iter()
        .filter(|l| !levels.contains(l))
        .collect();
    eprintln!("{file}: kernel levels run {levels:?}; not on this CPU: {missing:?}");
    // A prompt (the last pass is the prefill), then a decoding step (the last pass is one row).
    for tokens in [1, 2] {
        let (want, want_text) = run_at(&model, Isa::Scalar, tokens, &dir);
        for &isa in levels.iter().filter(|l| **l != Isa::Scalar) {
            let (got, text) = run_at(&model, isa, tokens, &dir);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{isa:?} dumped other tensors than scalar"
            );
            for (name, bytes) in &got {
                assert!(
                    bytes == &want[name],
                    "{file}, {tokens} token(s): {name} at {isa:?} differs from scalar"
                );
            }
            assert_eq!(text, want_text, "{file}: {isa:?} generated other text");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_kernel_level_computes_the_scalar_bits_on_gemma() {
    check_model(GEMMA);
}

#[test]
fn every_kernel_level_computes_the_scalar_bits_on_qwen() {
    check_model(QWEN);
}
