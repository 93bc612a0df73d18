//! Attention as llama.cpp computes it on CPU by default — an f16 KV cache and its flash-attention
//! kernel — so greedy output matches llama.cpp token for token: queries, keys and values rounded
//! to f16, each key dot product accumulated in ggml's `vec_dot_f16` order, an online softmax in f32,
//! and the value accumulator kept in f16 (rounded after every fused multiply-add). Batches of 64
//! queries or more go through ggml's tiled kernel instead ([`crate::attention_tiled`]).

use rayon::prelude::*;

/// `x` rounded to the nearest f16 (ties to even), as an f32: what an f16 store and load do.
/// Branch-free so loops over it vectorize.
#[inline(always)]
pub fn round_f16(x: f32) -> f32 {
    let b = x.to_bits();
    let abs = b & 0x7fff_ffff;
    // Normal f16 range: keep 10 mantissa bits, rounding the 13 dropped ones to nearest even.
    let normal = f32::from_bits(b.wrapping_add(0x0fff + ((b >> 13) & 1)) & 0xffff_e000);
    // Below 2^-14 f16 is subnormal, with a fixed step of 2^-24: adding 0.75 (whose ulp is
    // 2^-24) makes the FPU round to that step; a value that rounds to zero keeps its sign,
    // as F16C's and `fcvtn`'s conversions keep it.
    let subnormal = ((x + 0.75) - 0.75).copysign(x);
    let r = if abs < 0x3880_0000 { subnormal } else { normal };
    // Past f16's largest finite value everything rounds to infinity (NaN stays NaN).
    if abs > 0x7f80_0000 {
        x
    } else if abs >= 0x477f_f000 {
        f32::from_bits((b & 0x8000_0000) | 0x7f80_0000)
    } else {
        r
    }
}

/// `acc = round_f16(acc * s)` element-wise.
#[cfg_attr(target_arch = "aarch64", allow(unreachable_code))]
fn scale_f16(acc: &mut [f32], s: f32) {
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: the CPU has the features.
        return unsafe { x86::scale_f16(acc, s) };
    }
    #[cfg(target_arch = "aarch64")]
    return crate::quant::arm_f16::scale_f16(acc, s, round_f16);
    acc.iter_mut().for_each(|a| *a = round_f16(*a * s));
}

/// `acc = round_f16(v * s + acc)` element-wise, with one rounding for `v * s + acc`.
#[cfg_attr(target_arch = "aarch64", allow(unreachable_code))]
fn axpy_f16(acc: &mut [f32], v: &[f32], s: f32) {
    assert_eq!(acc.len(), v.len());
    #[cfg(target_arch = "x86_64")]
    if f16c() {
        // SAFETY: the CPU has the features; the lengths match.
        return unsafe { x86::axpy_f16(acc, v, s) };
    }
    #[cfg(target_arch = "aarch64")]
    return crate::quant::arm_f16::axpy_f16(acc, v, s, round_f16);
    for (a, &v) in acc.iter_mut().zip(v) {
        *a = round_f16(v.mul_add(s, *a));
    }
}

#[cfg(target_arch = "x86_64")]
fn f16c() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

/// The f16 rounding done by the CPU's conversions (F16C, round to nearest even), eight lanes
/// at a time; the tails use [`round_f16`].
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::round_f16;

    #[inline(always)]
    unsafe fn round8(x: __m256) -> __m256 {
        _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(x))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scale_f16(acc: &mut [f32], s: f32) {
        let n8 = acc.len() & !7;
        let sv = _mm256_set1_ps(s);
        let p = acc.as_mut_ptr();
        for i in (0..n8).step_by(8) {
            _mm256_storeu_ps(
                p.add(i),
                round8(_mm256_mul_ps(_mm256_loadu_ps(p.add(i)), sv)),
            );
        }
        acc[n8..].iter_mut().for_each(|a| *a = round_f16(*a * s));
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_f16(acc: &mut [f32], v: &[f32], s: f32) {
        let n8 = acc.len() & !7;
        let sv = _mm256_set1_ps(s);
        let (p, q) = (acc.as_mut_ptr(), v.as_ptr());
        for i in (0..n8).step_by(8) {
            let x = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i)), sv, _mm256_loadu_ps(p.add(i)));
            _mm256_storeu_ps(p.add(i), round8(x));
        }
        for (a, &v) in acc[n8..].iter_mut().zip(&v[n8..]) {
            *a = round_f16(v.mul_add(s, *a));
        }
    }
}

/// Rows a layer's cache grows by at a time.
const GROW_ROWS: usize = 256;

