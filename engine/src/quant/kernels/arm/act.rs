//! ggml's NEON `quantize_row_q8_0` / `quantize_row_q8_1` (bit-identical to
//! [`super::reference::quantize_q8`]). Q8_K has no NEON quantizer in ggml: its reference code is
//! the shared scalar one.

use std::arch::aarch64::*;

use super::super::super::blocks::{f32_to_f16, BlockQ8_0, BlockQ8_1, QK};

/// `d`, the 32 quants and their sum.
#[inline(always)]
unsafe fn q8(x: &[f32]) -> (f32, [i8; 32], i32) {
    assert!(x.len() >= QK);
    let p = x.as_ptr();
    let v: [float32x4_t; 8] = std::array::from_fn(|j| vld1q_f32(p.add(4 * j)));
    let mut m = vabsq_f32(v[0]);
    for vi in &v[1..] {
        m = vmaxq_f32(m, vabsq_f32(*vi));
    }
    let amax = vmaxvq_f32(m);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut acc = vdupq_n_s32(0);
    for (j, vi) in v.iter().enumerate() {
        let q = vcvtnq_s32_f32(vmulq_n_f32(*vi, id));
        acc = vaddq_s32(acc, q);
        // ggml stores each lane as an int8_t (a truncation; the values fit).
        let n16 = vmovn_s32(q);
        let n8 = vmovn_s16(vcombine_s16(n16, n16));
        let mut tmp = [0i8; 8];
        vst1_s8(tmp.as_mut_ptr(), n8);
        qs[4 * j..4 * j + 4].copy_from_slice(&tmp[..4]);
    }
    (d, qs, vaddvq_s32(acc))
}

pub fn block_q8_0(x: &[f32]) -> BlockQ8_0 {
    // SAFETY: NEON is part of every aarch64 CPU; `q8` checks the length.
    let (d, qs, _) = unsafe { q8(x) };
    BlockQ8_0 {
        d: f32_to_f16(d),
        qs,
    }
}

pub fn block_q8_1(x: &[f32]) -> BlockQ8_1 {
    // SAFETY: as above.
    let (d, qs, sum) = unsafe { q8(x) };
    BlockQ8_1 {
        d: f32_to_f16(d),
        s: f32_to_f16(d * sum as f32),
        qs,
    }
}
