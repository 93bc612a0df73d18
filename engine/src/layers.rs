//! The pieces every decoder-only transformer here is built from. Architectures differ only in
//! which pieces they use and how they read them (see `models/`).

use std::sync::Arc;

use candle_core::{quantized::QMatMul, DType, Device, Result, Tensor, D};

use crate::{
    kv_cache::LayerKv,
    ops::{self, Activation},
    quant::QuantMatMul,
    source::Source,
};

/// A linear layer `x @ W^T + b` over quantized or dense weights. Quantized weights go through
/// [`crate::quant`] (ggml's numerics); dense ones and unsupported types through candle.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: QuantMatMul,
    bias: Option<Tensor>,
}

impl Linear {
    pub fn load(src: &Source, name: &str, dev: &Device) -> crate::Result<Self> {
        let weight = QuantMatMul::from_arc(Arc::new(src.tensor(&format!("{name}.weight"), dev)?))?;
        let bias_name = format!("{name}.bias");
        let bias = if src.has_tensor(&bias_name) {
            Some(src.tensor(&bias_name, dev)?.dequantize(dev)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn from_qmatmul(weight: QMatMul) -> Self {
        Self {
            weight: QuantMatMul::from_qmatmul(weight).expect("a 2-d weight matrix"),
            bias: None,
        }
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
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub fn load(src: &Source, name: &str, eps: f32, dev: &Device) -> crate::Result<Self> {
        let weight = src
            .tensor(&format!("{name}.weight"), dev)?
            .dequantize(dev)?;
        Ok(Self { weight, eps })
    }

    /// Gemma's Hugging Face checkpoints store `w - 1`; GGUF files already hold `w`.
    pub fn plus_one(self) -> Result<Self> {
        Ok(Self {
            weight: (self.weight + 1.0)?,
            eps: self.eps,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimensions `i` and `i + d/2` (GPT-NeoX; Qwen2, Gemma, Hugging Face Llama).
    Neox,
    /// Dimensions `2i` and `2i + 1` (GGUF Llama, whose Q/K weights llama.cpp permuted).
    Interleaved,
}

/// Rotary embedding settings; a model may use several (Gemma 3: local and global layers).
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub style: RopeStyle,
    pub dim: usize,
    pub base: f32,
    /// Positions are multiplied by this (linear scaling is `1 / factor`).
    pub freq_scale: f32,
    /// Per-dimension divisors (Llama 3 `rope_freqs`), `dim / 2` long.
    pub freq_factors: Option<Vec<f32>>,
}

impl Rope {
    /// cos and sin tables `[seq, dim/2]` for positions `pos..pos+seq`, computed the way ggml
    /// does (f32 angle advanced by repeated multiplication) so long contexts match llama.cpp.
    pub fn tables(&self, pos: usize, seq: usize, dev: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.dim / 2;
        let theta_scale = self.base.powf(-2.0 / self.dim as f32);
        let mut cos = Vec::with_capacity(seq * half);
        let mut sin = Vec::with_capacity(seq * half);
        for p in pos..pos + seq {
            let mut theta = p as f32;
            for i in 0..half {
                let ff = self.freq_factors.as_ref().map_or(1.0, |f| f[i]);
                let t = self.freq_scale * (theta / ff);
                cos.push(t.cos());
                sin.push(t.sin());
                theta *= theta_scale;
            }
        }
        Ok((
            Tensor::from_vec(cos, (seq, half), dev)?,
            Tensor::from_vec(sin, (seq, half), dev)?,
        ))
    }

    fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        match self.style {
            RopeStyle::Neox => candle_nn::rotary_emb::rope(x, cos, sin),
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(x, cos, sin),
        }
    }
}

/// Per-forward values shared by all layers: rope tables per rope setting, masks per window.
pub struct StepContext {
    pub pos: usize,
    pub seq: usize,
    ropes: Vec<(Tensor, Tensor)>,
    masks: Vec<(Option<usize>, Option<Tensor>)>,
}

impl StepContext {
    pub fn new(
        ropes: &[Rope],
        windows: &[Option<usize>],
        pos: usize,
        seq: usize,
        dev: &Device,
    ) -> Result<Self> {
        let ropes = ropes
            .iter()
            .map(|r| r.tables(pos, seq, dev))
            .collect::<Result<_>>()?;
        let masks = windows
            .iter()
            .map(|&w| Ok((w, attention_mask(pos, seq, w, dev)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            pos,
            seq,
            ropes,
            masks,
        })
    }

    fn mask(&self, window: Option<usize>) -> Option<&Tensor> {
        self.masks
            .iter()
            .find(|(w, _)| *w == window)
            .and_then(|(_, m)| m.as_ref())
    }
}

/// Additive mask `[seq, pos+seq]`: query `i` (at absolute position `pos+i`) may see key `j` when
/// `j <= pos+i` and, with a sliding window, `pos+i - j < window`. None when nothing is masked.
pub fn attention_mask(
    pos: usize,
    seq: usize,
    window: Option<usize>,
    dev: &Device,
) -> Result<Option<Tensor>> {
    let total = pos + seq;
    let windowed = window.is_some_and(|w| total > w);
    if seq == 1 && !windowed {
        return Ok(None);
    }
    let mut mask = vec![0f32; seq * total];
    for i in 0..seq {
        let qi = pos + i;
        for j in 0..total {
            let hidden = j > qi || window.is_some_and(|w| j + w <= qi);
            if hidden {
                mask[i * total + j] = f32::NEG_INFINITY;
            }
        }
    }
    Ok(Some(Tensor::from_vec(mask, (seq, total), dev)?))
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub scale: f64,
    /// Index into the model's rope settings.
    pub rope: usize,
    pub window: Option<usize>,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        ropes: &[Rope],
        ctx: &StepContext,
        kv: &mut LayerKv,
    ) -> Result<Tensor> {
        let (b, seq, _) = x.dims3()?;
        let (nh, nkv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let [q, k, v] = Linear::forward_many([&self.q, &self.k, &self.v], x)?;
        let q = q.reshape((b, seq, nh, hd))?;
        let k = k.reshape((b, seq, nkv, hd))?;
        let v = v.reshape((b, seq, nkv, hd))?;
        let q = match &self.q_norm {
            Some(n) => n.forward(&q)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(&k)?,
            None => k,
        };
        let q = q.transpose(1, 2)?.contiguous()?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (cos, sin) = &ctx.ropes[self.rope];
        let rope = &ropes[self.rope];
        let q = rope.apply(&q, cos, sin)?;
        let k = rope.apply(&k, cos, sin)?;
        let (k, v) = kv.append(&k, &v)?;
        let total = k.dim(2)?;

        // Grouped-query attention without copying K/V: the query heads sharing a KV head are
        // stacked along the sequence axis.
        let rep = nh / nkv;
        let q = (q * self.scale)?.reshape((b, nkv, rep * seq, hd))?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match ctx.mask(self.window) {
            Some(mask) => scores
                .reshape((b, nkv, rep, seq, total))?
                .broadcast_add(mask)?
                .reshape((b, nkv, rep * seq, total))?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs
            .matmul(&v)?
            .reshape((b, nh, seq, hd))?
            .transpose(1, 2)?
            .reshape((b, seq, nh * hd))?;
        self.o.forward(&out)
    }
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
    pub act: Activation,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let [gate, up] = Linear::forward_many([&self.gate, &self.up], x)?;
        let h = ops::gated(self.act, &gate, &up)?;
        self.down.forward(&h)
    }
}

/// One pre-norm decoder block; Gemma adds norms after attention and after the MLP.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: RmsNorm,
    pub attn: Attention,
    pub post_attn_norm: Option<RmsNorm>,
    pub ffn_norm: RmsNorm,
    pub mlp: Mlp,
    pub post_ffn_norm: Option<RmsNorm>,
}

impl Block {
    pub fn forward(
        &self,
        x: &Tensor,
        ropes: &[Rope],
        ctx: &StepContext,
        kv: &mut LayerKv,
    ) -> Result<Tensor> {
        let h = self
            .attn
            .forward(&self.attn_norm.forward(x)?, ropes, ctx, kv)?;
        let h = match &self.post_attn_norm {
            Some(n) => n.forward(&h)?,
            None => h,
        };
        let x = (x + h)?;
        let h = self.mlp.forward(&self.ffn_norm.forward(&x)?)?;
        let h = match &self.post_ffn_norm {
            Some(n) => n.forward(&h)?,
            None => h,
        };
        x + h
    }
}

/// Token embedding of the first shard; rows are dequantized only for the ids looked up.
#[derive(Debug, Clone)]
pub struct Embedding {
    pub table: QMatMul,
    /// Gemma multiplies embeddings by sqrt(hidden).
    pub scale: Option<f64>,
}

impl Embedding {
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let x = self.table.embedding(ids)?;
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

/// Last position of `[batch, seq, hidden]`, keeping the sequence axis.
pub fn last_position(x: &Tensor) -> Result<Tensor> {
    let seq = x.dim(1)?;
    x.narrow(D::Minus2, seq - 1, 1)
}
