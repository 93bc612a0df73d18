//! NEON kernels: ggml's `ggml_vec_dot_*` (one activation row), `tinyBLAS_Q0_ARM` and the
//! `nrc == 2` i8mm kernels, computing exactly what [`super::reference`] models.
//!
//! Weights are decoded to signed bytes in element order, sixteen values a vector; the integer
//! parts come from [`Dot`] (`sdot` or ggml's widening fallback) or `smmla`, and the float steps
//! are ggml's, in its order.

#![allow(clippy::missing_safety_doc, clippy::needless_range_loop)]

use std::arch::aarch64::*;

use super::super::super::blocks::*;
use super::reference::{self as r, Arm32};
use super::simd::*;

// ---------------------------------------------------------------------------------------------
// 32-value blocks

/// A 32-value weight block as NEON decodes it: values `0..16` and `16..32`.
pub trait W32: Pod + Sync {
    unsafe fn decode(&self) -> (int8x16_t, int8x16_t);
}

impl W32 for BlockQ4_0 {
    #[inline(always)]
    unsafe fn decode(&self) -> (int8x16_t, int8x16_t) {
        let q = ld(&self.qs);
        let eight = vdupq_n_s8(8);
        (vsubq_s8(s8(lo4(q)), eight), vsubq_s8(s8(hi4(q)), eight))
    }
}
impl W32 for BlockQ4_1 {
    #[inline(always)]
    unsafe fn decode(&self) -> (int8x16_t, int8x16_t) {
        let q = ld(&self.qs);
        (s8(lo4(q)), s8(hi4(q)))
    }
}
impl W32 for BlockQ5_0 {
    #[inline(always)]
    unsafe fn decode(&self) -> (int8x16_t, int8x16_t) {
        let q = ld(&self.qs);
        let (hl, hh) = q5_high(self.qh);
        let sixteen = vdupq_n_s8(16);
        (
            vsubq_s8(s8(vorrq_u8(lo4(q), hl)), sixteen),
            vsubq_s8(s8(vorrq_u8(hi4(q), hh)), sixteen),
        )
    }
}
impl W32 for BlockQ5_1 {
    #[inline(always)]
    unsafe fn decode(&self) -> (int8x16_t, int8x16_t) {
        let q = ld(&self.qs);
        let (hl, hh) = q5_high(self.qh);
        (s8(vorrq_u8(lo4(q), hl)), s8(vorrq_u8(hi4(q), hh)))
    }
}
impl W32 for BlockQ8_0 {
    #[inline(always)]
    unsafe fn decode(&self) -> (int8x16_t, int8x16_t) {
        (lds(&self.qs), lds(&self.qs[16..]))
    }
}
impl W32 for BlockIQ4NL {
    #[inline(always)]
    unsafe fn decode(&self) -> (int8x16_t, int8x16_t) {
        let q = ld(&self.qs);
        let t = iq4nl_table();
        (lookup(t, lo4(q)), lookup(t, hi4(q)))
    }
}

/// The four lanes of one block: `dot(dot(0, lo, a_lo), hi, a_hi)`.
#[inline(always)]
unsafe fn lanes<D: Dot>(w: (int8x16_t, int8x16_t), a: &[i8; 32]) -> int32x4_t {
    D::dot(D::dot(vdupq_n_s32(0), w.0, lds(a)), w.1, lds(&a[16..]))
}

/// `acc + cvt(p) * d` as `vmlaq_n_f32` compiles: multiply, then add.
#[inline(always)]
unsafe fn mla(acc: float32x4_t, p: int32x4_t, d: f32) -> float32x4_t {
    vaddq_f32(acc, vmulq_n_f32(vcvtq_f32_s32(p), d))
}

#[inline(always)]
fn fp(x: u16) -> f32 {
    f16_to_f32(x)
}

