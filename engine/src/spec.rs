//! What an architecture is made of: the description each file in `models/` reads from a model's
//! metadata and [`crate::model::ShardModel`] builds its layers from. Its own module so that the
//! readers (`models/`) and the builder (`model`) depend on it, not on each other.

use crate::{layers::Rope, ops::Activation};

/// Hyper-parameters common to the supported architectures.
#[derive(Debug, Clone, PartialEq)]
pub struct HParams {
    pub n_layers: usize,
    pub hidden: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub eps: f32,
    pub context_length: usize,
}

/// What an architecture is made of; each file in `models/` reads one of these from metadata.
#[derive(Debug, Clone)]
pub struct Spec {
    pub arch: String,
    pub hp: HParams,
    pub ropes: Vec<Rope>,
    /// Rope setting and sliding window of each layer.
    pub layer_attn: Vec<(usize, Option<usize>)>,
    pub act: Activation,
    pub attn_scale: f64,
    /// Scale queries before attention rather than the scores (Gemma, as llama.cpp builds it).
    pub prescale_query: bool,
    pub embed_scale: Option<f64>,
    pub qk_norm: bool,
    pub post_norms: bool,
    /// Hugging Face Gemma stores norm weights minus one.
    pub norm_plus_one: bool,
}
