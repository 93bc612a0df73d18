//! NEON versions of the f16 paths that have AVX2 versions on x86: the flash-attention value
//! accumulator's f16 rounding (`crate::attention`). Each computes what the scalar code computes,
//! lane for lane, and the f16 dot product (`ggml_vec_dot_f16`).

use std::arch::aarch64::*;
use std::arch::asm;

/// Rounds four f32 to f16 and back (`fcvtn` / `fcvtl`, round to nearest even like F16C; the
/// `float16x4_t` intrinsics are not stable yet).
#[inline(always)]
unsafe fn round4(x: float32x4_t) -> float32x4_t {
    let r: float32x4_t;
    asm!(
        "fcvtn {t:v}.4h, {x:v}.4s",
        "fcvtl {r:v}.4s, {t:v}.4h",
        x = in(vreg) x,
        t = out(vreg) _,
        r = lateout(vreg) r,
        options(pure, nomem, nostack, preserves_flags)
    );
    r
}

/// `acc = round_f16(acc * s)` element-wise; the tail with `tail(x)`.
pub fn scale_f16(acc: &mut [f32], s: f32, tail: impl Fn(f32) -> f32) {
    let n4 = acc.len() & !3;
    let p = acc.as_mut_ptr();
    // SAFETY: NEON is baseline on aarch64; every access is below `n4 <= acc.len()`.
    unsafe {
        for i in (0..n4).step_by(4) {
            vst1q_f32(p.add(i), round4(vmulq_n_f32(vld1q_f32(p.add(i)), s)));
        }
    }
    acc[n4..].iter_mut().for_each(|a| *a = tail(*a * s));
}

/// `acc = round_f16(v * s + acc)` element-wise with one rounding for `v * s + acc`.
pub fn axpy_f16(acc: &mut [f32], v: &[f32], s: f32, tail: impl Fn(f32) -> f32) {
    assert_eq!(acc.len(), v.len());
    let n4 = acc.len() & !3;
    let (p, q) = (acc.as_mut_ptr(), v.as_ptr());
    // SAFETY: as above; the lengths match.
    unsafe {
        let sv = vdupq_n_f32(s);
        for i in (0..n4).step_by(4) {
            let x = vfmaq_f32(vld1q_f32(p.add(i)), vld1q_f32(q.add(i)), sv);
            vst1q_f32(p.add(i), round4(x));
        }
    }
    for (a, &v) in acc[n4..].iter_mut().zip(&v[n4..]) {
        *a = tail(v.mul_add(s, *a));
    }
}

/// `ggml_vec_dot_f16`'s NEON loop (`GGML_F32Cx4` without FP16 vector arithmetic) over the whole
/// 16-value steps of `x` and `y` (already widened to f32): four 4-lane fused multiply-add
/// accumulators, folded `(0 + 2) + (1 + 3)`, then `vaddvq_f32`. Returns the sum and how many
/// values it covered; `crate::ggml_vec::dot_f16_4` is its scalar model (and adds the tail).
pub fn dot_f16_steps(x: &[f32], y: &[f32]) -> (f32, usize) {
    let np = x.len().min(y.len()) & !15;
    let (px, py) = (x.as_ptr(), y.as_ptr());
    // SAFETY: NEON is baseline on aarch64; every access is below `np`, within both slices.
    unsafe {
        let mut acc = [vdupq_n_f32(0.0); 4];
        for i in (0..np).step_by(16) {
            for (j, a) in acc.iter_mut().enumerate() {
                let o = i + 4 * j;
                *a = vfmaq_f32(*a, vld1q_f32(px.add(o)), vld1q_f32(py.add(o)));
            }
        }
        let s = vaddq_f32(vaddq_f32(acc[0], acc[2]), vaddq_f32(acc[1], acc[3]));
        (vaddvq_f32(s), np)
    }
}
