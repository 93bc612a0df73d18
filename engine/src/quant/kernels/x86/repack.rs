//! Weights rearranged for prompts and ggml's repacked numerics.
//!
//! * Eight weight rows per vector ([`Decoded8`], [`Decoded8K`]): one `dpbusd` against a
//!   broadcast activation word serves eight rows, like ggml's interleaved `block_q4_0x8` /
//!   `block_q4_Kx8` layouts in repack.cpp. The float steps stay those of the kernel being
//!   emulated, lane by lane.
//! * The per-block accumulation of ggml's repacked `gemv/gemm_{q4_0,q4_K}_8x8` kernels
//!   ([`tile_q4k_block`], and `tile_w32` with `PER_BLOCK`), which ggml uses for Q4_0 and Q4_K
//!   when a matrix's row count is a multiple of 8.

use std::arch::x86_64::*;

use super::super::super::{blocks::*, OutPtr};
use super::quants::*;
use super::simd::*;

/// Whether [`tile_w32_t`] can take this weight: its unsigned bytes must not saturate `maddubs`.
pub(crate) const fn transposes<W: W32, D: Dot>() -> bool {
    !(D::SATURATES && W::OFFSET >= 128)
}

/// Block `b` of eight weight rows, decoded and transposed: `u[l]` holds bytes `4l..4l+4` of
/// each row's unsigned form, row `r` in 32-bit lane `r`. One `dpbusd` against a broadcast
/// activation word then gives lane `l` of all eight rows' integer sums, and one multiply gives
/// the eight rows' scale products.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Decoded8 {
    u: [[u32; 8]; 8],
    d: [f32; 8],
    m: [f32; 8],
}

/// Groups of eight rows of `w` (a multiple of eight rows of `nb` blocks), block by block, into
/// `out`.
#[inline(always)]
pub(super) unsafe fn predecode8<W: W32>(w: &[W], nb: usize, out: &mut Vec<Decoded8>) {
    out.clear();
    let groups = w.len() / nb / 8;
    for g in 0..groups {
        for b in 0..nb {
            let mut t = Decoded8 {
                u: [[0; 8]; 8],
                d: [0.0; 8],
                m: [0.0; 8],
            };
            let mut rows = [_mm256_setzero_si256(); 8];
            for r in 0..8 {
                let blk = w.get_unchecked((8 * g + r) * nb + b);
                rows[r] = blk.load_u();
                t.d[r] = blk.d_f32();
                if W::HAS_MIN {
                    t.m[r] = blk.m_f32();
                }
            }
            for (l, col) in transpose8x8(rows).into_iter().enumerate() {
                _mm256_store_si256(t.u[l].as_mut_ptr() as *mut __m256i, col);
            }
            out.push(t);
        }
    }
}

/// Weight rows decoded together by [`predecode8`]: few enough to stay in the L2 cache.
pub(super) const PANEL_ROWS: usize = 64;

/// Eight weight rows by `RA` activation rows with transposed weights: pair `(r, i)` keeps
/// ggml's eight f32 lane accumulators in lane `r` of `acc[i][0..8]` and sees exactly the
/// operations of [`tile_w32`], folded at the end in [`hsum8`]'s order. Returns `out[i][r]`.
#[inline(always)]
pub(super) unsafe fn tile_w32_t<W: W32, A: A32, D: Dot, const RA: usize>(
    w: &[Decoded8],
    rows: Rows<'_, A>,
    nb: usize,
) -> [[f32; 8]; RA] {
    let mut acc = [[_mm256_setzero_ps(); 8]; RA];
    let mut accm = [_mm256_setzero_ps(); RA];
    for b in 0..nb {
        let wb = w.get_unchecked(b);
        let ab: [&A; RA] = std::array::from_fn(|i| rows.a.get_unchecked(i * nb + b));
        let dw = _mm256_load_ps(wb.d.as_ptr());
        let d: [__m256; RA] = std::array::from_fn(|i| {
            _mm256_mul_ps(dw, _mm256_set1_ps(*rows.d.get_unchecked(i * nb + b)))
        });
        for l in 0..8 {
            let u = load256(wb.u[l].as_ptr() as *const u8);
            for i in 0..RA {
                let word = (ab[i].qs().as_ptr().add(4 * l) as *const i32).read_unaligned();
                let init = if W::OFFSET == 0 {
                    _mm256_setzero_si256()
                } else {
                    _mm256_set1_epi32(*rows.corr.get_unchecked(i * nb + b).get_unchecked(l))
                };
                let isum = D::dpbusd(init, u, _mm256_set1_epi32(word));
                acc[i][l] = _mm256_fmadd_ps(d[i], _mm256_cvtepi32_ps(isum), acc[i][l]);
            }
        }
        if W::HAS_MIN {
            let mw = _mm256_load_ps(wb.m.as_ptr());
            for i in 0..RA {
                let sa = _mm256_set1_ps(f16x1(ab[i].s_bits()));
                accm[i] = _mm256_fmadd_ps(mw, sa, accm[i]);
            }
        }
    }
    let mut out = [[0f32; 8]; RA];
    for i in 0..RA {
        let t = &acc[i];
        let sum = _mm256_add_ps(
            _mm256_add_ps(_mm256_add_ps(t[0], t[4]), _mm256_add_ps(t[2], t[6])),
            _mm256_add_ps(_mm256_add_ps(t[1], t[5]), _mm256_add_ps(t[3], t[7])),
        );
        let sum = if W::HAS_MIN {
            _mm256_add_ps(sum, accm[i])
        } else {
            sum
        };
        _mm256_storeu_ps(out[i].as_mut_ptr(), sum);
    }
    out
}

