//! Qwen3 (dense): Qwen2's block without the Q/K/V biases, with an RMS norm over each head of the
//! queries and keys before rope (see [`super::llama_block`]).

use crate::{error::Result, source::Source, spec::Spec};

pub fn spec(src: &Source) -> Result<Spec> {
    super::qwen2::spec_of(src, "qwen3")
}
