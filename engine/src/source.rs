//! Where a model's weights and settings come from: a GGUF file (whole or split into parts, read
//! by [`crate::gguf`]), or a Hugging Face safetensors directory (config.json + *.safetensors +
//! tokenizer.json).
//!
//! Model files ask for tensors by their GGUF names (`blk.3.attn_q.weight`); the safetensors source
//! translates those to Hugging Face names, so one model file serves both formats.

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
                Ok(match model_type {
                    "gemma3_text" => "gemma3".to_string(),
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
            Source::Safetensors { tensors, .. } => tensors.get(&hf_name(name)).is_ok(),
        }
    }

    /// A GGUF tensor's bytes as stored, with its type and shape, for the ggml types candle
    /// has no `QTensor` for. Missing tensors (and safetensors sources) are a [`EngineError::Missing`].
    pub fn tensor_data(&self, name: &str) -> Result<TensorData<'_>> {
        self.gguf()
            .and_then(|g| g.tensor(name))
            .ok_or_else(|| self.missing(format!("GGUF tensor `{name}`")))
    }

    /// Reads one tensor by its GGUF name. Dense safetensors weights come back as F32 QTensors.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<QTensor> {
        match self {
            Source::Gguf(_) => Ok(self.tensor_data(name)?.to_qtensor(device)?),
            Source::Safetensors { tensors, .. } => {
                let hf = hf_name(name);
                let t = tensors
                    .load(&hf, device)
                    .map_err(|_| self.missing(format!("tensor `{hf}` (`{name}`)")))?
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
}

/// Maps a GGUF tensor name to its Hugging Face (transformers) name.
pub fn hf_name(gguf: &str) -> String {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return name.to_string();
    }
    let Some(rest) = gguf.strip_prefix("blk.") else {
        return gguf.to_string();
    };
    let Some((layer, rest)) = rest.split_once('.') else {
        return gguf.to_string();
    };
    let (part, suffix) = rest.rsplit_once('.').unwrap_or((rest, ""));
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        other => other,
    };
    format!("model.layers.{layer}.{hf}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::hf_name;

    #[test]
    fn gguf_names_map_to_transformers_names() {
        assert_eq!(hf_name("token_embd.weight"), "model.embed_tokens.weight");
        assert_eq!(
            hf_name("blk.12.attn_q.weight"),
            "model.layers.12.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias"),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert_eq!(
            hf_name("blk.3.ffn_norm.weight"),
            "model.layers.3.post_attention_layernorm.weight"
        );
    }
}
