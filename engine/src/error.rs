use std::path::PathBuf;

/// Everything the engine can fail at; each variant names what failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read model {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF file or safetensors model directory: {reason}")]
    NotAModel { path: PathBuf, reason: String },
    #[error(
        "model {path} has architecture `{arch}`, which exo-p2p does not support (supported: {})",
        supported.join(", ")
    )]
    UnsupportedArch {
        path: PathBuf,
        arch: String,
        supported: &'static [&'static str],
    },
    #[error("model {path} is missing {what}")]
    Missing { path: PathBuf, what: String },
    #[error("prompt needs {needed} tokens but the model's context is {context} tokens")]
    ContextFull { needed: usize, context: usize },
    #[error("invalid shard {range} for a model of {n_layers} layers")]
    BadShard { range: String, n_layers: u32 },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("{0}")]
    Invalid(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("request {key} has no KV cache on {range} (expired, or this node restarted)")]
    MissingCache { key: String, range: String },
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