/// `ggml_vec_dot_{q4_0,q5_0,q8_0}_q8_0`.
#[inline(always)]
pub unsafe fn vec_dot32<B: W32 + Arm32, D: Dot>(w: &[B], a: &[BlockQ8_0]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 2];
    let pairs = w.len() - w.len() % 2;
    for b in 0..pairs {
        let (w, a) = (&w[b], &a[b]);
        acc[b % 2] = mla(acc[b % 2], lanes::<D>(w.decode(), &a.qs), w.d() * fp(a.d));
    }
    let mut sumf = vaddvq_f32(acc[0]) + vaddvq_f32(acc[1]);
    if let (Some(w), Some(a)) = (w[pairs..].first(), a.get(pairs)) {
        sumf = w.tail(a, vaddvq_s32(lanes::<D>(w.decode(), &a.qs)), sumf);
    }
    sumf
}

/// `tinyBLAS_Q0_ARM` for one output.
#[inline(always)]
pub unsafe fn tinyblas<B: W32 + Arm32>(w: &[B], a: &[BlockQ8_0]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for (w, a) in w.iter().zip(a) {
        acc = mla(acc, lanes::<Sdot>(w.decode(), &a.qs), w.d() * fp(a.d));
    }
    vaddvq_f32(acc)
}

/// `ggml_vec_dot_q4_1_q8_1`.
#[inline(always)]
pub unsafe fn vec_dot_q4_1<D: Dot>(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut summs = 0f32;
    let pairs = w.len() - w.len() % 2;
    for p in (0..pairs).step_by(2) {
        let (w0, w1, a0, a1) = (&w[p], &w[p + 1], &a[p], &a[p + 1]);
        summs += fp(w0.m).mul_add(fp(a0.s), fp(w1.m) * fp(a1.s));
        acc[0] = mla(acc[0], lanes::<D>(w0.decode(), &a0.qs), fp(w0.d) * fp(a0.d));
        acc[1] = mla(acc[1], lanes::<D>(w1.decode(), &a1.qs), fp(w1.d) * fp(a1.d));
    }
    let mut sumf = vaddvq_f32(acc[0]) + vaddvq_f32(acc[1]) + summs;
    if let (Some(w), Some(a)) = (w[pairs..].first(), a.get(pairs)) {
        let sumi = vaddvq_s32(lanes::<D>(w.decode(), &a.qs));
        sumf = r::tail_min(w.d, w.m, a, sumi, sumf);
    }
    sumf
}

/// `ggml_vec_dot_q5_1_q8_1`.
#[inline(always)]
pub unsafe fn vec_dot_q5_1<D: Dot>(w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 2];
    let mut summs = [0f32; 2];
    let pairs = w.len() - w.len() % 2;
    for b in 0..pairs {
        let (w, a) = (&w[b], &a[b]);
        summs[b % 2] = fp(w.m).mul_add(fp(a.s), summs[b % 2]);
        acc[b % 2] = mla(acc[b % 2], lanes::<D>(w.decode(), &a.qs), fp(w.d) * fp(a.d));
    }
    let mut sumf = vaddvq_f32(acc[0]) + vaddvq_f32(acc[1]) + summs[0] + summs[1];
    if let (Some(w), Some(a)) = (w[pairs..].first(), a.get(pairs)) {
        let sumi = vaddvq_s32(lanes::<D>(w.decode(), &a.qs));
        sumf = r::tail_min(w.d, w.m, a, sumi, sumf);
    }
    sumf
}

/// `ggml_vec_dot_iq4_nl_q8_0`.
#[inline(always)]
pub unsafe fn vec_dot_iq4nl<D: Dot>(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    let pairs = w.len() - w.len() % 2;
    let sum = |w: &BlockIQ4NL, a: &BlockQ8_0| vaddvq_s32(lanes::<D>(w.decode(), &a.qs)) as f32;
    for p in (0..pairs).step_by(2) {
        let (s0, s1) = (sum(&w[p], &a[p]), sum(&w[p + 1], &a[p + 1]));
        let d0 = fp(w[p].d) * fp(a[p].d);
        let d1 = fp(w[p + 1].d) * fp(a[p + 1].d);
        sumf += d0.mul_add(s0, d1 * s1);
    }
    if let (Some(w), Some(a)) = (w[pairs..].first(), a.get(pairs)) {
        sumf = (fp(a.d) * fp(w.d)).mul_add(sum(w, a), sumf);
    }
    sumf
}

