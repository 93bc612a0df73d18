//! A mixture of experts (Mixtral, Qwen3-MoE, gpt-oss) in the order ggml's `build_moe_ffn`
//! computes it: router logits (plus the router's bias), softmax over every expert, the top k by
//! probability (highest first), their probabilities normalised to sum 1 (clamped as ggml does),
//! each selected expert's gated MLP (with its biases) scaled by its weight, and the experts'
//! outputs added in that order. gpt-oss takes the top k of the logits and a softmax over those
//! k instead ([`Gating::SoftmaxWeight`]).
//!
//! Only the selected experts' weights are read: the tokens of a batch are grouped by expert and
//! each expert multiplies its group at once.

use candle_core::{Result, Tensor};

use super::{Linear, Mlp, Weights};
use crate::ggml_vec;
use crate::ops::Activation;

/// The router's settings, from the model's metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeSpec {
    pub n_expert: usize,
    /// Experts used per token (top k).
    pub n_used: usize,
    /// Divide the selected probabilities by their sum (Mixtral; Qwen3-MoE's `norm_topk_prob`).
    pub norm_weights: bool,
    /// Multiplies the weights when not 0 or 1 (`expert_weights_scale`).
    pub scale: f32,
    pub gating: Gating,
}

/// How router logits become expert weights (llama.cpp's `llama_expert_gating_func_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gating {
    /// Softmax over every expert, then the top k of the probabilities (Mixtral, Qwen3-MoE).
    Softmax,
    /// The top k of the logits, then a softmax over those k (gpt-oss).
    SoftmaxWeight,
}

#[derive(Debug, Clone)]
pub struct MoeMlp {
    /// `ffn_gate_inp`: `[n_expert, hidden]`.
    router: Linear,
    experts: Vec<Mlp>,
    spec: MoeSpec,
}

impl MoeMlp {
    /// `{p}.ffn_gate_inp` and the experts' `{p}.ffn_{gate,up,down}_exps` (or per-expert
    /// `{p}.ffn_{gate,up,down}.{e}`).
    pub fn load(w: &Weights, p: &str, spec: &MoeSpec, act: Activation) -> crate::Result<Self> {
        let n = spec.n_expert;
        let part = |name: &str| {
            w.experts(
                &format!("{p}.ffn_{name}_exps"),
                |e| format!("{p}.ffn_{name}.{e}"),
                n,
            )
        };
        // Per-expert biases (gpt-oss): `{p}.ffn_{name}_exps.bias`, one row per expert.
        let bias = |name: &str| -> crate::Result<Vec<Option<Tensor>>> {
            let b = format!("{p}.ffn_{name}_exps.bias");
            if !w.has(&b) {
                return Ok(vec![None; n]);
            }
            let t = w.dense(&b)?;
            (0..n)
                .map(|e| Ok(Some(t.get(e)?.contiguous()?)))
                .collect::<crate::Result<_>>()
        };
        let (gate, up, down) = (part("gate")?, part("up")?, part("down")?);
        let (gate_b, up_b, down_b) = (bias("gate")?, bias("up")?, bias("down")?);
        let experts = gate
            .into_iter()
            .zip(up)
            .zip(down)
            .enumerate()
            .map(|(e, ((gate, up), down))| Mlp {
                gate: Linear::with_bias(gate, gate_b[e].clone()),
                up: Linear::with_bias(up, up_b[e].clone()),
                down: Linear::with_bias(down, down_b[e].clone()),
                act,
            })
            .collect();
        Ok(Self {
            router: Linear::load(w, &format!("{p}.ffn_gate_inp"))?,
            experts,
            spec: spec.clone(),
        })
    }

    /// Bytes of every expert's weights and the router's.
    pub fn weight_bytes(&self) -> u64 {
        self.router.weight_bytes() + self.experts.iter().map(Mlp::weight_bytes).sum::<u64>()
    }

    /// For each token of `logits` (`[tokens, n_expert]`), the selected experts, highest
    /// probability first, and their weights.
    pub fn route(&self, logits: &[f32]) -> Vec<Vec<(usize, f32)>> {
        logits
            .chunks(self.spec.n_expert)
            .map(|row| route_one(row, &self.spec))
            .collect()
    }

    /// `x`: `[1, seq, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let hidden = *dims.last().expect("rank 3");
        let x2 = x.reshape(((), hidden))?.contiguous()?;
        let tokens = x2.dim(0)?;
        let logits: Vec<f32> = self.router.forward(&x2)?.flatten_all()?.to_vec1()?;
        let routes = self.route(&logits);
        if crate::dump::enabled() {
            let t = Tensor::from_vec(logits, (tokens, self.spec.n_expert), x.device())?;
            crate::dump::tensor("ffn_moe_logits", &t);
        }
        // The tokens of each expert, with the slot the expert has in each token's selection.
        let mut groups: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.spec.n_expert];
        for (t, sel) in routes.iter().enumerate() {
            for (slot, &(e, _)) in sel.iter().enumerate() {
                groups[e].push((t, slot));
            }
        }
        let n_used = self.spec.n_used;
        // Each token's expert outputs by slot, already weighted.
        let mut slots = vec![Vec::new(); tokens * n_used];
        for (e, members) in groups.iter().enumerate() {
            if members.is_empty() {
                continue;
            }
            let idx: Vec<u32> = members.iter().map(|&(t, _)| t as u32).collect();
            let idx = Tensor::new(idx.as_slice(), x.device())?;
            let rows = x2.index_select(&idx, 0)?;
            let y: Vec<f32> = self.experts[e].forward(&rows)?.flatten_all()?.to_vec1()?;
            for (r, &(t, slot)) in members.iter().enumerate() {
                let w = routes[t][slot].1;
                slots[t * n_used + slot] = y[r * hidden..(r + 1) * hidden]
                    .iter()
                    .map(|&v| v * w)
                    .collect();
            }
        }
        // ggml adds the weighted outputs in slot order: ((e0 + e1) + e2) + ...
        let mut out = vec![0f32; tokens * hidden];
        for t in 0..tokens {
            let dst = &mut out[t * hidden..(t + 1) * hidden];
            let sel = &slots[t * n_used..(t + 1) * n_used];
            dst.copy_from_slice(&sel[0]);
            for s in &sel[1..] {
                dst.iter_mut().zip(s).for_each(|(d, v)| *d += v);
            }
        }
        Tensor::from_vec(out, dims, x.device())
    }
}

