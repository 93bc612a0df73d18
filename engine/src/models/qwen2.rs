//! Qwen2 / Qwen2.5: Llama's block (see [`super::llama_block`]) with biases on Q, K and V and
//! NeoX rope.

use crate::{
    error::Result,
    layers::{Rope, RopeStyle},
    source::Source,
    spec::Spec,
};

pub fn spec(src: &Source) -> Result<Spec> {
    spec_of(src, "qwen2")
}

/// The Qwen family's hyper-parameters under `arch` (`qwen2`, `qwen3`, `qwen3moe`): NeoX rope over
/// the whole head, base 1e6 unless the file says otherwise, every layer alike.
pub(super) fn spec_of(src: &Source, arch: &str) -> Result<Spec> {
    let hp = super::hparams(src, arch)?;
    let base = if src.is_gguf() {
        src.meta_f32_opt(&format!("{arch}.rope.freq_base"))
    } else {
        src.meta_f32_opt("rope_theta")
    };
    Ok(Spec {
        arch: arch.into(),
        ropes: vec![Rope {
            style: RopeStyle::Neox,
            dim: hp.head_dim,
            base: base.unwrap_or(1_000_000.0),
            freq_scale: 1.0,
            freq_factors: None,
            yarn: None,
        }],
        layer_attn: super::uniform_layers(hp.n_layers),
        attn_scale: 1.0 / (hp.head_dim as f64).sqrt(),
        embed_scale: None,
        moe: None,
        hp,
    })
}
