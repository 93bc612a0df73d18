//! Tiny random models of every architecture, written to disk inside the test: chaining 1, 2 or 3
//! shards gives the whole model's logits, decoding with the KV cache equals one full forward,
//! and a Hugging Face safetensors checkpoint of each family (Llama, Mixtral, Qwen2, Qwen3,
//! Qwen3-MoE, Gemma 3) equals the same weights converted to GGUF as llama.cpp's converter does.

use std::path::{Path, PathBuf};

use candle_core::{
    quantized::{gguf_file, GgmlDType, QTensor},
    DType, Device, Tensor,
};
use exo_engine::{even_split, Logits, ShardInput, ShardModel};
use exo_protocol::LayerRange;

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const FFN: usize = 128;
const VOCAB: usize = 96;
const LAYERS: usize = 4;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("exo-tiny-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random weights (scaled like a trained model's).
fn weights(seed: u64, shape: (usize, usize), scale: f32) -> Tensor {
    let n = shape.0 * shape.1;
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0 * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn norm_weight(seed: u64, n: usize) -> Tensor {
    (weights(seed, (1, n), 0.2).reshape(n).unwrap() + 1.0).unwrap()
}

/// HF-layout weights of a tiny Llama-like model, by Hugging Face name.
fn hf_weights(with_bias: bool, qk_norm: bool, post_norms: bool) -> Vec<(String, Tensor)> {
    let mut w = vec![
        (
            "model.embed_tokens.weight".to_string(),
            weights(1, (VOCAB, HIDDEN), 1.0),
        ),
        ("model.norm.weight".to_string(), norm_weight(2, HIDDEN)),
        (
            "lm_head.weight".to_string(),
            weights(3, (VOCAB, HIDDEN), 0.2),
        ),
    ];
    for l in 0..LAYERS {
        let s = 100 * (l as u64 + 1);
        let p = format!("model.layers.{l}");
        let mut add = |name: &str, t: Tensor| w.push((format!("{p}.{name}"), t));
        add("input_layernorm.weight", norm_weight(s, HIDDEN));
        add(
            "post_attention_layernorm.weight",
            norm_weight(s + 1, HIDDEN),
        );
        add(
            "self_attn.q_proj.weight",
            weights(s + 2, (HEADS * HEAD_DIM, HIDDEN), 0.15),
        );
        add(
            "self_attn.k_proj.weight",
            weights(s + 3, (KV_HEADS * HEAD_DIM, HIDDEN), 0.15),
        );
        add(
            "self_attn.v_proj.weight",
            weights(s + 4, (KV_HEADS * HEAD_DIM, HIDDEN), 0.15),
        );
        add(
            "self_attn.o_proj.weight",
            weights(s + 5, (HIDDEN, HEADS * HEAD_DIM), 0.15),
        );
        add("mlp.gate_proj.weight", weights(s + 6, (FFN, HIDDEN), 0.15));
        add("mlp.up_proj.weight", weights(s + 7, (FFN, HIDDEN), 0.15));
        add("mlp.down_proj.weight", weights(s + 8, (HIDDEN, FFN), 0.15));
        if with_bias {
            add(
                "self_attn.q_proj.bias",
                weights(s + 9, (1, HEADS * HEAD_DIM), 0.1)
                    .reshape(HEADS * HEAD_DIM)
                    .unwrap(),
            );
            add(
                "self_attn.k_proj.bias",
                weights(s + 10, (1, KV_HEADS * HEAD_DIM), 0.1)
                    .reshape(KV_HEADS * HEAD_DIM)
                    .unwrap(),
            );
            add(
                "self_attn.v_proj.bias",
                weights(s + 11, (1, KV_HEADS * HEAD_DIM), 0.1)
                    .reshape(KV_HEADS * HEAD_DIM)
                    .unwrap(),
            );
        }
        if qk_norm {
            add("self_attn.q_norm.weight", norm_weight(s + 12, HEAD_DIM));
            add("self_attn.k_norm.weight", norm_weight(s + 13, HEAD_DIM));
        }
        if post_norms {
            add("post_attention_norm.weight", norm_weight(s + 14, HIDDEN));
            add("post_ffw_norm.weight", norm_weight(s + 15, HIDDEN));
        }
    }
    w
}

/// llama.cpp's converter permutes Llama's Q/K rows so interleaved rope equals HF's NeoX rope.
fn permute_qk(w: &Tensor, heads: usize) -> Tensor {
    let (out, inp) = w.dims2().unwrap();
    w.reshape((heads, 2, out / heads / 2, inp))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((out, inp))
        .unwrap()
}

/// GGUF name of an HF tensor (the inverse of the engine's mapping, spelled out here).
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let (part, suffix) = rest.rsplit_once('.').unwrap();
    let g = match part {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => other,
    };
    format!("blk.{layer}.{g}.{suffix}")
}

fn write_gguf(
    path: &Path,
    arch: &str,
    extra: &[(&str, gguf_file::Value)],
    tensors: Vec<(String, Tensor)>,
    quant: GgmlDType,
) {
    use gguf_file::Value as V;
    let mut md: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::String(arch.into())),
        (format!("{arch}.block_count"), V::U32(LAYERS as u32)),
        (format!("{arch}.embedding_length"), V::U32(HIDDEN as u32)),
        (format!("{arch}.feed_forward_length"), V::U32(FFN as u32)),
        (format!("{arch}.attention.head_count"), V::U32(HEADS as u32)),
        (
            format!("{arch}.attention.head_count_kv"),
            V::U32(KV_HEADS as u32),
        ),
        (
            format!("{arch}.attention.key_length"),
            V::U32(HEAD_DIM as u32),
        ),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            V::F32(1e-6),
        ),
        (format!("{arch}.context_length"), V::U32(256)),
    ];
    md.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let qts: Vec<(String, QTensor)> = tensors
        .into_iter()
        .map(|(name, t)| {
            let is_matrix = t.rank() >= 2;
            let dtype = if is_matrix { quant } else { GgmlDType::F32 };
            (name, QTensor::quantize(&t, dtype).unwrap())
        })
        .collect();
    let mut f = std::fs::File::create(path).unwrap();
    let md_refs: Vec<(&str, &V)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qts.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
}

