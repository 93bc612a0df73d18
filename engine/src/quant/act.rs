//! Activation quantization with the numerics of ggml's x86 CPU backend (on aarch64 levels,
//! Q8_0 / Q8_1 follow ggml's NEON quantizer instead: `kernels/arm/act.rs`).
//!
//! * `Q8_0` / `Q8_1` (`quantize_row_q8_0` / `_q8_1`, AVX2 build): per 32 values `amax = max|x|`,
//!   `d = amax / 127` stored as f16, `id = 127 / amax` (not `1 / d`), `q = round_half_even(x * id)`.
//!   `Q8_1` also stores `s = f16(d * sum(q))` with the unrounded `d`.
//! * `Q8_K` (`quantize_row_q8_K_ref`): per 256 values, `max` is the first value of largest
//!   magnitude (signed), `iscale = -127 / max`, `q = min(127, round_half_even(iscale * x))`,
//!   `d = 1 / iscale`, and sums of each 16 quants.
//!
//! (ggml's repacked Q4_K path quantizes with `ggml_quantize_mat_q8_K_4x8` instead, which picks
//! `+amax` when both signs of it occur; with `--no-repack`, which exo follows, it does not run.)

use super::{
    blocks::{f32_to_f16, BlockQ8K, BlockQ8_0, BlockQ8_1, QK, QK_K},
    Isa,
};

/// Below this many values a quantization runs on the calling thread.
const PAR_MIN: usize = 1 << 15;

#[inline(always)]
fn round_q8(v: f32) -> i8 {
    // `_mm256_round_ps(_MM_ROUND_NEAREST)` then `cvtps_epi32` and saturating packs.
    v.round_ties_even().clamp(-128.0, 127.0) as i8
}

/// ggml's AVX2 `quantize_row_q8_0` for one block.
#[inline]
pub fn quantize_block_q8_0(x: &[f32]) -> BlockQ8_0 {
    debug_assert_eq!(x.len(), QK);
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = round_q8(v * id);
    }
    BlockQ8_0 {
        d: f32_to_f16(d),
        qs,
    }
}

/// ggml's AVX2 `quantize_row_q8_1` for one block.
#[inline]
pub fn quantize_block_q8_1(x: &[f32]) -> BlockQ8_1 {
    debug_assert_eq!(x.len(), QK);
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = round_q8(v * id);
        sum += *q as i32;
    }
    BlockQ8_1 {
        d: f32_to_f16(d),
        s: f32_to_f16(d * sum as f32),
        qs,
    }
}

/// ggml's `nearest_int`: adding 1.5 * 2^23 rounds half to even.
#[inline(always)]
fn nearest_int(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// `quantize_row_q8_K_ref` for one block.
#[inline]
pub fn quantize_block_q8k(x: &[f32]) -> BlockQ8K {
    debug_assert_eq!(x.len(), QK_K);
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    let mut out = BlockQ8K::default();
    if amax == 0.0 {
        return out;
    }
    let iscale = -127.0 / max;
    for (q, &v) in out.qs.iter_mut().zip(x) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (j, s) in out.bsums.iter_mut().enumerate() {
        *s = out.qs[j * 16..j * 16 + 16].iter().map(|&q| q as i16).sum();
    }
    out.d = 1.0 / iscale;
    out
}

struct SendPtr<T>(*mut T);
// SAFETY: used only to write disjoint elements from the pool's threads.
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

fn quantize_rows<B: Send + Copy + Default>(
    x: &[f32],
    block: usize,
    f: impl Fn(&[f32]) -> B + Sync,
) -> Vec<B> {
    let nb = x.len() / block;
    let mut out = vec![B::default(); nb];
    if x.len() >= PAR_MIN {
        let per = (nb / (4 * super::num_threads())).max(8);
        let o = SendPtr(out.as_mut_ptr());
        super::par_for(nb.div_ceil(per), |c| {
            let (b0, b1) = (c * per, ((c + 1) * per).min(nb));
            for b in b0..b1 {
                // SAFETY: each block index is written by one task only.
                unsafe { *o.get().add(b) = f(&x[b * block..(b + 1) * block]) };
            }
        });
    } else {
        for (b, x) in out.iter_mut().zip(x.chunks_exact(block)) {
            *b = f(x);
        }
    }
    out
}

/// Rows of `x` (`len` a multiple of 32) quantized to Q8_0 blocks, row after row.
pub fn quantize_q8_0(x: &[f32], isa: Isa) -> Vec<BlockQ8_0> {
    assert_eq!(x.len() % QK, 0);
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `isa` is supported by this CPU.
        return quantize_rows(x, QK, |b| unsafe { x86::block_q8_0(b) });
    }
    #[cfg(target_arch = "aarch64")]
    if isa.is_arm() {
        return quantize_rows(x, QK, super::kernels::arm::act::block_q8_0);
    }
    let _ = isa;
    quantize_rows(x, QK, quantize_block_q8_0)
}

pub fn quantize_q8_1(x: &[f32], isa: Isa) -> Vec<BlockQ8_1> {
    assert_eq!(x.len() % QK, 0);
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `isa` is supported by this CPU.
        return quantize_rows(x, QK, |b| unsafe { x86::block_q8_1(b) });
    }
    #[cfg(target_arch = "aarch64")]
    if isa.is_arm() {
        return quantize_rows(x, QK, super::kernels::arm::act::block_q8_1);
    }
    let _ = isa;
    quantize_rows(x, QK, quantize_block_q8_1)
}