/// `ggml_vec_dot_q4_1_q8_1` with `nrc == 2`: weight rows `w0`, `w1` against activation rows
/// `a0`, `a1`; `[w0.a0, w0.a1, w1.a0, w1.a1]`.
#[target_feature(enable = "i8mm")]
#[inline]
pub unsafe fn mmla_q4_1(
    w0: &[BlockQ4_1],
    w1: &[BlockQ4_1],
    a0: &[BlockQ8_1],
    a1: &[BlockQ8_1],
) -> [f32; 4] {
    let mut acc = vdupq_n_f32(0.0);
    let mut summs = vdupq_n_f32(0.0);
    for b in 0..w0.len() {
        let (x0, x1, y0, y1) = (&w0[b], &w1[b], &a0[b], &a1[b]);
        let (m0, m1, s0, s1) = (fp(x0.m), fp(x1.m), fp(y0.s), fp(y1.s));
        summs = vaddq_f32(
            summs,
            vld1q_f32([m0 * s0, m0 * s1, m1 * s0, m1 * s1].as_ptr()),
        );
        let (d0, d1, e0, e1) = (fp(x0.d), fp(x1.d), fp(y0.d), fp(y1.d));
        let scale = vld1q_f32([d0 * e0, d0 * e1, d1 * e0, d1 * e1].as_ptr());
        let (l0, h0) = x0.decode();
        let (l1, h1) = x1.decode();
        let p = mmla2x2(vdupq_n_s32(0), l0, l1, lds(&y0.qs), lds(&y1.qs));
        let p = mmla2x2(p, h0, h1, lds(&y0.qs[16..]), lds(&y1.qs[16..]));
        acc = vaddq_f32(acc, vmulq_f32(vcvtq_f32_s32(p), scale));
    }
    let mut out = [0f32; 4];
    vst1q_f32(out.as_mut_ptr(), vaddq_f32(acc, summs));
    out
}

// ---------------------------------------------------------------------------------------------
// k-quants: exact integers per block (any instruction gives the same), ggml's float steps.

/// The 256 values of a k-quant block, sixteen per vector in element order.
pub trait WK: Pod + Sync {
    unsafe fn decode(&self) -> [int8x16_t; 16];
}

impl WK for BlockQ4K {
    #[inline(always)]
    unsafe fn decode(&self) -> [int8x16_t; 16] {
        let mut v = [vdupq_n_s8(0); 16];
        for c in 0..4 {
            let q0 = ld(&self.qs[32 * c..]);
            let q1 = ld(&self.qs[32 * c + 16..]);
            v[4 * c] = s8(lo4(q0));
            v[4 * c + 1] = s8(lo4(q1));
            v[4 * c + 2] = s8(hi4(q0));
            v[4 * c + 3] = s8(hi4(q1));
        }
        v
    }
}

impl WK for BlockQ5K {
    #[inline(always)]
    unsafe fn decode(&self) -> [int8x16_t; 16] {
        let mut v = [vdupq_n_s8(0); 16];
        let mut h0 = ld(&self.qh);
        let mut h1 = ld(&self.qh[16..]);
        let one = vdupq_n_u8(1);
        for c in 0..4 {
            let q0 = ld(&self.qs[32 * c..]);
            let q1 = ld(&self.qs[32 * c + 16..]);
            let b = |h: uint8x16_t, s: i32| {
                let bit = vandq_u8(if s == 0 { h } else { vshrq_n_u8::<1>(h) }, one);
                vshlq_n_u8::<4>(bit)
            };
            v[4 * c] = s8(vorrq_u8(lo4(q0), b(h0, 0)));
            v[4 * c + 1] = s8(vorrq_u8(lo4(q1), b(h1, 0)));
            v[4 * c + 2] = s8(vorrq_u8(hi4(q0), b(h0, 1)));
            v[4 * c + 3] = s8(vorrq_u8(hi4(q1), b(h1, 1)));
            h0 = vshrq_n_u8::<2>(h0);
            h1 = vshrq_n_u8::<2>(h1);
        }
        v
    }
}

