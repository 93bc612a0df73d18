//! exo-p2p's engine: candle models that run a layer range (a shard) of a GGUF or safetensors
//! model, per-request KV caches, tokenizers, chat templates and sampling. It knows nothing of the
//! network or HTTP.

pub mod attention;
pub mod attention_tiled;
pub mod chat_template;
pub mod constraint;
pub mod dump;
pub mod error;
pub mod frame;
pub mod ggml_vec;
pub mod gguf;
pub mod info;
pub mod kv_cache;
pub mod layers;
pub mod local_ring;
pub mod model;
pub mod models;
pub mod ops;
pub mod perplexity;
pub mod quant;
pub mod runner;
pub mod sampling;
pub mod scheduler;
pub mod source;
pub mod spec;
pub mod speculative;
pub mod text_stream;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate, ToolCall};
pub use constraint::{Constraint, ConstraintVocab};
pub use error::{EngineError, Result};
pub use info::{model_id, ModelInfo};
pub use kv_cache::KvCache;
pub use local_ring::{even_split, LocalRing};
pub use model::{Logits, SeqStep, ShardInput, ShardModel};
pub use perplexity::{perplexity, Perplexity};
pub use runner::{RunnerLimits, ShardRunner, StepOutput};
pub use sampling::Sampler;
pub use source::Source;
pub use spec::{HParams, Spec};
pub use speculative::{Speculation, Speculator};
pub use text_stream::{FinishReason, Piece, TextStream};
pub use tokenizer::TextTokenizer;
