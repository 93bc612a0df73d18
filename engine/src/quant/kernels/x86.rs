//! AVX2 / AVX-VNNI / AVX-512 kernels. They compute exactly what [`super::super::reference`]
//! computes: the same integers in the same lanes and the same float operations in the same order,
//! so their results are bit-identical to the scalar kernels.
//!
//! The kernel bodies are `#[inline(always)]` functions generic over [`Dot`] (how 8-bit products
//! are summed: `maddubs`+`madd` on plain AVX2, `vpdpbusd`/`vpdpwssd` with VNNI) and are
//! instantiated inside `#[target_feature]` entry points, so they are compiled for the feature
//! level that runtime detection chose.
//!
//! Layout of the work: a chunk of weight rows (handed to one thread) is swept in tiles of `RW`
//! weight rows by `RA` activation rows; each weight block is decoded once per tile and used for
//! all `RA` activation rows, each activation block once for `RW` weight rows.

#![allow(
    clippy::missing_safety_doc,
    clippy::needless_range_loop,
    clippy::too_many_arguments
)]

use std::arch::x86_64::*;

use super::super::{blocks::*, run_chunks, ActData, Activations, Isa, OutPtr, WeightType};

mod avx512;

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

// ---------------------------------------------------------------------------------------------
// Small helpers

