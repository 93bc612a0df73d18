//! The API surfaces: each is an adapter over the one [`Backend`](crate::Backend) with its own
//! routes, request and response shapes, stream framing, API-key header and error shape.
//! Adding a surface is adding a module here and merging its router in [`crate::router`].

pub mod anthropic;
pub mod ollama;
pub mod openai;
