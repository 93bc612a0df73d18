//! 512-bit kernels. A zmm register holds two outputs' eight lanes side by side (two weight rows
//! against one activation row), so every output keeps exactly the lane split and float
//! operation order of the 256-bit kernels and of ggml.

use std::arch::x86_64::*;

use super::super::super::{blocks::*, run_chunks, ActData, Activations, OutPtr, WeightType};
use super::quants::{acc, chunk_w32, Rows, A32, KVALUES_IQ4NL_U, W32};
use super::simd::{hsum8, prefetch_slice, VnniEvex};
use super::{avx512_kq, quants::PREDECODE_MIN_ROWS};

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
impl W32x2 for BlockIQ4NL {
    #[inline(always)]
    unsafe fn load_u2(w0: &Self, w1: &Self) -> __m512i {
        let table =
            _mm512_broadcast_i32x4(_mm_loadu_si128(KVALUES_IQ4NL_U.as_ptr() as *const __m128i));
        _mm512_shuffle_epi8(table, nibbles2(&w0.qs, &w1.qs))
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
    // Decoding streams the weights from memory once: fetch the next tile's rows (contiguous,
    // right after this tile's) while working on this one, as one sequential stream.
    let step = 2 * RP * std::mem::size_of::<W>();
    let next = (w.as_ptr() as *const i8).wrapping_add(step * nb);
    for b in 0..nb {
        if RA == 1 {
            prefetch_slice(next, b, step);
        }
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
unsafe fn chunk<W: W32x2, A: A32>(
    w: &[W],
    a: &[A],
    ad: &[f32],
    ns: &[[i32; 8]],
    nb: usize,
    m: usize,
    o: OutPtr,
) {
    const RP: usize = 4;
    const RA: usize = 4;
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
        chunk_w32::<W, A, VnniEvex>(
            acc::LANES,
            &w[full * nb..],
            Rows {
                a,
                d: ad,
                ns,
                corr: &[],
            },
            nb,
            m,
            o.offset_cols(full),
        );
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
    (ad, ns): (&[f32], &[[i32; 8]]),
    m: usize,
    out: &mut [f32],
) {
    let w = cast::<W>(bytes);
    // SAFETY: the caller checked that the CPU has AVX-512 F/BW/VL/VNNI.
    run_chunks(w, n, nb, a, m, out, &|w, a, nb, m, o| unsafe {
        chunk::<W, A>(w, a, ad, ns, nb, m, o)
    });
}

/// Runs a 512-bit kernel for `ty` if there is one; false otherwise.
pub(crate) fn matmul(
    ty: WeightType,
    bytes: &[u8],
    n: usize,
    nb: usize,
    acts: &Activations,
    out: &mut [f32],
) -> bool {
    let (m, ad) = (acts.m, (&acts.d32[..], &acts.neg_sums[..]));
    match (ty, &acts.data) {
        (WeightType::Q4_0, ActData::Q8_0(a)) => run::<BlockQ4_0, _>(bytes, n, nb, a, ad, m, out),
        (WeightType::Q5_0, ActData::Q8_0(a)) => run::<BlockQ5_0, _>(bytes, n, nb, a, ad, m, out),
        (WeightType::Q8_0, ActData::Q8_0(a)) => run::<BlockQ8_0, _>(bytes, n, nb, a, ad, m, out),
        (WeightType::Q4_1, ActData::Q8_1(a)) => run::<BlockQ4_1, _>(bytes, n, nb, a, ad, m, out),
        (WeightType::Q5_1, ActData::Q8_1(a)) => run::<BlockQ5_1, _>(bytes, n, nb, a, ad, m, out),
        // Decoding (one row) accumulates in pairs of blocks: the 256-bit kernel.
        (WeightType::IQ4NL, ActData::Q8_0(a)) if m > 1 => {
            run::<BlockIQ4NL, _>(bytes, n, nb, a, ad, m, out)
        }
        _ => return matmul_kq(ty, bytes, n, nb, acts, out),
    }
    true
}

// ---------------------------------------------------------------------------------------------
// k-quants. A zmm holds two 32-value chunks (c, c+1) of one (weight row, activation row) pair;
// integer lanes are folded at the end of each super-block, which is exact.

/// Q6_K chunk pair `(c, c+1)` (c even) as unsigned bytes.
#[inline(always)]
unsafe fn q6k_pair(w: &BlockQ6K, c: usize) -> __m512i {
    let h = c / 4;
    let upper = c % 4 == 2; // parts 2, 3: high nibbles and qh bits 4..8
    let ql = _mm512_loadu_si512(w.ql.as_ptr().add(64 * h) as *const __m512i);
    let lo = if upper { _mm512_srli_epi16(ql, 4) } else { ql };
    let lo = _mm512_and_si512(lo, _mm512_set1_epi8(0xF));
    let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
        w.qh.as_ptr().add(32 * h) as *const __m256i
    ));
    // bits (2*part) of qh: part = 0/1 or 2/3 for the two halves
    let qh = if upper { _mm512_srli_epi16(qh, 4) } else { qh };
    let qh = _mm512_mask_srli_epi16(qh, 0xFFFF_0000, qh, 2);
    let hi = _mm512_slli_epi16(_mm512_and_si512(qh, _mm512_set1_epi8(3)), 4);
    _mm512_or_si512(lo, hi)
}

/// 16-bit scales of chunk pair `(c, c+1)`: `sc[2c]`, `sc[2c+1]`, `sc[2c+2]`, `sc[2c+3]` on the
/// four 128-bit lanes.
#[inline(always)]
unsafe fn q6k_scale_pair(sc16: __m512i, c: usize) -> __m512i {
    let base = 2 * c as i16;
    let idx = _mm512_set_epi16(
        base + 3,
        base + 3,
        base + 3,
        base + 3,
        base + 3,
        base + 3,
        base + 3,
        base + 3,
        base + 2,
        base + 2,
        base + 2,
        base + 2,
        base + 2,
        base + 2,
        base + 2,
        base + 2,
        base + 1,
        base + 1,
        base + 1,
        base + 1,
        base + 1,
        base + 1,
        base + 1,
        base + 1,
        base,
        base,
        base,
        base,
        base,
        base,
        base,
        base,
    );
    _mm512_permutexvar_epi16(idx, sc16)
}

/// Q6_K, `ggml_vec_dot_q6_K_q8_K`.
#[inline(always)]
unsafe fn tile_q6k<const RW: usize, const RA: usize>(
    w: &[BlockQ6K],
    a: &[BlockQ8K],
    nb: usize,
) -> [[f32; RA]; RW] {
    let mut acc = [[_mm256_setzero_ps(); RA]; RW];
    let step = RW * std::mem::size_of::<BlockQ6K>();
    let next = (w.as_ptr() as *const i8).wrapping_add(step * nb);
    for b in 0..nb {
        if RA == 1 {
            prefetch_slice(next, b, step);
        }
        let wb: [&BlockQ6K; RW] = std::array::from_fn(|r| w.get_unchecked(r * nb + b));
        let ab: [&BlockQ8K; RA] = std::array::from_fn(|i| a.get_unchecked(i * nb + b));
        let mut sc16 = [_mm512_setzero_si512(); RW];
        let mut is = [[_mm512_setzero_si512(); RA]; RW];
        for r in 0..RW {
            let sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb[r].scales.as_ptr() as *const __m128i));
            sc16[r] = _mm512_castsi256_si512(sc);
            for i in 0..RA {
                let bs = _mm256_loadu_si256(ab[i].bsums.as_ptr() as *const __m256i);
                let corr = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc), 5);
                is[r][i] = _mm512_castsi256_si512(_mm256_sub_epi32(_mm256_setzero_si256(), corr));
                // the upper half of a cast is undefined: clear it
                is[r][i] = _mm512_maskz_mov_epi32(0x00FF, is[r][i]);
            }
        }
        for c in (0..8).step_by(2) {
            let mut av = [_mm512_setzero_si512(); RA];
            for i in 0..RA {
                av[i] = _mm512_loadu_si512(ab[i].qs.as_ptr().add(32 * c) as *const __m512i);
            }
            for r in 0..RW {
                let q = q6k_pair(wb[r], c);
                let sc = q6k_scale_pair(sc16[r], c);
                for i in 0..RA {
                    let p16 = _mm512_maddubs_epi16(q, av[i]);
                    is[r][i] = _mm512_dpwssd_epi32(is[r][i], p16, sc);
                }
            }
        }
        for r in 0..RW {
            let d = f16x1(wb[r].d);
            for i in 0..RA {
                let v = is[r][i];
                let lanes =
                    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
                let dd = _mm256_set1_ps(ab[i].d * d);
                acc[r][i] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(lanes), acc[r][i]);
            }
        }
    }
    let mut out = [[0f32; RA]; RW];
    for r in 0..RW {
        for i in 0..RA {
            out[r][i] = hsum8(acc[r][i]);
        }
    }
    out
}

