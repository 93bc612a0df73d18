//! The pieces every decoder-only transformer here is built from: each file in `models/` builds
//! its blocks from them.

mod attention;
mod mlp;
mod moe;
mod norm;
mod rope;
mod weights;

use candle_core::{quantized::QMatMul, DType, Result, Tensor};

pub use attention::Attention;
pub use mlp::{Ffn, Mlp};
pub use moe::{Gating, MoeMlp, MoeSpec};
pub use norm::RmsNorm;
pub use rope::{Rope, RopeStyle, Segment, StepContext, Yarn};
pub use weights::{HfNames, Weights};

use crate::{attention::LayerKv, quant::QuantMatMul};

/// A linear layer `x @ W^T + b` over quantized or dense weights. Quantized weights go through
/// [`crate::quant`] (ggml's numerics); dense ones and unsupported types through candle.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: QuantMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    /// `{name}.weight` and, when the model has one, `{name}.bias`.
    pub fn load(w: &Weights, name: &str) -> crate::Result<Self> {
        let weight = w.matmul(&format!("{name}.weight"))?;
        let bias_name = format!("{name}.bias");
        let bias = if w.has(&bias_name) {
            Some(w.dense(&bias_name)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn new(weight: QuantMatMul) -> Self {
        Self { weight, bias: None }
    }

    pub fn with_bias(weight: QuantMatMul, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn from_qmatmul(weight: QMatMul) -> Self {
        Self::new(QuantMatMul::from_qmatmul(weight).expect("a 2-d weight matrix"))
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.add_bias(self.weight.forward(x)?)
    }

    /// Several layers on the same input, quantizing it once per activation type (q/k/v,
    /// gate/up).
    pub fn forward_many<const N: usize>(layers: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        let ws = layers.map(|l| &l.weight);
        let ys = QuantMatMul::forward_many(&ws, x)?
            .into_iter()
            .zip(layers)
            .map(|(y, l)| l.add_bias(y))
            .collect::<Result<Vec<_>>>()?;
        Ok(ys.try_into().expect("one output per layer"))
    }

    /// Bytes of the weight as held in memory.
    pub fn weight_bytes(&self) -> u64 {
        self.weight.weight_bytes() as u64
    }
}

/// One pre-norm decoder block; Gemma adds norms after attention and after the MLP.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub post_attn_norm: Option<RmsNorm>,
    pub ffn_norm: RmsNorm,
    pub ffn: Ffn,
    pub post_ffn_norm: Option<RmsNorm>,
}

impl Block {
    pub fn new(attn_norm: RmsNorm, attn: Attention, ffn_norm: RmsNorm, ffn: Ffn) -> Self {
        Self {
            attn_norm,
            attn,
            post_attn_norm: None,
            ffn_norm,
            ffn,
            post_ffn_norm: None,
        }
    }

    /// Norms on the outputs of attention and of the feed-forward network (Gemma).
    pub fn with_post_norms(self, post_attn_norm: RmsNorm, post_ffn_norm: RmsNorm) -> Self {
        Self {
            post_attn_norm: Some(post_attn_norm),
            post_ffn_norm: Some(post_ffn_norm),
            ..self
        }
    }

    /// Bytes of the block's weights as held in memory (every expert of a mixture).
    pub fn weight_bytes(&self) -> u64 {
        let a = &self.attn;
        [&a.q, &a.k, &a.v, &a.o]
            .iter()
            .map(|l| l.weight_bytes())
            .sum::<u64>()
            + self.ffn.weight_bytes()
    }

    pub fn forward(
        &self,
        x: &Tensor,
        ropes: &[Rope],
        ctx: &StepContext,
        kvs: &mut [&mut LayerKv],
    ) -> Result<Tensor> {
        let normed = self.attn_norm.forward(x)?;
        crate::dump::tensor("attn_norm", &normed);
        let h = self.attn.forward(&normed, ropes, ctx, kvs)?;
        let h = match &self.post_attn_norm {
            Some(n) => n.forward(&h)?,
            None => h,
        };
        let x = (x + h)?;
        crate::dump::tensor("ffn_inp", &x);
        let h = self.ffn.forward(&self.ffn_norm.forward(&x)?)?;
        let h = match &self.post_ffn_norm {
            Some(n) => n.forward(&h)?,
            None => h,
        };
        crate::dump::tensor("ffn_out", &h);
        let out = (x + h)?;
        crate::dump::tensor("l_out", &out);
        Ok(out)
    }
}

/// A token embedding table: candle's for the types it holds, the kernels' blocks for the others
/// (IQ4_NL, IQ4_XS).
#[derive(Debug, Clone)]
pub enum EmbedTable {
    Candle(QMatMul),
    Blocks(QuantMatMul),
}

impl EmbedTable {
    /// The same weights as the output projection of a model with tied embeddings.
    pub fn as_linear(&self) -> Linear {
        match self {
            EmbedTable::Candle(q) => Linear::from_qmatmul(q.clone()),
            EmbedTable::Blocks(m) => Linear::new(m.clone()),
        }
    }
}

/// Token embedding of the first shard; rows are dequantized only for the ids looked up.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub table: EmbedTable,
    /// Gemma multiplies embeddings by sqrt(hidden).
    pub scale: Option<f64>,
}

impl Embedding {
    /// `ids`: `[1, seq]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let x = match &self.table {
            EmbedTable::Candle(t) => t.embedding(ids)?,
            EmbedTable::Blocks(m) => {
                let list: Vec<u32> = ids.flatten_all()?.to_vec1()?;
                let (_, k) = m.dims();
                let mut shape = ids.dims().to_vec();
                shape.push(k);
                Tensor::from_vec(m.rows(&list)?, shape, ids.device())?
            }
        };
        let x = if x.dtype() == DType::F32 {
            x
        } else {
            x.to_dtype(DType::F32)?
        };
        match self.scale {
            Some(s) => x * s,
            None => Ok(x),
        }
    }
}

/// Final norm and output projection of the last shard.
#[derive(Debug, Clone)]
pub struct Head {
    pub norm: RmsNorm,
    pub output: Linear,
}

impl Head {
    /// Logits `[batch, positions, vocab]` for the given hidden states.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.output.forward(&self.norm.forward(x)?)
    }
}
