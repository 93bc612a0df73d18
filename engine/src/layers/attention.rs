//! Self-attention: q/k/v projections, optional per-head q/k RMS norms (Gemma 3, Qwen3), rope,
//! the f16 KV cache and ggml's flash-attention numerics (see [`crate::attention`]), and
//! gpt-oss's attention sinks.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::{Linear, RmsNorm, Rope, StepContext, Weights};
use crate::{
    attention::{attend, AttnShape, LayerKv},
    spec::Spec,
};

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
    /// A learned logit per query head in every softmax's denominator (gpt-oss `attn_sinks`).
    pub sinks: Option<Vec<f32>>,
}

impl Attention {
    /// `{p}.attn_{q,k,v,output}` of layer `il`, with the model's head shapes, scale, rope and
    /// window; no q/k norms.
    pub fn load(w: &Weights, p: &str, spec: &Spec, il: usize) -> crate::Result<Self> {
        let hp = &spec.hp;
        let (rope, window) = spec.layer_attn[il];
        Ok(Self {
            q: Linear::load(w, &format!("{p}.attn_q"))?,
            k: Linear::load(w, &format!("{p}.attn_k"))?,
            v: Linear::load(w, &format!("{p}.attn_v"))?,
            o: Linear::load(w, &format!("{p}.attn_output"))?,
            q_norm: None,
            k_norm: None,
            n_head: hp.n_head,
            n_kv_head: hp.n_kv_head,
            head_dim: hp.head_dim,
            scale: spec.attn_scale,
            rope,
            window,
            prescale_query: false,
            sinks: None,
        })
    }

    /// Adds the attention sinks `{p}.attn_sinks.weight` (one per query head).
    pub fn with_sinks(self, w: &Weights, p: &str) -> crate::Result<Self> {
        let name = format!("{p}.attn_sinks.weight");
        let sinks: Vec<f32> = w.dense(&name)?.flatten_all()?.to_vec1()?;
        if sinks.len() != self.n_head {
            return Err(crate::error::EngineError::Invalid(format!(
                "`{name}` has {} values for {} heads",
                sinks.len(),
                self.n_head
            )));
        }
        Ok(Self {
            sinks: Some(sinks),
            ..self
        })
    }

    /// Adds the per-head RMS norms of queries and keys (`{p}.attn_{q,k}_norm`).
    pub fn with_qk_norm(self, w: &Weights, p: &str, plus_one: bool) -> crate::Result<Self> {
        let norm = |n: &str| -> crate::Result<RmsNorm> {
            let n = RmsNorm::load(w, &format!("{p}.{n}"))?;
            Ok(if plus_one { n.plus_one()? } else { n })
        };
        Ok(Self {
            q_norm: Some(norm("attn_q_norm")?),
            k_norm: Some(norm("attn_k_norm")?),
            ..self
        })
    }

    /// Queries multiplied by the scale before attention rather than the scores (Gemma, as
    /// llama.cpp builds it).
    pub fn prescaled(self) -> Self {
        Self {
            prescale_query: true,
            ..self
        }
    }

    /// `x`: `[1, rows, hidden]`, the rows of the sequences of `ctx.segments` stacked in order;
    /// `kvs`: each sequence's cache of this layer. Projections run over all rows at once (each
    /// row's result independent of the others); each sequence appends to and attends over its
    /// own cache at its own positions.
    pub(super) fn forward(
        &self,
        x: &Tensor,
        ropes: &[Rope],
        ctx: &StepContext,
        kvs: &mut [&mut LayerKv],
    ) -> Result<Tensor> {
        let (b, rows, _) = x.dims3()?;
        if b != 1 || kvs.len() != ctx.segments.len() {
            candle_core::bail!(
                "attention takes one batch of stacked rows with a cache per sequence, got {b} batches, {} caches for {} sequences",
                kvs.len(),
                ctx.segments.len()
            )
        }
        let (nh, nkv, hd) = (self.n_head, self.n_kv_head, self.head_dim);
        let [q, k, v] = Linear::forward_many([&self.q, &self.k, &self.v], x)?;
        let q = q.reshape((b, rows, nh, hd))?;
        let k = k.reshape((b, rows, nkv, hd))?;
        let v = v.reshape((b, rows, nkv, hd))?;
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
        // Gemma scales queries before attention (as llama.cpp does); the others scale scores.
        let (q, scale) = if self.prescale_query {
            ((q * self.scale)?, 1.0)
        } else {
            (q, self.scale as f32)
        };
        if crate::dump::enabled() {
            crate::dump::tensor("Qcur", &q.transpose(1, 2)?);
        }
        let shape = AttnShape {
            n_head: nh,
            n_kv_head: nkv,
            head_dim: hd,
            scale,
            window: self.window,
            sinks: self.sinks.as_deref(),
        };
        // `[heads, rows, head_dim]` as flat vectors; a sequence's rows are a range of each head.
        let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
        let (q, k, v) = (flat(&q)?, flat(&k)?, flat(&v)?);
        let rows_of = |t: &[f32], heads: usize, start: usize, len: usize| -> Vec<f32> {
            (0..heads)
                .flat_map(|h| &t[(h * rows + start) * hd..(h * rows + start + len) * hd])
                .copied()
                .collect()
        };
        let mut start = 0;
        let mut work = Vec::with_capacity(kvs.len());
        for (seg, kv) in ctx.segments.iter().zip(kvs.iter_mut()) {
            kv.append(
                &rows_of(&k, nkv, start, seg.len),
                &rows_of(&v, nkv, start, seg.len),
                nkv,
                seg.len,
            );
            work.push((rows_of(&q, nh, start, seg.len), &**kv, *seg));
            start += seg.len;
        }
        let outs: Vec<Vec<f32>> = if work.len() > 1 {
            work.into_par_iter()
                .map(|(q, kv, seg)| attend(&q, kv, seg.pos, seg.len, shape))
                .collect()
        } else {
            work.into_iter()
                .map(|(q, kv, seg)| attend(&q, kv, seg.pos, seg.len, shape))
                .collect()
        };
        let out = Tensor::from_vec(outs.concat(), (b, rows, nh * hd), x.device())?;
        crate::dump::tensor("kqv_out", &out);
        self.o.forward(&out)
    }
}
