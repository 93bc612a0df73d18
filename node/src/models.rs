//! The models this node can serve: each `--model` path, read once (shape, tokenizer, template).

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use anyhow::{Context, Result};
use exo_engine::ModelInfo;
use exo_protocol::ModelOffer;

pub struct LocalModel {
    pub path: PathBuf,
    pub info: Arc<ModelInfo>,
}

impl LocalModel {
    pub fn offer(&self) -> ModelOffer {
        ModelOffer {
            id: self.info.id.clone(),
            n_layers: self.info.n_layers(),
            bytes: self.info.weight_bytes,
            arch: self.info.spec.arch.clone(),
        }
    }
}

#[derive(Default)]
pub struct ModelRegistry {
    models: BTreeMap<String, LocalModel>,
}

impl ModelRegistry {
    /// Reads every model (in parallel with nothing else: this is start-up).
    pub fn load(paths: &[PathBuf]) -> Result<Self> {
        let mut models = BTreeMap::new();
        for path in paths {
            let info = ModelInfo::load(path)
                .with_context(|| format!("cannot serve model {}", path.display()))?;
            tracing::info!(model = %info.id, layers = info.n_layers(), path = %path.display(), "model available");
            models.insert(
                info.id.clone(),
                LocalModel {
                    path: path.clone(),
                    info: Arc::new(info),
                },
            );
        }
        Ok(Self { models })
    }

    pub fn get(&self, id: &str) -> Option<&LocalModel> {
        self.models.get(id)
    }

    pub fn offers(&self) -> Vec<ModelOffer> {
        self.models.values().map(LocalModel::offer).collect()
    }

    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.models.keys()
    }
}
