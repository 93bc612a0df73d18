//! Split GGUF models open across all their parts and compute exactly what the whole file does.
//!
//! The split is made by llama.cpp's `llama-gguf-split` (the tool users split models with, built
//! by `scripts/llamacpp.sh`; where it is not built those tests fail unless the user opted out
//! with `EXO_SKIP=llamacpp`, see tests/capability.rs), and by a writer here that lays parts out
//! the same way (candle's GGUF writer, the first part holding the metadata), which needs nothing.

#[path = "../../tests/capability.rs"]
mod capability;
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use candle_core::{
    quantized::{gguf_file, QTensor},
    Device,
};
use common::{greedy, test_model, QWEN};
use exo_engine::{
    gguf::{self, Gguf, Value},
    LocalRing, Logits, ShardInput, ShardModel,
};

/// llama.cpp's `llama-gguf-split`; when it is not built the test fails, unless the user opted
/// out with `EXO_SKIP=llamacpp` (then None).
fn llama_gguf_split(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("EXO_LLAMACPP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default())
                .join(".cache/exo-p2p/llama.cpp/0.3.36/build/bin")
        });
    let bin = dir.join("llama-gguf-split");
    if bin.exists() {
        return Some(bin);
    }
    let why = format!(
        "{} is not built (source scripts/llamacpp.sh; llamacpp_bin native llama-gguf-split)",
        bin.display()
    );
    assert!(!capability::check(
        capability::Capability::Llamacpp,
        test,
        Some(why)
    ));
    None
}

/// Splits `model` with llama-gguf-split into parts of at most `max_size` (like `150M`).
fn split_with_llama_cpp(bin: &Path, model: &Path, out: &Path, max_size: &str) -> PathBuf {
    let status = Command::new(bin)
        .args(["--split-max-size", max_size])
        .arg(model)
        .arg(out.join("qwen"))
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "llama-gguf-split failed");
    first_part(out)
}

fn first_part(dir: &Path) -> PathBuf {
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    parts.sort();
    assert!(parts.len() > 1, "{parts:?}");
    parts.remove(0)
}

fn to_candle(v: &Value) -> gguf_file::Value {
    use gguf_file::Value as C;
    match v {
        Value::U8(x) => C::U8(*x),
        Value::I8(x) => C::I8(*x),
        Value::U16(x) => C::U16(*x),
        Value::I16(x) => C::I16(*x),
        Value::U32(x) => C::U32(*x),
        Value::I32(x) => C::I32(*x),
        Value::U64(x) => C::U64(*x),
        Value::I64(x) => C::I64(*x),
        Value::F32(x) => C::F32(*x),
        Value::F64(x) => C::F64(*x),
        Value::Bool(x) => C::Bool(*x),
        Value::String(x) => C::String(x.clone()),
        Value::Array(x) => C::Array(x.iter().map(to_candle).collect()),
    }
}

/// Writes `model` as `parts` GGUF files the way llama-gguf-split lays them out: every part has
/// `split.*` keys and a share of the tensors in file order, the first also all the metadata.
fn split_here(model: &Path, out: &Path, parts: u32) -> PathBuf {
    let g = Gguf::open(model).unwrap();
    let infos: Vec<_> = g.tensor_infos().collect();
    let per_part = infos.len().div_ceil(parts as usize);
    for (i, chunk) in infos.chunks(per_part).enumerate() {
        let tensors: Vec<(String, QTensor)> = chunk
            .iter()
            .map(|t| {
                let q = g.tensor(&t.name).unwrap().to_qtensor(&Device::Cpu).unwrap();
                (t.name.clone(), q)
            })
            .collect();
        let mut kv: Vec<(String, gguf_file::Value)> = vec![
            (gguf::split::KEY_NO.into(), gguf_file::Value::U16(i as u16)),
            (
                gguf::split::KEY_COUNT.into(),
                gguf_file::Value::U16(parts as u16),
            ),
            (
                gguf::split::KEY_TENSORS.into(),
                gguf_file::Value::I32(infos.len() as i32),
            ),
        ];
        if i == 0 {
            let mut meta: Vec<_> = g.metadata().iter().collect();
            meta.sort_by(|a, b| a.0.cmp(b.0));
            kv.extend(meta.into_iter().map(|(k, v)| (k.clone(), to_candle(v))));
        }
        let path = out.join(gguf::split::part_name("qwen", i as u32 + 1, parts));
        let kv_refs: Vec<_> = kv.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let t_refs: Vec<_> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(
            &mut std::fs::File::create(&path).unwrap(),
            &kv_refs,
            &t_refs,
        )
        .unwrap();
    }
    out.join(gguf::split::part_name("qwen", 1, parts))
}