/// Keys and values of one layer for one request: per KV head, `len` rows of `head_dim` values,
/// each rounded to f16 (llama.cpp's default cache type) and kept as f32 so attention reads them
/// without conversions.
#[derive(Debug, Clone, Default)]
pub struct LayerKv {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl LayerKv {
    /// Appends `seq` positions; `k` and `v` are `[kv_heads, seq, head_dim]` f32.
    pub fn append(&mut self, k: &[f32], v: &[f32], kv_heads: usize, seq: usize) {
        if self.k.len() != kv_heads {
            self.k = vec![Vec::new(); kv_heads];
            self.v = vec![Vec::new(); kv_heads];
        }
        let per_head = k.len() / kv_heads.max(1);
        for h in 0..kv_heads {
            // Grow by whole steps of rows rather than doubling, so the memory held stays close
            // to what the KV budget counts.
            for c in [&mut self.k[h], &mut self.v[h]] {
                if c.capacity() - c.len() < per_head {
                    c.reserve_exact(per_head.max(GROW_ROWS * per_head / seq.max(1)));
                }
            }
            let rows = h * per_head..(h + 1) * per_head;
            self.k[h].extend(k[rows.clone()].iter().map(|&x| round_f16(x)));
            self.v[h].extend(v[rows].iter().map(|&x| round_f16(x)));
        }
        self.len += seq;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Drops every position from `len` on (speculative tokens that were rejected). The memory
    /// stays reserved for the positions that replace them.
    pub fn truncate(&mut self, len: usize) {
        if len >= self.len {
            return;
        }
        for c in self.k.iter_mut().chain(self.v.iter_mut()) {
            let row = c.len() / self.len;
            c.truncate(len * row);
        }
        self.len = len;
    }

    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|h| h.capacity() * 4).sum()
    }
}

/// Shapes and settings of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape<'a> {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Multiplies each query-key dot product.
    pub scale: f32,
    /// Sliding window: a query at position p sees keys at positions > p - window.
    pub window: Option<usize>,
    /// Attention sinks (gpt-oss): per query head a learned logit that joins the softmax's
    /// denominator and attends to nothing.
    pub sinks: Option<&'a [f32]>,
}

/// ggml's sink step after the keys (`S = S*ms + vs`, the accumulator rescaled in f32 when the
/// sink is the new maximum): folds the sink's logit into the softmax sum of one row.
#[inline]
pub(crate) fn add_sink(sink: f32, max: f32, sum: f32, acc: &mut [f32]) -> f32 {
    let (mut ms, mut vs) = (1f32, 1f32);
    if sink > max {
        ms = (max - sink).exp();
        acc.iter_mut().for_each(|a| *a *= ms);
    } else {
        vs = (sink - max).exp();
    }
    // ggml's C++ compiles `S*ms + vs` to a fused multiply-add.
    sum.mul_add(ms, vs)
}

