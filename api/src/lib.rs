//! exo-p2p's OpenAI-compatible HTTP API and web chat page. It serves any [`Backend`]; the node
//! provides one backed by the mesh.

pub mod backend;

pub use backend::{
    Backend, BackendError, ChatMessage, GenerateRequest, Generation, GenerationEvent, Health,
    ModelCard, Prompt, TokenLogprob,
};
