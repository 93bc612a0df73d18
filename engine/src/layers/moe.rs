//! A mixture of experts (Mixtral, Qwen3-MoE) in the order ggml's `build_moe_ffn` computes it:
//! router logits, softmax over every expert, the top k by probability (highest first), their
//! probabilities normalised to sum 1 (clamped as ggml does), each selected expert's SwiGLU MLP
//! scaled by its weight, and the experts' outputs added in that order.
//!
//! Only the selected experts' weights are read: the tokens of a batch are grouped by expert and
//! each expert multiplies its group at once.

use candle_core::{Result, Tensor};

use super::{Linear, Mlp, Weights};
use crate::ops::{self, Activation};

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
        let (gate, up, down) = (part("gate")?, part("up")?, part("down")?);
        let experts = gate
            .into_iter()
            .zip(up)
            .zip(down)
            .map(|((gate, up), down)| Mlp {
                gate: Linear::new(gate),
                up: Linear::new(up),
                down: Linear::new(down),
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
    let probs = softmax_ggml(logits);
    let mut order: Vec<usize> = (0..probs.len()).collect();
    // Descending by probability (ggml_argsort_top_k); equal ones by index.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let mut sel: Vec<(usize, f32)> = order[..spec.n_used]
        .iter()
        .map(|&e| (e, probs[e]))
        .collect();
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

/// ggml's `soft_max` of one row on this CPU: exponentials of `x - max` in SIMD-register blocks
/// (ggml's vector `expf`), each block's sum reduced pairwise and added in double, the tail with
/// libm's `expf`, then every value multiplied by `1 / sum`.
fn softmax_ggml(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lanes = simd_lanes();
    let mut y = vec![0f32; x.len()];
    let mut sum = 0f64;
    let body = x.len() / lanes * lanes;
    for (ys, xs) in y[..body].chunks_mut(lanes).zip(x.chunks(lanes)) {
        for (o, &v) in ys.iter_mut().zip(xs) {
            *o = if lanes == 16 {
                ops::expf_ggml(v - max)
            } else {
                expf_ggml_256(v - max)
            };
        }
        sum += hsum_halves(ys) as f64;
    }
    for (o, &v) in y[body..].iter_mut().zip(&x[body..]) {
        *o = (v - max).exp();
        sum += *o as f64;
    }
    let inv = (1.0 / sum) as f32;
    y.iter_mut().for_each(|v| *v *= inv);
    y
}

/// The register width ggml's soft_max uses on this CPU, in f32 lanes.
fn simd_lanes() -> usize {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") {
            return 16;
        }
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return 8;
        }
        4
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        4
    }
}

/// A register's lanes summed as the horizontal adds do: halves added until one is left.
fn hsum_halves(v: &[f32]) -> f32 {
    let mut v = v.to_vec();
    while v.len() > 1 {
        let h = v.len() / 2;
        v = (0..h).map(|i| v[i] + v[i + h]).collect();
    }
    v[0]
}

/// ggml's 256-bit (and 128-bit) `ggml_v_expf`: the same reduction as the 512-bit one
/// ([`ops::expf_ggml`]) but the polynomial without its constant term, applied as
/// `k + j * k`. Outside the normal range (|n| > 126, values below 1e-38 here) it defers to the
/// 512-bit form.
fn expf_ggml_256(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0
    let n = z - r;
    if n.abs() > 126.0 {
        return ops::expf_ggml(x);
    }
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3f31_7200), x), // 0x1.62e4p-1
    );
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010) // 0x1.0e4020p-7
        .mul_add(b, f32::from_bits(0x3d2b_9f17)) // 0x1.573e2ep-5
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6) * b); // 0x1.ffffecp-1
    j.mul_add(k, k)
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
    fn vector_expf_is_close_to_libm() {
        // Down to f32's smallest normal results (subnormal ones lose relative precision).
        for i in -2900..1 {
            let x = i as f32 * 0.03;
            let (a, b) = (expf_ggml_256(x), x.exp());
            assert!((a - b).abs() <= 4.0 * f32::EPSILON * b, "{x}: {a} vs {b}");
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
    }
}
