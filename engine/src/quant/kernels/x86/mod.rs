//! AVX2 / AVX-VNNI / AVX-512 kernels and their dispatch. They compute exactly what
//! [`super::super::reference`] computes: the same integers in the same lanes and the same float
//! operations in the same order, so their results are bit-identical to the scalar kernels.
//!
//! The kernel bodies are `#[inline(always)]` functions generic over [`simd::Dot`] (how 8-bit
//! products are summed: `maddubs`+`madd` on plain AVX2, `vpdpbusd`/`vpdpwssd` with VNNI) and are
//! instantiated inside `#[target_feature]` entry points (here), so they are compiled for the
//! feature level that runtime detection chose. By role, as in ggml-cpu's arch/x86:
//! * [`simd`]: the dot-product primitives per level and small vector helpers;
//! * [`quants`]: the `ggml_vec_dot_*` kernels (lanes accumulation), 32-value blocks and k-quants;
//! * [`repack`]: weights rearranged eight rows per vector for prompts (ggml's interleaved layout,
//!   not its repacked numerics);
//! * [`avx512`]: 512-bit versions of the above.
//!
//! Layout of the work: a chunk of weight rows (handed to one thread) is swept in tiles of `RW`
//! weight rows by `RA` activation rows; each weight block is decoded once per tile and used for
//! all `RA` activation rows, each activation block once for `RW` weight rows.

#![allow(
    clippy::missing_safety_doc,
    clippy::needless_range_loop,
    clippy::too_many_arguments
)]

use super::super::{blocks::*, run_chunks, ActData, Activations, Isa, OutPtr, WeightType};

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
                    [DecodedK<_>, $d],
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

/// Sweeps a chunk of Q4_K / Q6_K weights for a prompt: panels of rows decoded once, swept by
/// `$body` (an `RW x RA` tile of decoded rows `$dec` against activation rows `$i..`); rows
/// that do not fill a tile go to `$rest`. Textual, so the tile inlines into the caller's
/// target features.
macro_rules! sweep_prompt {
    ($rw:expr, $ra:expr, $panel:expr, $w:expr, $a:expr, $nb:expr, $m:expr, $o:expr, $rest:expr,
     |$dec:ident, $i:ident| $body:expr) => {{
        let (w, a, nb, m, o) = ($w, $a, $nb, $m, $o);
        let rows = w.len() / nb;
        let full_w = rows - rows % $rw;
        let full_a = m - m % $ra;
        let mut decoded = Vec::new();
        for j0 in (0..full_w).step_by($panel) {
            let j1 = (j0 + $panel).min(full_w);
            decoded.clear();
            decoded.extend(w[j0 * nb..j1 * nb].iter().map(|b| DecodedK::of(b)));
            for $i in (0..full_a).step_by($ra) {
                for j in (0..j1 - j0).step_by($rw) {
                    let $dec = &decoded[j * nb..];
                    let v = $body;
                    for r in 0..$rw {
                        for ii in 0..$ra {
                            // SAFETY: inside this chunk's columns and the output rows.
                            o.set($i + ii, j0 + j + r, v[r][ii]);
                        }
                    }
                }
            }
        }
        if full_a < m && full_w > 0 {
            $rest(
                &w[..full_w * nb],
                &a[full_a * nb..],
                m - full_a,
                o.offset_rows(full_a),
            );
        }
        if full_w < rows {
            $rest(&w[full_w * nb..], a, m, o.offset_cols(full_w));
        }
    }};
}

mod avx512;
mod avx512_kq;
mod kq_prompt;
mod quants;
mod repack;
mod simd;

use quants::*;
pub(crate) use simd::hsum_i32;
use simd::*;

// ---------------------------------------------------------------------------------------------
// Entry points per feature level