#[inline(always)]
unsafe fn f16x1(bits: u16) -> f32 {
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

/// Sums of each of 8 vectors: lane `p` of the result is the sum of the lanes of `v[p]`.
#[inline(always)]
pub(crate) unsafe fn reduce8(v: &[__m256i; 8]) -> __m256i {
    let w = [
        _mm256_hadd_epi32(v[0], v[1]),
        _mm256_hadd_epi32(v[2], v[3]),
        _mm256_hadd_epi32(v[4], v[5]),
        _mm256_hadd_epi32(v[6], v[7]),
    ];
    let x0 = _mm256_hadd_epi32(w[0], w[1]);
    let x1 = _mm256_hadd_epi32(w[2], w[3]);
    _mm256_add_epi32(
        _mm256_permute2x128_si256(x0, x1, 0x20),
        _mm256_permute2x128_si256(x0, x1, 0x31),
    )
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
unsafe fn load256(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// 32 nibbles of 16 bytes: low nibbles first, then high nibbles.
#[inline(always)]
unsafe fn nibbles32(qs: &[u8; 16]) -> __m256i {
    let t = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(b, _mm256_set1_epi8(0xF))
}

/// 0x10 in byte `i` where bit `i` of `qh` is set.
#[inline(always)]
unsafe fn high_bits32(qh: &[u8; 4]) -> __m256i {
    let x = u32::from_le_bytes(*qh);
    let shuf = _mm256_set_epi64x(
        0x0303030303030303,
        0x0202020202020202,
        0x0101010101010101,
        0x0000000000000000,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(x as i32), shuf);
    let bits = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bits), bits);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

// ---------------------------------------------------------------------------------------------
// Blocks of 32 against Q8_0 / Q8_1 activations

/// A 32-value weight block seen as unsigned bytes `u = value + OFFSET`.
pub(crate) trait W32: Pod + Sync {
    const OFFSET: u8;
    /// Q8_1 activations and a min (`m * s` terms).
    const HAS_MIN: bool;
    unsafe fn load_u(&self) -> __m256i;
    fn d_bits(&self) -> u16;
    fn m_bits(&self) -> u16 {
        0
    }
    #[inline(always)]
    unsafe fn d_f32(&self) -> f32 {
        f16x1(self.d_bits())
    }
    #[inline(always)]
    unsafe fn m_f32(&self) -> f32 {
        f16x1(self.m_bits())
    }
}

/// A weight block decoded once for a prompt: its unsigned bytes and f32 scales. Tiles then read
/// these instead of decoding the block again for every group of activation rows.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct Decoded<W> {
    u: [u8; 32],
    d: f32,
    m: f32,
    _w: std::marker::PhantomData<W>,
}

// SAFETY: plain bytes and floats.
unsafe impl<W: 'static + Copy> Pod for Decoded<W> {}

impl<W: W32> W32 for Decoded<W> {
    const OFFSET: u8 = W::OFFSET;
    const HAS_MIN: bool = W::HAS_MIN;
    #[inline(always)]
    unsafe fn load_u(&self) -> __m256i {
        load256(self.u.as_ptr())
    }
    fn d_bits(&self) -> u16 {
        unreachable!("decoded blocks carry f32 scales")
    }
    #[inline(always)]
    unsafe fn d_f32(&self) -> f32 {
        self.d
    }
    #[inline(always)]
    unsafe fn m_f32(&self) -> f32 {
        self.m
    }
}

impl<W: W32> Decoded<W> {
    #[inline(always)]
    unsafe fn of(w: &W) -> Self {
        let mut u = [0u8; 32];
        _mm256_storeu_si256(u.as_mut_ptr() as *mut __m256i, w.load_u());
        Self {
            u,
            d: w.d_f32(),
            m: if W::HAS_MIN { w.m_f32() } else { 0.0 },
            _w: std::marker::PhantomData,
        }
    }
}

impl W32 for BlockQ4_0 {
    const OFFSET: u8 = 8;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn load_u(&self) -> __m256i {
        nibbles32(&self.qs)
    }
    fn d_bits(&self) -> u16 {
        self.d
    }
}
impl W32 for BlockQ5_0 {
    const OFFSET: u8 = 16;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn load_u(&self) -> __m256i {
        _mm256_or_si256(nibbles32(&self.qs), high_bits32(&self.qh))
    }
    fn d_bits(&self) -> u16 {
        self.d
    }
}
impl W32 for BlockQ8_0 {
    const OFFSET: u8 = 128;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn load_u(&self) -> __m256i {
        _mm256_xor_si256(
            load256(self.qs.as_ptr() as *const u8),
            _mm256_set1_epi8(-128),
        )
    }
    fn d_bits(&self) -> u16 {
        self.d
    }
}
impl W32 for BlockQ4_1 {
    const OFFSET: u8 = 0;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn load_u(&self) -> __m256i {
        nibbles32(&self.qs)
    }
    fn d_bits(&self) -> u16 {
        self.d
    }
    fn m_bits(&self) -> u16 {
        self.m
    }
}
impl W32 for BlockQ5_1 {
    const OFFSET: u8 = 0;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn load_u(&self) -> __m256i {
        _mm256_or_si256(nibbles32(&self.qs), high_bits32(&self.qh))
    }
    fn d_bits(&self) -> u16 {
        self.d
    }
    fn m_bits(&self) -> u16 {
        self.m
    }
}

/// Q8_0 and Q8_1 activation blocks.
pub(crate) trait A32: Pod + Sync {
    fn qs(&self) -> &[i8; 32];
    fn s_bits(&self) -> u16 {
        0
    }
}
impl A32 for BlockQ8_0 {
    #[inline(always)]
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
}
impl A32 for BlockQ8_1 {
    #[inline(always)]
    fn qs(&self) -> &[i8; 32] {
        &self.qs
    }
    fn s_bits(&self) -> u16 {
        self.s
    }
}

/// Integer lanes of one weight block against one activation block. `wu` is the weight in
/// unsigned form; for plain AVX2 and Q8_0 (`u` up to 255 would saturate `maddubs`) the signed
/// weight is used with ggml's sign trick instead.
#[inline(always)]
unsafe fn lanes_w32<W: W32, D: Dot>(wu: __m256i, av: __m256i, negcorr: __m256i) -> __m256i {
    if D::SATURATES && W::OFFSET >= 128 {
        let w = _mm256_xor_si256(wu, _mm256_set1_epi8(-128));
        D::dpbusd(
            _mm256_setzero_si256(),
            _mm256_sign_epi8(w, w),
            _mm256_sign_epi8(av, w),
        )
    } else {
        D::dpbusd(negcorr, wu, av)
    }
}

/// `-(OFFSET * sum of each 4 activation values)`, from the precomputed negated sums.
#[inline(always)]
unsafe fn negcorr<W: W32, D: Dot>(ns: *const [i32; 8]) -> __m256i {
    if W::OFFSET == 0 || (D::SATURATES && W::OFFSET >= 128) {
        _mm256_setzero_si256()
    } else {
        let s = _mm256_loadu_si256(ns as *const __m256i);
        // OFFSET is 8, 16 or 128.
        _mm256_sll_epi32(s, _mm_cvtsi32_si128(W::OFFSET.trailing_zeros() as i32))
    }
}

/// One `RW x RA` tile: weight rows `w[r*nb..]`, activation rows `a[i*nb..]`.
#[inline(always)]
unsafe fn tile_w32<
    W: W32,
    A: A32,
    D: Dot,
    const RW: usize,
    const RA: usize,
    const PER_BLOCK: bool,
>(
    w: &[W],
    rows: Rows<'_, A>,
    nb: usize,
) -> [[f32; RA]; RW] {
    let (a, ad) = (rows.a, rows.d);
    let mut acc = [[_mm256_setzero_ps(); RA]; RW];
    let mut accs = [[0f32; RA]; RW];
    let step = RW * std::mem::size_of::<W>();
    let next = (w.as_ptr() as *const i8).wrapping_add(step * nb);
    for b in 0..nb {
        if RA == 1 {
            prefetch_slice(next, b, step);
        }
        let mut wu = [_mm256_setzero_si256(); RW];
        let mut dw = [_mm256_setzero_ps(); RW];
        let mut mw = [0f32; RW];
        for r in 0..RW {
            let blk = w.get_unchecked(r * nb + b);
            wu[r] = blk.load_u();
            dw[r] = _mm256_set1_ps(blk.d_f32());
            if W::HAS_MIN {
                mw[r] = blk.m_f32();
            }
        }
        // The scale products `dw * da` of the tile's pairs, RA at a time in one multiply; each
        // pair then broadcasts its own from memory (a load, not an arithmetic op).
        let mut prod = [[0f32; 8]; RW];
        if RA > 1 && !PER_BLOCK {
            let mut das = [0f32; 8];
            for i in 0..RA {
                das[i] = *ad.get_unchecked(i * nb + b);
            }
            let dav = _mm256_loadu_ps(das.as_ptr());
            for r in 0..RW {
                _mm256_storeu_ps(prod[r].as_mut_ptr(), _mm256_mul_ps(dw[r], dav));
            }
        }
        for i in 0..RA {
            let ab = a.get_unchecked(i * nb + b);
            let av = load256(ab.qs().as_ptr() as *const u8);
            let da = _mm256_set1_ps(*ad.get_unchecked(i * nb + b));
            let nc = negcorr::<W, D>(rows.ns.as_ptr().wrapping_add(i * nb + b));
            let sa = if W::HAS_MIN { f16x1(ab.s_bits()) } else { 0.0 };
            for r in 0..RW {
                let isum = lanes_w32::<W, D>(wu[r], av, nc);
                let d = if RA > 1 && !PER_BLOCK {
                    _mm256_broadcast_ss(&prod[r][i])
                } else {
                    _mm256_mul_ps(dw[r], da)
                };
                if PER_BLOCK {
                    let s = hsum_i32(isum) as f32;
                    accs[r][i] = s.mul_add(_mm256_cvtss_f32(d), accs[r][i]);
                } else {
                    acc[r][i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc[r][i]);
                }
                if W::HAS_MIN {
                    accs[r][i] = mw[r].mul_add(sa, accs[r][i]);
                }
            }
        }
    }
    let mut out = [[0f32; RA]; RW];
    for r in 0..RW {
        for i in 0..RA {
            out[r][i] = if PER_BLOCK {
                accs[r][i]
            } else if W::HAS_MIN {
                hsum8(acc[r][i]) + accs[r][i]
            } else {
                hsum8(acc[r][i])
            };
        }
    }
    out
}

/// Activation rows as the tiles take them, which can be advanced by whole blocks.
pub(crate) trait Skip: Copy {
    fn skip(self, blocks: usize) -> Self;
}
impl<T> Skip for &[T] {
    #[inline(always)]
    fn skip(self, blocks: usize) -> Self {
        &self[blocks..]
    }
}
/// Q8_0 / Q8_1 activation rows with their f32 scales and (Q8_0) negated 4-sums.
pub(crate) struct Rows<'a, A> {
    pub a: &'a [A],
    pub d: &'a [f32],
    pub ns: &'a [[i32; 8]],
    /// The negated 4-sums times the weight's `OFFSET`, for [`tile_w32_t`] (empty where that
    /// kernel does not run).
    pub corr: &'a [[i32; 8]],
}
impl<A> Clone for Rows<'_, A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A> Copy for Rows<'_, A> {}
impl<A> Skip for Rows<'_, A> {
    #[inline(always)]
    fn skip(self, blocks: usize) -> Self {
        Rows {
            a: &self.a[blocks..],
            d: &self.d[blocks..],
            ns: self.ns.get(blocks..).unwrap_or(&[]),
            corr: self.corr.get(blocks..).unwrap_or(&[]),
        }
    }
}

