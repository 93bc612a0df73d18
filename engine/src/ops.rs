//! Element-wise ops with ggml's exact numerics, so greedy output matches llama.cpp token for
//! token: RMS norm summed in f64, GELU through ggml's f16 lookup table, and fused gated
//! activations (`act(gate) * up` in one pass).

use std::sync::OnceLock;

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

/// Rows at or above this many elements are processed in parallel.
const PAR_MIN: usize = 1 << 14;

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("{what}: expected f32, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{what}: input must be contiguous"),
    }
}

/// `x / sqrt(mean(x^2) + eps) * weight` over the last dimension.
struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "ggml-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "rms_norm")?;
        let w = contiguous_f32(s2, l2, "rms_norm weight")?;
        let n = *l1.dims().last().unwrap_or(&0);
        if w.len() != n || n == 0 {
            candle_core::bail!("rms_norm: weight of {} for rows of {n}", w.len())
        }
        let mut out = vec![0f32; x.len()];
        let row = |(src, dst): (&[f32], &mut [f32])| {
            // Squares in f32, summed in f64, as ggml does.
            let sum: f64 = src.iter().map(|&v| (v * v) as f64).sum();
            let mean = (sum / n as f64) as f32;
            let scale = 1.0 / (mean + self.eps).sqrt();
            for ((d, &s), &w) in dst.iter_mut().zip(src).zip(w) {
                *d = (s * scale) * w;
            }
        };
        if x.len() >= PAR_MIN {
            x.par_chunks(n).zip(out.par_chunks_mut(n)).for_each(row);
        } else {
            x.chunks(n).zip(out.chunks_mut(n)).for_each(row);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&weight.contiguous()?, &RmsNorm { eps })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU, as in Llama and Qwen2 (SwiGLU).
    Silu,
    /// GELU with the tanh approximation, as in Gemma (GeGLU).
    GeluTanh,
}

fn gelu_f32(x: f32) -> f32 {
    const GELU_COEF_A: f32 = 0.044715;
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + GELU_COEF_A * x * x)).tanh())
}

/// ggml evaluates GELU through a table indexed by the input rounded to f16, holding f16 results.
fn gelu_table() -> &'static [f16] {
    static TABLE: OnceLock<Vec<f16>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..=u16::MAX)
            .map(|bits| f16::from_f32(gelu_f32(f16::from_bits(bits).to_f32())))
            .collect()
    })
}

fn gelu_ggml(table: &[f16], x: f32) -> f32 {
    if x <= -10.0 {
        0.0
    } else if x >= 10.0 {
        x
    } else {
        table[f16::from_f32(x).to_bits() as usize].to_f32()
    }
}

/// ggml's vectorised `expf` (`ggml_v_expf`, from ARM's optimized routines): a degree-5
/// polynomial on the reduced argument, scaled by 2^n. Not libm's `expf`: SiLU must use this one
/// to match llama.cpp bit for bit.
pub(crate) fn expf_ggml(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // log2(e)
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3f31_7200), x), // 0x1.62e4p-1
    );
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17))
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)),
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0)); // 0x1.ffffecp-1
                                                                  // j * 2^n, rounded once (as `_mm512_scalef_ps` does, subnormals included).
    let pow2 = f64::from_bits(((n as i64 + 1023) as u64) << 52); // exact: |n| <= 192
    (j as f64 * pow2) as f32
}

fn silu(x: f32) -> f32 {
    x / (1.0 + expf_ggml(0.0 - x))
}

/// `act(gate) * up` in one pass.
struct Gated(Activation);

impl CustomOp2 for Gated {
    fn name(&self) -> &'static str {
        "gated-activation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let gate = contiguous_f32(s1, l1, "gated activation")?;
        let up = contiguous_f32(s2, l2, "gated activation")?;
        if l1.shape() != l2.shape() {
            candle_core::bail!("gate {:?} and up {:?} differ", l1.shape(), l2.shape())
        }
        let mut out = vec![0f32; gate.len()];
        let act = self.0;
        let table = gelu_table();
        let run = |(o, (g, u)): (&mut [f32], (&[f32], &[f32]))| match act {
            Activation::Silu => {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = silu(g) * u;
                }
            }
            Activation::GeluTanh => {
                for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                    *o = gelu_ggml(table, g) * u;
                }
            }
        };
        const CHUNK: usize = 4096;
        if gate.len() >= PAR_MIN {
            out.par_chunks_mut(CHUNK)
                .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
                .for_each(run);
        } else {
            run((&mut out, (gate, up)));
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

pub fn gated(act: Activation, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?
        .apply_op2_no_bwd(&up.contiguous()?, &Gated(act))
}

/// ggml's `ggml_vec_dot_f16` (f16 inputs, here already widened to f32) on AVX-512: four 16-lane
/// fused multiply-add accumulators over 64-element steps, folded pairwise, then reduced the way
/// `_mm512_reduce_add_ps` does; a tail in f64.
pub fn dot_f16_lanes(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features.
        return unsafe { dot_f16_lanes_avx2(x, y) };
    }
    dot_f16_lanes_scalar(x, y)
}

