//! Scalar dot products with exactly the arithmetic of ggml's x86 (AVX2 build) kernels: the same
//! integer sums, split over the same eight 32-bit lanes, and the same float operations in the same
//! order (fused multiply-adds included). They are the fallback kernels and the oracle the SIMD
//! kernels are tested against, bit for bit.
//!
//! The accumulation is "lanes" (`ggml_vec_dot_*` and llamafile's tinyBLAS, what llama.cpp runs
//! with `--no-repack`): eight lanes, lane `l` of a 32-value chunk holding the dot product of
//! values `4l..4l+4`; per block `acc[l] = fma(d, lane, acc[l])`, and at the end ggml's
//! `hsum_float_8`. (ggml's repacked `gemv/gemm_*_8x8` kernels, its default for Q4_0 and Q4_K,
//! accumulate one float per block instead; exo does not follow them.)

use super::blocks::*;

/// ggml's `hsum_float_8`.
#[inline(always)]
pub fn hsum8(v: [f32; 8]) -> f32 {
    let r = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// Dot products of the eight 4-value groups of 32 values.
#[inline(always)]
fn lanes32(w: &[i8; 32], a: &[i8; 32]) -> [i32; 8] {
    let mut s = [0i32; 8];
    for (l, s) in s.iter_mut().enumerate() {
        for i in 4 * l..4 * l + 4 {
            *s += w[i] as i32 * a[i] as i32;
        }
    }
    s
}

#[inline(always)]
fn lanes32_u(w: &[u8], a: &[i8]) -> [i32; 8] {
    let mut s = [0i32; 8];
    for (l, s) in s.iter_mut().enumerate() {
        for i in 4 * l..4 * l + 4 {
            *s += w[i] as i32 * a[i] as i32;
        }
    }
    s
}

#[inline(always)]
fn dot32(w: &[i8; 32], a: &[i8; 32]) -> i32 {
    w.iter().zip(a).map(|(&w, &a)| w as i32 * a as i32).sum()
}

#[inline(always)]
fn fma_lanes(acc: &mut [f32; 8], d: f32, s: [i32; 8]) {
    for l in 0..8 {
        acc[l] = d.mul_add(s[l] as f32, acc[l]);
    }
}

/// Weight blocks of 32 values whose dot product with Q8_0 activations is "lanes".
pub trait Block32: Pod + Send + Sync {
    fn d(&self) -> f32;
    fn values(&self) -> [i8; 32];
}

impl Block32 for BlockQ4_0 {
    fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
    fn values(&self) -> [i8; 32] {
        BlockQ4_0::values(self)
    }
}
impl Block32 for BlockQ5_0 {
    fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
    fn values(&self) -> [i8; 32] {
        BlockQ5_0::values(self)
    }
}
impl Block32 for BlockIQ4NL {
    fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
    fn values(&self) -> [i8; 32] {
        BlockIQ4NL::values(self)
    }
}
impl Block32 for BlockMXFP4 {
    fn d(&self) -> f32 {
        e8m0_to_f32_half(self.e)
    }
    fn values(&self) -> [i8; 32] {
        BlockMXFP4::values(self)
    }
}
impl Block32 for BlockQ8_0 {
    fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
    fn values(&self) -> [i8; 32] {
        self.qs
    }
}

/// `ggml_vec_dot_{q4_0,q5_0,q8_0}_q8_0` (and tinyBLAS for prompts).
pub fn dot_lanes<B: Block32>(w: &[B], a: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 8];
    for (w, a) in w.iter().zip(a) {
        let d = w.d() * f16_to_f32(a.d);
        fma_lanes(&mut acc, d, lanes32(&w.values(), &a.qs));
    }
    hsum8(acc)
}

/// `ggml_vec_dot_iq4_nl_q8_0` (decoding; prompts go through tinyBLAS, [`dot_lanes`]): blocks
/// in pairs, even and odd ones in two sets of lanes added before the final sum, and an odd last
/// block added on its own (`sumf += d * sumi`: a multiply, then an add).
pub fn dot_iq4nl_pairs(w: &[BlockIQ4NL], a: &[BlockQ8_0]) -> f32 {
    dot_pairs(w, a)
}

/// `ggml_vec_dot_mxfp4_q8_0`, the same scheme as IQ4_NL's (ggml has no tinyBLAS or AVX-512
/// path for MXFP4, so prompts and decoding both take it).
pub fn dot_mxfp4_pairs(w: &[BlockMXFP4], a: &[BlockQ8_0]) -> f32 {
    dot_pairs(w, a)
}