/// Sweeps a chunk with tiles of `RW x RA`, then the leftover rows with smaller tiles.
macro_rules! sweep {
    ($tile:ident, [$($g:ty),*], $rw:literal, $ra:literal, $w:expr, $a:expr, $nb:expr, $m:expr, $o:expr) => {{
        let (w, a, nb, m, o) = ($w, $a, $nb, $m, $o);
        let rows = w.len() / nb;
        let store = |out: &[f32], j: usize, i: usize, rw: usize, ra: usize| {
            for r in 0..rw {
                for ii in 0..ra {
                    // SAFETY: inside this chunk's columns and the output rows.
                    unsafe { o.set(i + ii, j + r, out[r * ra + ii]) };
                }
            }
        };
        let mut i = 0;
        while i < m {
            let ra = if m - i >= $ra { $ra } else { 1 };
            let ab = a.skip(i * nb);
            let mut j = 0;
            while j < rows {
                let wb = &w[j * nb..];
                let rw = if rows - j >= $rw { $rw } else { 1 };
                #[allow(unreachable_patterns)]
                match (rw, ra) {
                    ($rw, $ra) => {
                        let t = $tile::<$($g,)* $rw, $ra>(wb, ab, nb);
                        store(t.as_flattened(), j, i, $rw, $ra);
                    }
                    ($rw, 1) => {
                        let t = $tile::<$($g,)* $rw, 1>(wb, ab, nb);
                        store(t.as_flattened(), j, i, $rw, 1);
                    }
                    (1, $ra) => {
                        let t = $tile::<$($g,)* 1, $ra>(wb, ab, nb);
                        store(t.as_flattened(), j, i, 1, $ra);
                    }
                    _ => {
                        let t = $tile::<$($g,)* 1, 1>(wb, ab, nb);
                        store(t.as_flattened(), j, i, 1, 1);
                    }
                }
                j += rw;
            }
            i += ra;
        }
    }};
}

#[inline(always)]
unsafe fn tile_w32_lanes<W: W32, A: A32, D: Dot, const RW: usize, const RA: usize>(
    w: &[W],
    a: Rows<'_, A>,
    nb: usize,
) -> [[f32; RA]; RW] {
    tile_w32::<W, A, D, RW, RA, false>(w, a, nb)
}

#[inline(always)]
unsafe fn tile_w32_block<W: W32, A: A32, D: Dot, const RW: usize, const RA: usize>(
    w: &[W],
    a: Rows<'_, A>,
    nb: usize,
) -> [[f32; RA]; RW] {
    tile_w32::<W, A, D, RW, RA, true>(w, a, nb)
}

