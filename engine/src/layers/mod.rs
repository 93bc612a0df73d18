//! The pieces every decoder-only transformer here is built from. Architectures differ only in
//! which pieces they use and how they read them (see `models/`).

use std::sync::Arc;

use candle_core::{quantized::QMatMul, DType, Device, Result, Tensor, D};

use crate::{
    attention::{attend, AttnShape, LayerKv},
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

    /// Rotates `[batch, heads, seq, dim]` by the tables of [`Rope::tables`] (dimensions past
    /// `self.dim` are left as they are).
    fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let dims = x.dims4()?;
        let (seq, dim) = (dims.2, dims.3);
        let mut v: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let (cos, sin): (Vec<f32>, Vec<f32>) =
            (cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?);
        let half = self.dim / 2;
        for (r, row) in v.chunks_mut(dim).enumerate() {
            let t = r % seq;
            for i in 0..half {
                let (c, s) = (cos[t * half + i], sin[t * half + i]);
                let (a, b) = match self.style {
                    RopeStyle::Neox => (i, i + half),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (row[a], row[b]);
                // ggml's C compiles `x0*cos - x1*sin` with the first product fused into an fma;
                // the same operations here keep keys and queries bit-identical to llama.cpp's.
                row[a] = x0.mul_add(c, -(x1 * s));
                row[b] = x0.mul_add(s, x1 * c);
            }
        }
        Tensor::from_vec(v, dims, x.device())
    }
}

/// Per-forward values shared by all layers: the rope tables of each rope setting.
pub struct StepContext {
    pub pos: usize,
    pub seq: usize,
    ropes: Vec<(Tensor, Tensor)>,
}

impl StepContext {
    pub fn new(ropes: &[Rope], pos: usize, seq: usize, dev: &Device) -> Result<Self> {
        let ropes = ropes
            .iter()
            .map(|r| r.tables(pos, seq, dev))
            .collect::<Result<_>>()?;
        Ok(Self { pos, seq, ropes })
    }
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
    /// Multiply queries by `scale` before attention instead of scaling the scores (Gemma).
    pub prescale_query: bool,
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
        if b != 1 {
            candle_core::bail!("attention runs one sequence at a time, got a batch of {b}")
        }
        // Gemma scales queries before attention (as llama.cpp does); the others scale scores.
        let (q, scale) = if self.prescale_query {
            ((q * self.scale)?, 1.0)
        } else {
            (q, self.scale as f32)
        };
        let flat = |t: Tensor| t.flatten_all()?.to_vec1::<f32>();
        kv.append(&flat(k)?, &flat(v)?, nkv, seq);
        let shape = AttnShape {
            n_head: nh,
            n_kv_head: nkv,
            head_dim: hd,
            scale,
            window: self.window,
        };
        if crate::dump::enabled() {
            crate::dump::tensor("Qcur", &q.transpose(1, 2)?);
        }
        let out = attend(&flat(q)?, kv, ctx.pos, seq, shape);
        let out = Tensor::from_vec(out, (b, seq, nh * hd), x.device())?;
        crate::dump::tensor("kqv_out", &out);
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
        let normed = self.attn_norm.forward(x)?;
        crate::dump::tensor("attn_norm", &normed);
        let h = self.attn.forward(&normed, ropes, ctx, kv)?;
        let h = match &self.post_attn_norm {
            Some(n) => n.forward(&h)?,
            None => h,
        };
        let x = (x + h)?;
        crate::dump::tensor("ffn_inp", &x);
        let h = self.mlp.forward(&self.ffn_norm.forward(&x)?)?;
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
