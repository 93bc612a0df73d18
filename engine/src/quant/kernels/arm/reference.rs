//! Scalar models of ggml's aarch64 kernels (`ggml-cpu/arch/arm/quants.c` and llamafile's
//! `tinyBLAS_Q0_ARM`, no weight repacking): the integers they sum, in the lanes they sum them in,
//! and their float operations in their order, as GCC compiles them (`vmlaq_f32` / `vmlaq_n_f32`
//! are a multiply then an add; scalar `a += b * c` is contracted to one fused multiply-add).
//! The NEON kernels are tested against these bit for bit.
//!
//! Which ggml code runs depends on the activation rows `m` and the CPU ([`Path`]):
//! * [`Path::VecDot`], `ggml_vec_dot_*` with `nrc == 1`. The 32-value types keep two sets of
//!   four f32 lanes (even and odd blocks); a lane's integer is what `ggml_vdotq_s32` puts there:
//!   `sdot` sums bytes `4l..4l+4` of each 16-byte half ([`Lanes::Sdot`]), the fallback without
//!   the dot-product extension bytes `2l, 2l+1, 8+2l, 9+2l` ([`Lanes::Mull`]). The k-quants and
//!   the IQ4 types reduce each block to integers and add them with scalar fused multiply-adds.
//! * [`Path::TinyBlas`] for Q4_0 / Q8_0 prompts with `sdot`: four lanes per output, one
//!   multiply then add per block, `vaddvq_f32` at the end.
//! * [`Path::Mmla`] for Q4_1 / Q4_K / Q6_K prompts with i8mm when both the activation rows and
//!   the weight rows are even in number (ggml's `nrc == 2` kernels): per output, per block, the
//!   block's integer times its scale, a multiply then an add.

#![allow(clippy::needless_range_loop)] // transcriptions of ggml's C loops

use super::super::super::{blocks::*, reference as x86};

/// Which of ggml's ARM code paths a product follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    VecDot(Lanes),
    TinyBlas,
    Mmla,
}

/// How `ggml_vdotq_s32` spreads 16 byte products over four i32 lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lanes {
    /// `vmull_s8` + `vpaddlq_s16` (no FEAT_DotProd): byte `b` goes to lane `(b % 8) / 2`.
    Mull,
    /// `sdot`: byte `b` goes to lane `b / 4`.
    Sdot,
}

impl Lanes {
    #[inline(always)]
    pub fn of(self, byte: usize) -> usize {
        match self {
            Lanes::Mull => (byte % 8) / 2,
            Lanes::Sdot => byte / 4,
        }
    }
}

/// `vaddvq_f32`: pairwise, `(a0 + a1) + (a2 + a3)`.
#[inline(always)]
pub fn addv(v: [f32; 4]) -> f32 {
    (v[0] + v[1]) + (v[2] + v[3])
}

/// Lane sums of 32 values (low 16 and high 16 in the same four lanes) against 32 quants.
#[inline(always)]
fn lanes32(lanes: Lanes, w: &[i8; 32], a: &[i8; 32]) -> [i32; 4] {
    let mut s = [0i32; 4];
    for e in 0..32 {
        s[lanes.of(e % 16)] += w[e] as i32 * a[e] as i32;
    }
    s
}

#[inline(always)]
fn dot32(w: &[i8; 32], a: &[i8; 32]) -> i32 {
    w.iter().zip(a).map(|(&w, &a)| w as i32 * a as i32).sum()
}

/// `acc[l] += p[l] * d` as `vmlaq_n_f32` is compiled: a rounded multiply, then an add.
#[inline(always)]
fn mla(acc: &mut [f32; 4], p: [i32; 4], d: f32) {
    for l in 0..4 {
        acc[l] += p[l] as f32 * d;
    }
}

fn fp(x: u16) -> f32 {
    f16_to_f32(x)
}

/// The 32-value types against Q8_0 activations, as their ARM kernels see them.
pub trait Arm32: x86::Block32 {
    /// The odd last block of a `vec_dot`: `sumf += ...` with `sumi`, the block's integer sum.
    fn tail(&self, a: &BlockQ8_0, sumi: i32, sumf: f32) -> f32;
}

impl Arm32 for BlockQ4_0 {
    // `sumf += sumi * d_x * d_y`
    fn tail(&self, a: &BlockQ8_0, sumi: i32, sumf: f32) -> f32 {
        (sumi as f32 * fp(self.d)).mul_add(fp(a.d), sumf)
    }
}
impl Arm32 for BlockQ5_0 {
    // `sumf += (d_x * d_y) * sumi`
    fn tail(&self, a: &BlockQ8_0, sumi: i32, sumf: f32) -> f32 {
        (fp(self.d) * fp(a.d)).mul_add(sumi as f32, sumf)
    }
}
impl Arm32 for BlockQ8_0 {
    // `sumf += sumi * (d_x * d_y)`
    fn tail(&self, a: &BlockQ8_0, sumi: i32, sumf: f32) -> f32 {
        (sumi as f32).mul_add(fp(self.d) * fp(a.d), sumf)
    }
}

