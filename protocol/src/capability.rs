//! Capability records: what each node tells the mesh about itself over gossipsub.

use serde::{Deserialize, Serialize};

use crate::{shard::LayerRange, PROTOCOL_VERSION};

/// Largest capability record a node accepts.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapabilityRecord {
    pub v: u16,
    pub peer_id: String,
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
    pub fn new(peer_id: String) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            peer_id,
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