macro_rules! kq_chunk {
    ($name:ident, $blk:ty, $tile:ident, $fallback:ident, [$(($rw:literal, $ra:literal)),*]) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni,avx512dq")]
        unsafe fn $name(w: &[$blk], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
            let rows = w.len() / nb;
            let mut i = 0;
            // Largest tile whose activation count fits, then whatever rows are left.
            let shapes: &[(usize, usize)] = &[$(($rw, $ra)),*];
            while i < m {
                let &(rw, ra) = shapes.iter().find(|s| s.1 <= m - i).unwrap_or(&shapes[shapes.len() - 1]);
                let full = rows - rows % rw;
                let mut j = 0;
                while j < full {
                    let wb = &w[j * nb..];
                    let ab = &a[i * nb..];
                    match (rw, ra) {
                        $(($rw, $ra) => {
                            let t = $tile::<$rw, $ra>(wb, ab, nb);
                            for r in 0..$rw {
                                for ii in 0..$ra {
                                    o.set(i + ii, j + r, t[r][ii]);
                                }
                            }
                        })*
                        _ => unreachable!(),
                    }
                    j += rw;
                }
                if full < rows {
                    super::e_evex::$fallback(&w[full * nb..], &a[i * nb..(i + ra) * nb], nb, ra, o.offset_cols(full).offset_rows(i));
                }
                i += ra;
            }
        }
    };
}

