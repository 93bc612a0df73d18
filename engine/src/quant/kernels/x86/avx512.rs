//! 512-bit kernels. A zmm register holds two outputs' eight lanes side by side (two weight rows
//! against one activation row), so every output keeps exactly the lane split and float
//! operation order of the 256-bit kernels and of ggml.

use std::arch::x86_64::*;

use super::super::super::{blocks::*, run_chunks, ActData, Activations, OutPtr, WeightType};
use super::{chunk_w32, hsum8, VnniEvex, A32, W32};

/// Two weight blocks (rows `r` and `r+1`) as unsigned bytes: row `r` in the low 256 bits.
pub(crate) trait W32x2: W32 {
    unsafe fn load_u2(w0: &Self, w1: &Self) -> __m512i;
}

/// `[qs0, qs0, qs1, qs1]` with the odd 128-bit lanes shifted right by 4, masked to nibbles:
/// low nibbles of row 0, high nibbles of row 0, then the same for row 1.
#[inline(always)]
unsafe fn nibbles2(q0: &[u8; 16], q1: &[u8; 16]) -> __m512i {
    let x = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128(q0.as_ptr() as *const __m128i)),
        _mm_loadu_si128(q1.as_ptr() as *const __m128i),
        1,
    );
    let z = _mm512_permutexvar_epi64(
        _mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0),
        _mm512_castsi256_si512(x),
    );
    let z = _mm512_mask_srli_epi16(z, 0xFF00_FF00, z, 4);
    _mm512_and_si512(z, _mm512_set1_epi8(0xF))
}

/// Adds 16 to the bytes whose bit is set in `qh0` (row 0) or `qh1` (row 1).
#[inline(always)]
unsafe fn high2(z: __m512i, qh0: &[u8; 4], qh1: &[u8; 4]) -> __m512i {
    let bits = u32::from_le_bytes(*qh0) as u64 | ((u32::from_le_bytes(*qh1) as u64) << 32);
    _mm512_mask_add_epi8(z, _cvtu64_mask64(bits), z, _mm512_set1_epi8(0x10))
}

impl W32x2 for BlockQ4_0 {
    #[inline(always)]
    unsafe fn load_u2(w0: &Self, w1: &Self) -> __m512i {
        nibbles2(&w0.qs, &w1.qs)
    }
}
impl W32x2 for BlockQ4_1 {
    #[inline(always)]
    unsafe fn load_u2(w0: &Self, w1: &Self) -> __m512i {
        nibbles2(&w0.qs, &w1.qs)
    }
}
impl W32x2 for BlockQ5_0 {
    #[inline(always)]
    unsafe fn load_u2(w0: &Self, w1: &Self) -> __m512i {
        high2(nibbles2(&w0.qs, &w1.qs), &w0.qh, &w1.qh)
    }
}
impl W32x2 for BlockQ5_1 {
    #[inline(always)]
    unsafe fn load_u2(w0: &Self, w1: &Self) -> __m512i {
        high2(nibbles2(&w0.qs, &w1.qs), &w0.qh, &w1.qh)
    }
}
impl W32x2 for BlockQ8_0 {
    #[inline(always)]
    unsafe fn load_u2(w0: &Self, w1: &Self) -> __m512i {
        let lo = _mm256_loadu_si256(w0.qs.as_ptr() as *const __m256i);
        let hi = _mm256_loadu_si256(w1.qs.as_ptr() as *const __m256i);
        let z = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        _mm512_xor_si512(z, _mm512_set1_epi8(-128))
    }
}

/// `[d0 x 8, d1 x 8]` from two f16 scales.
#[inline(always)]
unsafe fn scales2(d0: u16, d1: u16) -> __m512 {
    let h = _mm_cvtsi32_si128(d0 as i32 | ((d1 as i32) << 16));
    let f = _mm512_castps128_ps512(_mm_cvtph_ps(h));
    _mm512_permutexvar_ps(
        _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0),
        f,
    )
}