fn dot_f16_lanes_scalar(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len();
    let np = n & !63;
    let mut acc = [[0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, a) in acc.iter_mut().enumerate() {
            let base = i + 16 * j;
            for (l, lane) in a.iter_mut().enumerate() {
                *lane = x[base + l].mul_add(y[base + l], *lane);
            }
        }
    }
    let [a0, a1, a2, a3] = acc;
    let a: [f32; 16] = std::array::from_fn(|l| (a0[l] + a2[l]) + (a1[l] + a3[l]));
    let t3: [f32; 8] = std::array::from_fn(|i| a[i + 8] + a[i]);
    let t6: [f32; 4] = std::array::from_fn(|i| t3[i + 4] + t3[i]);
    let (t8_0, t8_1) = (t6[0] + t6[2], t6[1] + t6[3]);
    let mut sum = (t8_0 + t8_1) as f64;
    for i in np..n {
        sum += (x[i] * y[i]) as f64;
    }
    sum as f32
}

/// [`dot_f16_lanes_scalar`] with each 16-lane accumulator as two 8-lane halves: every lane sees
/// the same operations, so the result is the same.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `x` and `y` must have the same length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f16_lanes_avx2(x: &[f32], y: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len();
    let np = n & !63;
    let (px, py) = (x.as_ptr(), y.as_ptr());
    // acc[2j] and acc[2j + 1]: lanes 0..8 and 8..16 of ggml's accumulator j.
    let mut acc = [_mm256_setzero_ps(); 8];
    for i in (0..np).step_by(64) {
        for (h, a) in acc.iter_mut().enumerate() {
            let o = i + 8 * h;
            *a = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(o)), _mm256_loadu_ps(py.add(o)), *a);
        }
    }
    let half = |h: usize| {
        _mm256_add_ps(
            _mm256_add_ps(acc[h], acc[4 + h]),
            _mm256_add_ps(acc[2 + h], acc[6 + h]),
        )
    };
    let t3 = _mm256_add_ps(half(1), half(0));
    let t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
    let mut t = [0f32; 4];
    _mm_storeu_ps(t.as_mut_ptr(), t6);
    let mut sum = ((t[0] + t[2]) + (t[1] + t[3])) as f64;
    for i in np..n {
        sum += (x[i] * y[i]) as f64;
    }
    sum as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn f16_dot_follows_ggml_lanes_and_handles_tails() {
        let v = |n: usize, seed: u32| -> Vec<f32> {
            (0..n)
                .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        let (x, y) = (v(200, 5), v(200, 6));
        let exact: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
        assert!((dot_f16_lanes(&x, &y) as f64 - exact).abs() < 1e-4);
        let tail = ((x[0] * y[0]) as f64 + (x[1] * y[1]) as f64 + (x[2] * y[2]) as f64) as f32;
        assert_eq!(dot_f16_lanes(&x[..3], &y[..3]), tail);
        for n in [0, 3, 64, 100, 128, 200, 256] {
            let (x, y) = (v(n, n as u32), v(n, 7 * n as u32 + 1));
            let want = dot_f16_lanes_scalar(&x, &y);
            assert_eq!(dot_f16_lanes(&x, &y).to_bits(), want.to_bits(), "n = {n}");
        }
    }

    #[test]
    fn ggml_expf_is_close_to_libm() {
        for i in -2000..2000 {
            let x = i as f32 * 0.04;
            let (a, b) = (expf_ggml(x), x.exp());
            assert!((a - b).abs() <= 4.0 * f32::EPSILON * b, "{x}: {a} vs {b}");
        }
        assert_eq!(expf_ggml(-200.0), 0.0);
        assert_eq!(expf_ggml(200.0), f32::INFINITY);
    }

    #[test]
    fn rms_norm_matches_formula() -> Result<()> {
        let x = Tensor::new(&[[1f32, 2., 3., 4.], [0.5, -0.5, 0.25, 8.0]], &Device::Cpu)?;
        let w = Tensor::new(&[1f32, 0.5, 2., -1.], &Device::Cpu)?;
        let got = rms_norm(&x, &w, 1e-6)?.to_vec2::<f32>()?;
        let want = candle_nn::ops::rms_norm_slow(&x, &w, 1e-6)?.to_vec2::<f32>()?;
        for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        Ok(())
    }

    #[test]
    fn gated_activations_match_reference() -> Result<()> {
        let dev = Device::Cpu;
        let g = Tensor::new(&[-12f32, -1.0, -0.1, 0.0, 0.3, 2.0, 11.0], &dev)?;
        let u = Tensor::new(&[1f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], &dev)?;
        let silu = gated(Activation::Silu, &g, &u)?.to_vec1::<f32>()?;
        let want = (candle_nn::ops::silu(&g)? * &u)?.to_vec1::<f32>()?;
        for (a, b) in silu.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let gelu = gated(Activation::GeluTanh, &g, &u)?.to_vec1::<f32>()?;
        let want = (g.gelu()? * &u)?.to_vec1::<f32>()?;
        for (a, b) in gelu.iter().zip(&want) {
            // The f16 table costs up to ~1e-3 relative; ggml accepts that and so do we.
            assert!((a - b).abs() <= 2e-3 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert_eq!(gelu[0], 0.0);
        assert_eq!(gelu[6], 11.0 * 7.0);
        Ok(())
    }
}
