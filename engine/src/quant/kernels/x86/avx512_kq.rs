//! 512-bit prompt kernels for Q4_K and Q6_K (many activation rows) with the numerics of
//! `ggml_vec_dot_q4_K_q8_K` / `ggml_vec_dot_q6_K_q8_K` for every output.
//!
//! Weights are decoded once per chunk ([`DecodedK`]). A zmm holds one 32-value chunk of a
//! weight row against the same chunk of two activation rows (interleaved once per matmul,
//! [`ActSide`]), so it accumulates both outputs' eight ggml lanes side by side: a super-block
//! takes eight `maddubs` + `vpdpwssd` per two outputs and no folding. The float side, which ggml
//! does per output with 256- and 128-bit vectors, is done for two activation rows per zmm (the
//! eight-lane accumulators) or four (Q4_K's four-lane min accumulators), with the same
//! operations on the same values in every lane, so each output keeps ggml's rounding.

use std::arch::x86_64::*;

use super::super::super::{blocks::*, OutPtr};
use super::kq_prompt::{ActSide, PromptK, Rest};
use super::quants::DecodedK;
use super::simd::hsum8;

/// Activation rows per tile (a multiple of four: Q4_K's mins take four rows per zmm).
const RA: usize = 8;
/// Weight rows per tile.
const RW: usize = 2;
/// Weight rows decoded together (552 bytes per super-block; a panel stays in the L2 cache).
pub(super) const PANEL: usize = 48;

/// An `RW x RA` tile: weight rows `w[r * nb..]` (decoded) against activation rows
/// `i0..i0 + RA` of `t`.
#[inline(always)]
unsafe fn tile<B: PromptK>(
    w: &[DecodedK<B>],
    t: &ActSide,
    i0: usize,
    nb: usize,
) -> [[f32; RA]; RW] {
    const H: usize = RA / 2;
    const Q: usize = RA / 4;
    // acc[r][h]: the eight lanes of rows 2h (low half) and 2h + 1 (high half).
    let mut acc = [[_mm512_setzero_ps(); H]; RW];
    // accm[r][q]: Q4_K's four min lanes of rows 4q..4q + 4, a 128-bit lane each.
    let mut accm = [[_mm512_setzero_ps(); Q]; RW];
    // DecodedK's `extra` of Q4_K holds every min twice: take one of each, in every 128-bit lane.
    let mins_idx = _mm512_set_epi16(
        14, 12, 10, 8, 6, 4, 2, 0, 14, 12, 10, 8, 6, 4, 2, 0, 14, 12, 10, 8, 6, 4, 2, 0, 14, 12,
        10, 8, 6, 4, 2, 0,
    );
    let pairs = t.m / 2;
    for b in 0..nb {
        let side = b * t.m + i0;
        let q8 = t.qs.as_ptr().add(b * pairs + i0 / 2) as *const i8;
        let mut is = [[_mm512_setzero_si512(); H]; RW];
        if !B::Q4K {
            // Lane l of each row starts at -32 (bs[2l] sc[2l] + bs[2l+1] sc[2l+1]).
            for r in 0..RW {
                let wd = w.get_unchecked(r * nb + b);
                let sc_all =
                    _mm512_broadcast_i64x4(_mm256_load_si256(wd.extra.as_ptr() as *const __m256i));
                for h in 0..H {
                    let bs =
                        _mm512_loadu_si512(t.bs16.as_ptr().add(side + 2 * h) as *const __m512i);
                    let corr = _mm512_slli_epi32(_mm512_madd_epi16(bs, sc_all), 5);
                    is[r][h] = _mm512_sub_epi32(_mm512_setzero_si512(), corr);
                }
            }
        }
        for c in 0..8 {
            let mut av = [_mm512_setzero_si512(); H];
            for h in 0..H {
                av[h] = _mm512_loadu_si512(q8.add(512 * h + 64 * c) as *const __m512i);
            }
            for r in 0..RW {
                let wd = w.get_unchecked(r * nb + b);
                let q =
                    _mm512_broadcast_i64x4(_mm256_load_si256(wd.u[c].as_ptr() as *const __m256i));
                let sc =
                    _mm512_broadcast_i64x4(_mm256_load_si256(wd.sc[c].as_ptr() as *const __m256i));
                for h in 0..H {
                    is[r][h] = _mm512_dpwssd_epi32(is[r][h], _mm512_maddubs_epi16(q, av[h]), sc);
                }
            }
        }
        let d8 = _mm512_castps256_ps512(_mm256_loadu_ps(t.d.as_ptr().add(side)));
        let da: [__m512; H] = std::array::from_fn(|h| {
            let (x, y) = (2 * h as i32, 2 * h as i32 + 1);
            _mm512_permutexvar_ps(
                _mm512_set_epi32(y, y, y, y, y, y, y, y, x, x, x, x, x, x, x, x),
                d8,
            )
        });
        for r in 0..RW {
            let wd = w.get_unchecked(r * nb + b);
            let d = _mm512_set1_ps(wd.d);
            for h in 0..H {
                let dd = _mm512_mul_ps(da[h], d);
                acc[r][h] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(is[r][h]), acc[r][h]);
            }
            if B::Q4K {
                let ext =
                    _mm512_castsi256_si512(_mm256_load_si256(wd.extra.as_ptr() as *const __m256i));
                let mins = _mm512_permutexvar_epi16(mins_idx, ext);
                let ndmin = _mm512_set1_ps(-wd.dmin);
                for q in 0..Q {
                    let bs =
                        _mm512_loadu_si512(t.bs32.as_ptr().add(side + 4 * q) as *const __m512i);
                    let prod = _mm512_madd_epi16(bs, mins);
                    let (x, y, z, u) = (
                        4 * q as i32,
                        4 * q as i32 + 1,
                        4 * q as i32 + 2,
                        4 * q as i32 + 3,
                    );
                    let dq = _mm512_permutexvar_ps(
                        _mm512_set_epi32(u, u, u, u, z, z, z, z, y, y, y, y, x, x, x, x),
                        d8,
                    );
                    // (-d_a) * dmin is d_a * (-dmin): rounding is symmetric.
                    let dm = _mm512_mul_ps(dq, ndmin);
                    accm[r][q] = _mm512_fmadd_ps(dm, _mm512_cvtepi32_ps(prod), accm[r][q]);
                }
            }
        }
    }
    let mut out = [[0f32; RA]; RW];
    for r in 0..RW {
        for i in 0..RA {
            let v = acc[r][i / 2];
            let lanes = if i % 2 == 0 {
                _mm512_castps512_ps256(v)
            } else {
                _mm512_extractf32x8_ps(v, 1)
            };
            out[r][i] = hsum8(lanes);
            if B::Q4K {
                let mut m = [0f32; 16];
                _mm512_storeu_ps(m.as_mut_ptr(), accm[r][i / 4]);
                let m = &m[4 * (i % 4)..];
                out[r][i] += (m[0] + m[2]) + (m[1] + m[3]);
            }
        }
    }
    out
}

/// A chunk of weight rows against all `m` activation rows; rows that do not fill a tile go to
/// `rest(weights, activations, activation rows, out)`, the 256-bit kernel of the same numerics.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512dq")]
pub(crate) unsafe fn chunk<B: PromptK>(
    w: &[B],
    a: &[BlockQ8K],
    t: &ActSide,
    nb: usize,
    m: usize,
    o: OutPtr,
    rest: Rest<'_, B>,
) {
    sweep_prompt!(RW, RA, PANEL, w, a, nb, m, o, rest, |dec, i| tile::<B>(
        dec, t, i, nb
    ))
}