#[inline(always)]
unsafe fn f16x1(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// `RP` weight row pairs by `RA` activation rows, "lanes" accumulation.
#[inline(always)]
unsafe fn tile<W: W32x2, A: A32, const RP: usize, const RA: usize>(
    w: &[W],
    a: &[A],
    ad: &[f32],
    nb: usize,
) -> [[[f32; 2]; RA]; RP] {
    let mut acc = [[_mm512_setzero_ps(); RA]; RP];
    let mut accs = [[[0f32; 2]; RA]; RP];
    let off = _mm512_set1_epi8(W::OFFSET as i8);
    for b in 0..nb {
        let mut wu = [_mm512_setzero_si512(); RP];
        let mut dw = [_mm512_setzero_ps(); RP];
        let mut mw = [[0f32; 2]; RP];
        for p in 0..RP {
            let w0 = w.get_unchecked(2 * p * nb + b);
            let w1 = w.get_unchecked((2 * p + 1) * nb + b);
            wu[p] = W::load_u2(w0, w1);
            dw[p] = scales2(w0.d_bits(), w1.d_bits());
            if W::HAS_MIN {
                mw[p] = [f16x1(w0.m_bits()), f16x1(w1.m_bits())];
            }
        }
        for i in 0..RA {
            let ab = a.get_unchecked(i * nb + b);
            let av = _mm512_broadcast_i64x4(_mm256_loadu_si256(ab.qs().as_ptr() as *const __m256i));
            let da = _mm512_set1_ps(*ad.get_unchecked(i * nb + b));
            let nc = if W::OFFSET == 0 {
                _mm512_setzero_si512()
            } else {
                _mm512_sub_epi32(
                    _mm512_setzero_si512(),
                    _mm512_dpbusd_epi32(_mm512_setzero_si512(), off, av),
                )
            };
            let sa = if W::HAS_MIN { f16x1(ab.s_bits()) } else { 0.0 };
            for p in 0..RP {
                let isum = _mm512_dpbusd_epi32(nc, wu[p], av);
                let d = _mm512_mul_ps(dw[p], da);
                acc[p][i] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(isum), acc[p][i]);
                if W::HAS_MIN {
                    for h in 0..2 {
                        accs[p][i][h] = mw[p][h].mul_add(sa, accs[p][i][h]);
                    }
                }
            }
        }
    }
    let mut out = [[[0f32; 2]; RA]; RP];
    for p in 0..RP {
        for i in 0..RA {
            let lo = hsum8(_mm512_castps512_ps256(acc[p][i]));
            let hi = hsum8(_mm512_extractf32x8_ps(acc[p][i], 1));
            out[p][i] = if W::HAS_MIN {
                [lo + accs[p][i][0], hi + accs[p][i][1]]
            } else {
                [lo, hi]
            };
        }
    }
    out
}

#[inline(always)]
unsafe fn store<const RP: usize, const RA: usize>(
    t: &[[[f32; 2]; RA]; RP],
    o: OutPtr,
    i0: usize,
    j0: usize,
) {
    for p in 0..RP {
        for i in 0..RA {
            o.set(i0 + i, j0 + 2 * p, t[p][i][0]);
            o.set(i0 + i, j0 + 2 * p + 1, t[p][i][1]);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512dq")]
unsafe fn chunk<W: W32x2, A: A32>(w: &[W], a: &[A], ad: &[f32], nb: usize, m: usize, o: OutPtr) {
    const RP: usize = 4;
    const RA: usize = 3;
    let rows = w.len() / nb;
    let full = rows - rows % (2 * RP);
    let mut i = 0;
    while i < m {
        let ra = if m - i >= RA { RA } else { 1 };
        let (ab, adb) = (&a[i * nb..], &ad[i * nb..]);
        let mut j = 0;
        while j < full {
            let wb = &w[j * nb..];
            if ra == RA {
                store(&tile::<W, A, RP, RA>(wb, ab, adb, nb), o, i, j);
            } else {
                store(&tile::<W, A, RP, 1>(wb, ab, adb, nb), o, i, j);
            }
            j += 2 * RP;
        }
        i += ra;
    }
    if full < rows {
        chunk_w32::<W, A, VnniEvex>(false, &w[full * nb..], a, nb, m, o.offset_cols(full));
    }
}

fn cast<W: Pod>(bytes: &[u8]) -> &[W] {
    cast_blocks::<W>(bytes).expect("weight layout checked at load")
}

fn run<W: W32x2, A: A32>(
    bytes: &[u8],
    n: usize,
    nb: usize,
    a: &[A],
    ad: &[f32],
    m: usize,
    out: &mut [f32],
) {
    let w = cast::<W>(bytes);
    // SAFETY: the caller checked that the CPU has AVX-512 F/BW/VL/VNNI.
    run_chunks(w, n, nb, a, m, out, &|w, a, nb, m, o| unsafe {
        chunk::<W, A>(w, a, ad, nb, m, o)
    });
}

/// Runs a 512-bit kernel for `ty` if there is one; false otherwise.
pub(crate) fn matmul(
    ty: WeightType,
    repacked: bool,
    bytes: &[u8],
    n: usize,
    nb: usize,
    acts: &Activations,
    out: &mut [f32],
) -> bool {
    let (m, ad) = (acts.m, &acts.d32[..]);
    match (ty, &acts.data) {
        (WeightType::Q4_0, ActData::Q8_0(a)) if !repacked => {
            run::<BlockQ4_0, _>(bytes, n, nb, a, ad, m, out)
        }
        (WeightType::Q5_0, ActData::Q8_0(a)) => run::<BlockQ5_0, _>(bytes, n, nb, a, ad, m, out),
        (WeightType::Q8_0, ActData::Q8_0(a)) => run::<BlockQ8_0, _>(bytes, n, nb, a, ad, m, out),
        (WeightType::Q4_1, ActData::Q8_1(a)) => run::<BlockQ4_1, _>(bytes, n, nb, a, ad, m, out),
        (WeightType::Q5_1, ActData::Q8_1(a)) => run::<BlockQ5_1, _>(bytes, n, nb, a, ad, m, out),
        _ => return false,
    }
    true
}
