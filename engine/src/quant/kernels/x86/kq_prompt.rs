//! Prompt kernels for Q4_K and Q6_K (many activation rows) with the numerics of
//! `ggml_vec_dot_q4_K_q8_K` / `ggml_vec_dot_q6_K_q8_K` for every output: what the 256-bit and
//! 512-bit ([`super::avx512_kq`]) tiles share, and the 256-bit tile.
//!
//! Weights are decoded once per chunk ([`DecodedK`]); the activations' scales and sums are laid
//! out block-major once per matmul ([`ActSide`]), so that the float side, which ggml does per
//! output with scalar broadcasts and 128-bit vectors, takes one vector operation for several
//! outputs: the same operations on the same values in every lane, so each output keeps ggml's
//! rounding.

use std::arch::x86_64::*;

use super::super::super::{blocks::*, OutPtr};
use super::quants::{DecodedK, KBlock};
use super::simd::{hsum8, Dot};

/// Where a prompt chunk sends the rows that do not fill its tiles: `rest(weights,
/// activations, activation rows, out)`, the `vec_dot` tiles of the same numerics.
pub(crate) type Rest<'a, B> = &'a dyn Fn(&[B], &[BlockQ8K], usize, OutPtr);

/// The two k-quants with a prompt kernel here.
pub(crate) trait PromptK: KBlock {
    /// Q4_K: mins against the activations' 32-sums in four lanes of their own. Otherwise
    /// (Q6_K): `-32 * scale * 16-sums` taken off the integer lanes.
    const Q4K: bool;
}
impl PromptK for BlockQ4K {
    const Q4K: bool = true;
}
impl PromptK for BlockQ6K {
    const Q4K: bool = false;
}

/// The activations as the tiles read them, block-major so that what a tile needs of one
/// block is side by side.
pub(crate) struct ActSide {
    pub(super) m: usize,
    /// Quants of row pairs: `[b * (m / 2) + h]` holds chunk `c` of rows `2h` and `2h + 1` in
    /// bytes `64c..64c + 32` and `64c + 32..64c + 64`.
    pub(super) qs: Vec<[i8; 512]>,
    /// Scales, `[b * m + i]`.
    pub(super) d: Vec<f32>,
    /// The 16-sums (Q6_K), `[b * m + i]`.
    pub(super) bs16: Vec<[i16; 16]>,
    /// Sums of pairs of 16-sums, as ggml's `_mm_hadd_epi16` forms them (Q4_K), `[b * m + i]`.
    pub(super) bs32: Vec<[i16; 8]>,
}

impl ActSide {
    /// `pairs`: with the row-pair quants (the 512-bit tiles).
    pub(crate) fn new(a: &[BlockQ8K], m: usize, nb: usize, q4k: bool, pairs: bool) -> Self {
        let mut s = ActSide {
            m,
            qs: Vec::with_capacity(if pairs { m / 2 * nb } else { 0 }),
            d: Vec::with_capacity(m * nb),
            bs16: Vec::new(),
            bs32: Vec::new(),
        };
        for b in 0..nb {
            for h in 0..if pairs { m / 2 } else { 0 } {
                let (x, y) = (&a[2 * h * nb + b].qs, &a[(2 * h + 1) * nb + b].qs);
                let mut q = [0i8; 512];
                for c in 0..8 {
                    q[64 * c..64 * c + 32].copy_from_slice(&x[32 * c..32 * c + 32]);
                    q[64 * c + 32..64 * c + 64].copy_from_slice(&y[32 * c..32 * c + 32]);
                }
                s.qs.push(q);
            }
            for i in 0..m {
                let blk = &a[i * nb + b];
                s.d.push(blk.d);
                if q4k {
                    s.bs32.push(std::array::from_fn(|j| {
                        blk.bsums[2 * j] + blk.bsums[2 * j + 1]
                    }));
                } else {
                    s.bs16.push(blk.bsums);
                }
            }
        }
        s
    }
}

/// Activation rows per 256-bit tile (even: Q4_K's mins take two rows per vector).
const RA: usize = 4;
/// Weight rows per 256-bit tile.
const RW: usize = 2;