/// One token's experts and weights from its router logits.
fn route_one(logits: &[f32], spec: &MoeSpec) -> Vec<(usize, f32)> {
    let probs = match spec.gating {
        Gating::Softmax => softmax_ggml(logits),
        Gating::SoftmaxWeight => logits.to_vec(),
    };
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Descending by probability (ggml_argsort_top_k); equal ones by index.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let mut sel: Vec<(usize, f32)> = order[..spec.n_used]
        .iter()
        .map(|&e| (e, probs[e]))
        .collect();
    if spec.gating == Gating::SoftmaxWeight {
        let w: Vec<f32> = sel.iter().map(|s| s.1).collect();
        for (s, p) in sel.iter_mut().zip(softmax_ggml(&w)) {
            s.1 = p;
        }
    }
    if spec.norm_weights {
        // ggml_sum_rows (in double), clamped to f16's smallest normal, then a division.
        let sum = sel.iter().map(|&(_, w)| w as f64).sum::<f64>() as f32;
        let sum = sum.max(6.103_515_6e-5);
        sel.iter_mut().for_each(|(_, w)| *w /= sum);
    }
    if spec.scale != 0.0 && spec.scale != 1.0 {
        sel.iter_mut().for_each(|(_, w)| *w *= spec.scale);
    }
    sel
}

/// ggml's `soft_max` of one row on this CPU: exponentials of `x - max` in vector-register blocks
/// (ggml's vector `expf` in the form of [`ggml_vec::path`]), each block reduced as its horizontal
/// add does and the blocks summed in double, the tail with libm's `expf`, then every value
/// multiplied by `1 / sum`.
fn softmax_ggml(x: &[f32]) -> Vec<f32> {
    let path = ggml_vec::path();
    let lanes = path.lanes();
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let body = x.len() / lanes * lanes;
    let mut y: Vec<f32> = x.iter().map(|&v| ggml_vec::expf(path, v - max)).collect();
    let mut sum = ggml_vec::softmax_sum(path, &y[..body]);
    for (o, &v) in y[body..].iter_mut().zip(&x[body..]) {
        *o = (v - max).exp();
        sum += *o as f64;
    }
    let inv = (1.0 / sum) as f32;
    y.iter_mut().for_each(|v| *v *= inv);
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n_expert: usize, n_used: usize, norm_weights: bool) -> MoeSpec {
        MoeSpec {
            n_expert,
            n_used,
            norm_weights,
            scale: 0.0,
            gating: Gating::Softmax,
        }
    }

    #[test]
    fn softmax_sums_to_one_and_follows_libm_closely() {
        for n in [1, 4, 8, 17, 64, 128] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7).collect();
            let y = softmax_ggml(&x);
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f64 = x.iter().map(|&v| ((v - max) as f64).exp()).sum();
            for (a, &v) in y.iter().zip(&x) {
                let want = ((v - max) as f64).exp() / z;
                assert!((*a as f64 - want).abs() < 1e-6, "n {n}: {a} vs {want}");
            }
            let s: f32 = y.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "{s}");
        }
    }

    #[test]
    fn routes_pick_the_top_k_highest_first_and_normalise() {
        let logits = [0.1f32, 2.0, -1.0, 1.5, 0.0, 3.0];
        let sel = route_one(&logits, &spec(6, 2, true));
        assert_eq!(sel.iter().map(|s| s.0).collect::<Vec<_>>(), vec![5, 1]);
        assert!((sel[0].1 + sel[1].1 - 1.0).abs() < 1e-6);
        // Normalised top-k of a softmax = a softmax over the top k's logits.
        let want = 1.0 / (1.0 + (2.0f32 - 3.0).exp());
        assert!((sel[0].1 - want).abs() < 1e-6, "{} vs {want}", sel[0].1);
        // Without normalisation the weights are the probabilities over all experts.
        let raw = route_one(&logits, &spec(6, 2, false));
        let p = softmax_ggml(&logits);
        assert_eq!(raw, vec![(5, p[5]), (1, p[1])]);
        // gpt-oss: the top k of the logits, weighted by a softmax over those k only.
        let oai = MoeSpec {
            gating: Gating::SoftmaxWeight,
            ..spec(6, 3, false)
        };
        let sel = route_one(&logits, &oai);
        assert_eq!(sel.iter().map(|s| s.0).collect::<Vec<_>>(), vec![5, 1, 3]);
        let z = (3.0f64).exp() + (2.0f64).exp() + (1.5f64).exp();
        for (&(e, w), l) in sel.iter().zip([3.0f64, 2.0, 1.5]) {
            assert!((w as f64 - l.exp() / z).abs() < 1e-6, "expert {e}: {w}");
        }
    }
}
