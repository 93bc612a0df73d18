//! Kernel selection: one chunk kernel per (weight type, accumulation scheme, instruction set).
//! The schemes are those of llama.cpp run with `--no-repack`: ggml's `vec_dot` kernels for one
//! activation row, and for prompts the same (k-quants) or llamafile's tinyBLAS (32-value types).

use super::{
    blocks::*, reference as r, run_chunks, ActData, Activations, ChunkFn, Isa, OutPtr, WeightType,
};

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "aarch64")]
pub(crate) mod arm;

/// Sum of eight i32 lanes.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn hsum_i32_256(a: std::arch::x86_64::__m256i) -> i32 {
    x86::hsum_i32(a)
}

/// A chunk kernel from a scalar dot product.
fn scalar<W, A>(dot: fn(&[W], &[A]) -> f32) -> impl Fn(&[W], &[A], usize, usize, OutPtr) + Sync {
    move |w: &[W], a: &[A], nb: usize, m: usize, o: OutPtr| {
        for (j, wr) in w.chunks_exact(nb).enumerate() {
            for i in 0..m {
                // SAFETY: the chunk owns columns 0..rows of every output row.
                unsafe { o.set(i, j, dot(wr, &a[i * nb..(i + 1) * nb])) };
            }
        }
    }
}

fn go<W: Pod + Sync, A: Sync>(
    bytes: &[u8],
    n: usize,
    nb: usize,
    a: &[A],
    m: usize,
    out: &mut [f32],
    kernel: ChunkFn<'_, W, A>,
) {
    let w = cast_blocks::<W>(bytes).expect("weight layout checked at load");
    run_chunks(w, n, nb, a, m, out, kernel);
}

pub(crate) fn matmul(
    ty: WeightType,
    bytes: &[u8],
    n: usize,
    k: usize,
    acts: &Activations,
    out: &mut [f32],
    isa: Isa,
) {
    let m = acts.m;
    let nb = k / ty.block_len();
    // MXFP4 has ggml's scalar arithmetic on ARM here (the NEON kernels do not cover it yet).
    #[cfg(target_arch = "aarch64")]
    if let (WeightType::MXFP4, ActData::Q8_0(a)) = (ty, &acts.data) {
        return go(bytes, n, nb, a, m, out, &scalar(r::dot_mxfp4_pairs));
    }
    #[cfg(target_arch = "x86_64")]
    if isa >= Isa::Avx2 && x86::matmul(ty, bytes, n, nb, acts, out, isa) {
        return;
    }
    #[cfg(target_arch = "aarch64")]
    if isa.is_arm() {
        return arm::matmul(ty, bytes, n, nb, acts, out, isa);
    }
    let _ = isa;
    match (ty, &acts.data) {
        (WeightType::Q4_0, ActData::Q8_0(a)) => {
            go(bytes, n, nb, a, m, out, &scalar(r::dot_lanes::<BlockQ4_0>))
        }
        // ggml's vec_dot for one row (decoding), tinyBLAS for prompts.
        (WeightType::IQ4NL, ActData::Q8_0(a)) if m == 1 => {
            go(bytes, n, nb, a, m, out, &scalar(r::dot_iq4nl_pairs))
        }
        (WeightType::IQ4NL, ActData::Q8_0(a)) => {
            go(bytes, n, nb, a, m, out, &scalar(r::dot_lanes::<BlockIQ4NL>))
        }
        // ggml's vec_dot for every row count (neither tinyBLAS nor mul_mat_id has another).
        (WeightType::MXFP4, ActData::Q8_0(a)) => {
            go(bytes, n, nb, a, m, out, &scalar(r::dot_mxfp4_pairs))
        }
        (WeightType::Q5_0, ActData::Q8_0(a)) => {
            go(bytes, n, nb, a, m, out, &scalar(r::dot_lanes::<BlockQ5_0>))
        }
        (WeightType::Q8_0, ActData::Q8_0(a)) => {
            go(bytes, n, nb, a, m, out, &scalar(r::dot_lanes::<BlockQ8_0>))
        }
        (WeightType::Q4_1, ActData::Q8_1(a)) => go(
            bytes,
            n,
            nb,
            a,
            m,
            out,
            &scalar(r::dot_lanes_min::<BlockQ4_1>),
        ),
        (WeightType::Q5_1, ActData::Q8_1(a)) => go(
            bytes,
            n,
            nb,
            a,
            m,
            out,
            &scalar(r::dot_lanes_min::<BlockQ5_1>),
        ),
        (WeightType::Q4K, ActData::Q8K(a)) => {
            go(bytes, n, nb, &a.rows, m, out, &scalar(r::dot_q4k_lanes))
        }
        (WeightType::Q2K, ActData::Q8K(a)) => {
            go(bytes, n, nb, &a.rows, m, out, &scalar(r::dot_q2k))
        }
        (WeightType::Q3K, ActData::Q8K(a)) => {
            go(bytes, n, nb, &a.rows, m, out, &scalar(r::dot_q3k))
        }
        (WeightType::IQ4XS, ActData::Q8K(a)) => {
            go(bytes, n, nb, &a.rows, m, out, &scalar(r::dot_iq4xs))
        }
        (WeightType::Q5K, ActData::Q8K(a)) => {
            go(bytes, n, nb, &a.rows, m, out, &scalar(r::dot_q5k))
        }
        (WeightType::Q6K, ActData::Q8K(a)) => {
            go(bytes, n, nb, &a.rows, m, out, &scalar(r::dot_q6k))
        }
        _ => panic!("activations of the wrong type for {ty:?}"),
    }
}
