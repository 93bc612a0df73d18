//! Qwen3-MoE (Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention and a mixture of experts in
//! every layer (router `ffn_gate_inp`, 3-D `ffn_{gate,up,down}_exps`), its selected weights
//! normalised as `expert_weights_norm` / `norm_topk_prob` says (llama.cpp: always).

use crate::{error::Result, source::Source, spec::Spec};

pub fn spec(src: &Source) -> Result<Spec> {
    let mut spec = super::qwen2::spec_of(src, "qwen3moe")?;
    spec.moe = super::moe_spec(src, "qwen3moe", true)?;
    if spec.moe.is_none() {
        return Err(crate::error::EngineError::Missing {
            path: src.path().to_path_buf(),
            what: "the expert count of a qwen3moe model (`qwen3moe.expert_count`)".into(),
        });
    }
    Ok(spec)
}

/// Qwen3-MoE's Hugging Face names: router `mlp.gate`, experts `mlp.experts.{e}.*_proj`.
pub(super) fn hf_name(gguf: &str) -> String {
    super::hf_name_with(gguf, |name| {
        if name == "ffn_gate_inp" {
            return Some("mlp.gate".into());
        }
        let (part, e) = super::expert_part(name)?;
        let proj = match part {
            "ffn_gate" => "gate_proj",
            "ffn_up" => "up_proj",
            "ffn_down" => "down_proj",
            _ => return None,
        };
        Some(format!("mlp.experts.{e}.{proj}"))
    })
}
