//! Element-wise ops with ggml's exact numerics, so greedy output matches llama.cpp token for
//! token: RMS norm summed in f64, GELU through ggml's f16 lookup table, and fused gated
//! activations (`act(gate) * up` in one pass, SiLU with ggml's vectorised `expf`).

use std::sync::OnceLock;

use candle_core::{backend::BackendStorage, CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use half::f16;
use rayon::prelude::*;

use crate::ggml_vec::{self, VecPath};

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
    /// gpt-oss's clamped SwiGLU (ggml's `swiglu_oai`, alpha 1.702, limit 7).
    SwigluOai,
}

/// ggml's `swiglu_oai` of one value: the gate clamped above at 7, up to ±7, then
/// `x * sigmoid(1.702 x) * (up + 1)` with libm's `expf`.
fn swiglu_oai(gate: f32, up: f32) -> f32 {
    const ALPHA: f32 = 1.702;
    const LIMIT: f32 = 7.0;
    let x = gate.min(LIMIT);
    let y = up.clamp(-LIMIT, LIMIT);
    let glu = x / (1.0 + (ALPHA * -x).exp());
    glu * (y + 1.0)
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

/// ggml's `swiglu` on one row: `x / (1 + exp(-x)) * g`, with `ggml_v_expf` over the whole
/// vectors of the row and libm's `expf` for the leftover values past them.
fn swiglu_row(path: VecPath, out: &mut [f32], gate: &[f32], up: &[f32]) {
    let width = path.lanes();
    let whole = gate.len() / width * width;
    // aarch64: ggml's NEON loop itself (the same lanes as the scalar form below).
    #[cfg(target_arch = "aarch64")]
    let done = if path == VecPath::Neon {
        crate::quant::arm_vec::swiglu(&mut out[..whole], &gate[..whole], &up[..whole])
    } else {
        0
    };
    #[cfg(not(target_arch = "aarch64"))]
    let done = 0;
    for ((o, &x), &g) in out.iter_mut().zip(gate).zip(up).take(whole).skip(done) {
        *o = x / (1.0 + ggml_vec::expf(path, 0.0 - x)) * g;
    }
    for ((o, &x), &g) in out.iter_mut().zip(gate).zip(up).skip(whole) {
        *o = x / (1.0 + (-x).exp()) * g;
    }
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
        let n = *l1.dims().last().unwrap_or(&0);
        let mut out = vec![0f32; gate.len()];
        if n == 0 {
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        let act = self.0;
        let (table, path) = (gelu_table(), ggml_vec::path());
        // Whole rows at a time: ggml's SiLU treats the values past the row's last whole vector
        // apart.
        let run = |(o, (g, u)): (&mut [f32], (&[f32], &[f32]))| {
            for ((o, g), u) in o.chunks_mut(n).zip(g.chunks(n)).zip(u.chunks(n)) {
                match act {
                    Activation::Silu => swiglu_row(path, o, g, u),
                    Activation::SwigluOai => {
                        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                            *o = swiglu_oai(g, u);
                        }
                    }
                    Activation::GeluTanh => {
                        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                            *o = gelu_ggml(table, g) * u;
                        }
                    }
                }
            }
        };
        let chunk = n * 4096usize.div_ceil(n);
        if gate.len() >= PAR_MIN {
            out.par_chunks_mut(chunk)
                .zip(gate.par_chunks(chunk).zip(up.par_chunks(chunk)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
    fn swiglu_rows_are_ggml_vector_expf_then_libm_past_the_last_vector() {
        // 37 values: whole vectors of every width, then a tail. On aarch64 the NEON path runs
        // ggml's NEON loop, checked here against the scalar form bit for bit.
        let n = 37;
        let gate: Vec<f32> = (0..n).map(|i| (i as f32 - 18.0) * 0.45).collect();
        let up: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.01).collect();
        for path in [
            ggml_vec::path(),
            VecPath::Avx2,
            VecPath::Avx512,
            VecPath::Neon,
        ] {
            let mut out = vec![0f32; n];
            swiglu_row(path, &mut out, &gate, &up);
            let whole = n / path.lanes() * path.lanes();
            for i in 0..n {
                let x = gate[i];
                let e = if i < whole {
                    ggml_vec::expf(path, 0.0 - x)
                } else {
                    (-x).exp()
                };
                let want = x / (1.0 + e) * up[i];
                assert_eq!(out[i].to_bits(), want.to_bits(), "{path:?} {i}: silu({x})");
            }
        }
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
        // gpt-oss: the gate clamped above at 7, up clamped to ±7 and shifted by one.
        let u = Tensor::new(&[1f32, -9.0, 3.0, 4.0, -0.5, 6.0, 9.0], &dev)?;
        let oai = gated(Activation::SwigluOai, &g, &u)?.to_vec1::<f32>()?;
        let (g, u) = (g.to_vec1::<f32>()?, u.to_vec1::<f32>()?);
        for ((a, &x), &y) in oai.iter().zip(&g).zip(&u) {
            let (x, y) = (x.min(7.0) as f64, y.clamp(-7.0, 7.0) as f64);
            let want = x / (1.0 + (-1.702 * x).exp()) * (y + 1.0);
            assert!(
                (*a as f64 - want).abs() < 1e-5 * want.abs().max(1.0),
                "{a} vs {want}"
            );
        }
        Ok(())
    }
}