/// Q8_K activations: `quantize_row_q8_K` of every row, what ggml's `vec_dot` kernels use.
pub struct Q8KActs {
    pub rows: Vec<BlockQ8K>,
}

pub fn quantize_q8k(x: &[f32], isa: Isa) -> Q8KActs {
    assert_eq!(x.len() % QK_K, 0);
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 {
        // SAFETY: `isa` is supported by this CPU.
        return Q8KActs {
            rows: quantize_rows(x, QK_K, |b| unsafe { x86::block_q8k(b) }),
        };
    }
    let _ = isa;
    Q8KActs {
        rows: quantize_rows(x, QK_K, quantize_block_q8k),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The same quantizers with AVX2; bit-identical to the scalar ones.

    use std::arch::x86_64::*;

    use super::super::blocks::{BlockQ8K, BlockQ8_0, BlockQ8_1, QK_K};

    /// `max|x|` of 32 values and their quants at `x * id`, as ggml's AVX2 code computes them.
    #[inline(always)]
    unsafe fn q8_32(x: &[f32]) -> (f32, __m256i, [__m256i; 4]) {
        let p = x.as_ptr();
        let v = [
            _mm256_loadu_ps(p),
            _mm256_loadu_ps(p.add(8)),
            _mm256_loadu_ps(p.add(16)),
            _mm256_loadu_ps(p.add(24)),
        ];
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_andnot_ps(sign, v[0]);
        for vi in &v[1..] {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
        let mut q = [_mm256_setzero_si256(); 4];
        for (qi, vi) in q.iter_mut().zip(v) {
            let r = _mm256_round_ps(
                _mm256_mul_ps(vi, id),
                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
            );
            *qi = _mm256_cvtps_epi32(r);
        }
        let a = _mm256_packs_epi32(q[0], q[1]);
        let b = _mm256_packs_epi32(q[2], q[3]);
        let bytes = _mm256_permutevar8x32_epi32(
            _mm256_packs_epi16(a, b),
            _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
        );
        (amax, bytes, q)
    }

    #[inline(always)]
    unsafe fn f16(x: f32) -> u16 {
        _mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(x), _MM_FROUND_TO_NEAREST_INT), 0) as u16
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block_q8_0(x: &[f32]) -> BlockQ8_0 {
        let (amax, bytes, _) = q8_32(x);
        let mut out = BlockQ8_0 {
            d: f16(amax / 127.0),
            qs: [0; 32],
        };
        _mm256_storeu_si256(out.qs.as_mut_ptr() as *mut __m256i, bytes);
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block_q8_1(x: &[f32]) -> BlockQ8_1 {
        let (amax, bytes, q) = q8_32(x);
        let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        let sum = super::super::kernels::hsum_i32_256(s);
        let d = amax / 127.0;
        let mut out = BlockQ8_1 {
            d: f16(d),
            s: f16(d * sum as f32),
            qs: [0; 32],
        };
        _mm256_storeu_si256(out.qs.as_mut_ptr() as *mut __m256i, bytes);
        out
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn block_q8k(x: &[f32]) -> BlockQ8K {
        let p = x.as_ptr();
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for i in 0..QK_K / 8 {
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(p.add(8 * i))));
        }
        let m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        let m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        let amax = _mm_cvtss_f32(m4);
        let mut out = BlockQ8K::default();
        if amax == 0.0 {
            return out;
        }
        // The first value of that magnitude gives the sign.
        let am = _mm256_set1_ps(amax);
        let mut max = amax;
        for i in 0..QK_K / 8 {
            let v = _mm256_loadu_ps(p.add(8 * i));
            let hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, v), am, _CMP_EQ_OQ));
            if hit != 0 {
                max = x[8 * i + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let is = _mm256_set1_ps(iscale);
        for j in 0..QK_K / 32 {
            let mut q = [_mm256_setzero_si256(); 4];
            for (k, qk) in q.iter_mut().enumerate() {
                let v = _mm256_loadu_ps(p.add(32 * j + 8 * k));
                let r = _mm256_round_ps(
                    _mm256_mul_ps(is, v),
                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
                );
                *qk = _mm256_cvtps_epi32(r);
            }
            // Two 16-value sums.
            let s0 = _mm256_add_epi32(q[0], q[1]);
            let s1 = _mm256_add_epi32(q[2], q[3]);
            out.bsums[2 * j] = super::super::kernels::hsum_i32_256(s0) as i16;
            out.bsums[2 * j + 1] = super::super::kernels::hsum_i32_256(s1) as i16;
            let a = _mm256_packs_epi32(q[0], q[1]);
            let b = _mm256_packs_epi32(q[2], q[3]);
            let bytes = _mm256_permutevar8x32_epi32(
                _mm256_packs_epi16(a, b),
                _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7),
            );
            _mm256_storeu_si256(out.qs.as_mut_ptr().add(32 * j) as *mut __m256i, bytes);
        }
        out.d = 1.0 / iscale;
        out
    }
}
