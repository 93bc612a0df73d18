//! Weights rearranged for prompts: eight weight rows per vector ([`Decoded8`]), so that one
//! `dpbusd` against a broadcast activation word serves eight rows, like ggml's interleaved
//! `block_q4_0x8` layout in repack.cpp. Only the layout is ggml's repacked one: the float steps
//! stay those of the `vec_dot` kernel being emulated (llama.cpp's `--no-repack` numerics), lane
//! by lane.

use std::arch::x86_64::*;

use super::super::super::OutPtr;
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