/// `ggml_vec_dot_{q4_0,q5_0,q8_0}_q8_0`.
pub fn vec_dot32<B: Arm32>(lanes: Lanes, w: &[B], a: &[BlockQ8_0]) -> f32 {
    let mut acc = [[0f32; 4]; 2];
    let pairs = w.len() - w.len() % 2;
    for (b, (w, a)) in w[..pairs].iter().zip(a).enumerate() {
        mla(
            &mut acc[b % 2],
            lanes32(lanes, &w.values(), &a.qs),
            w.d() * fp(a.d),
        );
    }
    let mut sumf = addv(acc[0]) + addv(acc[1]);
    if let (Some(w), Some(a)) = (w[pairs..].first(), a.get(pairs)) {
        sumf = w.tail(a, dot32(&w.values(), &a.qs), sumf);
    }
    sumf
}

/// `tinyBLAS_Q0_ARM` (Q4_0 and Q8_0 prompts).
pub fn tinyblas<B: x86::Block32>(w: &[B], a: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 4];
    for (w, a) in w.iter().zip(a) {
        mla(
            &mut acc,
            lanes32(Lanes::Sdot, &w.values(), &a.qs),
            w.d() * fp(a.d),
        );
    }
    addv(acc)
}

/// `ggml_vec_dot_q4_1_q8_1`: `summs += m0 s0 + m1 s1` per pair (the second product rounded,
/// the first fused), the odd last block `sumf += (d_x d_y) sumi + m s` the same way.
pub fn vec_dot_q4_1(lanes: Lanes, w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = [[0f32; 4]; 2];
    let mut summs = 0f32;
    let pairs = w.len() - w.len() % 2;
    for p in (0..pairs).step_by(2) {
        let (w0, w1, a0, a1) = (&w[p], &w[p + 1], &a[p], &a[p + 1]);
        summs += fp(w0.m).mul_add(fp(a0.s), fp(w1.m) * fp(a1.s));
        for (k, (w, a)) in [(w0, a0), (w1, a1)].into_iter().enumerate() {
            mla(
                &mut acc[k],
                lanes32(lanes, &w.values(), &a.qs),
                fp(w.d) * fp(a.d),
            );
        }
    }
    let mut sumf = addv(acc[0]) + addv(acc[1]) + summs;
    if let (Some(w), Some(a)) = (w[pairs..].first(), a.get(pairs)) {
        sumf = tail_min(w.d, w.m, a, dot32(&w.values(), &a.qs), sumf);
    }
    sumf
}

/// `sumf += (d_x * d_y) * sumi + m_x * s_y` (the second product rounded, the first fused).
pub fn tail_min(d: u16, m: u16, a: &BlockQ8_1, sumi: i32, sumf: f32) -> f32 {
    (fp(d) * fp(a.d)).mul_add(sumi as f32, fp(m) * fp(a.s)) + sumf
}

/// `ggml_vec_dot_q5_1_q8_1`: mins in two fused sums, one per block parity.
pub fn vec_dot_q5_1(lanes: Lanes, w: &[BlockQ5_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = [[0f32; 4]; 2];
    let mut summs = [0f32; 2];
    let pairs = w.len() - w.len() % 2;
    for (b, (w, a)) in w[..pairs].iter().zip(a).enumerate() {
        summs[b % 2] = fp(w.m).mul_add(fp(a.s), summs[b % 2]);
        mla(
            &mut acc[b % 2],
            lanes32(lanes, &w.values(), &a.qs),
            fp(w.d) * fp(a.d),
        );
    }
    let mut sumf = addv(acc[0]) + addv(acc[1]) + summs[0] + summs[1];
    if let (Some(w), Some(a)) = (w[pairs..].first(), a.get(pairs)) {
        sumf = tail_min(w.d, w.m, a, dot32(&w.values(), &a.qs), sumf);
    }
    sumf
}

/// `ggml_vec_dot_q4_1_q8_1` with `nrc == 2` (`vmmlaq_s32`): per block `acc += sumi * d`, the
/// mins summed apart and added at the end.
pub fn mmla_q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let (mut acc, mut summs) = (0f32, 0f32);
    for (w, a) in w.iter().zip(a) {
        summs += fp(w.m) * fp(a.s);
        acc += dot32(&w.values(), &a.qs) as f32 * (fp(w.d) * fp(a.d));
    }
    acc + summs
}

