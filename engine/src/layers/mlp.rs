//! The gated feed-forward network (SwiGLU, GeGLU), and the feed-forward of a block: dense or a
//! mixture of experts.

use candle_core::{Result, Tensor};

use super::{Linear, MoeMlp, Weights};
use crate::{
    ops::{self, Activation},
    spec::Spec,
};

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub act: Activation,
}

impl Mlp {
    /// `{p}.ffn_{gate,up,down}`.
    pub fn load(w: &Weights, p: &str, act: Activation) -> crate::Result<Self> {
        Ok(Self {
            gate: Linear::load(w, &format!("{p}.ffn_gate"))?,
            up: Linear::load(w, &format!("{p}.ffn_up"))?,
            down: Linear::load(w, &format!("{p}.ffn_down"))?,
            act,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [gate, up] = Linear::forward_many([&self.gate, &self.up], x)?;
        let h = ops::gated(self.act, &gate, &up)?;
        self.down.forward(&h)
    }

    pub fn weight_bytes(&self) -> u64 {
        [&self.gate, &self.up, &self.down]
            .iter()
            .map(|l| l.weight_bytes())
            .sum()
    }
}

/// A block's feed-forward network.
#[derive(Debug, Clone)]
pub enum Ffn {
    Dense(Mlp),
    Moe(MoeMlp),
}

impl Ffn {
    /// A mixture of experts when the model has experts (`spec.moe`), else a dense MLP.
    pub fn load(w: &Weights, p: &str, spec: &Spec, act: Activation) -> crate::Result<Self> {
        Ok(match &spec.moe {
            Some(moe) => Ffn::Moe(MoeMlp::load(w, p, moe, act)?),
            None => Ffn::Dense(Mlp::load(w, p, act)?),
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Ffn::Dense(m) => m.forward(x),
            Ffn::Moe(m) => m.forward(x),
        }
    }

    /// Bytes of weights held (every expert of a mixture).
    pub fn weight_bytes(&self) -> u64 {
        match self {
            Ffn::Dense(m) => m.weight_bytes(),
            Ffn::Moe(m) => m.weight_bytes(),
        }
    }
}
