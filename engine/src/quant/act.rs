//! Activation quantization with the numerics of ggml's x86 CPU backend.
//!
//! * `Q8_0` / `Q8_1` (`quantize_row_q8_0` / `_q8_1`, AVX2 build): per 32 values `amax = max|x|`,
//!   `d = amax / 127` stored as f16, `id = 127 / amax` (not `1 / d`), `q = round_half_even(x * id)`.
//!   `Q8_1` also stores `s = f16(d * sum(q))` with the unrounded `d`.
//! * `Q8_K` (`quantize_row_q8_K_ref`): per 256 values, `max` is the first value of largest
//!   magnitude (signed), `iscale = -127 / max`, `q = min(127, round_half_even(iscale * x))`,
//!   `d = 1 / iscale`, and sums of each 16 quants.
//!
//! ggml's repacked Q4_K path quantizes groups of four rows with `ggml_quantize_mat_q8_K_4x8`,
//! which differs in one corner: when both `+amax` and `-amax` occur in a block it always picks
//! the positive one. [`Q8KActs`] keeps that variant for the rows where it differs.

use rayon::prelude::*;

use super::blocks::{f32_to_f16, BlockQ8K, BlockQ8_0, BlockQ8_1, QK, QK_K};

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

/// `quantize_row_q8_K_ref` for one block (`positive_wins = false`), or the variant of
/// `ggml_quantize_mat_q8_K_4x8` (`positive_wins = true`).
#[inline]
pub fn quantize_block_q8k(x: &[f32], positive_wins: bool) -> BlockQ8K {
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
    if positive_wins && x.contains(&amax) {
        max = amax;
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

/// True when the two Q8_K variants differ on this block: the first value of largest magnitude
/// is negative and the positive magnitude occurs too.
fn q8k_tie(x: &[f32]) -> bool {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    amax != 0.0 && max < 0.0 && x.contains(&amax)
}

fn quantize_rows<B: Send + Copy + Default>(
    x: &[f32],
    block: usize,
    f: impl Fn(&[f32]) -> B + Sync,
) -> Vec<B> {
    let nb = x.len() / block;
    let mut out = vec![B::default(); nb];
    if x.len() >= PAR_MIN {
        let per = (nb / (4 * rayon::current_num_threads())).max(8);
        out.par_chunks_mut(per)
            .zip(x.par_chunks(per * block))
            .for_each(|(o, x)| {
                for (b, x) in o.iter_mut().zip(x.chunks_exact(block)) {
                    *b = f(x);
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
pub fn quantize_q8_0(x: &[f32]) -> Vec<BlockQ8_0> {
    assert_eq!(x.len() % QK, 0);
    quantize_rows(x, QK, quantize_block_q8_0)
}

pub fn quantize_q8_1(x: &[f32]) -> Vec<BlockQ8_1> {
    assert_eq!(x.len() % QK, 0);
    quantize_rows(x, QK, quantize_block_q8_1)
}

/// Q8_K activations of `m` rows of width `k`.
pub struct Q8KActs {
    /// `quantize_row_q8_K` for every row: what ggml's `vec_dot` kernels use.
    pub rows: Vec<BlockQ8K>,
    /// The `ggml_quantize_mat_q8_K_4x8` variant of the first `m - m % 4` rows, only when it differs
    /// from `rows` somewhere (then the remaining rows are copies of `rows`).
    pub grouped: Option<Vec<BlockQ8K>>,
}

impl Q8KActs {
    /// Blocks as ggml's repacked (interleaved) kernels see them.
    pub fn for_repacked(&self) -> &[BlockQ8K] {
        self.grouped.as_deref().unwrap_or(&self.rows)
    }
}

pub fn quantize_q8k(x: &[f32], m: usize) -> Q8KActs {
    assert_eq!(x.len() % QK_K, 0);
    let rows = quantize_rows(x, QK_K, |b| quantize_block_q8k(b, false));
    let k = x.len().checked_div(m).unwrap_or(0);
    let grouped_len = (m - m % 4) * k;
    let grouped = if x[..grouped_len].chunks_exact(QK_K).any(q8k_tie) {
        let mut g = rows.clone();
        for (b, x) in g.iter_mut().zip(x[..grouped_len].chunks_exact(QK_K)) {
            *b = quantize_block_q8k(x, true);
        }
        Some(g)
    } else {
        None
    };
    Q8KActs { rows, grouped }
}