/// `ggml_vec_dot_iq4_nl_q8_0`: blocks in pairs, `sumf += d0 p0 + d1 p1` (the second product
/// rounded, the first fused), an odd last block fused.
pub fn vec_dot_iq4nl(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    let pairs = w.len() - w.len() % 2;
    for p in (0..pairs).step_by(2) {
        let s0 = dot32(&w[p].values(), &a[p].qs) as f32;
        let s1 = dot32(&w[p + 1].values(), &a[p + 1].qs) as f32;
        let d0 = fp(w[p].d) * fp(a[p].d);
        let d1 = fp(w[p + 1].d) * fp(a[p + 1].d);
        sumf += d0.mul_add(s0, d1 * s1);
    }
    if let (Some(w), Some(a)) = (w[pairs..].first(), a.get(pairs)) {
        sumf = (fp(a.d) * fp(w.d)).mul_add(dot32(&w.values(), &a.qs) as f32, sumf);
    }
    sumf
}

// ---------------------------------------------------------------------------------------------
// k-quants: exact integers per block, then a scalar float step.

/// Sums of each 16 products of 256 values against a Q8_K block.
#[inline(always)]
fn dots16<T: Copy + Into<i32>>(v: &[T; 256], a: &BlockQ8K) -> [i32; 16] {
    std::array::from_fn(|t| {
        (16 * t..16 * t + 16)
            .map(|e| v[e].into() * a.qs[e] as i32)
            .sum()
    })
}

/// Integer parts of a Q4_K / Q5_K block: `(sum_j sc_j dot_j, sum_j m_j bsum_j)`.
#[inline(always)]
fn k4_sums(v: &[u8; 256], scales: &[u8; 12], a: &BlockQ8K) -> (i32, i32) {
    let (sc, mn) = scales_mins_k4(scales);
    let d = dots16(v, a);
    let mut isum = 0;
    let mut msum = 0;
    for j in 0..8 {
        isum += sc[j] as i32 * (d[2 * j] + d[2 * j + 1]);
        msum += mn[j] as i32 * (a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32);
    }
    (isum, msum)
}

pub fn q4k_sums(w: &BlockQ4K, a: &BlockQ8K) -> (i32, i32) {
    k4_sums(&w.values(), &w.scales, a)
}

pub fn q5k_sums(w: &BlockQ5K, a: &BlockQ8K) -> (i32, i32) {
    k4_sums(&w.values(), &w.scales, a)
}

/// `isum - 32 * sum_t sc_t bsum_t` of a Q6_K block.
pub fn q6k_sum(w: &BlockQ6K, a: &BlockQ8K) -> i32 {
    let d = dots16(&w.values(), a);
    let mut isum = 0;
    let mut mins = 0;
    for t in 0..16 {
        isum += w.scales[t] as i32 * d[t];
        mins += w.scales[t] as i32 * a.bsums[t] as i32;
    }
    isum - 32 * mins
}

/// `(sum_t sc_t dot_t, sum_t m_t bsum_t)` of a Q2_K block.
pub fn q2k_sums(w: &BlockQ2K, a: &BlockQ8K) -> (i32, i32) {
    let d = dots16(&w.values(), a);
    let mut isum = 0;
    let mut msum = 0;
    for t in 0..16 {
        isum += (w.scales[t] & 0xF) as i32 * d[t];
        msum += (w.scales[t] >> 4) as i32 * a.bsums[t] as i32;
    }
    (isum, msum)
}

pub fn q3k_sum(w: &BlockQ3K, a: &BlockQ8K) -> i32 {
    let d = dots16(&w.values(), a);
    let sc = w.scales();
    (0..16).map(|t| sc[t] as i32 * d[t]).sum()
}

pub fn iq4xs_sum(w: &BlockIQ4XS, a: &BlockQ8K) -> i32 {
    let d = dots16(&w.values(), a);
    let ls = w.scales();
    (0..8)
        .map(|j| ls[j] as i32 * (d[2 * j] + d[2 * j + 1]))
        .sum()
}

// The float step of each k-quant kernel, given the block's integers (shared with the NEON
// kernels, which compute the integers their own way).

/// `ggml_vec_dot_q4_K_q8_K`: `sumf -= dmin * msum` (fused), then `sumf += d * isum` (fused).
#[inline(always)]
pub fn step_q4k(sumf: f32, w: &BlockQ4K, a: &BlockQ8K, (isum, msum): (i32, i32)) -> f32 {
    let sumf = (-(a.d * fp(w.dmin))).mul_add(msum as f32, sumf);
    (a.d * fp(w.d)).mul_add(isum as f32, sumf)
}

