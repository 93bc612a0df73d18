//! RMS norm with ggml's numerics (see [`crate::ops::rms_norm`]).

use candle_core::{Result, Tensor};

use super::Weights;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// `{name}.weight`, with the model's epsilon.
    pub fn load(w: &Weights, name: &str) -> crate::Result<Self> {
        Ok(Self {
            weight: w.dense(&format!("{name}.weight"))?,
            eps: w.eps,
        })
    }

    /// Gemma's Hugging Face checkpoints store `w - 1`; GGUF files already hold `w`.
    pub fn plus_one(self) -> Result<Self> {
        Ok(Self {
            weight: (self.weight + 1.0)?,
            eps: self.eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::rms_norm(x, &self.weight, self.eps)
    }
}