macro_rules! entries {
    ($name:ident, $d:ty, $features:literal) => {
        pub(crate) mod $name {
            use super::*;
            #[target_feature(enable = $features)]
            pub unsafe fn w32<W: W32, A: A32>(
                mode: u8,
                w: &[W],
                a: Rows<'_, A>,
                nb: usize,
                m: usize,
                o: OutPtr,
            ) {
                chunk_w32::<W, A, $d>(mode, w, a, nb, m, o)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q5k(w: &[BlockQ5K], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
                chunk_q5k::<$d>(w, a, nb, m, o)
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q4k_lanes(
                w: &[BlockQ4K],
                a: &[BlockQ8K],
                nb: usize,
                m: usize,
                o: OutPtr,
            ) {
                chunk_q4k_lanes::<$d>(w, a, nb, m, o)
            }
            /// Q4_K and Q6_K prompts (not used at the AVX-512 level, whose own tiles take them).
            #[allow(dead_code)]
            #[target_feature(enable = $features)]
            pub unsafe fn kq_prompt<B: kq_prompt::PromptK>(
                w: &[B],
                a: &[BlockQ8K],
                t: &kq_prompt::ActSide,
                nb: usize,
                m: usize,
                o: OutPtr,
                rest: kq_prompt::Rest<'_, B>,
            ) {
                kq_prompt::chunk::<B, $d>(w, a, t, nb, m, o, rest)
            }
            /// Q2_K, Q3_K, Q6_K, IQ4_XS.
            #[target_feature(enable = $features)]
            pub unsafe fn k_lanes<B: KBlock>(
                w: &[B],
                a: &[BlockQ8K],
                nb: usize,
                m: usize,
                o: OutPtr,
            ) {
                chunk_k_lanes::<B, $d>(w, a, nb, m, o)
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
    mode: u8,
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
            e_evex::w32(mode, w, rows, nb, m, o)
        }),
        Isa::AvxVnni => run_chunks(w, n, nb, a, m, out, &|w, _, nb, m, o| unsafe {
            e_vnni::w32(mode, w, rows, nb, m, o)
        }),
        _ => run_chunks(w, n, nb, a, m, out, &|w, _, nb, m, o| unsafe {
            e_avx2::w32(mode, w, rows, nb, m, o)
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

/// Q4_K / Q6_K prompts with 256-bit tiles ([`kq_prompt`]); leftover rows in the `vec_dot` tiles.
fn kq_prompt<B: kq_prompt::PromptK + KRest>(
    isa: Isa,
    bytes: &[u8],
    n: usize,
    nb: usize,
    a: &[BlockQ8K],
    m: usize,
    out: &mut [f32],
) {
    let t = kq_prompt::ActSide::new(a, m, nb, B::Q4K, false);
    let w = cast::<B>(bytes);
    // SAFETY (all arms): `isa` was checked against the CPU by the caller.
    if isa >= Isa::AvxVnni {
        let rest =
            |w: &[B], a: &[BlockQ8K], m: usize, o: OutPtr| unsafe { B::rest_vnni(w, a, nb, m, o) };
        run_chunks(w, n, nb, a, m, out, &|w, a, nb, m, o| unsafe {
            e_vnni::kq_prompt(w, a, &t, nb, m, o, &rest)
        });
    } else {
        let rest =
            |w: &[B], a: &[BlockQ8K], m: usize, o: OutPtr| unsafe { B::rest_avx2(w, a, nb, m, o) };
        run_chunks(w, n, nb, a, m, out, &|w, a, nb, m, o| unsafe {
            e_avx2::kq_prompt(w, a, &t, nb, m, o, &rest)
        });
    }
}

/// The `vec_dot` tiles of a prompt type, for the rows its prompt tiles leave.
trait KRest: Sized {
    unsafe fn rest_vnni(w: &[Self], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr);
    unsafe fn rest_avx2(w: &[Self], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr);
}
impl KRest for BlockQ4K {
    unsafe fn rest_vnni(w: &[Self], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
        e_vnni::q4k_lanes(w, a, nb, m, o)
    }
    unsafe fn rest_avx2(w: &[Self], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
        e_avx2::q4k_lanes(w, a, nb, m, o)
    }
}
impl KRest for BlockQ6K {
    unsafe fn rest_vnni(w: &[Self], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
        e_vnni::k_lanes(w, a, nb, m, o)
    }
    unsafe fn rest_avx2(w: &[Self], a: &[BlockQ8K], nb: usize, m: usize, o: OutPtr) {
        e_avx2::k_lanes(w, a, nb, m, o)
    }
}

/// Runs the SIMD kernel for `ty` if there is one; false otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    ty: WeightType,
    bytes: &[u8],
    n: usize,
    nb: usize,
    acts: &Activations,
    out: &mut [f32],
    isa: Isa,
) -> bool {
    debug_assert!(isa >= Isa::Avx2 && isa.supported());
    let (m, ad, ns) = (acts.m, &acts.d32[..], &acts.neg_sums[..]);
    if isa == Isa::Avx512 && avx512::matmul(ty, bytes, n, nb, acts, out) {
        return true;
    }
    match (ty, &acts.data) {
        (WeightType::Q4_0, ActData::Q8_0(a)) => {
            w32::<BlockQ4_0, _>(isa, acc::LANES, bytes, n, nb, a, ad, ns, m, out)
        }
        (WeightType::Q5_0, ActData::Q8_0(a)) => {
            w32::<BlockQ5_0, _>(isa, acc::LANES, bytes, n, nb, a, ad, ns, m, out)
        }
        (WeightType::Q8_0, ActData::Q8_0(a)) => {
            w32::<BlockQ8_0, _>(isa, acc::LANES, bytes, n, nb, a, ad, ns, m, out)
        }
        (WeightType::Q4_1, ActData::Q8_1(a)) => {
            w32::<BlockQ4_1, _>(isa, acc::LANES, bytes, n, nb, a, ad, ns, m, out)
        }
        (WeightType::Q5_1, ActData::Q8_1(a)) => {
            w32::<BlockQ5_1, _>(isa, acc::LANES, bytes, n, nb, a, ad, ns, m, out)
        }
        // ggml's vec_dot for one row (decoding), tinyBLAS for prompts.
        (WeightType::IQ4NL, ActData::Q8_0(a)) => {
            let mode = if m == 1 { acc::PAIRS } else { acc::LANES };
            w32::<BlockIQ4NL, _>(isa, mode, bytes, n, nb, a, ad, ns, m, out)
        }
        // ggml's vec_dot (pairs) for every row count: MXFP4 has no tinyBLAS or AVX-512 path.
        (WeightType::MXFP4, ActData::Q8_0(a)) => {
            w32::<BlockMXFP4, _>(isa, acc::PAIRS, bytes, n, nb, a, ad, ns, m, out)
        }
        (WeightType::Q5K, ActData::Q8K(a)) => {
            kq!(q5k, BlockQ5K, isa, bytes, n, nb, &a.rows, m, out)
        }
        (WeightType::Q4K, ActData::Q8K(a)) if m >= PREDECODE_MIN_ROWS => {
            kq_prompt::<BlockQ4K>(isa, bytes, n, nb, &a.rows, m, out)
        }
        (WeightType::Q6K, ActData::Q8K(a)) if m >= PREDECODE_MIN_ROWS => {
            kq_prompt::<BlockQ6K>(isa, bytes, n, nb, &a.rows, m, out)
        }
        (WeightType::Q4K, ActData::Q8K(a)) => {
            kq!(q4k_lanes, BlockQ4K, isa, bytes, n, nb, &a.rows, m, out)
        }
        (WeightType::Q2K, ActData::Q8K(a)) => {
            kq!(k_lanes, BlockQ2K, isa, bytes, n, nb, &a.rows, m, out)
        }
        (WeightType::Q3K, ActData::Q8K(a)) => {
            kq!(k_lanes, BlockQ3K, isa, bytes, n, nb, &a.rows, m, out)
        }
        (WeightType::Q6K, ActData::Q8K(a)) => {
            kq!(k_lanes, BlockQ6K, isa, bytes, n, nb, &a.rows, m, out)
        }
        (WeightType::IQ4XS, ActData::Q8K(a)) => {
            kq!(k_lanes, BlockIQ4XS, isa, bytes, n, nb, &a.rows, m, out)
        }
        _ => return false,
    }
    true
}