/// Stores `t[i][r]` at activation row `i0 + i`, weight row `j0 + r`.
#[inline(always)]
pub(super) unsafe fn store_rows<const RA: usize>(
    t: &[[f32; 8]; RA],
    o: OutPtr,
    i0: usize,
    j0: usize,
) {
    for i in 0..RA {
        for r in 0..8 {
            o.set(i0 + i, j0 + r, t[i][r]);
        }
    }
}

/// Sweeps transposed weights (groups of eight rows) with [`tile_w32_t`].
#[inline(always)]
pub(super) unsafe fn sweep_t<W: W32, A: A32, D: Dot>(
    w: &[Decoded8],
    a: Rows<'_, A>,
    nb: usize,
    m: usize,
    o: OutPtr,
) {
    let mut i = 0;
    while i < m {
        let ab = a.skip(i * nb);
        let full = m - i >= T_ROWS;
        for g in 0..w.len() / nb {
            let wg = &w[g * nb..];
            if full {
                store_rows(&tile_w32_t::<W, A, D, T_ROWS>(wg, ab, nb), o, i, 8 * g);
            } else {
                store_rows(&tile_w32_t::<W, A, D, 1>(wg, ab, nb), o, i, 8 * g);
            }
        }
        i += if full { T_ROWS } else { 1 };
    }
}

/// Activation rows per tile of the transposed kernels: three keep 24 accumulators in
/// registers, which needs AVX-512's 32 (the 256-bit kernels use them when the whole build
/// targets such a CPU); with 16 registers, one.
pub(super) const T_ROWS: usize = if cfg!(target_feature = "avx512f") {
    3
} else {
    1
};