impl WK for BlockQ6K {
    #[inline(always)]
    unsafe fn decode(&self) -> [int8x16_t; 16] {
        let mut v = [vdupq_n_s8(0); 16];
        let three = vdupq_n_u8(3);
        for h in 0..2 {
            for half in 0..2 {
                let o = 16 * half;
                let ql0 = ld(&self.ql[64 * h + o..]);
                let ql1 = ld(&self.ql[64 * h + 32 + o..]);
                let qh = ld(&self.qh[32 * h + o..]);
                let hb = |s: uint8x16_t| vshlq_n_u8::<4>(vandq_u8(s, three));
                let base = 8 * h + half;
                v[base] = s8(vorrq_u8(lo4(ql0), hb(qh)));
                v[base + 2] = s8(vorrq_u8(lo4(ql1), hb(vshrq_n_u8::<2>(qh))));
                v[base + 4] = s8(vorrq_u8(hi4(ql0), hb(vshrq_n_u8::<4>(qh))));
                v[base + 6] = s8(vorrq_u8(hi4(ql1), hb(vshrq_n_u8::<6>(qh))));
            }
        }
        v
    }
}

impl WK for BlockQ2K {
    #[inline(always)]
    unsafe fn decode(&self) -> [int8x16_t; 16] {
        let mut v = [vdupq_n_s8(0); 16];
        let three = vdupq_n_u8(3);
        for j in 0..2 {
            let q0 = ld(&self.qs[32 * j..]);
            let q1 = ld(&self.qs[32 * j + 16..]);
            let base = 8 * j;
            v[base] = s8(vandq_u8(q0, three));
            v[base + 1] = s8(vandq_u8(q1, three));
            v[base + 2] = s8(vandq_u8(vshrq_n_u8::<2>(q0), three));
            v[base + 3] = s8(vandq_u8(vshrq_n_u8::<2>(q1), three));
            v[base + 4] = s8(vandq_u8(vshrq_n_u8::<4>(q0), three));
            v[base + 5] = s8(vandq_u8(vshrq_n_u8::<4>(q1), three));
            v[base + 6] = s8(vshrq_n_u8::<6>(q0));
            v[base + 7] = s8(vshrq_n_u8::<6>(q1));
        }
        v
    }
}

impl WK for BlockQ3K {
    #[inline(always)]
    unsafe fn decode(&self) -> [int8x16_t; 16] {
        let mut v = [vdupq_n_s8(0); 16];
        let three = vdupq_n_u8(3);
        let h0 = ld(&self.hmask);
        let h1 = ld(&self.hmask[16..]);
        for j in 0..2 {
            let q0 = ld(&self.qs[32 * j..]);
            let q1 = ld(&self.qs[32 * j + 16..]);
            for k in 0..4 {
                let shift = vdupq_n_s8(-(2 * k as i8));
                let hshift = vdupq_n_s8(-((4 * j + k) as i8));
                // (q >> 2k) & 3, minus 4 where the hmask bit is clear.
                let lo = |q: uint8x16_t, h: uint8x16_t| {
                    let l = vandq_u8(vshlq_u8(q, shift), three);
                    let clear = vbicq_u8(vdupq_n_u8(1), vshlq_u8(h, hshift));
                    vsubq_s8(s8(l), s8(vshlq_n_u8::<2>(clear)))
                };
                v[8 * j + 2 * k] = lo(q0, h0);
                v[8 * j + 2 * k + 1] = lo(q1, h1);
            }
        }
        v
    }
}

impl WK for BlockIQ4XS {
    #[inline(always)]
    unsafe fn decode(&self) -> [int8x16_t; 16] {
        let mut v = [vdupq_n_s8(0); 16];
        let t = iq4nl_table();
        for ib in 0..8 {
            let q = ld(&self.qs[16 * ib..]);
            v[2 * ib] = lookup(t, lo4(q));
            v[2 * ib + 1] = lookup(t, hi4(q));
        }
        v
    }
}