fn tiny_gguf(dir: &Path, arch: &str, quant: GgmlDType) -> PathBuf {
    use gguf_file::Value as V;
    let (bias, qk_norm, post) = match arch {
        "qwen2" => (true, false, false),
        "gemma3" => (false, true, true),
        _ => (false, false, false),
    };
    let mut tensors: Vec<(String, Tensor)> = hf_weights(bias, qk_norm, post)
        .into_iter()
        .map(|(name, t)| {
            let t = match (arch, name.as_str()) {
                ("llama", n) if n.ends_with("q_proj.weight") => permute_qk(&t, HEADS),
                ("llama", n) if n.ends_with("k_proj.weight") => permute_qk(&t, KV_HEADS),
                _ => t,
            };
            (gguf_name(&name), t)
        })
        .collect();
    let mut extra: Vec<(&str, V)> = vec![];
    if arch == "gemma3" {
        // Tied output and a window small enough for the test's sequences to cross it.
        tensors.retain(|(n, _)| n != "output.weight");
        extra.push(("gemma3.attention.sliding_window", V::U32(5)));
        extra.push(("gemma3.attention.sliding_window_pattern", V::U32(2)));
        extra.push(("gemma3.rope.scaling.factor", V::F32(2.0)));
    }
    let path = dir.join(format!("{arch}.gguf"));
    write_gguf(&path, arch, &extra, tensors, quant);
    path
}

fn ids(n: usize) -> Vec<u32> {
    (0..n).map(|i| ((i * 37 + 11) % VOCAB) as u32).collect()
}

