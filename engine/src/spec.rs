//! What an architecture is made of: the description each file in `models/` reads from a model's
//! metadata and [`crate::model::ShardModel`] builds its layers from. Its own module so that the
//! readers (`models/`) and the builder (`model`) depend on it, not on each other.

use crate::layers::{MoeSpec, Rope};

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

/// What an architecture is made of, read from metadata by its file in `models/`; the blocks
/// themselves are built by that file from the pieces in `layers/`.
#[derive(Debug, Clone)]
pub struct Spec {
    pub arch: String,
    pub hp: HParams,
    pub ropes: Vec<Rope>,
    /// Rope setting and sliding window of each layer.
    pub layer_attn: Vec<(usize, Option<usize>)>,
    pub attn_scale: f64,
    pub embed_scale: Option<f64>,
    /// Experts of a mixture-of-experts model.
    pub moe: Option<MoeSpec>,
}
