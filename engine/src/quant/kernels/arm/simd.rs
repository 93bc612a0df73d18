//! The 8-bit dot-product primitives per level, and small vector helpers.
//!
//! `sdot` and `smmla` are still unstable as `std::arch` intrinsics, so they are written as
//! inline assembly inside functions compiled with the feature; their callers are compiled with
//! it too (the entry points in `mod.rs`), so they inline.

use std::arch::aarch64::*;
use std::arch::asm;

/// How four-lane i32 dot products of 16 signed bytes are formed: [`Mull`] or [`Sdot`], the two
/// variants of ggml's `ggml_vdotq_s32`.
pub trait Dot {
    /// `acc + lanes(a * b)`.
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t;
}

/// ggml's `ggml_vdotq_s32` without FEAT_DotProd: widening multiplies and pairwise adds.
pub struct Mull;
/// `sdot`.
pub struct Sdot;

impl Dot for Mull {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        let p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let p1 = vmull_s8(vget_high_s8(a), vget_high_s8(b));
        vaddq_s32(acc, vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)))
    }
}

impl Dot for Sdot {
    #[inline(always)]
    unsafe fn dot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
        sdot(acc, a, b)
    }
}

#[target_feature(enable = "dotprod")]
#[inline]
unsafe fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// `smmla`: `acc + [a0.b0, a0.b1, a1.b0, a1.b1]` where `a0`, `a1` (`b0`, `b1`) are the two
/// 8-byte halves of `a` (`b`).
#[target_feature(enable = "i8mm")]
#[inline]
pub unsafe fn smmla(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    asm!(
        "smmla {acc:v}.4s, {a:v}.16b, {b:v}.16b",
        acc = inout(vreg) acc,
        a = in(vreg) a,
        b = in(vreg) b,
        options(pure, nomem, nostack, preserves_flags)
    );
    acc
}

/// The dot products of two rows `a0`, `a1` with two rows `b0`, `b1` of 16 bytes each:
/// `[a0.b0, a0.b1, a1.b0, a1.b1]` (two `smmla` over the 8-byte halves).
#[target_feature(enable = "i8mm")]
#[inline]
pub unsafe fn mmla2x2(
    acc: int32x4_t,
    a0: int8x16_t,
    a1: int8x16_t,
    b0: int8x16_t,
    b1: int8x16_t,
) -> int32x4_t {
    let lo = |x: int8x16_t, y: int8x16_t| {
        vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(x), vreinterpretq_s64_s8(y)))
    };
    let hi = |x: int8x16_t, y: int8x16_t| {
        vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(x), vreinterpretq_s64_s8(y)))
    };
    let acc = smmla(acc, lo(a0, a1), lo(b0, b1));
    smmla(acc, hi(a0, a1), hi(b0, b1))
}

/// 16 bytes from `p`.
#[inline(always)]
pub unsafe fn ld(p: &[u8]) -> uint8x16_t {
    debug_assert!(p.len() >= 16);
    vld1q_u8(p.as_ptr())
}

#[inline(always)]
pub unsafe fn lds(p: &[i8]) -> int8x16_t {
    debug_assert!(p.len() >= 16);
    vld1q_s8(p.as_ptr())
}

#[inline(always)]
pub unsafe fn s8(v: uint8x16_t) -> int8x16_t {
    vreinterpretq_s8_u8(v)
}

#[inline(always)]
pub unsafe fn lo4(v: uint8x16_t) -> uint8x16_t {
    vandq_u8(v, vdupq_n_u8(0x0F))
}

#[inline(always)]
pub unsafe fn hi4(v: uint8x16_t) -> uint8x16_t {
    vshrq_n_u8::<4>(v)
}

/// The high bits of a Q5 block's 32 values as `0x10` bytes: bit `e` of `qh` for value `e`.
#[inline(always)]
pub unsafe fn q5_high(qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
    let q = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes(qh)));
    const IDX_LO: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1];
    const IDX_HI: [u8; 16] = [2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3];
    const BIT: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
    let bit = vld1q_u8(BIT.as_ptr());
    let h = |idx: &[u8; 16]| {
        let bytes = vqtbl1q_u8(q, vld1q_u8(idx.as_ptr()));
        vandq_u8(vtstq_u8(bytes, bit), vdupq_n_u8(0x10))
    };
    (h(&IDX_LO), h(&IDX_HI))
}

/// ggml's IQ4_NL code book as a table for `vqtbl1q_s8`.
#[inline(always)]
pub unsafe fn iq4nl_table() -> int8x16_t {
    vld1q_s8(super::super::super::blocks::KVALUES_IQ4NL.as_ptr())
}

#[inline(always)]
pub unsafe fn lookup(table: int8x16_t, idx: uint8x16_t) -> int8x16_t {
    vqtbl1q_s8(table, idx)
}
