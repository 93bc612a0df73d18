//! Where a model's weights and settings come from: a GGUF file (whole or split into parts, read
//! by [`crate::gguf`]), or a Hugging Face safetensors directory (config.json + *.safetensors +
//! tokenizer.json).
//!
//! Tensors are asked for by the names the source stores; model files use GGUF names and their
//! own map to Hugging Face names (see `layers::Weights`).

use std::path::{Path, PathBuf};

use candle_core::{quantized::QTensor, safetensors::MmapedSafetensors, DType, Device};

use crate::{
    error::{EngineError, Result},
    gguf::{self, Gguf, TensorData},
};

/// Which safetensors file holds each tensor, in a sharded Hugging Face model directory.
pub const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";

pub enum Source {
    Gguf(Gguf),
    Safetensors {
        dir: PathBuf,
        config: serde_json::Value,
        /// The weight files present: with an index, a node may hold only its shard's files.
        tensors: MmapedSafetensors,
        /// `metadata.total_size` of `model.safetensors.index.json`: the whole model's weights,
        /// whichever files are here.
        indexed_bytes: Option<u64>,
    },
}

/// A value read from model metadata (GGUF key/value or config.json).
pub enum Meta<'a> {
    Gguf(&'a gguf::Value),
    Json(&'a serde_json::Value),
}

impl Source {
    pub fn open(path: &Path) -> Result<Self> {
        let io = |source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            return Self::open_safetensors(path);
        }
        Ok(Source::Gguf(Gguf::open(path)?))
    }

    fn open_safetensors(dir: &Path) -> Result<Self> {
        let not_model = |reason: String| EngineError::NotAModel {
            path: dir.to_path_buf(),
            reason,
        };
        let config_path = dir.join("config.json");
        let config = std::fs::read(&config_path)
            .map_err(|e| not_model(format!("{}: {e}", config_path.display())))?;
        let config: serde_json::Value = serde_json::from_slice(&config)
            .map_err(|e| not_model(format!("{}: {e}", config_path.display())))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| EngineError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        // With an index the weight files may all be absent: a node fetches its shard's files
        // when it is asked to run those layers, and reads only the model's description before.
        let index = std::fs::read(dir.join(SAFETENSORS_INDEX)).ok();
        if files.is_empty() && index.is_none() {
            return Err(not_model("no *.safetensors files".into()));
        }
        let indexed_bytes = index
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["metadata"]["total_size"].as_u64());
        // SAFETY: the files are opened read-only and exo-p2p never writes a model it has loaded.
        let tensors = unsafe { MmapedSafetensors::multi(&files) }?;
        Ok(Source::Safetensors {
            dir: dir.to_path_buf(),
            config,
            tensors,
            indexed_bytes,
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            Source::Gguf(g) => g.path(),
            Source::Safetensors { dir, .. } => dir,
        }
    }

    pub fn is_gguf(&self) -> bool {
        matches!(self, Source::Gguf(_))
    }

    /// The GGUF reader behind a GGUF source: raw tensor bytes of any ggml type.
    pub fn gguf(&self) -> Option<&Gguf> {
        match self {
            Source::Gguf(g) => Some(g),
            Source::Safetensors { .. } => None,
        }
    }

    /// The architecture name, as GGUF spells it (`llama`, `qwen2`, `gemma3`).
    pub fn arch(&self) -> Result<String> {
        match self {
            Source::Gguf(_) => self.meta_str("general.architecture"),
            Source::Safetensors { config, .. } => {
                let model_type = config["model_type"].as_str().unwrap_or_default();
                // config.json's model_type → the GGUF architecture of the same model.
                Ok(match model_type {
                    "gemma3_text" => "gemma3".to_string(),
                    "qwen3_moe" => "qwen3moe".to_string(),
                    "mixtral" => "llama".to_string(),
                    other => other.to_string(),
                })
            }
        }
    }

    pub fn meta(&self, key: &str) -> Option<Meta<'_>> {
        match self {
            Source::Gguf(g) => g.get(key).map(Meta::Gguf),
            Source::Safetensors { config, .. } => config.get(key).map(Meta::Json),
        }
    }

    fn missing(&self, what: impl Into<String>) -> EngineError {
        EngineError::Missing {
            path: self.path().to_path_buf(),
            what: what.into(),
        }
    }

    pub fn meta_u32(&self, key: &str) -> Result<u32> {
        self.meta_u32_opt(key)
            .ok_or_else(|| self.missing(format!("metadata `{key}`")))
    }

    pub fn meta_u32_opt(&self, key: &str) -> Option<u32> {
        match self.meta(key)? {
            Meta::Gguf(v) => v
                .as_u64()
                .or(v.as_i64().map(|v| v as u64))
                .map(|v| v as u32),
            Meta::Json(v) => v.as_u64().map(|v| v as u32),
        }
    }

    pub fn meta_f32_opt(&self, key: &str) -> Option<f32> {
        match self.meta(key)? {
            Meta::Gguf(v) => v.as_f64().map(|v| v as f32),
            Meta::Json(v) => v.as_f64().map(|v| v as f32),
        }
    }

    pub fn meta_bool_opt(&self, key: &str) -> Option<bool> {
        match self.meta(key)? {
            Meta::Gguf(v) => v.as_bool(),
            Meta::Json(v) => v.as_bool(),
        }
    }

    pub fn meta_str(&self, key: &str) -> Result<String> {
        self.meta_str_opt(key)
            .ok_or_else(|| self.missing(format!("metadata `{key}`")))
    }

    pub fn meta_str_opt(&self, key: &str) -> Option<String> {
        match self.meta(key)? {
            Meta::Gguf(v) => v.as_str().map(str::to_string),
            Meta::Json(v) => v.as_str().map(str::to_string),
        }
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        match self {
            Source::Gguf(g) => g.tensor_info(name).is_some(),
            Source::Safetensors { tensors, .. } => tensors.get(name).is_ok(),
        }
    }

    /// A GGUF tensor's bytes as stored, with its type and shape, for the ggml types candle
    /// has no `QTensor` for. Missing tensors (and safetensors sources) are a [`EngineError::Missing`].
    pub fn tensor_data(&self, name: &str) -> Result<TensorData<'_>> {
        self.gguf()
            .and_then(|g| g.tensor(name))
            .ok_or_else(|| self.missing(format!("GGUF tensor `{name}`")))
    }

    /// Reads one tensor by its stored name. Dense safetensors weights come back as F32 QTensors.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        match self {
            Source::Gguf(_) => Ok(self.tensor_data(name)?.to_qtensor(device)?),
            Source::Safetensors { tensors, .. } => {
                let t = tensors
                    .load(name, device)
                    .map_err(|_| self.missing(format!("tensor `{name}`")))?
                    .to_dtype(DType::F32)?;
                Ok(QTensor::quantize(
                    &t,
                    candle_core::quantized::GgmlDType::F32,
                )?)
            }
        }
    }

    /// Total bytes of weights, for memory planning.
    pub fn weight_bytes(&self) -> u64 {
        match self {
            Source::Gguf(g) => g.tensor_bytes(),
            Source::Safetensors {
                indexed_bytes: Some(n),
                ..
            } => *n,
            Source::Safetensors { tensors, .. } => tensors
                .tensors()
                .iter()
                .map(|(_, v)| v.data().len() as u64)
                .sum(),
        }
    }

    /// Bytes of each of the `n_layers` layers' tensors (`blk.N.*` in GGUF, `model.layers.N.*`
    /// in safetensors), experts included; empty when the weight files are not all here.
    pub fn layer_bytes(&self, n_layers: usize) -> Vec<u64> {
        let mut out = vec![0u64; n_layers];
        match self {
            Source::Gguf(g) => {
                for t in g.tensor_infos() {
                    if let Some(l) = t.layer().filter(|&l| (l as usize) < n_layers) {
                        out[l as usize] += t.bytes();
                    }
                }
            }
            Source::Safetensors {
                tensors,
                indexed_bytes,
                ..
            } => {
                let all = tensors.tensors();
                let present: u64 = all.iter().map(|(_, v)| v.data().len() as u64).sum();
                if indexed_bytes.is_some_and(|n| n != present) {
                    return Vec::new();
                }
                for (name, v) in all {
                    let layer = name
                        .strip_prefix("model.layers.")
                        .and_then(|r| r.split('.').next())
                        .and_then(|l| l.parse::<usize>().ok());
                    if let Some(l) = layer.filter(|&l| l < n_layers) {
                        out[l] += v.data().len() as u64;
                    }
                }
            }
        }
        out
    }
}
