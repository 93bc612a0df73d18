//! gpt-oss (GGUF arch `gpt-oss`, llama.cpp's `LLM_ARCH_OPENAI_MOE`): attention with biases and a
//! learned sink logit per head, every other layer (the even ones) on a sliding window, NeoX rope
//! with YaRN scaling, and a mixture of experts in every layer whose router picks the top k
//! logits and softmaxes over them, with biased experts (MXFP4 in the published files) and the
//! clamped SwiGLU `swiglu_oai`. The norm before the experts is `post_attention_norm`.

use crate::{
    error::{EngineError, Result},
    layers::{Attention, Block, Ffn, Gating, RmsNorm, Rope, RopeStyle, Weights, Yarn},
    ops::Activation,
    source::Source,
    spec::Spec,
};

const ARCH: &str = "gpt-oss";

pub fn spec(src: &Source) -> Result<Spec> {
    if !src.is_gguf() {
        return Err(EngineError::Invalid(format!(
            "{}: gpt-oss loads from GGUF files only",
            src.path().display()
        )));
    }
    let key = |k: &str| format!("{ARCH}.{k}");
    let hp = super::hparams(src, ARCH)?;
    let dim = src
        .meta_u32_opt(&key("rope.dimension_count"))
        .map_or(hp.head_dim, |v| v as usize);
    let base = src.meta_f32_opt(&key("rope.freq_base")).unwrap_or(10_000.0);
    let base_swa = src.meta_f32_opt(&key("rope.freq_base_swa")).unwrap_or(base);
    let factor = src
        .meta_f32_opt(&key("rope.scaling.factor"))
        .filter(|&f| f != 0.0);
    let yarn = src.meta_str_opt(&key("rope.scaling.type")).as_deref() == Some("yarn");
    let n_ctx_orig = src
        .meta_u32_opt(&key("rope.scaling.original_context_length"))
        .map_or(hp.context_length, |v| v as usize);
    let rope = |base: f32| {
        let freq_scale = factor.map_or(1.0, |f| 1.0 / f);
        Rope {
            style: RopeStyle::Neox,
            dim,
            base,
            freq_scale,
            freq_factors: None,
            // llama.cpp: ext_factor 1 for YaRN files, beta_fast 32, beta_slow 1.
            yarn: yarn.then(|| Yarn::new(dim, base, 1.0 / freq_scale, n_ctx_orig, (32.0, 1.0))),
        }
    };
    let mut ropes = vec![rope(base)];
    let swa_rope = if base_swa == base {
        0
    } else {
        ropes.push(rope(base_swa));
        1
    };
    let window = src.meta_u32(&key("attention.sliding_window"))? as usize;
    // llama.cpp's `set_swa_pattern(2)`: layers 0, 2, 4, ... slide, the odd ones see everything.
    let pattern = src
        .meta_u32_opt(&key("attention.sliding_window_pattern"))
        .unwrap_or(2)
        .max(1) as usize;
    let layer_attn = (0..hp.n_layers)
        .map(|il| {
            if pattern == 1 || il % pattern < pattern - 1 {
                (swa_rope, Some(window))
            } else {
                (0, None)
            }
        })
        .collect();
    let mut moe = super::moe_spec(src, ARCH, false)?.ok_or_else(|| EngineError::Missing {
        path: src.path().to_path_buf(),
        what: format!("the expert count of a gpt-oss model (`{ARCH}.expert_count`)"),
    })?;
    // llama.cpp builds gpt-oss's mixture with softmax-after-top-k gating and no normalisation.
    moe.gating = Gating::SoftmaxWeight;
    moe.norm_weights = false;
    Ok(Spec {
        arch: ARCH.into(),
        ropes,
        layer_attn,
        attn_scale: 1.0 / (dim as f64).sqrt(),
        embed_scale: None,
        moe: Some(moe),
        hp,
    })
}

pub(super) fn block(spec: &Spec, w: &Weights, il: usize) -> Result<Block> {
    let p = format!("blk.{il}");
    let attn = Attention::load(w, &p, spec, il)?.with_sinks(w, &p)?;
    Ok(Block::new(
        RmsNorm::load(w, &format!("{p}.attn_norm"))?,
        attn,
        RmsNorm::load(w, &format!("{p}.post_attention_norm"))?,
        Ffn::load(w, &p, spec, Activation::SwigluOai)?,
    ))
}

#[cfg(test)]
mod tests {
    use crate::layers::Yarn;

    #[test]
    fn yarn_of_gpt_oss_20b() {
        // gpt-oss-20b: head 64, base 150000, factor 32 from 4096 tokens. ggml's correction
        // dims: floor(8.09...) = 8 and ceil(17.39...) = 18.
        let y = Yarn::new(64, 150_000.0, 32.0, 4096, (32.0, 1.0));
        let dbg = format!("{y:?}");
        assert!(dbg.contains("corr_dims: [8.0, 18.0]"), "{dbg}");
    }
}
