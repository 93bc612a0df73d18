//! NEON versions of the f16 paths that have AVX2 versions on x86: the flash-attention value
//! accumulator's f16 rounding (`crate::attention`) and ggml's `vec_dot_f16` lane order
//! (`crate::ops::dot_f16_lanes`). Each computes what the scalar code computes, lane for lane.

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

/// `crate::ops::dot_f16_lanes`: four 16-lane fused multiply-add accumulators over 64-element
/// steps (here four vectors each), folded as the scalar code folds them; the tail in f64.
pub fn dot_f16_lanes(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    let np = n & !63;
    let (px, py) = (x.as_ptr(), y.as_ptr());
    // SAFETY: NEON is baseline; every load is below `np <= n`.
    let t = unsafe {
        // acc[4j + q]: lanes 4q..4q+4 of accumulator j.
        let mut acc = [vdupq_n_f32(0.0); 16];
        for i in (0..np).step_by(64) {
            for (h, a) in acc.iter_mut().enumerate() {
                let o = i + 4 * h;
                *a = vfmaq_f32(*a, vld1q_f32(px.add(o)), vld1q_f32(py.add(o)));
            }
        }
        // a[l] = (a0[l] + a2[l]) + (a1[l] + a3[l]), four lanes at a time.
        let a: [float32x4_t; 4] = std::array::from_fn(|q| {
            vaddq_f32(
                vaddq_f32(acc[q], acc[8 + q]),
                vaddq_f32(acc[4 + q], acc[12 + q]),
            )
        });
        // t3[i] = a[i + 8] + a[i]; t6[i] = t3[i + 4] + t3[i].
        let t3 = [vaddq_f32(a[2], a[0]), vaddq_f32(a[3], a[1])];
        let t6 = vaddq_f32(t3[1], t3[0]);
        let mut t = [0f32; 4];
        vst1q_f32(t.as_mut_ptr(), t6);
        t
    };
    let mut sum = ((t[0] + t[2]) + (t[1] + t[3])) as f64;
    for i in np..n {
        sum += (x[i] * y[i]) as f64;
    }
    sum as f32
}
