//! Per-request KV cache for the layers of one shard.

pub use crate::attention::LayerKv;

/// The KV cache of one request on one shard: a [`LayerKv`] per layer the shard holds and the
/// number of positions already processed.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) layers: Vec<LayerKv>,
    position: usize,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        Self {
            layers: vec![LayerKv::default(); n_layers],
            position: 0,
        }
    }

    /// Number of tokens already in the cache: the position of the next token.
    pub fn position(&self) -> usize {
        self.position
    }

    /// Rolls the cache back to `position` tokens: the positions after it (draft tokens the
    /// target rejected) are forgotten, and the next step continues at `position`. A position at
    /// or past the current one changes nothing.
    pub fn truncate(&mut self, position: usize) {
        if position >= self.position {
            return;
        }
        for layer in &mut self.layers {
            layer.truncate(position);
        }
        self.position = position;
    }

    pub(crate) fn advance(&mut self, tokens: usize) {
        self.position += tokens;
    }

    /// Memory held by the cached keys and values.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerKv::bytes).sum()
    }
}
