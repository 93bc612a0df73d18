//! One file per architecture: each reads its hyper-parameters into a [`Spec`], builds its
//! blocks from the pieces in `layers/`, and maps its GGUF tensor names to Hugging Face ones.
//! Adding an architecture means adding a file here and a line to each match below.

mod gemma3;
mod gpt_oss;
mod llama;
mod qwen2;
mod qwen3;
mod qwen3moe;

use crate::{
    error::{EngineError, Result},
    layers::{Attention, Block, Ffn, Gating, HfNames, MoeSpec, RmsNorm, Weights},
    ops::Activation,
    source::Source,
    spec::{HParams, Spec},
};

pub const SUPPORTED: &[&str] = &["gemma3", "gpt-oss", "qwen2", "qwen3", "qwen3moe", "llama"];

/// Reads the architecture's description from a model's metadata (no tensors are loaded).
pub fn spec(src: &Source) -> Result<Spec> {
    let arch = src.arch()?;
    match arch.as_str() {
        "gemma3" => gemma3::spec(src),
        "gpt-oss" => gpt_oss::spec(src),
        "qwen2" => qwen2::spec(src),
        "qwen3" => qwen3::spec(src),
        "qwen3moe" => qwen3moe::spec(src),
        "llama" => llama::spec(src),
        _ => Err(EngineError::UnsupportedArch {
            path: src.path().to_path_buf(),
            arch,
            supported: SUPPORTED,
        }),
    }
}

/// Block `il` of a model of `spec`.
pub(crate) fn block(spec: &Spec, w: &Weights, il: usize) -> Result<Block> {
    match spec.arch.as_str() {
        "gemma3" => gemma3::block(spec, w, il),
        "gpt-oss" => gpt_oss::block(spec, w, il),
        "qwen3" | "qwen3moe" => llama_block(spec, w, il, true),
        _ => llama_block(spec, w, il, false),
    }
}

/// The final norm (`output_norm`).
pub(crate) fn final_norm(spec: &Spec, w: &Weights, name: &str) -> Result<RmsNorm> {
    match spec.arch.as_str() {
        "gemma3" => gemma3::norm(w, name),
        _ => RmsNorm::load(w, name),
    }
}

/// The architecture's GGUF → Hugging Face tensor names.
pub(crate) fn hf_names(arch: &str) -> HfNames {
    match arch {
        "gemma3" => gemma3::hf_name,
        "qwen3moe" => qwen3moe::hf_name,
        "llama" => llama::hf_name,
        _ => hf_name,
    }
}

/// Llama's pre-norm block (Qwen2, Qwen3, Mixtral, Qwen3-MoE too): SwiGLU feed-forward, dense
/// or a mixture of experts as `spec.moe` says; Qwen3 adds per-head q/k norms.
fn llama_block(spec: &Spec, w: &Weights, il: usize, qk_norm: bool) -> Result<Block> {
    let p = format!("blk.{il}");
    let attn = Attention::load(w, &p, spec, il)?;
    let attn = if qk_norm {
        attn.with_qk_norm(w, &p, false)?
    } else {
        attn
    };
    Ok(Block::new(
        RmsNorm::load(w, &format!("{p}.attn_norm"))?,
        attn,
        RmsNorm::load(w, &format!("{p}.ffn_norm"))?,
        Ffn::load(w, &p, spec, Activation::Silu)?,
    ))
}

/// The mixture-of-experts settings under GGUF's `{arch}.expert_*` keys or config.json's
/// `num_local_experts` / `num_experts`, `num_experts_per_tok`; None for a dense model.
fn moe_spec(src: &Source, arch: &str, norm_default: bool) -> Result<Option<MoeSpec>> {
    let (n_expert, n_used, norm, scale) = if src.is_gguf() {
        (
            src.meta_u32_opt(&format!("{arch}.expert_count")),
            src.meta_u32_opt(&format!("{arch}.expert_used_count")),
            src.meta_bool_opt(&format!("{arch}.expert_weights_norm")),
            src.meta_f32_opt(&format!("{arch}.expert_weights_scale")),
        )
    } else {
        (
            src.meta_u32_opt("num_local_experts")
                .or(src.meta_u32_opt("num_experts")),
            src.meta_u32_opt("num_experts_per_tok"),
            src.meta_bool_opt("norm_topk_prob"),
            None,
        )
    };
    let Some(n_expert) = n_expert.filter(|&n| n > 0) else {
        return Ok(None);
    };
    let n_used = n_used.ok_or_else(|| EngineError::Missing {
        path: src.path().to_path_buf(),
        what: format!("the number of experts used per token of its {n_expert} experts"),
    })?;
    if n_used == 0 || n_used > n_expert {
        return Err(EngineError::Invalid(format!(
            "{}: {n_used} experts used per token of {n_expert}",
            src.path().display()
        )));
    }
    Ok(Some(MoeSpec {
        n_expert: n_expert as usize,
        n_used: n_used as usize,
        norm_weights: norm.unwrap_or(norm_default),
        scale: scale.unwrap_or(0.0),
        gating: Gating::Softmax,
    }))
}

