//! Kernels with the arithmetic of ggml's `ggml_vec_dot_*` (arch/x86/quants.c): per weight row,
//! eight 32-bit integer lanes scaled into eight f32 lanes and folded at the end with
//! `hsum_float_8`. Weight blocks are read in place (decoding) or decoded once per chunk
//! (prompts); tiles of several weight rows by several activation rows reuse each decoded block.

use std::arch::x86_64::*;

use super::super::super::{blocks::*, OutPtr};
use super::repack::{predecode8, sweep_t, transposes, PANEL_ROWS};
use super::simd::*;

/// 32 nibbles of 16 bytes: low nibbles first, then high nibbles.
#[inline(always)]
pub(super) unsafe fn nibbles32(qs: &[u8; 16]) -> __m256i {
    let t = _mm_loadu_si128(qs.as_ptr() as *const __m128i);
    let b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    _mm256_and_si256(b, _mm256_set1_epi8(0xF))
}

/// 0x10 in byte `i` where bit `i` of `qh` is set.
#[inline(always)]
pub(super) unsafe fn high_bits32(qh: &[u8; 4]) -> __m256i {
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

/// [`KVALUES_IQ4NL`] plus 128, as unsigned bytes.
pub(super) const KVALUES_IQ4NL_U: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (KVALUES_IQ4NL[i] as i16 + 128) as u8;
        i += 1;
    }
    t
};

impl W32 for BlockIQ4NL {
    const OFFSET: u8 = 128;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn load_u(&self) -> __m256i {
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(
            KVALUES_IQ4NL_U.as_ptr() as *const __m128i
        ));
        _mm256_shuffle_epi8(table, nibbles32(&self.qs))
    }
    fn d_bits(&self) -> u16 {
        self.d
    }
}

/// [`KVALUES_MXFP4`] plus 16, as unsigned bytes.
const KVALUES_MXFP4_U: [u8; 16] = {
    let mut t = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = (KVALUES_MXFP4[i] + 16) as u8;
        i += 1;
    }
    t
};

