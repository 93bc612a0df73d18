//! aarch64 NEON kernels (plain NEON, `sdot`, `smmla`) and their dispatch. They follow ggml's ARM
//! numerics, which differ from its x86 ones (four lanes instead of eight, other float orders,
//! another Q8_0 quantizer), so that results follow llama.cpp on the same ARM machine:
//! [`reference`] models them in scalar code and the kernels are tested against it bit for bit.
//! The ggml paths modelled are those of a build without weight repacking (`--no-repack`):
//! `ggml_vec_dot_*`, llamafile's `tinyBLAS_Q0_ARM` for Q4_0 / Q8_0 prompts, and the i8mm
//! `nrc == 2` kernels (see [`reference::Path`]).
//!
//! By role, as in ggml-cpu's arch/arm:
//! * [`simd`]: `sdot` / `smmla` (inline assembly: their intrinsics are not stable) and helpers;
//! * [`quants`]: the kernels;
//! * [`act`]: the Q8_0 / Q8_1 activation quantizer;
//! * [`f16`]: the f16 paths of attention and `vec_dot_f16`;
//! * [`vec`]: `ggml_v_expf`, the softmax exponentials and SwiGLU (vec.h / vec.cpp);
//! * [`reference`]: the scalar models.
//!
//! Nothing here is Linux-specific: features are detected with `is_aarch64_feature_detected!`,
//! so the same code serves aarch64-apple-darwin.

#![allow(clippy::too_many_arguments)]

pub(crate) mod act;
pub(crate) mod f16;
mod quants;
// The whole-product models run only in the tests; the kernels share their float steps.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod reference;
mod simd;
#[cfg(test)]
mod tests;
pub(crate) mod vec;

use super::super::{blocks::*, run_chunks, ActData, Activations, Isa, OutPtr, WeightType};
use quants::*;
use reference::{Lanes, Path};
use simd::{Mull, Sdot};

/// The ggml code path for `ty` with `m` activation rows and `n` weight rows at level `isa`.
pub(crate) fn path(ty: WeightType, isa: Isa, m: usize, n: usize) -> Path {
    let lanes = if isa >= Isa::NeonDotprod {
        Lanes::Sdot
    } else {
        Lanes::Mull
    };
    match ty {
        // llamafile's sgemm takes prompts first; it needs `sdot`.
        WeightType::Q4_0 | WeightType::Q8_0 if m >= 2 && lanes == Lanes::Sdot => Path::TinyBlas,
        WeightType::Q4_1 | WeightType::Q4K | WeightType::Q6K
            if isa == Isa::NeonI8mm && m.is_multiple_of(2) && n.is_multiple_of(2) =>
        {
            Path::Mmla
        }
        _ => Path::VecDot(lanes),
    }
}

/// Every output of a chunk from a dot product of one weight row and one activation row.
#[inline(always)]
fn rows<W, A>(w: &[W], a: &[A], nb: usize, m: usize, o: OutPtr, dot: impl Fn(&[W], &[A]) -> f32) {
    for i in 0..m {
        let ar = &a[i * nb..(i + 1) * nb];
        for (j, wr) in w.chunks_exact(nb).enumerate() {
            // SAFETY: the chunk owns columns 0..rows of every output row.
            unsafe { o.set(i, j, dot(wr, ar)) };
        }
    }
}

/// Every output of a chunk in 2x2 tiles (`m` and the chunk's rows even):
/// `tile(w0, w1, a0, a1) = [w0.a0, w0.a1, w1.a0, w1.a1]`.
#[inline(always)]
fn tiles2<W, A>(
    w: &[W],
    a: &[A],
    nb: usize,
    m: usize,
    o: OutPtr,
    tile: impl Fn(&[W], &[W], &[A], &[A]) -> [f32; 4],
) {
    let n = w.len() / nb;
    debug_assert!(m.is_multiple_of(2) && n.is_multiple_of(2));
    for i in (0..m).step_by(2) {
        let (a0, a1) = (&a[i * nb..(i + 1) * nb], &a[(i + 1) * nb..(i + 2) * nb]);
        for j in (0..n).step_by(2) {
            let t = tile(
                &w[j * nb..(j + 1) * nb],
                &w[(j + 1) * nb..(j + 2) * nb],
                a0,
                a1,
            );
            // SAFETY: the chunk owns columns 0..n of every output row.
            unsafe {
                o.set(i, j, t[0]);
                o.set(i + 1, j, t[1]);
                o.set(i, j + 1, t[2]);
                o.set(i + 1, j + 1, t[3]);
            }
        }
    }
}