/// Hugging Face names shared by the Llama family: `blk.3.attn_q.weight` →
/// `model.layers.3.self_attn.q_proj.weight`; `part` maps the names an architecture adds.
fn hf_name_with(gguf: &str, part: impl Fn(&str) -> Option<String>) -> String {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return name.to_string();
    }
    let Some(rest) = gguf.strip_prefix("blk.") else {
        return gguf.to_string();
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return gguf.to_string();
    };
    let (name, suffix) = rest.rsplit_once('.').unwrap_or((rest, ""));
    let hf = part(name).unwrap_or_else(|| {
        match name {
            "attn_norm" => "input_layernorm",
            "ffn_norm" => "post_attention_layernorm",
            "attn_q" => "self_attn.q_proj",
            "attn_k" => "self_attn.k_proj",
            "attn_v" => "self_attn.v_proj",
            "attn_output" => "self_attn.o_proj",
            "attn_q_norm" => "self_attn.q_norm",
            "attn_k_norm" => "self_attn.k_norm",
            "ffn_gate" => "mlp.gate_proj",
            "ffn_up" => "mlp.up_proj",
            "ffn_down" => "mlp.down_proj",
            other => other,
        }
        .to_string()
    });
    format!("model.layers.{layer}.{hf}.{suffix}")
}

/// The Llama family's names (Qwen2, Qwen3).
fn hf_name(gguf: &str) -> String {
    hf_name_with(gguf, |_| None)
}

/// `ffn_gate.3` (one expert's tensor, as older GGUF files name it) → `("ffn_gate", 3)`.
fn expert_part(name: &str) -> Option<(&str, usize)> {
    let (part, e) = name.rsplit_once('.')?;
    Some((part, e.parse().ok()?))
}

/// Hyper-parameters under GGUF's `{arch}.*` keys or Hugging Face config.json names.
fn hparams(src: &Source, arch: &str) -> Result<HParams> {
    let gguf = src.is_gguf();
    let key = |gguf_key: &str, hf_key: &'static str| {
        if gguf {
            format!("{arch}.{gguf_key}")
        } else {
            hf_key.to_string()
        }
    };
    let n_head = src.meta_u32(&key("attention.head_count", "num_attention_heads"))? as usize;
    let hidden = src.meta_u32(&key("embedding_length", "hidden_size"))? as usize;
    let head_dim = src
        .meta_u32_opt(&key("attention.key_length", "head_dim"))
        .map(|v| v as usize)
        .unwrap_or(hidden / n_head);
    Ok(HParams {
        n_layers: src.meta_u32(&key("block_count", "num_hidden_layers"))? as usize,
        hidden,
        n_head,
        n_kv_head: src
            .meta_u32_opt(&key("attention.head_count_kv", "num_key_value_heads"))
            .map_or(n_head, |v| v as usize),
        head_dim,
        eps: src
            .meta_f32_opt(&key("attention.layer_norm_rms_epsilon", "rms_norm_eps"))
            .unwrap_or(1e-6),
        context_length: src
            .meta_u32_opt(&key("context_length", "max_position_embeddings"))
            .map_or(4096, |v| v as usize),
    })
}

/// Every layer uses rope setting 0 and full attention.
fn uniform_layers(n: usize) -> Vec<(usize, Option<usize>)> {
    vec![(0, None); n]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_names_map_to_transformers_names() {
        assert_eq!(hf_name("token_embd.weight"), "model.embed_tokens.weight");
        assert_eq!(
            hf_name("blk.12.attn_q.weight"),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias"),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert_eq!(
            hf_name("blk.3.ffn_norm.weight"),
            "model.layers.3.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("blk.3.attn_q_norm.weight"),
            "model.layers.3.self_attn.q_norm.weight"
        );
        let mixtral = hf_names("llama");
        assert_eq!(
            mixtral("blk.1.ffn_gate_inp.weight"),
            "model.layers.1.block_sparse_moe.gate.weight"
        );
        assert_eq!(
            mixtral("blk.1.ffn_down.7.weight"),
            "model.layers.1.block_sparse_moe.experts.7.w2.weight"
        );
        assert_eq!(
            mixtral("blk.1.ffn_down.weight"),
            "model.layers.1.mlp.down_proj.weight"
        );
        let qwen3moe = hf_names("qwen3moe");
        assert_eq!(
            qwen3moe("blk.2.ffn_gate_inp.weight"),
            "model.layers.2.mlp.gate.weight"
        );
        assert_eq!(
            qwen3moe("blk.2.ffn_up.5.weight"),
            "model.layers.2.mlp.experts.5.up_proj.weight"
        );
        let gemma = hf_names("gemma3");
        assert_eq!(
            gemma("blk.0.ffn_norm.weight"),
            "model.layers.0.pre_feedforward_layernorm.weight"
        );
        assert_eq!(
            gemma("blk.0.post_attention_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight"
        );
    }
}
