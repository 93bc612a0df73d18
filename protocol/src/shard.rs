//! Shards (layer ranges) and plans (which peer runs which range, in ring order).

use serde::{Deserialize, Serialize};

use crate::NodeId;

/// A contiguous range of transformer layers `start..end` of a model with `n_layers` layers.
/// The first shard also embeds token ids; the last also applies the final norm and head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerRange {
    pub start: u32,
    pub end: u32,
    pub n_layers: u32,
}

impl LayerRange {
    pub fn new(start: u32, end: u32, n_layers: u32) -> Self {
        Self {
            start,
            end,
            n_layers,
        }
    }
    /// The shard holding every layer: a whole model.
    pub fn full(n_layers: u32) -> Self {
        Self::new(0, n_layers, n_layers)
    }
    pub fn is_first(&self) -> bool {
        self.start == 0
    }
    pub fn is_last(&self) -> bool {
        self.end == self.n_layers
    }
    pub fn len(&self) -> u32 {
        self.end - self.start
    }
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
    pub fn is_valid(&self) -> bool {
        self.start < self.end && self.end <= self.n_layers
    }
}

impl std::fmt::Display for LayerRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "layers {}..{} of {}",
            self.start, self.end, self.n_layers
        )
    }
}

/// One hop of the ring: the node and the layers it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub peer: NodeId,
    pub layers: LayerRange,
}

/// Why a [`Plan`] cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("plan has no stages")]
    NoStages,
    #[error("plan for {model} is not a contiguous cover: stage {peer} has {layers}")]
    NotContiguous {
        model: String,
        peer: NodeId,
        layers: LayerRange,
    },
    #[error("plan for {model} stops at layer {end} of {n_layers}")]
    Short {
        model: String,
        end: u32,
        n_layers: u32,
    },
}

/// The ring a request uses, fixed by the node that takes the request and sent along with it so
/// that a topology change mid-request cannot mix plans.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub model: String,
    pub stages: Vec<Stage>,
}

impl Plan {
    /// Checks that the stages cover `0..n_layers` exactly once, in order.
    pub fn validate(&self) -> Result<(), PlanError> {
        let Some(first) = self.stages.first() else {
            return Err(PlanError::NoStages);
        };
        let n = first.layers.n_layers;
        let mut next = 0;
        for s in &self.stages {
            if !s.layers.is_valid() || s.layers.n_layers != n || s.layers.start != next {
                return Err(PlanError::NotContiguous {
                    model: self.model.clone(),
                    peer: s.peer.clone(),
                    layers: s.layers,
                });
            }
            next = s.layers.end;
        }
        if next != n {
            return Err(PlanError::Short {
                model: self.model.clone(),
                end: next,
                n_layers: n,
            });
        }
        Ok(())
    }

    pub fn n_layers(&self) -> u32 {
        self.stages.first().map_or(0, |s| s.layers.n_layers)
    }
}