/// An `RW x RA` tile of 256-bit vectors: weight rows `w[r * nb..]` (decoded) against
/// activation rows `a[i * nb..]`, which are rows `i0..` of `t`.
#[inline(always)]
unsafe fn tile<B: PromptK, D: Dot>(
    w: &[DecodedK<B>],
    a: &[BlockQ8K],
    t: &ActSide,
    i0: usize,
    nb: usize,
) -> [[f32; RA]; RW] {
    const H: usize = RA / 2;
    let mut acc = [[_mm256_setzero_ps(); RA]; RW];
    // accm[r][h]: Q4_K's four min lanes of rows 2h (low half) and 2h + 1 (high half).
    let mut accm = [[_mm256_setzero_ps(); H]; RW];
    // DecodedK's `extra` of Q4_K holds every min twice: one of each per 128-bit lane, ...
    let even = _mm256_set_epi8(
        -1, -1, -1, -1, -1, -1, -1, -1, 13, 12, 9, 8, 5, 4, 1, 0, -1, -1, -1, -1, -1, -1, -1, -1,
        13, 12, 9, 8, 5, 4, 1, 0,
    );
    for b in 0..nb {
        let side = b * t.m + i0;
        let mut is = [[_mm256_setzero_si256(); RA]; RW];
        if !B::Q4K {
            // Lane l starts at -32 (bs[2l] sc[2l] + bs[2l+1] sc[2l+1]).
            for r in 0..RW {
                let wd = w.get_unchecked(r * nb + b);
                let sc_all = _mm256_load_si256(wd.extra.as_ptr() as *const __m256i);
                for i in 0..RA {
                    let bs = _mm256_loadu_si256(t.bs16.as_ptr().add(side + i) as *const __m256i);
                    let corr = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc_all), 5);
                    is[r][i] = _mm256_sub_epi32(_mm256_setzero_si256(), corr);
                }
            }
        }
        for c in 0..8 {
            let mut av = [_mm256_setzero_si256(); RA];
            for i in 0..RA {
                let ab = a.get_unchecked(i * nb + b);
                av[i] = _mm256_loadu_si256(ab.qs.as_ptr().add(32 * c) as *const __m256i);
            }
            for r in 0..RW {
                let wd = w.get_unchecked(r * nb + b);
                let q = _mm256_load_si256(wd.u[c].as_ptr() as *const __m256i);
                let sc = _mm256_load_si256(wd.sc[c].as_ptr() as *const __m256i);
                for i in 0..RA {
                    is[r][i] = D::dpwssd(is[r][i], _mm256_maddubs_epi16(q, av[i]), sc);
                }
            }
        }
        let dp: [__m256; H] = std::array::from_fn(|h| {
            let d = t.d.as_ptr().add(side + 2 * h);
            _mm256_set_m128(_mm_set1_ps(*d.add(1)), _mm_set1_ps(*d))
        });
        for r in 0..RW {
            let wd = w.get_unchecked(r * nb + b);
            let d = _mm256_set1_ps(wd.d);
            for i in 0..RA {
                let dd = _mm256_mul_ps(_mm256_broadcast_ss(&*t.d.as_ptr().add(side + i)), d);
                acc[r][i] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(is[r][i]), acc[r][i]);
            }
            if B::Q4K {
                // ... then [m0..m4, m4..m8] in both halves.
                let ext = _mm256_load_si256(wd.extra.as_ptr() as *const __m256i);
                let mins = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(ext, even), 0b10_00_10_00);
                let ndmin = _mm256_set1_ps(-wd.dmin);
                for h in 0..H {
                    let bs =
                        _mm256_loadu_si256(t.bs32.as_ptr().add(side + 2 * h) as *const __m256i);
                    let prod = _mm256_madd_epi16(bs, mins);
                    // (-d_a) * dmin is d_a * (-dmin): rounding is symmetric.
                    let dm = _mm256_mul_ps(dp[h], ndmin);
                    accm[r][h] = _mm256_fmadd_ps(dm, _mm256_cvtepi32_ps(prod), accm[r][h]);
                }
            }
        }
    }
    let mut out = [[0f32; RA]; RW];
    for r in 0..RW {
        for i in 0..RA {
            out[r][i] = hsum8(acc[r][i]);
            if B::Q4K {
                let mut m = [0f32; 8];
                _mm256_storeu_ps(m.as_mut_ptr(), accm[r][i / 2]);
                let m = &m[4 * (i % 2)..];
                out[r][i] += (m[0] + m[2]) + (m[1] + m[3]);
            }
        }
    }
    out
}

/// A chunk of weight rows against all `m` activation rows with 256-bit tiles; rows that do
/// not fill a tile go to `rest(weights, activations, activation rows, out)`.
#[inline(always)]
pub(super) unsafe fn chunk<B: PromptK, D: Dot>(
    w: &[B],
    a: &[BlockQ8K],
    t: &ActSide,
    nb: usize,
    m: usize,
    o: OutPtr,
    rest: Rest<'_, B>,
) {
    sweep_prompt!(
        RW,
        RA,
        super::avx512_kq::PANEL,
        w,
        a,
        nb,
        m,
        o,
        rest,
        |dec, i| { tile::<B, D>(dec, &a[i * nb..], t, i, nb) }
    )
}