#[inline(always)]
unsafe fn chunk_w32<W: W32, A: A32, D: Dot>(
    per_block: bool,
    w: &[W],
    a: Rows<'_, A>,
    nb: usize,
    m: usize,
    o: OutPtr,
) {
    if per_block {
        sweep!(tile_w32_block, [W, A, D], 4, 2, w, a, nb, m, o);
    } else if m == 1 {
        sweep!(tile_w32_lanes, [W, A, D], 4, 1, w, a, nb, m, o);
    } else if m >= PREDECODE_MIN_ROWS
        && transposes::<W, D>()
        && (W::OFFSET == 0 || !a.corr.is_empty())
    {
        // Many activation rows: decode the weights once, eight rows per vector, a panel of
        // rows at a time so that they stay in cache while every activation row passes.
        let rows = w.len() / nb;
        let full = rows - rows % 8;
        let mut dec = Vec::new();
        for j in (0..full).step_by(PANEL_ROWS) {
            let j1 = (j + PANEL_ROWS).min(full);
            predecode8(&w[j * nb..j1 * nb], nb, &mut dec);
            sweep_t::<W, A, D>(&dec, a, nb, m, o.offset_cols(j));
        }
        if full < rows {
            let dec = predecode(&w[full * nb..]);
            sweep!(tile_w32_lanes, [Decoded<W>, A, D], 3, 6, &dec[..], a, nb, m, o.offset_cols(full));
        }
    } else if m >= PREDECODE_MIN_ROWS {
        // Many activation rows: decode this chunk's weights once.
        let dec = predecode(w);
        sweep!(tile_w32_lanes, [Decoded<W>, A, D], 3, 6, &dec[..], a, nb, m, o);
    } else {
        sweep!(tile_w32_lanes, [W, A, D], 3, 6, w, a, nb, m, o);
    }
}

/// From this many activation rows on, a chunk's weights are decoded once up front.
pub(crate) const PREDECODE_MIN_ROWS: usize = 8;

#[inline(always)]
pub(crate) unsafe fn predecode<W: W32>(w: &[W]) -> Vec<Decoded<W>> {
    w.iter().map(|b| Decoded::of(b)).collect()
}

// ---------------------------------------------------------------------------------------------
// Prompts: eight weight rows per vector

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
unsafe fn predecode8<W: W32>(w: &[W], nb: usize, out: &mut Vec<Decoded8>) {
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
const PANEL_ROWS: usize = 64;

/// Eight weight rows by `RA` activation rows with transposed weights: pair `(r, i)` keeps
/// ggml's eight f32 lane accumulators in lane `r` of `acc[i][0..8]` and sees exactly the
/// operations of [`tile_w32`], folded at the end in [`hsum8`]'s order. Returns `out[i][r]`.
#[inline(always)]
unsafe fn tile_w32_t<W: W32, A: A32, D: Dot, const RA: usize>(
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
unsafe fn store_rows<const RA: usize>(t: &[[f32; 8]; RA], o: OutPtr, i0: usize, j0: usize) {
    for i in 0..RA {
        for r in 0..8 {
            o.set(i0 + i, j0 + r, t[i][r]);
        }
    }
}

/// Sweeps transposed weights (groups of eight rows) with [`tile_w32_t`].
#[inline(always)]
unsafe fn sweep_t<W: W32, A: A32, D: Dot>(
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
const T_ROWS: usize = if cfg!(target_feature = "avx512f") {
    3
} else {
    1
};

/// The 32-bit lanes of eight vectors transposed: lane `r` of result `l` is lane `l` of `v[r]`.
#[inline(always)]
unsafe fn transpose8x8(v: [__m256i; 8]) -> [__m256i; 8] {
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

// ---------------------------------------------------------------------------------------------
// k-quants against Q8_K activations

/// Sub-block `c` (32 values) of a Q4_K block as unsigned bytes.
#[inline(always)]
unsafe fn q4k_sub(w: &BlockQ4K, c: usize) -> __m256i {
    q4k_sub_raw(&w.qs, c)
}

/// Sub-block `c` of a Q5_K block as unsigned bytes.
#[inline(always)]
unsafe fn q5k_sub(w: &BlockQ5K, c: usize) -> __m256i {
    let lo = q4k_sub_raw(&w.qs, c);
    let hbits = load256(w.qh.as_ptr());
    let h = _mm256_and_si256(
        _mm256_srl_epi16(hbits, _mm_cvtsi32_si128(c as i32)),
        _mm256_set1_epi8(1),
    );
    _mm256_or_si256(lo, _mm256_slli_epi16(h, 4))
}

#[inline(always)]
unsafe fn q4k_sub_raw(qs: &[u8; 128], c: usize) -> __m256i {
    let bits = load256(qs.as_ptr().add(32 * (c / 2)));
    let bits = if c.is_multiple_of(2) {
        bits
    } else {
        _mm256_srli_epi16(bits, 4)
    };
    _mm256_and_si256(bits, _mm256_set1_epi8(0xF))
}

/// Chunk `c` (32 values) of a Q6_K block as unsigned bytes (0..64).
#[inline(always)]
unsafe fn q6k_sub(w: &BlockQ6K, c: usize) -> __m256i {
    let h = c / 4;
    let part = c % 4;
    let ql = load256(w.ql.as_ptr().add(64 * h + 32 * (part % 2)));
    let lo = if part < 2 {
        ql
    } else {
        _mm256_srli_epi16(ql, 4)
    };
    let lo = _mm256_and_si256(lo, _mm256_set1_epi8(0xF));
    let bh = load256(w.qh.as_ptr().add(32 * h));
    let hi = _mm256_and_si256(
        _mm256_srl_epi16(bh, _mm_cvtsi32_si128(2 * part as i32)),
        _mm256_set1_epi8(3),
    );
    _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4))
}

#[inline(always)]
unsafe fn qs8k(a: &BlockQ8K, c: usize) -> __m256i {
    load256(a.qs.as_ptr().add(32 * c) as *const u8)
}

#[inline(always)]
unsafe fn bsums16(a: &BlockQ8K) -> __m256i {
    load256(a.bsums.as_ptr() as *const u8)
}

/// `maddubs(u, s)` scaled by the 16-bit `scale` and accumulated into 32-bit lanes.
#[inline(always)]
unsafe fn scaled_dot<D: Dot>(acc: __m256i, u: __m256i, s: __m256i, scale: __m256i) -> __m256i {
    D::dpwssd(acc, _mm256_maddubs_epi16(u, s), scale)
}

/// Mins of a Q4_K/Q5_K block as 16 i16, each twice (against the two 16-sums of a sub-block).
#[inline(always)]
unsafe fn mins16(mn: &[u8; 8]) -> __m256i {
    let m = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr() as *const __m128i));
    _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m))
}

