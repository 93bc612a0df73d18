//! Llama (1, 2, 3.x), Mixtral (a llama with experts) and the many models sharing their block
//! (see [`super::llama_block`]). GGUF files hold Q/K weights permuted by llama.cpp's converter,
//! so they use interleaved rope; Hugging Face checkpoints use NeoX rope.

use candle_core::Device;

use crate::{
    error::Result,
    layers::{Rope, RopeStyle},
    source::{Meta, Source},
    spec::Spec,
};

pub fn spec(src: &Source) -> Result<Spec> {
    let hp = super::hparams(src, "llama")?;
    let gguf = src.is_gguf();
    let rope_dim = if gguf {
        src.meta_u32_opt("llama.rope.dimension_count")
            .map_or(hp.head_dim, |v| v as usize)
    } else {
        hp.head_dim
    };
    let (base, freq_scale, freq_factors) = if gguf {
        let base = src.meta_f32_opt("llama.rope.freq_base").unwrap_or(10_000.0);
        let linear = src.meta_str_opt("llama.rope.scaling.type").as_deref() == Some("linear");
        let scale = match src.meta_f32_opt("llama.rope.scaling.factor") {
            Some(f) if linear && f > 0.0 => 1.0 / f,
            _ => 1.0,
        };
        // Llama 3.1+ files carry their rope frequency divisors as a tensor.
        let factors = if src.has_tensor("rope_freqs.weight") {
            let t = src.tensor("rope_freqs.weight", &Device::Cpu)?;
            Some(t.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
        } else {
            None
        };
        (base, scale, factors)
    } else {
        let base = src.meta_f32_opt("rope_theta").unwrap_or(10_000.0);
        let scaling = match src.meta("rope_scaling") {
            Some(Meta::Json(v)) if v.is_object() => Some(v.clone()),
            _ => None,
        };
        match scaling {
            Some(s) if s["rope_type"] == "llama3" || s["type"] == "llama3" => {
                (base, 1.0, Some(llama3_factors(&s, base, rope_dim)))
            }
            Some(s) if s["rope_type"] == "linear" || s["type"] == "linear" => {
                let f = s["factor"].as_f64().unwrap_or(1.0) as f32;
                (base, 1.0 / f, None)
            }
            _ => (base, 1.0, None),
        }
    };
    Ok(Spec {
        arch: "llama".into(),
        ropes: vec![Rope {
            style: if gguf {
                RopeStyle::Interleaved
            } else {
                RopeStyle::Neox
            },
            dim: rope_dim,
            base,
            freq_scale,
            freq_factors,
            yarn: None,
        }],
        layer_attn: super::uniform_layers(hp.n_layers),
        attn_scale: 1.0 / (hp.head_dim as f64).sqrt(),
        embed_scale: None,
        // Mixtral: a llama file with `llama.expert_count`; llama.cpp always normalises its
        // expert weights.
        moe: super::moe_spec(src, "llama", true)?,
        hp,
    })
}

/// Llama 3.1's frequency-dependent rope scaling, as divisors of each frequency (what llama.cpp's
/// converter stores as `rope_freqs`).
fn llama3_factors(s: &serde_json::Value, base: f32, dim: usize) -> Vec<f32> {
    let get = |k: &str, d: f64| s[k].as_f64().unwrap_or(d);
    let factor = get("factor", 8.0);
    let low = get("low_freq_factor", 1.0);
    let high = get("high_freq_factor", 4.0);
    let old_ctx = get("original_max_position_embeddings", 8192.0);
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / (base as f64).powf(2.0 * i as f64 / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let divisor = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            divisor as f32
        })
        .collect()
}

/// Llama's Hugging Face names, with Mixtral's `block_sparse_moe` (router `gate`, experts' `w1`
/// gate, `w3` up, `w2` down).
pub(super) fn hf_name(gguf: &str) -> String {
    super::hf_name_with(gguf, |name| {
        if name == "ffn_gate_inp" {
            return Some("block_sparse_moe.gate".into());
        }
        let (part, e) = super::expert_part(name)?;
        let w = match part {
            "ffn_gate" => "w1",
            "ffn_up" => "w3",
            "ffn_down" => "w2",
            _ => return None,
        };
        Some(format!("block_sparse_moe.experts.{e}.{w}"))
    })
}