/// Q4_K, ggml's repacked (per block) accumulation.
#[inline(always)]
pub(super) unsafe fn tile_q4k_block<B: KBlock, D: Dot, const RW: usize, const RA: usize>(
    w: &[B],
    a: &[BlockQ8K],
    nb: usize,
) -> [[f32; RA]; RW] {
    let mut acc = [[0f32; RA]; RW];
    let mut accm = [[0f32; RA]; RW];
    let mut acc8 = _mm256_setzero_ps();
    let mut accm8 = _mm256_setzero_ps();
    let step = RW * std::mem::size_of::<B>();
    let next = (w.as_ptr() as *const i8).wrapping_add(step * nb);
    for b in 0..nb {
        if RA == 1 {
            prefetch_slice(next, b, step);
        }
        let wb = views::<B, RW>(w, nb, b);
        let ab: [&BlockQ8K; RA] = std::array::from_fn(|i| a.get_unchecked(i * nb + b));
        let mins: [__m256i; RW] = std::array::from_fn(|r| wb[r].extra());
        let is = kq_lanes::<_, D, RW, RA>(&wb, ab, [[_mm256_setzero_si256(); RA]; RW]);
        if RW * RA == 8 {
            // Eight pairs: reduce their sums into one vector and do the float steps on 8 lanes
            // (lane r * RA + i); each lane computes exactly the scalar operations.
            let mut iv = [_mm256_setzero_si256(); 8];
            let mut mv = [_mm256_setzero_si256(); 8];
            let mut dd = [0f32; 8];
            let mut dm = [0f32; 8];
            let mut da = [0f32; 8];
            for r in 0..RW {
                let d = wb[r].d();
                let dmin = wb[r].dmin();
                for i in 0..RA {
                    let p = r * RA + i;
                    iv[p] = is[r][i];
                    mv[p] = _mm256_madd_epi16(bsums16(ab[i]), mins[r]);
                    dd[p] = d;
                    dm[p] = dmin;
                    da[p] = ab[i].d;
                }
            }
            let isum = _mm256_cvtepi32_ps(reduce8(&iv));
            let msum = _mm256_cvtepi32_ps(reduce8(&mv));
            let da = _mm256_loadu_ps(da.as_ptr());
            let d = _mm256_mul_ps(_mm256_loadu_ps(dd.as_ptr()), da);
            let dmin = _mm256_mul_ps(_mm256_loadu_ps(dm.as_ptr()), da);
            acc8 = _mm256_fmadd_ps(isum, d, acc8);
            accm8 = _mm256_fmadd_ps(msum, dmin, accm8);
            continue;
        }
        for r in 0..RW {
            let d = wb[r].d();
            let dmin = wb[r].dmin();
            for i in 0..RA {
                let isum = hsum_i32(is[r][i]) as f32;
                let msum = hsum_i32(_mm256_madd_epi16(bsums16(ab[i]), mins[r])) as f32;
                acc[r][i] = isum.mul_add(d * ab[i].d, acc[r][i]);
                accm[r][i] = msum.mul_add(dmin * ab[i].d, accm[r][i]);
            }
        }
    }
    if RW * RA == 8 {
        let mut v = [0f32; 8];
        _mm256_storeu_ps(v.as_mut_ptr(), _mm256_sub_ps(acc8, accm8));
        let mut out = [[0f32; RA]; RW];
        for r in 0..RW {
            for i in 0..RA {
                out[r][i] = v[r * RA + i];
            }
        }
        return out;
    }
    let mut out = [[0f32; RA]; RW];
    for r in 0..RW {
        for i in 0..RA {
            out[r][i] = acc[r][i] - accm[r][i];
        }
    }
    out
}

/// Super-block `b` of eight Q4_K rows, decoded and transposed like [`Decoded8`]: `u[c][l]` holds
/// bytes `4l..4l+4` of chunk `c` of each row (row `r` in lane `r`), `sc[c]` the rows' scales
/// of chunk `c`, and `mins[c]` their mins of chunk `c` as the i16 pair `(min, min)`, against
/// the chunk's two activation 16-sums.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Decoded8K {
    u: [[[u32; 8]; 8]; 8],
    sc: [[i32; 8]; 8],
    mins: [[u32; 8]; 8],
    d: [f32; 8],
    dmin: [f32; 8],
}

/// Groups of eight Q4_K rows of `w` (a multiple of eight rows of `nb` blocks) into `out`.
#[inline(always)]
pub(super) unsafe fn predecode8k(w: &[BlockQ4K], nb: usize, out: &mut Vec<Decoded8K>) {
    out.clear();
    for g in 0..w.len() / nb / 8 {
        for b in 0..nb {
            let mut t = Decoded8K {
                u: [[[0; 8]; 8]; 8],
                sc: [[0; 8]; 8],
                mins: [[0; 8]; 8],
                d: [0.0; 8],
                dmin: [0.0; 8],
            };
            let blk: [&BlockQ4K; 8] =
                std::array::from_fn(|r| w.get_unchecked((8 * g + r) * nb + b));
            for r in 0..8 {
                let (sc, mn) = scales_mins_k4(&blk[r].scales);
                for c in 0..8 {
                    t.sc[c][r] = sc[c] as i32;
                    t.mins[c][r] = mn[c] as u32 * 0x1_0001;
                }
                t.d[r] = f16x1(blk[r].d);
                t.dmin[r] = f16x1(blk[r].dmin);
            }
            for c in 0..8 {
                let cols = transpose8x8(std::array::from_fn(|r| q4k_sub(blk[r], c)));
                for (l, col) in cols.into_iter().enumerate() {
                    _mm256_store_si256(t.u[c][l].as_mut_ptr() as *mut __m256i, col);
                }
            }
            out.push(t);
        }
    }
}