/// Integer lanes `sum_c scale_c * dot(q_c, a_c)` of an RW x RA tile for one super-block.
#[inline(always)]
unsafe fn kq_lanes<D: Dot, const RW: usize, const RA: usize>(
    sub: impl Fn(usize, usize) -> __m256i,
    scale: impl Fn(usize, usize) -> __m256i,
    a: [&BlockQ8K; RA],
    init: [[__m256i; RA]; RW],
) -> [[__m256i; RA]; RW] {
    let mut is = init;
    for c in 0..8 {
        let mut av = [_mm256_setzero_si256(); RA];
        for i in 0..RA {
            av[i] = qs8k(a[i], c);
        }
        for r in 0..RW {
            let q = sub(r, c);
            let sc = scale(r, c);
            for i in 0..RA {
                is[r][i] = scaled_dot::<D>(is[r][i], q, av[i], sc);
            }
        }
    }
    is
}

/// A k-quant super-block as the tiles read it.
pub(crate) trait KBlock: Pod + Sync {
    type View: KView + Copy;
    unsafe fn view(&self) -> Self::View;
}

/// Views of block `b` of `RW` rows. A plain loop: `array::from_fn` leaves the unpacking of
/// the scales in a closure call per block.
#[inline(always)]
unsafe fn views<B: KBlock, const RW: usize>(w: &[B], nb: usize, b: usize) -> [B::View; RW] {
    let mut v = [w.get_unchecked(b).view(); RW];
    for r in 1..RW {
        v[r] = w.get_unchecked(r * nb + b).view();
    }
    v
}

/// What the tiles take from a super-block: its 32-value chunks, their 16-bit scales, the
/// per-block extra (Q4_K / Q5_K: [`mins16`]; Q6_K: its 16 scales as i16) and the f32 scales.
pub(crate) trait KView {
    unsafe fn sub(&self, c: usize) -> __m256i;
    unsafe fn scale(&self, c: usize) -> __m256i;
    unsafe fn extra(&self) -> __m256i;
    unsafe fn d(&self) -> f32;
    unsafe fn dmin(&self) -> f32;
}

/// A Q4_K / Q5_K block with its scales and mins unpacked.
#[derive(Clone, Copy)]
pub(crate) struct K4View<B> {
    b: *const B,
    sc: [u8; 8],
    mn: [u8; 8],
}

macro_rules! k4_view {
    ($blk:ty, $sub:ident) => {
        impl KBlock for $blk {
            type View = K4View<$blk>;
            #[inline(always)]
            unsafe fn view(&self) -> K4View<$blk> {
                let (sc, mn) = scales_mins_k4(&self.scales);
                K4View { b: self, sc, mn }
            }
        }
        impl KView for K4View<$blk> {
            #[inline(always)]
            unsafe fn sub(&self, c: usize) -> __m256i {
                $sub(&*self.b, c)
            }
            #[inline(always)]
            unsafe fn scale(&self, c: usize) -> __m256i {
                _mm256_set1_epi16(self.sc[c] as i16)
            }
            #[inline(always)]
            unsafe fn extra(&self) -> __m256i {
                mins16(&self.mn)
            }
            #[inline(always)]
            unsafe fn d(&self) -> f32 {
                f16x1((*self.b).d)
            }
            #[inline(always)]
            unsafe fn dmin(&self) -> f32 {
                f16x1((*self.b).dmin)
            }
        }
    };
}
k4_view!(BlockQ4K, q4k_sub);
k4_view!(BlockQ5K, q5k_sub);