kq_chunk!(chunk_q6k, BlockQ6K, tile_q6k, k_lanes, [(2, 4), (4, 1)]);

/// Runs a 512-bit k-quant kernel if there is one; false otherwise.
pub(crate) fn matmul_kq(
    ty: WeightType,
    bytes: &[u8],
    n: usize,
    nb: usize,
    acts: &Activations,
    out: &mut [f32],
) -> bool {
    let m = acts.m;
    match (ty, &acts.data) {
        // Prompts: the 512-bit tiles over decoded weights; leftover rows in 256-bit tiles.
        (WeightType::Q4K, ActData::Q8K(a)) if m >= PREDECODE_MIN_ROWS => {
            let t = super::kq_prompt::ActSide::new(&a.rows, m, nb, true, true);
            let rest = |w: &[BlockQ4K], a: &[BlockQ8K], m: usize, o: OutPtr| unsafe {
                super::e_evex::q4k_lanes(w, a, nb, m, o)
            };
            run_chunks(
                cast::<BlockQ4K>(bytes),
                n,
                nb,
                &a.rows,
                m,
                out,
                &|w, a, nb, m, o| unsafe { avx512_kq::chunk(w, a, &t, nb, m, o, &rest) },
            );
        }
        (WeightType::Q6K, ActData::Q8K(a)) if m >= PREDECODE_MIN_ROWS => {
            let t = super::kq_prompt::ActSide::new(&a.rows, m, nb, false, true);
            let rest = |w: &[BlockQ6K], a: &[BlockQ8K], m: usize, o: OutPtr| unsafe {
                super::e_evex::k_lanes(w, a, nb, m, o)
            };
            run_chunks(
                cast::<BlockQ6K>(bytes),
                n,
                nb,
                &a.rows,
                m,
                out,
                &|w, a, nb, m, o| unsafe { avx512_kq::chunk(w, a, &t, nb, m, o, &rest) },
            );
        }
        (WeightType::Q6K, ActData::Q8K(a)) => {
            let w = cast::<BlockQ6K>(bytes);
            // SAFETY: the caller checked the CPU.
            run_chunks(w, n, nb, &a.rows, m, out, &|w, a, nb, m, o| unsafe {
                chunk_q6k(w, a, nb, m, o)
            });
        }
        _ => return false,
    }
    true
}