/// `ggml_vec_dot_q4_K_q8_K` with `nrc == 2`: `acc -= msum * dmin`, `acc += isum * d`, each a
/// rounded multiply then an add.
#[inline(always)]
pub fn step_q4k_mmla(acc: f32, w: &BlockQ4K, a: &BlockQ8K, (isum, msum): (i32, i32)) -> f32 {
    let acc = acc - msum as f32 * (fp(w.dmin) * a.d);
    acc + isum as f32 * (fp(w.d) * a.d)
}

/// `ggml_vec_dot_q5_K_q8_K`: `sumf += d * isum - dmin * msum` (the second product rounded, the
/// difference fused), then the add.
#[inline(always)]
pub fn step_q5k(sumf: f32, w: &BlockQ5K, a: &BlockQ8K, (isum, msum): (i32, i32)) -> f32 {
    let d = a.d * fp(w.d);
    let dmin = a.d * fp(w.dmin);
    sumf + d.mul_add(isum as f32, -(msum as f32 * dmin))
}

/// `ggml_vec_dot_q6_K_q8_K`: `sum += d_x * d_y * isum` (fused).
#[inline(always)]
pub fn step_q6k(sum: f32, w: &BlockQ6K, a: &BlockQ8K, isum: i32) -> f32 {
    (fp(w.d) * a.d).mul_add(isum as f32, sum)
}

/// `ggml_vec_dot_q6_K_q8_K` with `nrc == 2`: a rounded multiply then an add.
#[inline(always)]
pub fn step_q6k_mmla(acc: f32, w: &BlockQ6K, a: &BlockQ8K, isum: i32) -> f32 {
    acc + isum as f32 * (fp(w.d) * a.d)
}

/// `ggml_vec_dot_q2_K_q8_K`: `sum += dmin * msum` with `dmin = -d_y * dmin_x`, then
/// `sum += d * isum`, both fused.
#[inline(always)]
pub fn step_q2k(sum: f32, w: &BlockQ2K, a: &BlockQ8K, (isum, msum): (i32, i32)) -> f32 {
    let sum = (-a.d * fp(w.dmin)).mul_add(msum as f32, sum);
    (a.d * fp(w.d)).mul_add(isum as f32, sum)
}

/// `ggml_vec_dot_q3_K_q8_K`: `sum += d * isum` (fused).
#[inline(always)]
pub fn step_q3k(sum: f32, w: &BlockQ3K, a: &BlockQ8K, isum: i32) -> f32 {
    (a.d * fp(w.d)).mul_add(isum as f32, sum)
}

/// `ggml_vec_dot_iq4_xs_q8_K`: `sumf += d_x * d_y * isum` (fused).
#[inline(always)]
pub fn step_iq4xs(sumf: f32, w: &BlockIQ4XS, a: &BlockQ8K, isum: i32) -> f32 {
    (fp(w.d) * a.d).mul_add(isum as f32, sumf)
}

/// A k-quant dot product: `step` over the blocks with their integers from `ints`.
#[inline(always)]
pub fn fold_k<W, I>(
    w: &[W],
    a: &[BlockQ8K],
    ints: impl Fn(&W, &BlockQ8K) -> I,
    step: impl Fn(f32, &W, &BlockQ8K, I) -> f32,
) -> f32 {
    w.iter()
        .zip(a)
        .fold(0f32, |s, (w, a)| step(s, w, a, ints(w, a)))
}

// ---------------------------------------------------------------------------------------------
// Activations

/// ggml's NEON `quantize_row_q8_0` / `_q8_1` for one block: `d = amax / 127`, `id = 1 / d`
/// (not x86's `127 / amax`), `q = round_half_even(x * id)` (`vcvtnq_s32_f32`); and
/// `s = f16(d * sum(q))`.
pub fn quantize_q8(x: &[f32]) -> (f32, [i8; 32], i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i32 as i8;
        sum += *q as i32;
    }
    (d, qs, sum)
}

pub fn quantize_block_q8_0(x: &[f32]) -> BlockQ8_0 {
    let (d, qs, _) = quantize_q8(x);
    BlockQ8_0 {
        d: f32_to_f16(d),
        qs,
    }
}

pub fn quantize_block_q8_1(x: &[f32]) -> BlockQ8_1 {
    let (d, qs, sum) = quantize_q8(x);
    BlockQ8_1 {
        d: f32_to_f16(d),
        s: f32_to_f16(d * sum as f32),
        qs,
    }
}