impl KBlock for BlockQ6K {
    type View = *const BlockQ6K;
    #[inline(always)]
    unsafe fn view(&self) -> *const BlockQ6K {
        self
    }
}
impl KView for *const BlockQ6K {
    #[inline(always)]
    unsafe fn sub(&self, c: usize) -> __m256i {
        q6k_sub(&**self, c)
    }
    #[inline(always)]
    unsafe fn scale(&self, c: usize) -> __m256i {
        q6k_scale(&**self, c)
    }
    #[inline(always)]
    unsafe fn extra(&self) -> __m256i {
        _mm256_cvtepi8_epi16(_mm_loadu_si128((**self).scales.as_ptr() as *const __m128i))
    }
    #[inline(always)]
    unsafe fn d(&self) -> f32 {
        f16x1((**self).d)
    }
    #[inline(always)]
    unsafe fn dmin(&self) -> f32 {
        0.0
    }
}

/// A k-quant super-block decoded once for a prompt: what its [`KView`] gives, stored, so tiles
/// load it instead of unpacking bits and scales again for every group of activation rows.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct DecodedK {
    u: [[u8; 32]; 8],
    sc: [[i16; 16]; 8],
    extra: [i16; 16],
    d: f32,
    dmin: f32,
}

// SAFETY: plain bytes, integers and floats.
unsafe impl Pod for DecodedK {}

impl DecodedK {
    #[inline(always)]
    unsafe fn of<B: KBlock>(b: &B) -> Self {
        let v = b.view();
        let mut t = DecodedK {
            u: [[0; 32]; 8],
            sc: [[0; 16]; 8],
            extra: [0; 16],
            d: v.d(),
            dmin: v.dmin(),
        };
        for c in 0..8 {
            _mm256_store_si256(t.u[c].as_mut_ptr() as *mut __m256i, v.sub(c));
            _mm256_store_si256(t.sc[c].as_mut_ptr() as *mut __m256i, v.scale(c));
        }
        _mm256_store_si256(t.extra.as_mut_ptr() as *mut __m256i, v.extra());
        t
    }
}

impl KBlock for DecodedK {
    type View = *const DecodedK;
    #[inline(always)]
    unsafe fn view(&self) -> *const DecodedK {
        self
    }
}
impl KView for *const DecodedK {
    #[inline(always)]
    unsafe fn sub(&self, c: usize) -> __m256i {
        _mm256_load_si256((**self).u[c].as_ptr() as *const __m256i)
    }
    #[inline(always)]
    unsafe fn scale(&self, c: usize) -> __m256i {
        _mm256_load_si256((**self).sc[c].as_ptr() as *const __m256i)
    }
    #[inline(always)]
    unsafe fn extra(&self) -> __m256i {
        _mm256_load_si256((**self).extra.as_ptr() as *const __m256i)
    }
    #[inline(always)]
    unsafe fn d(&self) -> f32 {
        (**self).d
    }
    #[inline(always)]
    unsafe fn dmin(&self) -> f32 {
        (**self).dmin
    }
}

/// Q4_K, ggml's repacked (per block) accumulation.
#[inline(always)]
unsafe fn tile_q4k_block<B: KBlock, D: Dot, const RW: usize, const RA: usize>(
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
        let is = kq_lanes::<D, RW, RA>(
            |r, c| wb[r].sub(c),
            |r, c| wb[r].scale(c),
            ab,
            [[_mm256_setzero_si256(); RA]; RW],
        );
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

/// Q5_K, `ggml_vec_dot_q5_K_q8_K`.
#[inline(always)]
unsafe fn tile_q5k<B: KBlock, D: Dot, const RW: usize, const RA: usize>(
    w: &[B],
    a: &[BlockQ8K],
    nb: usize,
) -> [[f32; RA]; RW] {
    let mut acc = [[_mm256_setzero_ps(); RA]; RW];
    let mut summs = [[0f32; RA]; RW];
    let step = RW * std::mem::size_of::<B>();
    let next = (w.as_ptr() as *const i8).wrapping_add(step * nb);
    for b in 0..nb {
        if RA == 1 {
            prefetch_slice(next, b, step);
        }
        let wb = views::<B, RW>(w, nb, b);
        let ab: [&BlockQ8K; RA] = std::array::from_fn(|i| a.get_unchecked(i * nb + b));
        let mins: [__m256i; RW] = std::array::from_fn(|r| wb[r].extra());
        let is = kq_lanes::<D, RW, RA>(
            |r, c| wb[r].sub(c),
            |r, c| wb[r].scale(c),
            ab,
            [[_mm256_setzero_si256(); RA]; RW],
        );
        for r in 0..RW {
            let d = wb[r].d();
            let dmin = wb[r].dmin();
            for i in 0..RA {
                let msum = hsum_i32(_mm256_madd_epi16(bsums16(ab[i]), mins[r])) as f32;
                let dm = -ab[i].d * dmin;
                summs[r][i] = dm.mul_add(msum, summs[r][i]);
                let dd = _mm256_set1_ps(ab[i].d * d);
                acc[r][i] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(is[r][i]), acc[r][i]);
            }
        }
    }
    let mut out = [[0f32; RA]; RW];
    for r in 0..RW {
        for i in 0..RA {
            out[r][i] = hsum8(acc[r][i]) + summs[r][i];
        }
    }
    out
}