/// Logits of every position for `tokens`, running the model as the given shards.
fn chained(path: &Path, ranges: &[LayerRange], tokens: &[u32]) -> Tensor {
    let shards: Vec<ShardModel> = ranges
        .iter()
        .map(|r| ShardModel::load(path, Some(*r), &Device::Cpu).unwrap())
        .collect();
    let mut x = None;
    for shard in &shards {
        let mut cache = shard.new_cache();
        let input = match x.take() {
            None => ShardInput::Tokens(tokens),
            Some(h) => ShardInput::Hidden(h),
        };
        x = Some(shard.forward(input, &mut cache, Logits::From(0)).unwrap());
    }
    x.unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Splits into 1, 2 and 3 shards agree; prompt + one-token steps (with the KV cache) and
/// chunked prefill agree with one full forward.
fn check_arch(path: &Path) {
    check_arch_within(path, 1e-4);
}

/// [`check_arch`] with the cached decoding's bound: candle's f32 matmul (dense f32 weights, as
/// safetensors checkpoints load) sums in an order that depends on the number of rows, where
/// the quantized kernels are row-independent.
fn check_arch_within(path: &Path, cached_tol: f32) {
    let tokens = ids(12);
    let whole = chained(path, &[LayerRange::full(LAYERS as u32)], &tokens);
    assert_eq!(whole.dims(), [1, tokens.len(), VOCAB]);
    for k in 2..=3 {
        let split = chained(path, &even_split(LAYERS as u32, k), &tokens);
        let d = max_diff(&whole, &split);
        assert!(d <= 1e-4, "{} in {k} shards differs by {d}", path.display());
    }
    // Incremental decoding through 2 shards: 5-token prompt, then 3-token chunk, then 1 by 1.
    let shards: Vec<ShardModel> = even_split(LAYERS as u32, 2)
        .into_iter()
        .map(|r| ShardModel::load(path, Some(r), &Device::Cpu).unwrap())
        .collect();
    let mut caches: Vec<_> = shards.iter().map(|s| s.new_cache()).collect();
    let mut rows = Vec::new();
    let mut start = 0;
    for len in [5, 3, 1, 1, 1, 1] {
        let chunk = &tokens[start..start + len];
        let h = shards[0]
            .forward(ShardInput::Tokens(chunk), &mut caches[0], Logits::From(0))
            .unwrap();
        let l = shards[1]
            .forward(ShardInput::Hidden(h), &mut caches[1], Logits::From(0))
            .unwrap();
        rows.push(l);
        start += len;
    }
    assert_eq!(caches[1].position(), tokens.len());
    let stepwise = Tensor::cat(&rows, 1).unwrap();
    let d = max_diff(&whole, &stepwise);
    assert!(
        d <= cached_tol,
        "{}: cached decoding differs by {d}",
        path.display()
    );
}

#[test]
fn qwen2_shards_and_cache_agree() {
    let dir = Dir::new("qwen2");
    check_arch(&tiny_gguf(&dir.0, "qwen2", GgmlDType::Q8_0));
}

#[test]
fn gemma3_shards_cache_and_sliding_window_agree() {
    let dir = Dir::new("gemma3");
    check_arch(&tiny_gguf(&dir.0, "gemma3", GgmlDType::Q8_0));
}

#[test]
fn llama_shards_and_cache_agree_for_q8_0_and_f16() {
    let dir = Dir::new("llama");
    check_arch(&tiny_gguf(&dir.0, "llama", GgmlDType::Q8_0));
    let f16 = dir.0.join("f16");
    std::fs::create_dir_all(&f16).unwrap();
    check_arch(&tiny_gguf(&f16, "llama", GgmlDType::F16));
}

const EXPERTS: usize = 4;
const EXPERTS_USED: usize = 2;
const EXPERT_FFN: usize = 48;

/// A tiny checkpoint of `model_type` as Hugging Face stores it (names, norm offsets, MoE layout,
/// config.json keys), and the same weights as llama.cpp's converter writes them to GGUF.
struct Checkpoint {
    hf: Vec<(String, Tensor)>,
    config: serde_json::Value,
    gguf_arch: &'static str,
    gguf: Vec<(String, Tensor)>,
    gguf_meta: Vec<(&'static str, gguf_file::Value)>,
}

fn checkpoint(model_type: &str) -> Checkpoint {
    use gguf_file::Value as V;
    let (gguf_arch, bias, qk_norm, post, moe) = match model_type {
        "llama" => ("llama", false, false, false, false),
        "mixtral" => ("llama", false, false, false, true),
        "qwen2" => ("qwen2", true, false, false, false),
        "qwen3" => ("qwen3", false, true, false, false),
        "qwen3_moe" => ("qwen3moe", false, true, false, true),
        "gemma3_text" => ("gemma3", false, true, true, false),
        other => panic!("no tiny {other}"),
    };
    // bf16-representable weights (as checkpoints hold them): their products are exact in f32,
    // so the cached decoding check holds to the same bound as for GGUF files.
    let base: Vec<(String, Tensor)> = hf_weights(bias, qk_norm, post)
        .into_iter()
        .map(|(n, t)| (n, bf16(&t)))
        .collect();
    // GGUF-side weights first (Gemma's norms as GGUF holds them: 1 + the checkpoint's value).
    let mut gguf: Vec<(String, Tensor)> = base
        .clone()
        .into_iter()
        .map(|(name, t)| {
            let t = match (gguf_arch, name.as_str()) {
                ("llama", n) if n.ends_with("q_proj.weight") => permute_qk(&t, HEADS),
                ("llama", n) if n.ends_with("k_proj.weight") => permute_qk(&t, KV_HEADS),
                _ => t,
            };
            (gguf_name(&name), t)
        })
        .collect();
    let mut hf = base;
    if moe {
        // The dense MLP becomes a router over EXPERTS experts, stacked `[experts, n, k]` in GGUF.
        let dense = |n: &str| {
            n.contains(".mlp.")
                || n.contains(".ffn_gate.")
                || n.contains(".ffn_up.")
                || n.contains(".ffn_down.")
        };
        hf.retain(|(n, _)| !dense(n));
        gguf.retain(|(n, _)| !dense(n));
        for l in 0..LAYERS {
            let s = 1000 * (l as u64 + 1);
            let router = bf16(&weights(s, (EXPERTS, HIDDEN), 0.5));
            let (moe_p, names) = if model_type == "mixtral" {
                ("block_sparse_moe", ["w1", "w3", "w2"])
            } else {
                ("mlp", ["gate_proj", "up_proj", "down_proj"])
            };
            let p = format!("model.layers.{l}.{moe_p}");
            hf.push((format!("{p}.gate.weight"), router.clone()));
            gguf.push((format!("blk.{l}.ffn_gate_inp.weight"), router));
            for (i, (hf_part, gguf_part)) in names.iter().zip(["gate", "up", "down"]).enumerate() {
                let shape = if i == 2 {
                    (HIDDEN, EXPERT_FFN)
                } else {
                    (EXPERT_FFN, HIDDEN)
                };
                let per: Vec<Tensor> = (0..EXPERTS)
                    .map(|e| bf16(&weights(s + 10 * e as u64 + i as u64 + 1, shape, 0.15)))
                    .collect();
                for (e, t) in per.iter().enumerate() {
                    hf.push((format!("{p}.experts.{e}.{hf_part}.weight"), t.clone()));
                }
                gguf.push((
                    format!("blk.{l}.ffn_{gguf_part}_exps.weight"),
                    Tensor::stack(&per, 0).unwrap(),
                ));
            }
        }
    }
    let mut config = serde_json::json!({
        "model_type": model_type, "num_hidden_layers": LAYERS, "hidden_size": HIDDEN,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "intermediate_size": FFN,
        "head_dim": HEAD_DIM, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "vocab_size": VOCAB
    });
    let mut gguf_meta = vec![];
    if moe {
        config["num_experts_per_tok"] = EXPERTS_USED.into();
        config["moe_intermediate_size"] = EXPERT_FFN.into();
        let key = if model_type == "mixtral" {
            "num_local_experts"
        } else {
            "num_experts"
        };
        config[key] = EXPERTS.into();
        let (count, used) = if gguf_arch == "llama" {
            ("llama.expert_count", "llama.expert_used_count")
        } else {
            ("qwen3moe.expert_count", "qwen3moe.expert_used_count")
        };
        gguf_meta.push((count, V::U32(EXPERTS as u32)));
        gguf_meta.push((used, V::U32(EXPERTS_USED as u32)));
        if model_type == "qwen3_moe" {
            // Qwen3-MoE renormalises the chosen experts' weights; its GGUF says so explicitly.
            config["norm_topk_prob"] = true.into();
            gguf_meta.push((
                "qwen3moe.expert_feed_forward_length",
                V::U32(EXPERT_FFN as u32),
            ));
            gguf_meta.push(("qwen3moe.expert_weights_norm", V::Bool(true)));
        }
    }
    if gguf_arch != "gemma3" {
        gguf_meta.push(match gguf_arch {
            "llama" => ("llama.rope.freq_base", V::F32(10000.0)),
            "qwen2" => ("qwen2.rope.freq_base", V::F32(10000.0)),
            "qwen3" => ("qwen3.rope.freq_base", V::F32(10000.0)),
            _ => ("qwen3moe.rope.freq_base", V::F32(10000.0)),
        });
    }
    if gguf_arch == "gemma3" {
        // HF names its four norms differently, stores them minus one, and ties the output.
        let rename = |n: &str| {
            n.replace("post_attention_layernorm", "pre_feedforward_layernorm")
                .replace("post_attention_norm", "post_attention_layernorm")
                .replace("post_ffw_norm", "post_feedforward_layernorm")
        };
        hf = hf
            .into_iter()
            .filter(|(n, _)| n != "lm_head.weight")
            .map(|(n, t)| {
                let t = if n.contains("norm") {
                    (t - 1.0).unwrap()
                } else {
                    t
                };
                (rename(&n), t)
            })
            .collect();
        gguf.retain(|(n, _)| n != "output.weight");
        // A window small enough for the test's sequences to cross it, every second layer
        // global (as newer checkpoints spell it, in `layer_types`), linear rope scaling.
        config["sliding_window"] = 5.into();
        config["layer_types"] = (0..LAYERS)
            .map(|l| {
                if l % 2 == 1 {
                    "full_attention"
                } else {
                    "sliding_attention"
                }
            })
            .collect::<Vec<_>>()
            .into();
        config["rope_theta"] = 1_000_000.0.into();
        config["rope_local_base_freq"] = 10_000.0.into();
        config["rope_scaling"] = serde_json::json!({"rope_type": "linear", "factor": 2.0});
        config["query_pre_attn_scalar"] = HEAD_DIM.into();
        gguf_meta.push(("gemma3.attention.sliding_window", V::U32(5)));
        gguf_meta.push(("gemma3.attention.sliding_window_pattern", V::U32(2)));
        gguf_meta.push(("gemma3.rope.scaling.factor", V::F32(2.0)));
        gguf_meta.push(("gemma3.rope.freq_base", V::F32(1_000_000.0)));
        gguf_meta.push(("gemma3.rope.freq_base_swa", V::F32(10_000.0)));
    }
    Checkpoint {
        hf,
        config,
        gguf_arch,
        gguf,
        gguf_meta,
    }
}

fn bf16(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

/// The checkpoint as a safetensors directory and as an f32 GGUF file.
fn write_checkpoint(dir: &Path, model_type: &str) -> (PathBuf, PathBuf) {
    let c = checkpoint(model_type);
    let st = dir.join(format!("{model_type}-hf"));
    std::fs::create_dir_all(&st).unwrap();
    let w: std::collections::HashMap<String, Tensor> = c.hf.into_iter().collect();
    candle_core::safetensors::save(&w, st.join("model.safetensors")).unwrap();
    std::fs::write(st.join("config.json"), c.config.to_string()).unwrap();
    let gguf = dir.join(format!("{model_type}.gguf"));
    write_gguf(&gguf, c.gguf_arch, &c.gguf_meta, c.gguf, GgmlDType::F32);
    (st, gguf)
}

/// The safetensors checkpoint of `model_type` splits and caches like any model, and gives the
/// logits of its GGUF conversion.
fn check_safetensors(model_type: &str) {
    let dir = Dir::new(&format!("st-{model_type}"));
    let (st, gguf) = write_checkpoint(&dir.0, model_type);
    check_arch_within(&st, 2e-3);
    let tokens = ids(10);
    let full = [LayerRange::full(LAYERS as u32)];
    let a = chained(&st, &full, &tokens);
    let b = chained(&gguf, &full, &tokens);
    // The same f32 weights: only the order of float operations may differ (Llama's NeoX rope on
    // the checkpoint against interleaved rope on llama.cpp's permuted Q/K rows).
    let d = max_diff(&a, &b);
    assert!(d <= 1e-3, "{model_type}: safetensors vs gguf differ by {d}");
}

#[test]
fn llama_safetensors_matches_its_gguf_conversion() {
    check_safetensors("llama");
}

#[test]
fn mixtral_safetensors_matches_its_gguf_conversion() {
    check_safetensors("mixtral");
}

#[test]
fn qwen2_safetensors_matches_its_gguf_conversion() {
    check_safetensors("qwen2");
}

#[test]
fn qwen3_safetensors_matches_its_gguf_conversion() {
    check_safetensors("qwen3");
}

#[test]
fn qwen3_moe_safetensors_matches_its_gguf_conversion() {
    check_safetensors("qwen3_moe");
}

#[test]
fn gemma3_safetensors_matches_its_gguf_conversion() {
    check_safetensors("gemma3_text");
}

#[test]
fn only_the_shards_tensors_are_loaded() {
    let dir = Dir::new("sizes");
    let path = tiny_gguf(&dir.0, "qwen2", GgmlDType::Q8_0);
    let first = ShardModel::load(
        &path,
        Some(LayerRange::new(0, 1, LAYERS as u32)),
        &Device::Cpu,
    )
    .unwrap();
    let middle = ShardModel::load(
        &path,
        Some(LayerRange::new(1, 3, LAYERS as u32)),
        &Device::Cpu,
    )
    .unwrap();
    let mut cache = middle.new_cache();
    // A middle shard has no embedding and no head: it takes and returns hidden states.
    assert!(middle
        .forward(ShardInput::Tokens(&[1, 2]), &mut cache, Logits::Last)
        .is_err());
    let h = first
        .forward(
            ShardInput::Tokens(&[1, 2]),
            &mut first.new_cache(),
            Logits::Last,
        )
        .unwrap();
    let out = middle
        .forward(ShardInput::Hidden(h), &mut cache, Logits::Last)
        .unwrap();
    assert_eq!(out.dims(), [1, 2, HIDDEN]);
    assert!(ShardModel::load(
        &path,
        Some(LayerRange::new(3, 5, LAYERS as u32)),
        &Device::Cpu
    )
    .is_err());
}

#[test]
fn context_overflow_is_a_clear_error() {
    let dir = Dir::new("ctx");
    let path = tiny_gguf(&dir.0, "llama", GgmlDType::Q8_0);
    let m = ShardModel::load(&path, None, &Device::Cpu).unwrap();
    let err = m
        .forward(
            ShardInput::Tokens(&ids(300)),
            &mut m.new_cache(),
            Logits::Last,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("300") && err.contains("256"), "{err}");
}

#[test]
fn a_new_range_reuses_the_layers_already_loaded() {
    let dir = Dir::new("reuse");
    let path = tiny_gguf(&dir.0, "qwen2", GgmlDType::Q8_0);
    let n = LAYERS as u32;
    let old = ShardModel::load(&path, Some(LayerRange::new(0, 2, n)), &Device::Cpu).unwrap();
    // The ring changed: this node now holds 0..3, the rest 3..4.
    let grown = ShardModel::load_reusing(&path, LayerRange::new(0, 3, n), &Device::Cpu, Some(&old))
        .unwrap();
    let rest = ShardModel::load(&path, Some(LayerRange::new(3, n, n)), &Device::Cpu).unwrap();
    let tokens = ids(7);
    let h = grown
        .forward(
            ShardInput::Tokens(&tokens),
            &mut grown.new_cache(),
            Logits::From(0),
        )
        .unwrap();
    let got = rest
        .forward(
            ShardInput::Hidden(h),
            &mut rest.new_cache(),
            Logits::From(0),
        )
        .unwrap();
    let want = chained(&path, &[LayerRange::full(n)], &tokens);
    assert!(max_diff(&got, &want) <= 1e-5);
}
