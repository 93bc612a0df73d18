//! Gemma 3 (text): GeGLU feed-forward, Q/K norms, norms after attention and MLP, embeddings
//! scaled by sqrt(hidden), and sliding-window attention on five of every six layers with their
//! own rope base. Numerics follow llama.cpp's `gemma3` graph.

use crate::{
    error::Result,
    layers::{Attention, Block, Ffn, Mlp, RmsNorm, Rope, RopeStyle, Weights},
    ops::Activation,
    source::Source,
    spec::Spec,
};

pub fn spec(src: &Source) -> Result<Spec> {
    let hp = super::hparams(src, "gemma3")?;
    let gguf = src.is_gguf();
    let f32_key = |g: &str, h: &str| {
        if gguf {
            src.meta_f32_opt(&format!("gemma3.{g}"))
        } else {
            src.meta_f32_opt(h)
        }
    };
    let u32_key = |g: &str, h: &str| {
        if gguf {
            src.meta_u32_opt(&format!("gemma3.{g}"))
        } else {
            src.meta_u32_opt(h)
        }
    };
    let window = u32_key("attention.sliding_window", "sliding_window").unwrap_or(512) as usize;
    // Every `pattern`-th layer attends globally; the others use the sliding window.
    let pattern = u32_key("attention.sliding_window_pattern", "sliding_window_pattern")
        .unwrap_or(6)
        .max(1) as usize;
    let rope = |base: f32, freq_scale: f32| Rope {
        style: RopeStyle::Neox,
        dim: hp.head_dim,
        base,
        freq_scale,
        freq_factors: None,
        yarn: None,
    };
    let global_factor = f32_key("rope.scaling.factor", "").unwrap_or_else(|| {
        // config.json: {"rope_scaling": {"rope_type": "linear", "factor": 8.0}}
        src.meta("rope_scaling")
            .and_then(|m| match m {
                crate::source::Meta::Json(v) => v["factor"].as_f64().map(|f| f as f32),
                _ => None,
            })
            .unwrap_or(1.0)
    });
    let ropes = vec![
        rope(
            f32_key("rope.freq_base_swa", "rope_local_base_freq").unwrap_or(10_000.0),
            1.0,
        ),
        rope(
            f32_key("rope.freq_base", "rope_theta").unwrap_or(1_000_000.0),
            1.0 / global_factor,
        ),
    ];
    // Newer config.json files list each layer's kind in `layer_types` instead of a pattern.
    let layer_types = match src.meta("layer_types") {
        Some(crate::source::Meta::Json(v)) => v.as_array().cloned(),
        _ => None,
    };
    let layer_attn = (0..hp.n_layers)
        .map(|il| {
            let sliding = match &layer_types {
                Some(types) => types.get(il).and_then(|t| t.as_str()) != Some("full_attention"),
                None => pattern == 1 || il % pattern < pattern - 1,
            };
            if sliding {
                (0, Some(window))
            } else {
                (1, None)
            }
        })
        .collect();
    // Gemma 3 27B scales queries by 1/sqrt(hidden / heads); the others by 1/sqrt(head_dim).
    let query_scalar = u32_key("", "query_pre_attn_scalar")
        .filter(|_| !gguf)
        .map(|v| v as f64)
        .unwrap_or(if hp.n_layers == 62 {
            (hp.hidden / hp.n_head) as f64
        } else {
            hp.head_dim as f64
        });
    Ok(Spec {
        arch: "gemma3".into(),
        ropes,
        layer_attn,
        attn_scale: 1.0 / query_scalar.sqrt(),
        embed_scale: Some((hp.hidden as f64).sqrt()),
        moe: None,
        hp,
    })
}

/// A norm; Hugging Face checkpoints store its weight minus one.
pub(super) fn norm(w: &Weights, name: &str) -> Result<RmsNorm> {
    let n = RmsNorm::load(w, name)?;
    Ok(if w.is_gguf() { n } else { n.plus_one()? })
}

pub(super) fn block(spec: &Spec, w: &Weights, il: usize) -> Result<Block> {
    let p = format!("blk.{il}");
    let n = |name: &str| norm(w, &format!("{p}.{name}"));
    let attn = Attention::load(w, &p, spec, il)?
        .with_qk_norm(w, &p, !w.is_gguf())?
        .prescaled();
    Ok(Block::new(
        n("attn_norm")?,
        attn,
        n("ffn_norm")?,
        Ffn::Dense(Mlp::load(w, &p, Activation::GeluTanh)?),
    )
    .with_post_norms(n("post_attention_norm")?, n("post_ffw_norm")?))
}

/// Gemma 3's Hugging Face names: four norms around attention and the MLP.
pub(super) fn hf_name(gguf: &str) -> String {
    super::hf_name_with(gguf, |name| {
        Some(
            match name {
                "post_attention_norm" => "post_attention_layernorm",
                "ffn_norm" => "pre_feedforward_layernorm",
                "post_ffw_norm" => "post_feedforward_layernorm",
                _ => return None,
            }
            .into(),
        )
    })
}
