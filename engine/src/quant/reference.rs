//! Scalar dot products with exactly the arithmetic of ggml's x86 (AVX2 build) kernels: the same
//! integer sums, split over the same eight 32-bit lanes, and the same float operations in the same
//! order (fused multiply-adds included). They are the fallback kernels and the oracle the SIMD
//! kernels are tested against, bit for bit.
//!
//! Two accumulation schemes occur:
//! * "lanes" (`ggml_vec_dot_*` and llamafile's tinyBLAS): eight lanes, lane `l` of a 32-value
//!   chunk holding the dot product of values `4l..4l+4`; per block `acc[l] = fma(d, lane, acc[l])`,
//!   and at the end ggml's `hsum_float_8`.
//! * "per block" (the repacked `gemv/gemm_*_8x8` kernels ggml uses for Q4_0 and Q4_K when the row
//!   count is a multiple of 8): one integer per block, `acc = fma(sum, d_w * d_a, acc)`.

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

/// Weight blocks of 32 values whose dot product with Q8_0 activations is "lanes" (or "per
/// block" for Q4_0 when repacked).
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

/// `ggml_gemv/gemm_q4_0_8x8_q8_0`.
pub fn dot_per_block<B: Block32>(w: &[B], a: &[BlockQ8_0]) -> f32 {
    let mut acc = 0f32;
    for (w, a) in w.iter().zip(a) {
        let s = dot32(&w.values(), &a.qs) as f32;
        acc = s.mul_add(w.d() * f16_to_f32(a.d), acc);
    }
    acc
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

/// Integer parts of a Q4_K block against a Q8_K block: `(sum_j sc_j * dot_j, sum_j m_j * bsum_j)`.
#[inline(always)]
pub fn q4k_block_sums(w: &BlockQ4K, a: &BlockQ8K) -> (i32, i32) {
    let (sc, mn) = scales_mins_k4(&w.scales);
    let v = w.values();
    let bs = bsums32(a);
    let mut isum = 0i32;
    let mut msum = 0i32;
    for j in 0..8 {
        let d: i32 = (0..32)
            .map(|i| v[j * 32 + i] as i32 * a.qs[j * 32 + i] as i32)
            .sum();
        isum += sc[j] as i32 * d;
        msum += mn[j] as i32 * bs[j];
    }
    (isum, msum)
}

/// `ggml_gemv/gemm_q4_K_8x8_q8_K` (weights repacked: row count a multiple of 8).
pub fn dot_q4k_per_block(w: &[BlockQ4K], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    let mut accm = 0f32;
    for (w, a) in w.iter().zip(a) {
        let (isum, msum) = q4k_block_sums(w, a);
        acc = (isum as f32).mul_add(f16_to_f32(w.d) * a.d, acc);
        accm = (msum as f32).mul_add(f16_to_f32(w.dmin) * a.d, accm);
    }
    acc - accm
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