/// Eight Q4_K rows by `RA` activation rows, ggml's repacked (per block) accumulation as in
/// [`tile_q4k_block`]: each block's integer sums are exact whatever the order, so they are
/// formed with one `dpbusd` per 32 products of eight rows and one multiply per chunk scale;
/// lane `r` then takes exactly the scalar float steps of row `r`. Returns `out[i][r]`.
#[inline(always)]
pub(super) unsafe fn tile_q4k_t<D: Dot, const RA: usize>(
    w: &[Decoded8K],
    a: &[BlockQ8K],
    nb: usize,
) -> [[f32; 8]; RA] {
    let mut acc = [_mm256_setzero_ps(); RA];
    let mut accm = [_mm256_setzero_ps(); RA];
    for b in 0..nb {
        let wb = w.get_unchecked(b);
        let ab: [&BlockQ8K; RA] = std::array::from_fn(|i| a.get_unchecked(i * nb + b));
        let mut isum = [_mm256_setzero_si256(); RA];
        for c in 0..8 {
            let mut t = [_mm256_setzero_si256(); RA];
            for l in 0..8 {
                let u = load256(wb.u[c][l].as_ptr() as *const u8);
                for i in 0..RA {
                    let word =
                        (ab[i].qs.as_ptr().add(32 * c + 4 * l) as *const i32).read_unaligned();
                    t[i] = D::dpbusd(t[i], u, _mm256_set1_epi32(word));
                }
            }
            let sc = load256(wb.sc[c].as_ptr() as *const u8);
            for i in 0..RA {
                isum[i] = _mm256_add_epi32(isum[i], _mm256_mullo_epi32(t[i], sc));
            }
        }
        let d = _mm256_load_ps(wb.d.as_ptr());
        let dmin = _mm256_load_ps(wb.dmin.as_ptr());
        for i in 0..RA {
            let mut msum = _mm256_setzero_si256();
            for k in 0..8 {
                let pair = (ab[i].bsums.as_ptr().add(2 * k) as *const i32).read_unaligned();
                let mins = load256(wb.mins[k].as_ptr() as *const u8);
                msum = D::dpwssd(msum, mins, _mm256_set1_epi32(pair));
            }
            let da = _mm256_set1_ps(ab[i].d);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[i]), _mm256_mul_ps(d, da), acc[i]);
            accm[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(msum), _mm256_mul_ps(dmin, da), accm[i]);
        }
    }
    let mut out = [[0f32; 8]; RA];
    for i in 0..RA {
        _mm256_storeu_ps(out[i].as_mut_ptr(), _mm256_sub_ps(acc[i], accm[i]));
    }
    out
}

/// Q4_K prompts: the rows in groups of eight through [`tile_q4k_t`], a panel at a time; the
/// last rows (fewer than eight) through [`tile_q4k_block`].
#[inline(always)]
pub(super) unsafe fn prompt_q4k<D: Dot>(
    w: &[BlockQ4K],
    a: &[BlockQ8K],
    nb: usize,
    m: usize,
    o: OutPtr,
) {
    let rows = w.len() / nb;
    let full = rows - rows % 8;
    let mut dec = Vec::new();
    for j in (0..full).step_by(K_PANEL_ROWS) {
        let j1 = (j + K_PANEL_ROWS).min(full);
        predecode8k(&w[j * nb..j1 * nb], nb, &mut dec);
        let mut i = 0;
        while i < m {
            let ab = &a[i * nb..];
            let full_tile = m - i >= T_ROWS;
            for g in 0..(j1 - j) / 8 {
                let wg = &dec[g * nb..];
                let col = j + 8 * g;
                if full_tile {
                    store_rows(&tile_q4k_t::<D, T_ROWS>(wg, ab, nb), o, i, col);
                } else {
                    store_rows(&tile_q4k_t::<D, 1>(wg, ab, nb), o, i, col);
                }
            }
            i += if full_tile { T_ROWS } else { 1 };
        }
    }
    if full < rows {
        sweep!(
            tile_q4k_block,
            [_, D],
            2,
            4,
            &w[full * nb..],
            a,
            nb,
            m,
            o.offset_cols(full)
        );
    }
}

#[inline(always)]
pub(super) unsafe fn chunk_q4k<D: Dot>(
    w: &[BlockQ4K],
    a: &[BlockQ8K],
    nb: usize,
    m: usize,
    o: OutPtr,
) {
    // Without VNNI a `dpbusd` costs three instructions, and the transposed form gains nothing.
    if m >= PREDECODE_MIN_ROWS && !D::SATURATES {
        prompt_q4k::<D>(w, a, nb, m, o)
    } else {
        sweep_k!(tile_q4k_block, D, w, a, nb, m, o)
    }
}