/// A 2x2 tile from a dot product (k-quants' `nrc == 2` kernels: the integers are exact, so
/// `sdot` gives what `smmla` gives).
#[inline(always)]
fn tile_of<W, A>(dot: impl Fn(&[W], &[A]) -> f32) -> impl Fn(&[W], &[W], &[A], &[A]) -> [f32; 4] {
    move |w0, w1, a0, a1| [dot(w0, a0), dot(w0, a1), dot(w1, a0), dot(w1, a1)]
}

// ---------------------------------------------------------------------------------------------
// Entry points per feature level: the kernels are instantiated inside functions compiled with
// the level's features.

macro_rules! entries {
    ($name:ident, $d:ty, $features:literal) => {
        mod $name {
            use super::*;

            #[target_feature(enable = $features)]
            pub unsafe fn vec_dot32<B: W32 + reference::Arm32>(
                w: &[B],
                a: &[BlockQ8_0],
                nb: usize,
                m: usize,
                o: OutPtr,
            ) {
                rows(w, a, nb, m, o, |w, a| quants::vec_dot32::<B, $d>(w, a))
            }
            #[target_feature(enable = $features)]
            pub unsafe fn iq4nl(w: &[BlockIQ4NL], a: &[BlockQ8_0], nb: usize, m: usize, o: OutPtr) {
                rows(w, a, nb, m, o, |w, a| vec_dot_iq4nl::<$d>(w, a))
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q4_1(w: &[BlockQ4_1], a: &[BlockQ8_1], nb: usize, m: usize, o: OutPtr) {
                rows(w, a, nb, m, o, |w, a| vec_dot_q4_1::<$d>(w, a))
            }
            #[target_feature(enable = $features)]
            pub unsafe fn q5_1(w: &[BlockQ5_1], a: &[BlockQ8_1], nb: usize, m: usize, o: OutPtr) {
                rows(w, a, nb, m, o, |w, a| vec_dot_q5_1::<$d>(w, a))
            }
            #[target_feature(enable = $features)]
            pub unsafe fn k<W: KInts>(
                w: &[W],
                a: &[BlockQ8K],
                nb: usize,
                m: usize,
                o: OutPtr,
                step: fn(f32, &W, &BlockQ8K, W::I) -> f32,
            ) {
                rows(w, a, nb, m, o, |w, a| dot_k::<W, $d>(w, a, step))
            }
            // Taken at the i8mm level only, so through `e_dot`.
            #[allow(dead_code)]
            #[target_feature(enable = $features)]
            pub unsafe fn k_tiles<W: KInts>(
                w: &[W],
                a: &[BlockQ8K],
                nb: usize,
                m: usize,
                o: OutPtr,
                step: fn(f32, &W, &BlockQ8K, W::I) -> f32,
            ) {
                tiles2(w, a, nb, m, o, tile_of(|w, a| dot_k::<W, $d>(w, a, step)))
            }
        }
    };
}

entries!(e_neon, Mull, "neon");
entries!(e_dot, Sdot, "neon,dotprod");

#[target_feature(enable = "neon,dotprod")]
unsafe fn tinyblas_chunk<B: W32 + reference::Arm32>(
    w: &[B],
    a: &[BlockQ8_0],
    nb: usize,
    m: usize,
    o: OutPtr,
) {
    rows(w, a, nb, m, o, |w, a| quants::tinyblas(w, a))
}

#[target_feature(enable = "neon,dotprod,i8mm")]
unsafe fn mmla_q4_1_chunk(w: &[BlockQ4_1], a: &[BlockQ8_1], nb: usize, m: usize, o: OutPtr) {
    tiles2(w, a, nb, m, o, |w0, w1, a0, a1| mmla_q4_1(w0, w1, a0, a1))
}

fn cast<W: Pod>(bytes: &[u8]) -> &[W] {
    cast_blocks::<W>(bytes).expect("weight layout checked at load")
}

/// Runs the NEON kernel for `ty` at `isa` (an aarch64 level this CPU has).
pub(crate) fn matmul(
    ty: WeightType,
    bytes: &[u8],
    n: usize,
    nb: usize,
    acts: &Activations,
    out: &mut [f32],
    isa: Isa,
) {
    debug_assert!(isa.is_arm() && isa.supported());
    let m = acts.m;
    let path = path(ty, isa, m, n);
    let dotprod = isa >= Isa::NeonDotprod;
    macro_rules! run {
        ($w:expr, $a:expr, $f:ident $(, $extra:expr)?) => {{
            let w = $w;
            // SAFETY (both arms): `isa` was checked against the CPU by the caller.
            if dotprod {
                run_chunks(w, n, nb, $a, m, out, &|w, a, nb, m, o| unsafe {
                    e_dot::$f(w, a, nb, m, o $(, $extra)?)
                })
            } else {
                run_chunks(w, n, nb, $a, m, out, &|w, a, nb, m, o| unsafe {
                    e_neon::$f(w, a, nb, m, o $(, $extra)?)
                })
            }
        }};
    }
    macro_rules! k {
        ($blk:ty, $a:expr, $step:expr, $mmla:expr) => {{
            let w = cast::<$blk>(bytes);
            if path == Path::Mmla {
                // SAFETY: Mmla is chosen only at the i8mm level, which includes dotprod.
                run_chunks(w, n, nb, $a, m, out, &|w, a, nb, m, o| unsafe {
                    e_dot::k_tiles(w, a, nb, m, o, $mmla)
                })
            } else {
                run!(w, $a, k, $step)
            }
        }};
    }
    match (ty, &acts.data) {
        (WeightType::Q4_0, ActData::Q8_0(a)) if path == Path::TinyBlas => {
            // SAFETY: TinyBlas is chosen only with dotprod.
            run_chunks(
                cast::<BlockQ4_0>(bytes),
                n,
                nb,
                a,
                m,
                out,
                &|w, a, nb, m, o| unsafe { tinyblas_chunk(w, a, nb, m, o) },
            )
        }
        (WeightType::Q8_0, ActData::Q8_0(a)) if path == Path::TinyBlas => {
            // SAFETY: as above.
            run_chunks(
                cast::<BlockQ8_0>(bytes),
                n,
                nb,
                a,
                m,
                out,
                &|w, a, nb, m, o| unsafe { tinyblas_chunk(w, a, nb, m, o) },
            )
        }
        (WeightType::Q4_0, ActData::Q8_0(a)) => run!(cast::<BlockQ4_0>(bytes), a, vec_dot32),
        (WeightType::Q5_0, ActData::Q8_0(a)) => run!(cast::<BlockQ5_0>(bytes), a, vec_dot32),
        (WeightType::Q8_0, ActData::Q8_0(a)) => run!(cast::<BlockQ8_0>(bytes), a, vec_dot32),
        (WeightType::IQ4NL, ActData::Q8_0(a)) => run!(cast::<BlockIQ4NL>(bytes), a, iq4nl),
        (WeightType::Q4_1, ActData::Q8_1(a)) if path == Path::Mmla => {
            // SAFETY: Mmla is chosen only at the i8mm level.
            run_chunks(
                cast::<BlockQ4_1>(bytes),
                n,
                nb,
                a,
                m,
                out,
                &|w, a, nb, m, o| unsafe { mmla_q4_1_chunk(w, a, nb, m, o) },
            )
        }
        (WeightType::Q4_1, ActData::Q8_1(a)) => run!(cast::<BlockQ4_1>(bytes), a, q4_1),
        (WeightType::Q5_1, ActData::Q8_1(a)) => run!(cast::<BlockQ5_1>(bytes), a, q5_1),
        (WeightType::Q4K, ActData::Q8K(a)) => k!(
            BlockQ4K,
            &a.rows,
            reference::step_q4k,
            reference::step_q4k_mmla
        ),
        (WeightType::Q6K, ActData::Q8K(a)) => k!(
            BlockQ6K,
            &a.rows,
            reference::step_q6k,
            reference::step_q6k_mmla
        ),
        (WeightType::Q5K, ActData::Q8K(a)) => {
            run!(cast::<BlockQ5K>(bytes), &a.rows, k, reference::step_q5k)
        }
        (WeightType::Q2K, ActData::Q8K(a)) => {
            run!(cast::<BlockQ2K>(bytes), &a.rows, k, reference::step_q2k)
        }
        (WeightType::Q3K, ActData::Q8K(a)) => {
            run!(cast::<BlockQ3K>(bytes), &a.rows, k, reference::step_q3k)
        }
        (WeightType::IQ4XS, ActData::Q8K(a)) => {
            run!(cast::<BlockIQ4XS>(bytes), &a.rows, k, reference::step_iq4xs)
        }
        _ => panic!("activations of the wrong type for {ty:?}"),
    }
}

/// The same products with the scalar models of [`reference`], for the path `isa` takes (the
/// oracle of the tests; any `isa`, whatever the CPU has).
#[cfg(test)]
pub(crate) fn reference_matmul(
    ty: WeightType,
    bytes: &[u8],
    n: usize,
    nb: usize,
    acts: &Activations,
    out: &mut [f32],
    isa: Isa,
) {
    use reference as r;
    let m = acts.m;
    let path = path(ty, isa, m, n);
    let lanes = match path {
        Path::VecDot(l) => l,
        _ => Lanes::Sdot,
    };
    fn go<W: Pod + Sync, A: Sync>(
        bytes: &[u8],
        n: usize,
        nb: usize,
        a: &[A],
        m: usize,
        out: &mut [f32],
        dot: impl Fn(&[W], &[A]) -> f32 + Sync,
    ) {
        run_chunks(cast::<W>(bytes), n, nb, a, m, out, &|w, a, nb, m, o| {
            rows(w, a, nb, m, o, &dot)
        })
    }
    let mmla = path == Path::Mmla;
    match (ty, &acts.data) {
        (WeightType::Q4_0, ActData::Q8_0(a)) if path == Path::TinyBlas => {
            go(bytes, n, nb, a, m, out, r::tinyblas::<BlockQ4_0>)
        }
        (WeightType::Q8_0, ActData::Q8_0(a)) if path == Path::TinyBlas => {
            go(bytes, n, nb, a, m, out, r::tinyblas::<BlockQ8_0>)
        }
        (WeightType::Q4_0, ActData::Q8_0(a)) => go(bytes, n, nb, a, m, out, |w, a| {
            r::vec_dot32::<BlockQ4_0>(lanes, w, a)
        }),
        (WeightType::Q5_0, ActData::Q8_0(a)) => go(bytes, n, nb, a, m, out, |w, a| {
            r::vec_dot32::<BlockQ5_0>(lanes, w, a)
        }),
        (WeightType::Q8_0, ActData::Q8_0(a)) => go(bytes, n, nb, a, m, out, |w, a| {
            r::vec_dot32::<BlockQ8_0>(lanes, w, a)
        }),
        (WeightType::IQ4NL, ActData::Q8_0(a)) => go(bytes, n, nb, a, m, out, r::vec_dot_iq4nl),
        // No NEON kernel yet: ARM runs the scalar reference (kernels/mod.rs).
        (WeightType::MXFP4, ActData::Q8_0(a)) => go(
            bytes,
            n,
            nb,
            a,
            m,
            out,
            super::super::reference::dot_mxfp4_pairs,
        ),
        (WeightType::Q4_1, ActData::Q8_1(a)) if mmla => go(bytes, n, nb, a, m, out, r::mmla_q4_1),
        (WeightType::Q4_1, ActData::Q8_1(a)) => {
            go(bytes, n, nb, a, m, out, |w, a| r::vec_dot_q4_1(lanes, w, a))
        }
        (WeightType::Q5_1, ActData::Q8_1(a)) => {
            go(bytes, n, nb, a, m, out, |w, a| r::vec_dot_q5_1(lanes, w, a))
        }
        (WeightType::Q4K, ActData::Q8K(a)) => {
            let step = if mmla { r::step_q4k_mmla } else { r::step_q4k };
            go(bytes, n, nb, &a.rows, m, out, |w, a| {
                r::fold_k(w, a, r::q4k_sums, step)
            })
        }
        (WeightType::Q6K, ActData::Q8K(a)) => {
            let step = if mmla { r::step_q6k_mmla } else { r::step_q6k };
            go(bytes, n, nb, &a.rows, m, out, |w, a| {
                r::fold_k(w, a, r::q6k_sum, step)
            })
        }
        (WeightType::Q5K, ActData::Q8K(a)) => go(bytes, n, nb, &a.rows, m, out, |w, a| {
            r::fold_k(w, a, r::q5k_sums, r::step_q5k)
        }),
        (WeightType::Q2K, ActData::Q8K(a)) => go(bytes, n, nb, &a.rows, m, out, |w, a| {
            r::fold_k(w, a, r::q2k_sums, r::step_q2k)
        }),
        (WeightType::Q3K, ActData::Q8K(a)) => go(bytes, n, nb, &a.rows, m, out, |w, a| {
            r::fold_k(w, a, r::q3k_sum, r::step_q3k)
        }),
        (WeightType::IQ4XS, ActData::Q8K(a)) => go(bytes, n, nb, &a.rows, m, out, |w, a| {
            r::fold_k(w, a, r::iq4xs_sum, r::step_iq4xs)
        }),
        _ => panic!("activations of the wrong type for {ty:?}"),
    }
}