impl W32 for BlockMXFP4 {
    const OFFSET: u8 = 16;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn load_u(&self) -> __m256i {
        let table = _mm256_broadcastsi128_si256(_mm_loadu_si128(
            KVALUES_MXFP4_U.as_ptr() as *const __m128i
        ));
        _mm256_shuffle_epi8(table, nibbles32(&self.qs))
    }
    fn d_bits(&self) -> u16 {
        unreachable!("an e8m0 scale, not an f16 one")
    }
    #[inline(always)]
    unsafe fn d_f32(&self) -> f32 {
        e8m0_to_f32_half(self.e)
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
pub(super) unsafe fn lanes_w32<W: W32, D: Dot>(
    wu: __m256i,
    av: __m256i,
    negcorr: __m256i,
) -> __m256i {
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
pub(super) unsafe fn negcorr<W: W32, D: Dot>(ns: *const [i32; 8]) -> __m256i {
    if W::OFFSET == 0 || (D::SATURATES && W::OFFSET >= 128) {
        _mm256_setzero_si256()
    } else {
        let s = _mm256_loadu_si256(ns as *const __m256i);
        // OFFSET is 8, 16 or 128.
        _mm256_sll_epi32(s, _mm_cvtsi32_si128(W::OFFSET.trailing_zeros() as i32))
    }
}

/// How a tile of 32-value blocks accumulates its floats.
pub(super) mod acc {
    /// ggml's `vec_dot` and tinyBLAS: eight f32 lanes, `fma(d, lane, acc)` per block.
    pub const LANES: u8 = 0;
    /// `ggml_vec_dot_iq4_nl_q8_0`: even and odd blocks in two sets of lanes, added before the
    /// final sum; an odd last block added after it, `total + d * sum`.
    pub const PAIRS: u8 = 2;
}

/// One `RW x RA` tile: weight rows `w[r*nb..]`, activation rows `a[i*nb..]`, accumulated as
/// `MODE` (one of [`acc`]) says.
#[inline(always)]
pub(super) unsafe fn tile_w32<
    W: W32,
    A: A32,
    D: Dot,
    const RW: usize,
    const RA: usize,
    const MODE: u8,
>(
    w: &[W],
    rows: Rows<'_, A>,
    nb: usize,
) -> [[f32; RA]; RW] {
    let (a, ad) = (rows.a, rows.d);
    let mut acc = [[_mm256_setzero_ps(); RA]; RW];
    let mut acc_odd = [[_mm256_setzero_ps(); RA]; RW];
    let mut accs = [[0f32; RA]; RW];
    // PAIRS: the last block of an odd count, as (integer sum, scale).
    let mut tail = [[(0f32, 0f32); RA]; RW];
    let step = RW * std::mem::size_of::<W>();
    let next = (w.as_ptr() as *const i8).wrapping_add(step * nb);
    for b in 0..nb {
        if RA == 1 {
            prefetch_slice(next, b, step);
        }
        let is_tail = MODE == acc::PAIRS && nb % 2 == 1 && b == nb - 1;
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
        if RA > 1 {
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
                let d = if RA > 1 {
                    _mm256_broadcast_ss(&prod[r][i])
                } else {
                    _mm256_mul_ps(dw[r], da)
                };
                if is_tail {
                    tail[r][i] = (hsum_i32(isum) as f32, _mm256_cvtss_f32(d));
                } else if MODE == acc::PAIRS && b % 2 == 1 {
                    acc_odd[r][i] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(isum), acc_odd[r][i]);
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
            out[r][i] = if MODE == acc::PAIRS {
                let (s, d) = tail[r][i];
                hsum8(_mm256_add_ps(acc[r][i], acc_odd[r][i])) + d * s
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

#[inline(always)]
pub(super) unsafe fn tile_w32_lanes<W: W32, A: A32, D: Dot, const RW: usize, const RA: usize>(
    w: &[W],
    a: Rows<'_, A>,
    nb: usize,
) -> [[f32; RA]; RW] {
    tile_w32::<W, A, D, RW, RA, { acc::LANES }>(w, a, nb)
}

#[inline(always)]
pub(super) unsafe fn tile_w32_pairs<W: W32, A: A32, D: Dot, const RW: usize, const RA: usize>(
    w: &[W],
    a: Rows<'_, A>,
    nb: usize,
) -> [[f32; RA]; RW] {
    tile_w32::<W, A, D, RW, RA, { acc::PAIRS }>(w, a, nb)
}

#[inline(always)]
pub(super) unsafe fn chunk_w32<W: W32, A: A32, D: Dot>(
    mode: u8,
    w: &[W],
    a: Rows<'_, A>,
    nb: usize,
    m: usize,
    o: OutPtr,
) {
    if mode == acc::PAIRS {
        sweep!(tile_w32_pairs, [W, A, D], 4, 1, w, a, nb, m, o);
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

/// Sub-block `c` (32 values) of a Q4_K block as unsigned bytes.
#[inline(always)]
pub(super) unsafe fn q4k_sub(w: &BlockQ4K, c: usize) -> __m256i {
    q4k_sub_raw(&w.qs, c)
}

/// Sub-block `c` of a Q5_K block as unsigned bytes.
#[inline(always)]
pub(super) unsafe fn q5k_sub(w: &BlockQ5K, c: usize) -> __m256i {
    let lo = q4k_sub_raw(&w.qs, c);
    let hbits = load256(w.qh.as_ptr());
    let h = _mm256_and_si256(
        _mm256_srl_epi16(hbits, _mm_cvtsi32_si128(c as i32)),
        _mm256_set1_epi8(1),
    );
    _mm256_or_si256(lo, _mm256_slli_epi16(h, 4))
}

#[inline(always)]
pub(super) unsafe fn q4k_sub_raw(qs: &[u8; 128], c: usize) -> __m256i {
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
pub(super) unsafe fn q6k_sub(w: &BlockQ6K, c: usize) -> __m256i {
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
pub(super) unsafe fn qs8k(a: &BlockQ8K, c: usize) -> __m256i {
    load256(a.qs.as_ptr().add(32 * c) as *const u8)
}

#[inline(always)]
pub(super) unsafe fn bsums16(a: &BlockQ8K) -> __m256i {
    load256(a.bsums.as_ptr() as *const u8)
}

/// Mins of a Q4_K/Q5_K block as 16 i16, each twice (against the two 16-sums of a sub-block).
#[inline(always)]
pub(super) unsafe fn mins16(mn: &[u8; 8]) -> __m256i {
    let m = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr() as *const __m128i));
    _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m))
}

/// Sub-block `c` of a Q2_K block: bits `2(c % 4)` of `qs[32(c / 4)..]`.
#[inline(always)]
pub(super) unsafe fn q2k_sub(w: &BlockQ2K, c: usize) -> __m256i {
    let bits = load256(w.qs.as_ptr().add(32 * (c / 4)));
    let bits = _mm256_srl_epi16(bits, _mm_cvtsi32_si128(2 * (c % 4) as i32));
    _mm256_and_si256(bits, _mm256_set1_epi8(3))
}

/// Sub-block `c` of a Q3_K block as unsigned bytes `quant + 4` (0..8): the two low bits and
/// the `hmask` bit `c` as bit 2.
#[inline(always)]
pub(super) unsafe fn q3k_sub(w: &BlockQ3K, c: usize) -> __m256i {
    let bits = load256(w.qs.as_ptr().add(32 * (c / 4)));
    let lo = _mm256_and_si256(
        _mm256_srl_epi16(bits, _mm_cvtsi32_si128(2 * (c % 4) as i32)),
        _mm256_set1_epi8(3),
    );
    let hm = load256(w.hmask.as_ptr());
    let h = _mm256_and_si256(
        _mm256_srl_epi16(hm, _mm_cvtsi32_si128(c as i32)),
        _mm256_set1_epi8(1),
    );
    _mm256_or_si256(lo, _mm256_slli_epi16(h, 2))
}

/// Sub-block `c` of an IQ4_XS block as signed code book values.
#[inline(always)]
pub(super) unsafe fn iq4xs_sub(w: &BlockIQ4XS, c: usize) -> __m256i {
    let table =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(KVALUES_IQ4NL.as_ptr() as *const __m128i));
    let qs: &[u8; 16] = &*(w.qs.as_ptr().add(16 * c) as *const [u8; 16]);
    _mm256_shuffle_epi8(table, nibbles32(qs))
}

/// 16-bit scales of a chunk whose two halves have scales `lo` (lanes 0..4) and `hi` (4..8).
#[inline(always)]
unsafe fn scale_halves(lo: i16, hi: i16) -> __m256i {
    _mm256_set_m128i(_mm_set1_epi16(hi), _mm_set1_epi16(lo))
}

/// Integer lanes `sum_c scale_c * dot(q_c, a_c)` of an RW x RA tile for one super-block, as
/// ggml's AVX2 kernels form them: `maddubs` pairs, then `madd` with the 16-bit scales. Weights
/// that `maddubs` cannot take as they are go through the view's [`KView::FORM`].
#[inline(always)]
pub(super) unsafe fn kq_lanes<V: KView, D: Dot, const RW: usize, const RA: usize>(
    wb: &[V; RW],
    a: [&BlockQ8K; RA],
    init: [[__m256i; RA]; RW],
) -> [[__m256i; RA]; RW] {
    let mut is = init;
    for c in 0..8 {
        let mut av = [_mm256_setzero_si256(); RA];
        let mut off = [_mm256_setzero_si256(); RA];
        for i in 0..RA {
            av[i] = qs8k(a[i], c);
            if let Form::Offset(o) = V::FORM {
                // Shared by the tile's rows: `o * (a0 + a1)` per pair.
                off[i] = _mm256_maddubs_epi16(_mm256_set1_epi8(o as i8), av[i]);
            }
        }
        for r in 0..RW {
            let q = wb[r].sub(c);
            let sc = wb[r].scale(c);
            for i in 0..RA {
                let p16 = match V::FORM {
                    Form::Unsigned => _mm256_maddubs_epi16(q, av[i]),
                    Form::Offset(_) => _mm256_sub_epi16(_mm256_maddubs_epi16(q, av[i]), off[i]),
                    // ggml's sign trick: |q| times a with q's sign.
                    Form::Signed => {
                        _mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(av[i], q))
                    }
                };
                is[r][i] = D::dpwssd(is[r][i], p16, sc);
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
pub(super) unsafe fn views<B: KBlock, const RW: usize>(
    w: &[B],
    nb: usize,
    b: usize,
) -> [B::View; RW] {
    let mut v = [w.get_unchecked(b).view(); RW];
    for r in 1..RW {
        v[r] = w.get_unchecked(r * nb + b).view();
    }
    v
}

/// How [`KView::sub`] holds a chunk's quants for `maddubs`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Unsigned and small enough: the quants themselves.
    Unsigned,
    /// Unsigned `quant + o`: the products of `o` are taken off again.
    Offset(u8),
    /// Signed (IQ4_XS's code book): multiplied with ggml's sign trick.
    Signed,
}

/// What the tiles take from a super-block: its 32-value chunks, their 16-bit scales, the
/// per-block extra (Q4_K / Q5_K: [`mins16`]; Q6_K: its 16 scales as i16; Q2_K: its 16 mins as
/// i16) and the f32 scales.
pub(crate) trait KView {
    const FORM: Form = Form::Unsigned;
    /// Q6_K: the -32 offset of its quants is taken off through the activation 16-sums
    /// (ggml's `q8sclsub`, with the scales in `extra`).
    const MINUS32: bool = false;
    /// Q2_K: `extra` holds mins, whose lanes against the 16-sums get their own fma, first.
    const MIN_LANES: bool = false;
    unsafe fn sub(&self, c: usize) -> __m256i;
    unsafe fn scale(&self, c: usize) -> __m256i;
    unsafe fn extra(&self) -> __m256i {
        _mm256_setzero_si256()
    }
    unsafe fn d(&self) -> f32;
    unsafe fn dmin(&self) -> f32 {
        0.0
    }
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
    const MINUS32: bool = true;
    #[inline(always)]
    unsafe fn sub(&self, c: usize) -> __m256i {
        q6k_sub(&**self, c)
    }
    #[inline(always)]
    unsafe fn scale(&self, c: usize) -> __m256i {
        let sc = &(**self).scales;
        scale_halves(sc[2 * c] as i16, sc[2 * c + 1] as i16)
    }
    #[inline(always)]
    unsafe fn extra(&self) -> __m256i {
        _mm256_cvtepi8_epi16(_mm_loadu_si128((**self).scales.as_ptr() as *const __m128i))
    }
    #[inline(always)]
    unsafe fn d(&self) -> f32 {
        f16x1((**self).d)
    }
}

impl KBlock for BlockQ2K {
    type View = *const BlockQ2K;
    #[inline(always)]
    unsafe fn view(&self) -> *const BlockQ2K {
        self
    }
}
impl KView for *const BlockQ2K {
    const MIN_LANES: bool = true;
    #[inline(always)]
    unsafe fn sub(&self, c: usize) -> __m256i {
        q2k_sub(&**self, c)
    }
    #[inline(always)]
    unsafe fn scale(&self, c: usize) -> __m256i {
        let sc = &(**self).scales;
        scale_halves((sc[2 * c] & 0xF) as i16, (sc[2 * c + 1] & 0xF) as i16)
    }
    #[inline(always)]
    unsafe fn extra(&self) -> __m256i {
        let sc = _mm_loadu_si128((**self).scales.as_ptr() as *const __m128i);
        let mins = _mm_and_si128(_mm_srli_epi16(sc, 4), _mm_set1_epi8(0xF));
        _mm256_cvtepu8_epi16(mins)
    }
    #[inline(always)]
    unsafe fn d(&self) -> f32 {
        f16x1((**self).d)
    }
    #[inline(always)]
    unsafe fn dmin(&self) -> f32 {
        f16x1((**self).dmin)
    }
}

/// A Q3_K block with its sixteen scales unpacked.
#[derive(Clone, Copy)]
pub(crate) struct K3View {
    b: *const BlockQ3K,
    sc: [i8; 16],
}
impl KBlock for BlockQ3K {
    type View = K3View;
    #[inline(always)]
    unsafe fn view(&self) -> K3View {
        K3View {
            b: self,
            sc: self.scales(),
        }
    }
}
impl KView for K3View {
    const FORM: Form = Form::Offset(4);
    #[inline(always)]
    unsafe fn sub(&self, c: usize) -> __m256i {
        q3k_sub(&*self.b, c)
    }
    #[inline(always)]
    unsafe fn scale(&self, c: usize) -> __m256i {
        scale_halves(self.sc[2 * c] as i16, self.sc[2 * c + 1] as i16)
    }
    #[inline(always)]
    unsafe fn d(&self) -> f32 {
        f16x1((*self.b).d)
    }
}

/// An IQ4_XS block with its eight sub-block scales unpacked.
#[derive(Clone, Copy)]
pub(crate) struct IQ4XSView {
    b: *const BlockIQ4XS,
    ls: [i8; 8],
}
impl KBlock for BlockIQ4XS {
    type View = IQ4XSView;
    #[inline(always)]
    unsafe fn view(&self) -> IQ4XSView {
        IQ4XSView {
            b: self,
            ls: self.scales(),
        }
    }
}
impl KView for IQ4XSView {
    const FORM: Form = Form::Signed;
    #[inline(always)]
    unsafe fn sub(&self, c: usize) -> __m256i {
        iq4xs_sub(&*self.b, c)
    }
    #[inline(always)]
    unsafe fn scale(&self, c: usize) -> __m256i {
        _mm256_set1_epi16(self.ls[c] as i16)
    }
    #[inline(always)]
    unsafe fn d(&self) -> f32 {
        f16x1((*self.b).d)
    }
}

/// A k-quant super-block decoded once for a prompt: what its [`KView`] gives, stored, so tiles
/// load it instead of unpacking bits and scales again for every group of activation rows.
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct DecodedK<B> {
    pub(super) u: [[u8; 32]; 8],
    pub(super) sc: [[i16; 16]; 8],
    pub(super) extra: [i16; 16],
    pub(super) d: f32,
    pub(super) dmin: f32,
    _b: std::marker::PhantomData<B>,
}

// SAFETY: plain bytes, integers and floats.
unsafe impl<B: Copy + 'static> Pod for DecodedK<B> {}

impl<B: KBlock> DecodedK<B> {
    #[inline(always)]
    pub(super) unsafe fn of(b: &B) -> Self {
        let v = b.view();
        let mut t = DecodedK {
            u: [[0; 32]; 8],
            sc: [[0; 16]; 8],
            extra: [0; 16],
            d: v.d(),
            dmin: v.dmin(),
            _b: std::marker::PhantomData,
        };
        for c in 0..8 {
            _mm256_store_si256(t.u[c].as_mut_ptr() as *mut __m256i, v.sub(c));
            _mm256_store_si256(t.sc[c].as_mut_ptr() as *mut __m256i, v.scale(c));
        }
        _mm256_store_si256(t.extra.as_mut_ptr() as *mut __m256i, v.extra());
        t
    }
}

impl<B: KBlock> KBlock for DecodedK<B> {
    type View = *const DecodedK<B>;
    #[inline(always)]
    unsafe fn view(&self) -> *const DecodedK<B> {
        self
    }
}
impl<B: KBlock> KView for *const DecodedK<B> {
    const FORM: Form = <B::View as KView>::FORM;
    const MINUS32: bool = <B::View as KView>::MINUS32;
    const MIN_LANES: bool = <B::View as KView>::MIN_LANES;
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

/// Q5_K, `ggml_vec_dot_q5_K_q8_K`.
#[inline(always)]
pub(super) unsafe fn tile_q5k<B: KBlock, D: Dot, const RW: usize, const RA: usize>(
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
        let is = kq_lanes::<_, D, RW, RA>(&wb, ab, [[_mm256_setzero_si256(); RA]; RW]);
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

/// Q4_K, `ggml_vec_dot_q4_K_q8_K`: the quants' lanes as Q5_K's, the mins in four lanes of
/// their own (`m[2i] bs32[2i] + m[2i+1] bs32[2i+1]`), folded `(0 + 2) + (1 + 3)` at the end.
#[inline(always)]
pub(super) unsafe fn tile_q4k<B: KBlock, D: Dot, const RW: usize, const RA: usize>(
    w: &[B],
    a: &[BlockQ8K],
    nb: usize,
) -> [[f32; RA]; RW] {
    let mut acc = [[_mm256_setzero_ps(); RA]; RW];
    let mut accm = [[_mm_setzero_ps(); RA]; RW];
    let step = RW * std::mem::size_of::<B>();
    let next = (w.as_ptr() as *const i8).wrapping_add(step * nb);
    for b in 0..nb {
        if RA == 1 {
            prefetch_slice(next, b, step);
        }
        let wb = views::<B, RW>(w, nb, b);
        let ab: [&BlockQ8K; RA] = std::array::from_fn(|i| a.get_unchecked(i * nb + b));
        let is = kq_lanes::<_, D, RW, RA>(&wb, ab, [[_mm256_setzero_si256(); RA]; RW]);
        for r in 0..RW {
            let d = wb[r].d();
            let dmin = wb[r].dmin();
            // extra = each min twice: one madd gives m_j * bs32_j in lane j.
            let mins = wb[r].extra();
            for i in 0..RA {
                let m8 = _mm256_madd_epi16(bsums16(ab[i]), mins);
                let m4 =
                    _mm_hadd_epi32(_mm256_castsi256_si128(m8), _mm256_extracti128_si256(m8, 1));
                let dm = _mm_set1_ps(-ab[i].d * dmin);
                accm[r][i] = _mm_fmadd_ps(dm, _mm_cvtepi32_ps(m4), accm[r][i]);
                let dd = _mm256_set1_ps(ab[i].d * d);
                acc[r][i] = _mm256_fmadd_ps(dd, _mm256_cvtepi32_ps(is[r][i]), acc[r][i]);
            }
        }
    }
    let mut out = [[0f32; RA]; RW];
    for r in 0..RW {
        for i in 0..RA {
            let m = accm[r][i];
            let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_add_ss(m, _mm_movehdup_ps(m));
            out[r][i] = hsum8(acc[r][i]) + _mm_cvtss_f32(m);
        }
    }
    out
}

/// Q2_K, Q3_K, Q6_K and IQ4_XS (`ggml_vec_dot_{q2_K,q3_K,q6_K,iq4_xs}_q8_K`): eight lanes, one
/// `fma(d_a * d, lanes, acc)` per block (Q2_K: after `fma(-d_a * dmin, min lanes, acc)`).
#[inline(always)]
pub(super) unsafe fn tile_k_lanes<B: KBlock, D: Dot, const RW: usize, const RA: usize>(
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
        let mut init = [[_mm256_setzero_si256(); RA]; RW];
        if <B::View as KView>::MINUS32 {
            // Lane l gets 32 * (bs[2l] sc[2l] + bs[2l+1] sc[2l+1]) taken off.
            for r in 0..RW {
                let sc_all = wb[r].extra();
                for i in 0..RA {
                    let corr = _mm256_slli_epi32(_mm256_madd_epi16(bsums16(ab[i]), sc_all), 5);
                    init[r][i] = _mm256_sub_epi32(_mm256_setzero_si256(), corr);
                }
            }
        }
        let is = kq_lanes::<_, D, RW, RA>(&wb, ab, init);
        for r in 0..RW {
            let d = wb[r].d();
            if <B::View as KView>::MIN_LANES {
                let (dmin, mins) = (wb[r].dmin(), wb[r].extra());
                for i in 0..RA {
                    let prod = _mm256_madd_epi16(mins, bsums16(ab[i]));
                    let dm = _mm256_set1_ps(-ab[i].d * dmin);
                    acc[r][i] = _mm256_fmadd_ps(dm, _mm256_cvtepi32_ps(prod), acc[r][i]);
                }
            }
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

/// Weight rows of k-quants decoded together: 552 bytes per 256 values, so that a panel stays
/// in the L2 cache.
pub(super) const K_PANEL_ROWS: usize = 32;

#[inline(always)]
pub(super) unsafe fn chunk_q5k<D: Dot>(
    w: &[BlockQ5K],
    a: &[BlockQ8K],
    nb: usize,
    m: usize,
    o: OutPtr,
) {
    sweep_k!(tile_q5k, D, w, a, nb, m, o)
}

/// The k-quants whose tile is [`tile_k_lanes`].
#[inline(always)]
pub(super) unsafe fn chunk_k_lanes<B: KBlock, D: Dot>(
    w: &[B],
    a: &[BlockQ8K],
    nb: usize,
    m: usize,
    o: OutPtr,
) {
    sweep_k!(tile_k_lanes, D, w, a, nb, m, o)
}

#[inline(always)]
pub(super) unsafe fn chunk_q4k_lanes<D: Dot>(
    w: &[BlockQ4K],
    a: &[BlockQ8K],
    nb: usize,
    m: usize,
    o: OutPtr,
) {
    sweep_k!(tile_q4k, D, w, a, nb, m, o)
}