/// Logits of every position of a prompt, bit for bit.
fn logits(path: &Path, tokens: &[u32]) -> Vec<f32> {
    let m = ShardModel::load(path, None, &Device::Cpu).unwrap();
    let mut cache = m.new_cache();
    let t = m
        .forward(ShardInput::Tokens(tokens), &mut cache, Logits::From(0))
        .unwrap();
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// The split model computes what the whole file does: the same logits, and the same greedy text
/// through a ring of two shards (each reading tensors from several parts).
fn same_as_whole(whole: &Path, split: &Path) {
    let g = Gguf::open(split).unwrap();
    assert!(g.part_paths().count() > 1);
    assert_eq!(g.tensor_bytes(), Gguf::open(whole).unwrap().tensor_bytes());
    let prompt: Vec<u32> = vec![785, 6722, 315, 9625, 374, 12095, 13, 576, 6722];
    assert!(
        logits(whole, &prompt) == logits(split, &prompt),
        "logits differ"
    );
    let a = greedy(
        &LocalRing::load(whole, 1, &Device::Cpu).unwrap(),
        "w",
        &prompt,
        16,
    );
    let b = greedy(
        &LocalRing::load(split, 2, &Device::Cpu).unwrap(),
        "s",
        &prompt,
        16,
    );
    assert_eq!(a, b);
}

#[test]
fn a_split_written_like_llama_gguf_split_equals_the_whole_file() {
    let whole = test_model(QWEN);
    let dir = tempfile::tempdir().unwrap();
    let first = split_here(&whole, dir.path(), 3);
    same_as_whole(&whole, &first);
}

#[test]
fn a_llama_gguf_split_model_equals_the_whole_file() {
    let Some(bin) = llama_gguf_split("a_llama_gguf_split_model_equals_the_whole_file") else {
        return;
    };
    let whole = test_model(QWEN);
    let dir = tempfile::tempdir().unwrap();
    let first = split_with_llama_cpp(&bin, &whole, dir.path(), "150M");
    assert!(
        first.ends_with("qwen-00001-of-00004.gguf"),
        "{}",
        first.display()
    );
    same_as_whole(&whole, &first);
}

#[test]
fn broken_llama_gguf_splits_are_clear_errors() {
    let Some(bin) = llama_gguf_split("broken_llama_gguf_splits_are_clear_errors") else {
        return;
    };
    let whole = test_model(QWEN);
    let dir = tempfile::tempdir().unwrap();
    let first = split_with_llama_cpp(&bin, &whole, dir.path(), "150M");
    let part = |n| dir.path().join(gguf::split::part_name("qwen", n, 4));
    let err = |p: &Path| {
        ShardModel::load(p, None, &Device::Cpu)
            .err()
            .unwrap()
            .to_string()
    };

    // Given a later part.
    let e = err(&part(2));
    assert!(
        e.contains("is part 2 of a 4-part GGUF, not the first; open qwen-00001-of-00004.gguf"),
        "{e}"
    );

    // A missing part.
    let aside = dir.path().join("aside.gguf");
    std::fs::rename(part(3), &aside).unwrap();
    let e = err(&first);
    assert!(
        e.contains("but part 3") && e.contains("qwen-00003-of-00004.gguf) is missing"),
        "{e}"
    );

    // A part of another split of the same model (3 parts) in its place: the counts disagree.
    let other = tempfile::tempdir().unwrap();
    split_with_llama_cpp(&bin, &whole, other.path(), "200M");
    std::fs::copy(
        other.path().join(gguf::split::part_name("qwen", 3, 3)),
        part(3),
    )
    .unwrap();
    let e = err(&first);
    assert!(
        e.contains("qwen-00003-of-00004.gguf: split.count is 3, but") && e.contains("says 4"),
        "{e}"
    );
    std::fs::rename(&aside, part(3)).unwrap();

    // A truncated part (an interrupted copy).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(part(4))
        .unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len - 1000).unwrap();
    let e = err(&first);
    assert!(
        e.contains("qwen-00004-of-00004.gguf is truncated: tensor `"),
        "{e}"
    );
    assert!(
        e.contains(&format!("the file has {} bytes", len - 1000)),
        "{e}"
    );
}