/// Sums of each 16 products of a decoded block against a Q8_K block.
#[inline(always)]
unsafe fn dots16<D: Dot>(v: &[int8x16_t; 16], a: &BlockQ8K) -> [i32; 16] {
    let z = vdupq_n_s32(0);
    std::array::from_fn(|t| vaddvq_s32(D::dot(z, v[t], lds(&a.qs[16 * t..]))))
}

#[inline(always)]
fn k4_sums(scales: &[u8; 12], d: [i32; 16], a: &BlockQ8K) -> (i32, i32) {
    let (sc, mn) = scales_mins_k4(scales);
    let mut isum = 0;
    let mut msum = 0;
    for j in 0..8 {
        isum += sc[j] as i32 * (d[2 * j] + d[2 * j + 1]);
        msum += mn[j] as i32 * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
    }
    (isum, msum)
}

/// The integers of each k-quant type's float step.
pub trait KInts: WK {
    type I: Copy;
    unsafe fn ints<D: Dot>(&self, a: &BlockQ8K) -> Self::I;
}

impl KInts for BlockQ4K {
    type I = (i32, i32);
    #[inline(always)]
    unsafe fn ints<D: Dot>(&self, a: &BlockQ8K) -> (i32, i32) {
        k4_sums(&self.scales, dots16::<D>(&self.decode(), a), a)
    }
}
impl KInts for BlockQ5K {
    type I = (i32, i32);
    #[inline(always)]
    unsafe fn ints<D: Dot>(&self, a: &BlockQ8K) -> (i32, i32) {
        k4_sums(&self.scales, dots16::<D>(&self.decode(), a), a)
    }
}
impl KInts for BlockQ6K {
    type I = i32;
    #[inline(always)]
    unsafe fn ints<D: Dot>(&self, a: &BlockQ8K) -> i32 {
        let d = dots16::<D>(&self.decode(), a);
        let mut isum = 0;
        let mut mins = 0;
        for t in 0..16 {
            isum += self.scales[t] as i32 * d[t];
            mins += self.scales[t] as i32 * a.bsums[t] as i32;
        }
        isum - 32 * mins
    }
}
impl KInts for BlockQ2K {
    type I = (i32, i32);
    #[inline(always)]
    unsafe fn ints<D: Dot>(&self, a: &BlockQ8K) -> (i32, i32) {
        let d = dots16::<D>(&self.decode(), a);
        let mut isum = 0;
        let mut msum = 0;
        for t in 0..16 {
            isum += (self.scales[t] & 0xF) as i32 * d[t];
            msum += (self.scales[t] >> 4) as i32 * a.bsums[t] as i32;
        }
        (isum, msum)
    }
}
impl KInts for BlockQ3K {
    type I = i32;
    #[inline(always)]
    unsafe fn ints<D: Dot>(&self, a: &BlockQ8K) -> i32 {
        let d = dots16::<D>(&self.decode(), a);
        let sc = self.scales();
        (0..16).map(|t| sc[t] as i32 * d[t]).sum()
    }
}
impl KInts for BlockIQ4XS {
    type I = i32;
    #[inline(always)]
    unsafe fn ints<D: Dot>(&self, a: &BlockQ8K) -> i32 {
        let d = dots16::<D>(&self.decode(), a);
        let ls = self.scales();
        (0..8)
            .map(|j| ls[j] as i32 * (d[2 * j] + d[2 * j + 1]))
            .sum()
    }
}

/// A k-quant dot product: ggml's float `step` over the blocks, integers from NEON.
#[inline(always)]
pub unsafe fn dot_k<W: KInts, D: Dot>(
    w: &[W],
    a: &[BlockQ8K],
    step: fn(f32, &W, &BlockQ8K, W::I) -> f32,
) -> f32 {
    let mut s = 0f32;
    for (w, a) in w.iter().zip(a) {
        s = step(s, w, a, w.ints::<D>(a));
    }
    s
}
