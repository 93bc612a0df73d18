//! SIMD building blocks of the x86 kernels: how 8-bit products are summed at each feature level
//! ([`Dot`]), horizontal sums in ggml's order, prefetching and lane transposes.

use std::arch::x86_64::*;

/// Integer dot-product primitives on 256-bit vectors.
pub(crate) trait Dot {
    /// Whether `dpbusd` saturates 16-bit intermediates (`maddubs`), so unsigned operands must
    /// stay below 128.
    const SATURATES: bool;
    /// `acc + sum of 4 (u8 * i8)` per 32-bit lane.
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
    /// `acc + sum of 2 (i16 * i16)` per 32-bit lane.
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i;
}

pub(crate) struct Maddubs;
pub(crate) struct VnniVex;
pub(crate) struct VnniEvex;

impl Dot for Maddubs {
    const SATURATES: bool = true;
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(
            acc,
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)),
        )
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, b))
    }
}

impl Dot for VnniVex {
    const SATURATES: bool = false;
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_avx_epi32(acc, a, b)
    }
}

impl Dot for VnniEvex {
    const SATURATES: bool = false;
    #[inline(always)]
    unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }
    #[inline(always)]
    unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        _mm256_dpwssd_epi32(acc, a, b)
    }
}

#[inline(always)]
pub(super) unsafe fn f16x1(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// ggml's `hsum_float_8`.
#[inline(always)]
pub(crate) unsafe fn hsum8(x: __m256) -> f32 {
    let mut r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    _mm_cvtss_f32(r)
}

/// Sum of 8 i32 lanes.
#[inline(always)]
pub(crate) unsafe fn hsum_i32(a: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}

/// Prefetches the `b`-th of `nb` slices of `step` bytes starting at `next`: spread over a
/// tile's block loop, this fetches the next tile's weights (which follow the current tile's in
/// memory) as one sequential stream. Decoding is bound by memory bandwidth, and a tile's rows
/// are too short for the hardware prefetchers to pick up on their own.
#[inline(always)]
pub(crate) unsafe fn prefetch_slice(next: *const i8, b: usize, step: usize) {
    let mut o = b * step;
    while o < (b + 1) * step {
        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(o));
        o += 64;
    }
}

#[inline(always)]
pub(super) unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// The 32-bit lanes of eight vectors transposed: lane `r` of result `l` is lane `l` of `v[r]`.
#[inline(always)]
pub(super) unsafe fn transpose8x8(v: [__m256i; 8]) -> [__m256i; 8] {
    let t: [__m256i; 8] = std::array::from_fn(|p| {
        let (a, b) = (v[2 * (p / 2)], v[2 * (p / 2) + 1]);
        if p % 2 == 0 {
            _mm256_unpacklo_epi32(a, b)
        } else {
            _mm256_unpackhi_epi32(a, b)
        }
    });
    // u[q]: lanes l and l + 4 (l = q % 4) of rows 0..4 (q < 4) or 4..8 (q >= 4).
    let u: [__m256i; 8] = std::array::from_fn(|q| {
        let base = 4 * (q / 4) + (q % 4) / 2;
        let (a, b) = (t[base], t[base + 2]);
        if q % 2 == 0 {
            _mm256_unpacklo_epi64(a, b)
        } else {
            _mm256_unpackhi_epi64(a, b)
        }
    });
    std::array::from_fn(|l| {
        let (a, b) = (u[l % 4], u[4 + l % 4]);
        if l < 4 {
            _mm256_permute2x128_si256(a, b, 0x20)
        } else {
            _mm256_permute2x128_si256(a, b, 0x31)
        }
    })
}