fn dot_pairs<B: Block32>(w: &[B], a: &[BlockQ8_0]) -> f32 {
    let mut acc = [[0f32; 8]; 2];
    let pairs = w.len() - w.len() % 2;
    for (b, (w, a)) in w[..pairs].iter().zip(a).enumerate() {
        let d = f16_to_f32(a.d) * w.d();
        fma_lanes(&mut acc[b % 2], d, lanes32(&w.values(), &a.qs));
    }
    let mut sum = hsum8(std::array::from_fn(|l| acc[0][l] + acc[1][l]));
    if let (Some(w), Some(a)) = (w[pairs..].first(), a.get(pairs)) {
        let d = f16_to_f32(a.d) * w.d();
        sum += d * dot32(&w.values(), &a.qs) as f32;
    }
    sum
}

/// Blocks with a min, against Q8_1 activations.
pub trait Block32Min: Pod + Send + Sync {
    fn d(&self) -> f32;
    fn m(&self) -> f32;
    fn values(&self) -> [i8; 32];
}
impl Block32Min for BlockQ4_1 {
    fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
    fn m(&self) -> f32 {
        f16_to_f32(self.m)
    }
    fn values(&self) -> [i8; 32] {
        BlockQ4_1::values(self)
    }
}
impl Block32Min for BlockQ5_1 {
    fn d(&self) -> f32 {
        f16_to_f32(self.d)
    }
    fn m(&self) -> f32 {
        f16_to_f32(self.m)
    }
    fn values(&self) -> [i8; 32] {
        BlockQ5_1::values(self)
    }
}

/// `ggml_vec_dot_{q4_1,q5_1}_q8_1` (`summs += m * s` is contracted to an fma by the compiler).
pub fn dot_lanes_min<B: Block32Min>(w: &[B], a: &[BlockQ8_1]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (w, a) in w.iter().zip(a) {
        summs = w.m().mul_add(f16_to_f32(a.s), summs);
        let d = w.d() * f16_to_f32(a.d);
        fma_lanes(&mut acc, d, lanes32(&w.values(), &a.qs));
    }
    hsum8(acc) + summs
}

/// Sums of the 32-value sub-blocks of a Q8_K block, from its 16-value sums.
#[inline(always)]
fn bsums32(a: &BlockQ8K) -> [i32; 8] {
    let mut s = [0i32; 8];
    for (j, s) in s.iter_mut().enumerate() {
        *s = a.bsums[2 * j] as i32 + a.bsums[2 * j + 1] as i32;
    }
    s
}

/// `ggml_vec_dot_q4_K_q8_K`.
pub fn dot_q4k_lanes(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    let mut accm = [0f32; 4];
    for (w, a) in w.iter().zip(a) {
        let d = a.d * f16_to_f32(w.d);
        let dmin = -a.d * f16_to_f32(w.dmin);
        let (sc, mn) = scales_mins_k4(&w.scales);
        let bs = bsums32(a);
        for i in 0..4 {
            let p = mn[2 * i] as i32 * bs[2 * i] + mn[2 * i + 1] as i32 * bs[2 * i + 1];
            accm[i] = dmin.mul_add(p as f32, accm[i]);
        }
        let v = w.values();
        let mut s = [0i32; 8];
        for c in 0..8 {
            let l = lanes32_u(&v[c * 32..], &a.qs[c * 32..]);
            for i in 0..8 {
                s[i] += sc[c] as i32 * l[i];
            }
        }
        fma_lanes(&mut acc, d, s);
    }
    hsum8(acc) + ((accm[0] + accm[2]) + (accm[1] + accm[3]))
}

/// `ggml_vec_dot_q5_K_q8_K` (`summs += dmin * sum` contracted to an fma).
pub fn dot_q5k(w: &[BlockQ5K], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    let mut summs = 0f32;
    for (w, a) in w.iter().zip(a) {
        let d = a.d * f16_to_f32(w.d);
        let dmin = -a.d * f16_to_f32(w.dmin);
        let (sc, mn) = scales_mins_k4(&w.scales);
        let bs = bsums32(a);
        let msum: i32 = (0..8).map(|j| mn[j] as i32 * bs[j]).sum();
        summs = dmin.mul_add(msum as f32, summs);
        let v = w.values();
        let mut s = [0i32; 8];
        for c in 0..8 {
            let l = lanes32_u(&v[c * 32..], &a.qs[c * 32..]);
            for i in 0..8 {
                s[i] += sc[c] as i32 * l[i];
            }
        }
        fma_lanes(&mut acc, d, s);
    }
    hsum8(acc) + summs
}