/// 16-bit scales of chunk `c` of a Q6_K block: `sc[2c]` on lanes 0..4, `sc[2c+1]` on 4..8.
#[inline(always)]
unsafe fn q6k_scale(w: &BlockQ6K, c: usize) -> __m256i {
    _mm256_set_m128i(
        _mm_set1_epi16(w.scales[2 * c + 1] as i16),
        _mm_set1_epi16(w.scales[2 * c] as i16),
    )
}

/// Q6_K, `ggml_vec_dot_q6_K_q8_K`.
#[inline(always)]
unsafe fn tile_q6k<B: KBlock, D: Dot, const RW: usize, const RA: usize>(
    w: &[B],
    a: &[BlockQ8K],
    nb: usize,
) -> [[f32; RA]; RW] {
    let mut acc = [[_mm256_setzero_ps(); RA]; RW];
    let step = RW * std::mem::size_of::<B>();
    let next = (w.as_ptr() as *const i8).wrapping_add(step * nb);
    for b in 0..nb {
        if RA == 1 {
            prefetch_slice(next, b, step);
        }
        let wb = views::<B, RW>(w, nb, b);
        let ab: [&BlockQ8K; RA] = std::array::from_fn(|i| a.get_unchecked(i * nb + b));
        // The -32 offset, through the 16-sums: lane l gets 32 * (bs[2l] sc[2l] + bs[2l+1] sc[2l+1]).
        let mut init = [[_mm256_setzero_si256(); RA]; RW];
        for r in 0..RW {
            let sc_all = wb[r].extra();
            for i in 0..RA {
                let corr = _mm256_slli_epi32(_mm256_madd_epi16(bsums16(ab[i]), sc_all), 5);
                init[r][i] = _mm256_sub_epi32(_mm256_setzero_si256(), corr);
            }
        }
        let is = kq_lanes::<D, RW, RA>(|r, c| wb[r].sub(c), |r, c| wb[r].scale(c), ab, init);
        for r in 0..RW {
            let d = wb[r].d();
            for i in 0..RA {
                let dd = _mm256_set1_ps(ab[i].d * d);
                acc[r][i] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(is[r][i]), acc[r][i]);
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
unsafe fn predecode8k(w: &[BlockQ4K], nb: usize, out: &mut Vec<Decoded8K>) {
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
unsafe fn tile_q4k_t<D: Dot, const RA: usize>(
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
unsafe fn prompt_q4k<D: Dot>(w: &[BlockQ4K], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
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

/// Sweeps a chunk of k-quant weights with `$tile`: straight from the blocks for few activation
/// rows, from blocks decoded once ([`DecodedK`]), a panel of rows at a time, for many.
macro_rules! sweep_k {
    ($tile:ident, $d:ty, $w:expr, $a:expr, $nb:expr, $m:expr, $o:expr) => {{
        let (w, a, nb, m, o) = ($w, $a, $nb, $m, $o);
        if m == 1 {
            sweep!($tile, [_, $d], 2, 1, w, a, nb, m, o);
        } else if m < PREDECODE_MIN_ROWS {
            sweep!($tile, [_, $d], 2, 4, w, a, nb, m, o);
        } else {
            let rows = w.len() / nb;
            let mut dec = Vec::new();
            for j in (0..rows).step_by(K_PANEL_ROWS) {
                let j1 = (j + K_PANEL_ROWS).min(rows);
                dec.clear();
                dec.extend(w[j * nb..j1 * nb].iter().map(|b| DecodedK::of(b)));
                sweep!(
                    $tile,
                    [DecodedK, $d],
                    2,
                    4,
                    &dec[..],
                    a,
                    nb,
                    m,
                    o.offset_cols(j)
                );
            }
        }
    }};
}

/// Weight rows of k-quants decoded together: 552 bytes per 256 values, so that a panel stays
/// in the L2 cache.
const K_PANEL_ROWS: usize = 32;

#[inline(always)]
unsafe fn chunk_q4k<D: Dot>(w: &[BlockQ4K], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
    // Without VNNI a `dpbusd` costs three instructions, and the transposed form gains nothing.
    if m >= PREDECODE_MIN_ROWS && !D::SATURATES {
        prompt_q4k::<D>(w, a, nb, m, o)
    } else {
        sweep_k!(tile_q4k_block, D, w, a, nb, m, o)
    }
}

#[inline(always)]
unsafe fn chunk_q5k<D: Dot>(w: &[BlockQ5K], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
    sweep_k!(tile_q5k, D, w, a, nb, m, o)
}

#[inline(always)]
unsafe fn chunk_q6k<D: Dot>(w: &[BlockQ6K], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
    sweep_k!(tile_q6k, D, w, a, nb, m, o)
}

// ---------------------------------------------------------------------------------------------
// Entry points per feature level

macro_rules! entries {
    ($name:ident, $d:ty, $features:literal) => {
        pub(crate) mod $name {
            use super::*;
            #[target_feature(enable = $features)]
            pub unsafe fn w32<W: W32, A: A32>(
                per_block: bool,
                w: &[W],
                a: Rows<'_, A>,
                nb: usize,
                m: usize,
                o: OutPtr,
            ) {
                chunk_w32::<W, A, $d>(per_block, w, a, nb, m, o)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q4k(w: &[BlockQ4K], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
                chunk_q4k::<$d>(w, a, nb, m, o)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q5k(w: &[BlockQ5K], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
                chunk_q5k::<$d>(w, a, nb, m, o)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q6k(w: &[BlockQ6K], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
                chunk_q6k::<$d>(w, a, nb, m, o)
            }
        }
    };
}

entries!(e_avx2, Maddubs, "avx2,fma,f16c");
entries!(e_vnni, VnniVex, "avx2,fma,f16c,avxvnni");
entries!(
    e_evex,
    VnniEvex,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"
);

fn cast<W: Pod>(bytes: &[u8]) -> &[W] {
    cast_blocks::<W>(bytes).expect("weight layout checked at load")
}

fn w32<W: W32, A: A32>(
    isa: Isa,
    per_block: bool,
    bytes: &[u8],
    n: usize,
    nb: usize,
    a: &[A],
    ad: &[f32],
    ns: &[[i32; 8]],
    m: usize,
    out: &mut [f32],
) {
    let w = cast::<W>(bytes);
    let corr: Vec<[i32; 8]> = if m >= PREDECODE_MIN_ROWS && W::OFFSET != 0 {
        let shift = W::OFFSET.trailing_zeros();
        ns.iter().map(|v| v.map(|x| x << shift)).collect()
    } else {
        Vec::new()
    };
    let rows = Rows {
        a,
        d: ad,
        ns,
        corr: &corr,
    };
    // SAFETY (all arms): `isa` was checked against the CPU by the caller.
    match isa {
        Isa::Avx512 => run_chunks(w, n, nb, a, m, out, &|w, _, nb, m, o| unsafe {
            e_evex::w32(per_block, w, rows, nb, m, o)
        }),
        Isa::AvxVnni => run_chunks(w, n, nb, a, m, out, &|w, _, nb, m, o| unsafe {
            e_vnni::w32(per_block, w, rows, nb, m, o)
        }),
        _ => run_chunks(w, n, nb, a, m, out, &|w, _, nb, m, o| unsafe {
            e_avx2::w32(per_block, w, rows, nb, m, o)
        }),
    }
}

macro_rules! kq {
    ($f:ident, $blk:ty, $isa:expr, $bytes:expr, $n:expr, $nb:expr, $a:expr, $m:expr, $out:expr) => {{
        let w = cast::<$blk>($bytes);
        match $isa {
            Isa::Avx512 => run_chunks(w, $n, $nb, $a, $m, $out, &|w, a, nb, m, o| unsafe {
                e_evex::$f(w, a, nb, m, o)
            }),
            Isa::AvxVnni => run_chunks(w, $n, $nb, $a, $m, $out, &|w, a, nb, m, o| unsafe {
                e_vnni::$f(w, a, nb, m, o)
            }),
            _ => run_chunks(w, $n, $nb, $a, $m, $out, &|w, a, nb, m, o| unsafe {
                e_avx2::$f(w, a, nb, m, o)
            }),
        }
    }};
}

/// Runs the SIMD kernel for `ty` if there is one; false otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    ty: WeightType,
    repacked: bool,
    bytes: &[u8],
    n: usize,
    nb: usize,
    acts: &Activations,
    out: &mut [f32],
    isa: Isa,
) -> bool {
    debug_assert!(isa >= Isa::Avx2 && isa.supported());
    let (m, ad, ns) = (acts.m, &acts.d32[..], &acts.neg_sums[..]);
    if isa == Isa::Avx512 && avx512::matmul(ty, repacked, bytes, n, nb, acts, out) {
        return true;
    }
    match (ty, &acts.data) {
        (WeightType::Q4_0, ActData::Q8_0(a)) => {
            w32::<BlockQ4_0, _>(isa, repacked, bytes, n, nb, a, ad, ns, m, out)
        }
        (WeightType::Q5_0, ActData::Q8_0(a)) => {
            w32::<BlockQ5_0, _>(isa, false, bytes, n, nb, a, ad, ns, m, out)
        }
        (WeightType::Q8_0, ActData::Q8_0(a)) => {
            w32::<BlockQ8_0, _>(isa, false, bytes, n, nb, a, ad, ns, m, out)
        }
        (WeightType::Q4_1, ActData::Q8_1(a)) => {
            w32::<BlockQ4_1, _>(isa, false, bytes, n, nb, a, ad, ns, m, out)
        }
        (WeightType::Q5_1, ActData::Q8_1(a)) => {
            w32::<BlockQ5_1, _>(isa, false, bytes, n, nb, a, ad, ns, m, out)
        }
        (WeightType::Q4K, ActData::Q8K(a)) if repacked => {
            kq!(q4k, BlockQ4K, isa, bytes, n, nb, a.for_repacked(), m, out)
        }
        (WeightType::Q5K, ActData::Q8K(a)) => {
            kq!(q5k, BlockQ5K, isa, bytes, n, nb, &a.rows, m, out)
        }
        (WeightType::Q6K, ActData::Q8K(a)) => {
            kq!(q6k, BlockQ6K, isa, bytes, n, nb, &a.rows, m, out)
        }
        _ => return false,
    }
    true
}
