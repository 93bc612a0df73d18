//! One file per architecture: each reads its hyper-parameters into a [`Spec`]; the shared
//! pieces in `layers.rs` do the rest. Adding an architecture means adding a file here and a line
//! to [`spec`].

mod gemma3;
mod llama;
mod qwen2;

use crate::{
    error::{EngineError, Result},
    source::Source,
    spec::{HParams, Spec},
};

pub const SUPPORTED: &[&str] = &["gemma3", "qwen2", "llama"];

/// Reads the architecture's description from a model's metadata (no tensors are loaded).
pub fn spec(src: &Source) -> Result<Spec> {
    let arch = src.arch()?;
    match arch.as_str() {
        "gemma3" => gemma3::spec(src),
        "qwen2" => qwen2::spec(src),
        "llama" => llama::spec(src),
        _ => Err(EngineError::UnsupportedArch {
            path: src.path().to_path_buf(),
            arch,
            supported: SUPPORTED,
        }),
    }
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