/// Lane sums of a Q6_K block against a Q8_K block, as ggml's AVX2 kernel splits them.
#[inline(always)]
pub fn q6k_lanes(w: &BlockQ6K, a: &BlockQ8K) -> [i32; 8] {
    let v = w.values();
    let sc = &w.scales;
    let mut s = [0i32; 8];
    for c in 0..8 {
        let l = lanes32_u(&v[c * 32..], &a.qs[c * 32..]);
        for i in 0..8 {
            s[i] += sc[2 * c + i / 4] as i32 * l[i];
        }
    }
    for (i, s) in s.iter_mut().enumerate() {
        *s -= 32
            * (a.bsums[2 * i] as i32 * sc[2 * i] as i32
                + a.bsums[2 * i + 1] as i32 * sc[2 * i + 1] as i32);
    }
    s
}

/// `ggml_vec_dot_q6_K_q8_K`.
pub fn dot_q6k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    for (w, a) in w.iter().zip(a) {
        let d = a.d * f16_to_f32(w.d);
        fma_lanes(&mut acc, d, q6k_lanes(w, a));
    }
    hsum8(acc)
}

/// Lane sums of 256 values against a Q8_K block with a scale per 16 values (`sc(j)` for values
/// `16j..16j+16`), as ggml's AVX2 kernels split them: lane `l` of 32-value chunk `c` holds
/// values `4l..4l+4` and takes scale `2c + l / 4`.
#[inline(always)]
fn lanes_by16<T: Copy + Into<i32>>(
    v: &[T; 256],
    a: &BlockQ8K,
    sc: impl Fn(usize) -> i32,
) -> [i32; 8] {
    let mut s = [0i32; 8];
    for c in 0..8 {
        for (l, s) in s.iter_mut().enumerate() {
            let p: i32 = (32 * c + 4 * l..32 * c + 4 * l + 4)
                .map(|e| v[e].into() * a.qs[e] as i32)
                .sum();
            *s += sc(2 * c + l / 4) * p;
        }
    }
    s
}

/// `ggml_vec_dot_q2_K_q8_K`: per block the mins' lanes (`m[2l] bs[2l] + m[2l+1] bs[2l+1]`)
/// scaled by `-d_a * dmin` first, then the quants' lanes by `d_a * d`.
pub fn dot_q2k(w: &[BlockQ2K], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    for (w, a) in w.iter().zip(a) {
        let d = a.d * f16_to_f32(w.d);
        let dmin = -a.d * f16_to_f32(w.dmin);
        let mins = std::array::from_fn(|l| {
            (w.scales[2 * l] >> 4) as i32 * a.bsums[2 * l] as i32
                + (w.scales[2 * l + 1] >> 4) as i32 * a.bsums[2 * l + 1] as i32
        });
        fma_lanes(&mut acc, dmin, mins);
        let s = lanes_by16(&w.values(), a, |j| (w.scales[j] & 0xF) as i32);
        fma_lanes(&mut acc, d, s);
    }
    hsum8(acc)
}

/// `ggml_vec_dot_q3_K_q8_K`.
pub fn dot_q3k(w: &[BlockQ3K], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    for (w, a) in w.iter().zip(a) {
        let d = a.d * f16_to_f32(w.d);
        let sc = w.scales();
        fma_lanes(&mut acc, d, lanes_by16(&w.values(), a, |j| sc[j] as i32));
    }
    hsum8(acc)
}

/// `ggml_vec_dot_iq4_xs_q8_K`: a scale per 32 values, lane `l` of each sub-block holding
/// values `4l..4l+4`.
pub fn dot_iq4xs(w: &[BlockIQ4XS], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    for (w, a) in w.iter().zip(a) {
        let d = f16_to_f32(w.d) * a.d;
        let ls = w.scales();
        fma_lanes(
            &mut acc,
            d,
            lanes_by16(&w.values(), a, |j| ls[j / 2] as i32),
        );
    }
    hsum8(acc)
}
