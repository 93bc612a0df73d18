//! Capability records: what each node tells the mesh about itself over gossipsub.

use serde::{Deserialize, Serialize};

use crate::{shard::LayerRange, NodeId, PROTOCOL_VERSION};

/// Largest capability record a node accepts.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityRecord {
    pub v: u16,
    pub peer_id: NodeId,
    /// Multiaddrs the node listens on (including relayed `/p2p-circuit` ones).
    pub addrs: Vec<String>,
    /// Memory the node offers for model layers, in bytes (`--memory` overrides the measured value).
    pub memory_total: u64,
    pub memory_available: u64,
    /// Measured matrix throughput in GFLOP/s.
    pub compute_score: f32,
    pub cpu: String,
    pub gpu: Option<String>,
    /// Models this node can serve (it has the files or can fetch them).
    pub models: Vec<ModelOffer>,
    /// Shards currently loaded in memory.
    pub loaded: Vec<LoadedShard>,
    /// Model files this node holds and serves to peers.
    #[serde(default)]
    pub files: Vec<FileOffer>,
    /// Port of the node's HTTP API, if it runs one.
    pub api_port: Option<u16>,
    /// Software version of the node.
    pub software: String,
    /// Increases with every publication, so late duplicates can be ignored.
    pub seq: u64,
}

impl CapabilityRecord {
    pub fn new(peer_id: impl Into<NodeId>) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            peer_id: peer_id.into(),
            addrs: Vec::new(),
            memory_total: 0,
            memory_available: 0,
            compute_score: 0.0,
            cpu: String::new(),
            gpu: None,
            models: Vec::new(),
            loaded: Vec::new(),
            files: Vec::new(),
            api_port: None,
            software: String::new(),
            seq: 0,
        }
    }

    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m.id == model)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelOffer {
    /// The name requests use (e.g. `qwen2.5-coder-0.5b-instruct-q4_k_m`).
    pub id: String,
    pub n_layers: u32,
    /// Total size of the model's weights in bytes.
    pub bytes: u64,
    pub arch: String,
    /// Bytes of each layer's tensors (a mixture's experts included), when the node knows them;
    /// empty from a node that does not say (layers are then taken as equal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_bytes: Vec<u64>,
}

impl ModelOffer {
    /// Bytes of weights a stage serving `layers` holds: its layers' real sizes, and the tensors
    /// outside the layers (embedding, output) counted half on the first stage, half on the last.
    pub fn shard_bytes(&self, layers: &LayerRange) -> u64 {
        let n = self.n_layers.max(1) as u64;
        if self.layer_bytes.len() != self.n_layers as usize {
            return self.bytes * layers.len() as u64 / n;
        }
        let own: u64 = self.layer_bytes[layers.start as usize..layers.end as usize]
            .iter()
            .sum();
        let rest = self
            .bytes
            .saturating_sub(self.layer_bytes.iter().sum::<u64>());
        let ends = layers.is_first() as u64 + layers.is_last() as u64;
        own + rest * ends / 2
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadedShard {
    pub model: String,
    pub layers: LayerRange,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOffer {
    /// Hugging Face repository the file comes from, e.g. `Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF`.
    pub repo: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[cfg(test)]
mod shard_bytes_tests {
    use super::*;

    #[test]
    fn a_stage_counts_its_layers_real_bytes_and_half_the_rest_per_end() {
        let mut m = ModelOffer {
            id: "m".into(),
            n_layers: 4,
            bytes: 1000,
            arch: "qwen3moe".into(),
            layer_bytes: vec![100, 300, 200, 200],
        };
        assert_eq!(m.shard_bytes(&LayerRange::new(0, 2, 4)), 400 + 100);
        assert_eq!(m.shard_bytes(&LayerRange::new(1, 3, 4)), 500);
        assert_eq!(m.shard_bytes(&LayerRange::new(2, 4, 4)), 400 + 100);
        assert_eq!(m.shard_bytes(&LayerRange::full(4)), 1000);
        // Without per-layer sizes, layers are equal.
        m.layer_bytes.clear();
        assert_eq!(m.shard_bytes(&LayerRange::new(1, 3, 4)), 500);
    }
}