/// Causal attention of `seq` new queries (at positions `pos..pos+seq`, `q` as
/// `[n_head, seq, head_dim]`) over everything in `kv`. Returns `[seq, n_head * head_dim]`.
pub fn attend(q: &[f32], kv: &LayerKv, pos: usize, seq: usize, s: AttnShape<'_>) -> Vec<f32> {
    // Batches of 64+ queries take ggml's tiled kernel, which has numerics of its own.
    if seq >= crate::attention_tiled::Q_TILE {
        return crate::attention_tiled::attend(q, &kv.k, &kv.v, pos, seq, s);
    }
    let (nh, hd) = (s.n_head, s.head_dim);
    let rep = nh / s.n_kv_head;
    let mut out = vec![0f32; seq * nh * hd];
    let row = |(r, dst): (usize, &mut [f32])| {
        let (i, h) = (r / nh, r % nh);
        let qi = pos + i;
        let kvh = h / rep;
        let (keys, values) = (&kv.k[kvh], &kv.v[kvh]);
        // Q is rounded to f16 (ggml converts it to the keys' type for the dot product).
        let qf: Vec<f32> = q[(h * seq + i) * hd..(h * seq + i + 1) * hd]
            .iter()
            .map(|&x| round_f16(x))
            .collect();
        // The value accumulator holds f16 values (ggml keeps it in f16).
        let acc = dst;
        acc.fill(0.0);
        let (mut sum, mut max) = (0f32, f32::NEG_INFINITY);
        let first = s.window.map_or(0, |w| (qi + 1).saturating_sub(w));
        for j in first..=qi {
            let score = crate::ggml_vec::dot_f16(&keys[j * hd..(j + 1) * hd], &qf) * s.scale;
            let (mut ms, mut vs) = (1f32, 1f32);
            if score > max {
                ms = (max - score).exp();
                max = score;
                scale_f16(acc, ms);
            } else {
                vs = (score - max).exp();
            }
            axpy_f16(acc, &values[j * hd..(j + 1) * hd], vs);
            sum = sum.mul_add(ms, vs);
        }
        if let Some(sinks) = s.sinks {
            sum = add_sink(sinks[h], max, sum, acc);
        }
        let inv = if sum == 0.0 { 0.0 } else { 1.0 / sum };
        acc.iter_mut().for_each(|x| *x *= inv);
    };
    // Rows are independent; parallelize when there is enough work.
    let work = seq * nh * (pos + seq) * hd;
    if work > 1 << 16 {
        out.par_chunks_mut(hd).enumerate().for_each(row);
    } else {
        out.chunks_mut(hd).enumerate().for_each(row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain f64 softmax attention over the same f16-rounded inputs.
    fn reference(q: &[f32], kv: &LayerKv, pos: usize, seq: usize, s: AttnShape<'_>) -> Vec<f32> {
        let (nh, hd) = (s.n_head, s.head_dim);
        let rep = nh / s.n_kv_head;
        let mut out = vec![0f32; seq * nh * hd];
        for i in 0..seq {
            for h in 0..nh {
                let qi = pos + i;
                let first = s.window.map_or(0, |w| (qi + 1).saturating_sub(w));
                let qv: Vec<f64> = q[(h * seq + i) * hd..][..hd]
                    .iter()
                    .map(|&x| round_f16(x) as f64)
                    .collect();
                let scores: Vec<f64> = (first..=qi)
                    .map(|j| {
                        let k = &kv.k[h / rep][j * hd..][..hd];
                        k.iter().zip(&qv).map(|(a, b)| *a as f64 * b).sum::<f64>() * s.scale as f64
                    })
                    .collect();
                let sink = s.sinks.map(|v| v[h] as f64);
                let m = scores
                    .iter()
                    .cloned()
                    .chain(sink)
                    .fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = scores.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = w.iter().sum::<f64>() + sink.map_or(0.0, |k| (k - m).exp());
                for d in 0..hd {
                    let v: f64 = (first..=qi)
                        .zip(&w)
                        .map(|(j, wj)| kv.v[h / rep][j * hd + d] as f64 * wj)
                        .sum();
                    out[(i * nh + h) * hd + d] = (v / z) as f32;
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn round_f16_equals_a_real_f16_round_trip() {
        let mut x = 0x1234_5678u32;
        let check = |v: f32| {
            let want = half::f16::from_f32(v).to_f32();
            let got = round_f16(v);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{v:e}: {got:e} vs {want:e}"
            );
        };
        for _ in 0..2_000_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Bias towards f16's range, subnormals and ties.
            let v = f32::from_bits(x);
            check(v);
            check(f32::from_bits((x & 0x81ff_ffff) | 0x3000_0000));
            check(f32::from_bits((x & 0x807f_e000) | 0x3880_1000));
        }
        for v in [
            0.0,
            -0.0,
            65504.0,
            65519.0,
            65520.0,
            1e-8,
            6.1e-5,
            5.96e-8,
            2.98e-8,
            1.0 + 1.0 / 2048.0,
        ] {
            check(v);
            check(-v);
        }
    }

    #[test]
    fn vector_helpers_round_like_round_f16() {
        let v = values(203, 4);
        let mut a = values(203, 5);
        let (mut a2, s) = (a.clone(), 0.3712);
        axpy_f16(&mut a, &v, s);
        scale_f16(&mut a, 1.7);
        for (x, &y) in a2.iter_mut().zip(&v) {
            *x = round_f16(round_f16(y.mul_add(s, *x)) * 1.7);
        }
        assert_eq!(a, a2);
    }

    #[test]
    fn matches_plain_attention_within_f16_accumulation_error() {
        // Sinks below and above every score (the second rescales the accumulator).
        let sinks = [0.5f32, -3.0, 40.0, 1.0];
        for (window, sinks) in [(None, None), (Some(3), None), (None, Some(&sinks[..]))] {
            let s = AttnShape {
                n_head: 4,
                n_kv_head: 2,
                head_dim: 64,
                scale: 0.125,
                window,
                sinks,
            };
            let mut kv = LayerKv::default();
            // A 5-token prompt, then two single-token steps.
            let mut pos = 0;
            for (seq, seed) in [(5, 1), (1, 2), (1, 3)] {
                let (k, v) = (values(2 * seq * 64, seed), values(2 * seq * 64, seed + 10));
                kv.append(&k, &v, 2, seq);
                let q = values(4 * seq * 64, seed + 20);
                let got = attend(&q, &kv, pos, seq, s);
                let want = reference(&q, &kv, pos, seq, s);
                for (a, b) in got.iter().zip(&want) {
                    assert!((a - b).abs() < 2e-3, "{a} vs {b} (window {window:?})");
                }
                pos += seq;
            }
            assert_eq!(kv.len(), 7);
        }
    }
}
