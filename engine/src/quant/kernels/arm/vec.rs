//! ggml-cpu's NEON float vector code (vec.h / vec.cpp, `__ARM_NEON && __aarch64__`), instruction
//! for instruction: `ggml_v_expf` and `ggml_v_silu` on four lanes, the exponentials of
//! `ggml_vec_soft_max_f32` and the body of `ggml_vec_swiglu_f32`. Each lane computes what
//! [`crate::ggml_vec`]'s scalar models compute (the NEON `ggml_v_expf` has the 256-bit form's
//! constants, fused operations and rescaling branch, so its lanes are `expf_avx2`'s); the tests
//! check that bit for bit.

use std::arch::aarch64::*;

#[inline(always)]
unsafe fn splat(bits: u32) -> float32x4_t {
    vdupq_n_f32(f32::from_bits(bits))
}

/// `ggml_v_expf` (NEON).
#[inline(always)]
pub(crate) unsafe fn expf4(x: float32x4_t) -> float32x4_t {
    let r = splat(0x4b40_0000); // 0x1.8p23
    let z = vfmaq_f32(r, x, splat(0x3fb8_aa3b));
    let n = vsubq_f32(z, r);
    let b = vfmsq_f32(vfmsq_f32(x, n, splat(0x3f31_7200)), n, splat(0x35bf_be8e));
    let e = vshlq_n_u32::<23>(vreinterpretq_u32_f32(z));
    let k = vreinterpretq_f32_u32(vaddq_u32(e, vreinterpretq_u32_f32(vdupq_n_f32(1.0))));
    let c = vcagtq_f32(n, vdupq_n_f32(126.0));
    let u = vmulq_f32(b, b);
    let j = vfmaq_f32(
        vmulq_f32(splat(0x3f7f_fff6), b),
        vfmaq_f32(
            vfmaq_f32(splat(0x3eff_fedb), splat(0x3e2a_af33), b),
            vfmaq_f32(splat(0x3d2b_9f17), splat(0x3c07_2010), b),
            u,
        ),
        u,
    );
    if vmaxvq_u32(c) == 0 {
        return vfmaq_f32(k, j, k);
    }
    let d = vandq_u32(vclezq_f32(n), vdupq_n_u32(0x8200_0000));
    let s1 = vreinterpretq_f32_u32(vaddq_u32(d, vdupq_n_u32(0x7f00_0000)));
    let s2 = vreinterpretq_f32_u32(vsubq_u32(e, d));
    vbslq_f32(
        vcagtq_f32(n, vdupq_n_f32(192.0)),
        vmulq_f32(s1, s1),
        vbslq_f32(c, vmulq_f32(vfmaq_f32(s2, s2, j), s1), vfmaq_f32(k, k, j)),
    )
}

/// `ggml_v_silu` (NEON): `x / (1 + expf(0 - x))`.
#[inline(always)]
unsafe fn silu4(x: float32x4_t) -> float32x4_t {
    let e = expf4(vsubq_f32(vdupq_n_f32(0.0), x));
    vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0), e))
}

/// `p[i] = expf(p[i] - m)` over the whole vectors of `p` (the exponentials of
/// `ggml_vec_soft_max_f32`); returns how many values that was (`p.len()` rounded down to 4).
pub(crate) fn exp_shifted(p: &mut [f32], m: f32) -> usize {
    let n4 = p.len() & !3;
    let ptr = p.as_mut_ptr();
    // SAFETY: NEON is baseline on aarch64; every access is below `n4 <= p.len()`.
    unsafe {
        let mv = vdupq_n_f32(m);
        for i in (0..n4).step_by(4) {
            vst1q_f32(ptr.add(i), expf4(vsubq_f32(vld1q_f32(ptr.add(i)), mv)));
        }
    }
    n4
}

/// `out[i] = silu(gate[i]) * up[i]` over the whole vectors (`ggml_vec_swiglu_f32`'s NEON loop);
/// returns how many values that was.
pub(crate) fn swiglu(out: &mut [f32], gate: &[f32], up: &[f32]) -> usize {
    let n4 = out.len().min(gate.len()).min(up.len()) & !3;
    let (o, g, u) = (out.as_mut_ptr(), gate.as_ptr(), up.as_ptr());
    // SAFETY: as above; `n4` is within all three slices.
    unsafe {
        for i in (0..n4).step_by(4) {
            vst1q_f32(
                o.add(i),
                vmulq_f32(silu4(vld1q_f32(g.add(i))), vld1q_f32(u.add(i))),
            );
        }
    }
    n4
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml_vec::{self, VecPath};

    /// Values across `expf`'s range: the fast branch, the rescaled one (|n| > 126), saturation
    /// (|n| > 192), signed zeros and infinities.
    fn inputs() -> Vec<f32> {
        let mut xs: Vec<f32> = (-3000..3000).map(|i| i as f32 * 0.037).collect();
        xs.extend([
            f32::NEG_INFINITY,
            f32::INFINITY,
            -150.0,
            -100.0,
            -88.0,
            88.5,
            100.0,
            140.0,
            0.0,
            -0.0,
        ]);
        xs
    }

    #[test]
    fn four_lane_expf_equals_the_scalar_model() {
        let xs = inputs();
        // Every value in every lane, beside each other value class, so that a lane on the fast
        // branch shares a vector with one on the rescaled branch.
        for shift in 0..4 {
            let mut p: Vec<f32> = xs
                .iter()
                .cycle()
                .skip(shift * 997)
                .take(xs.len())
                .copied()
                .collect();
            let src = p.clone();
            let n = exp_shifted(&mut p, 0.0);
            assert_eq!(n, src.len() & !3);
            for (g, &x) in p[..n].iter().zip(&src) {
                let want = ggml_vec::expf(VecPath::Neon, x);
                assert_eq!(g.to_bits(), want.to_bits(), "expf({x}) = {g}, model {want}");
            }
            // Past the whole vectors nothing is touched.
            assert_eq!(p[n..], src[n..]);
        }
        // Shifted by the row maximum, as the softmax calls it.
        let mut p = [1.0f32, -3.5, 0.25, -90.0, 2.0, 2.0, -1e3, 0.5];
        let src = p;
        exp_shifted(&mut p, 2.0);
        for (g, &x) in p.iter().zip(&src) {
            assert_eq!(
                g.to_bits(),
                ggml_vec::expf(VecPath::Neon, x - 2.0).to_bits()
            );
        }
    }

    #[test]
    fn swiglu_equals_the_scalar_model() {
        let gate: Vec<f32> = inputs().iter().map(|x| x * 0.1).collect();
        let up: Vec<f32> = (0..gate.len())
            .map(|i| (i % 17) as f32 * 0.3 - 2.0)
            .collect();
        let mut out = vec![f32::NAN; gate.len()];
        let n = swiglu(&mut out, &gate, &up);
        assert_eq!(n, gate.len() & !3);
        for i in 0..n {
            let x = gate[i];
            let want = x / (1.0 + ggml_vec::expf(VecPath::Neon, 0.0 - x)) * up[i];
            assert_eq!(out[i].to_bits(), want.to_bits(), "silu({x}) * {}", up[i]);
        }
        assert!(out[n..].iter().all(|v| v.is_nan()));
    }
}
