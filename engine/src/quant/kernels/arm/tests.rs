//! The NEON kernels and quantizer against the scalar models of ggml's ARM code, bit for bit, at
//! every level this CPU has; the models against float math; the lane models against the
//! instructions.

use std::arch::aarch64::*;

use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::super::super::tests::{q8_1_slack, random_weights, random_x, tie_heavy};
use super::super::super::{act, blocks::*, dequant, Activations, Isa, QuantMatMul, WeightType};
use super::reference::{self as r, Lanes, Path};
use super::simd::{Dot, Mull, Sdot};

fn arm_levels() -> Vec<Isa> {
    Isa::available()
        .into_iter()
        .filter(|i| i.is_arm())
        .collect()
}

#[test]
fn neon_is_detected() {
    // Every aarch64 CPU has NEON; under `qemu -cpu max` dotprod and i8mm too.
    assert!(Isa::Neon.supported());
    assert!(Isa::detect().is_arm());
    eprintln!("kernels: {}", Isa::detect().name());
}

/// Each lane model puts a product where the instruction does.
#[test]
fn lane_models_match_the_instructions() {
    type DotFn = unsafe fn(int32x4_t, int8x16_t, int8x16_t) -> int32x4_t;
    let mut levels: Vec<(Lanes, DotFn)> = vec![(Lanes::Mull, Mull::dot as DotFn)];
    if Isa::NeonDotprod.supported() {
        levels.push((Lanes::Sdot, sdot_entry as DotFn));
    }
    for (lanes, dot) in levels {
        for b in 0..16 {
            let mut a = [0i8; 16];
            a[b] = 3;
            let mut out = [0i32; 4];
            // SAFETY: NEON is baseline; `sdot_entry` only when detected.
            unsafe {
                let v = dot(vdupq_n_s32(0), vld1q_s8(a.as_ptr()), vdupq_n_s8(5));
                vst1q_s32(out.as_mut_ptr(), v);
            }
            let mut want = [0i32; 4];
            want[lanes.of(b)] = 15;
            assert_eq!(out, want, "{lanes:?} byte {b}");
        }
    }
}

#[target_feature(enable = "dotprod")]
unsafe fn sdot_entry(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    Sdot::dot(acc, a, b)
}

#[test]
fn smmla_pairs_rows() {
    if !Isa::NeonI8mm.supported() {
        eprintln!("no i8mm on this CPU: skipped");
        return;
    }
    let row = |s: i8| -> [i8; 16] { std::array::from_fn(|i| (i as i8 - 7) * s) };
    let (a0, a1, b0, b1) = (row(1), row(-2), row(3), row(1));
    let dot = |x: &[i8; 16], y: &[i8; 16]| -> i32 {
        x.iter().zip(y).map(|(&p, &q)| p as i32 * q as i32).sum()
    };
    let mut out = [0i32; 4];
    // SAFETY: i8mm checked above.
    unsafe {
        let v = mmla_entry(
            vld1q_s8(a0.as_ptr()),
            vld1q_s8(a1.as_ptr()),
            vld1q_s8(b0.as_ptr()),
            vld1q_s8(b1.as_ptr()),
        );
        vst1q_s32(out.as_mut_ptr(), v);
    }
    assert_eq!(
        out,
        [dot(&a0, &b0), dot(&a0, &b1), dot(&a1, &b0), dot(&a1, &b1)]
    );
}

#[target_feature(enable = "i8mm")]
unsafe fn mmla_entry(a0: int8x16_t, a1: int8x16_t, b0: int8x16_t, b1: int8x16_t) -> int32x4_t {
    super::simd::mmla2x2(vdupq_n_s32(0), a0, a1, b0, b1)
}

#[test]
fn paths_follow_ggml() {
    use WeightType::*;
    assert_eq!(
        super::path(Q4_0, Isa::Neon, 8, 8),
        Path::VecDot(Lanes::Mull)
    );
    assert_eq!(
        super::path(Q4_0, Isa::NeonDotprod, 1, 8),
        Path::VecDot(Lanes::Sdot)
    );
    assert_eq!(super::path(Q8_0, Isa::NeonDotprod, 2, 8), Path::TinyBlas);
    assert_eq!(super::path(Q4_0, Isa::NeonI8mm, 4, 8), Path::TinyBlas);
    assert_eq!(super::path(Q4K, Isa::NeonI8mm, 4, 8), Path::Mmla);
    assert_eq!(
        super::path(Q4K, Isa::NeonI8mm, 3, 8),
        Path::VecDot(Lanes::Sdot)
    );
    assert_eq!(
        super::path(Q6K, Isa::NeonI8mm, 2, 7),
        Path::VecDot(Lanes::Sdot)
    );
    assert_eq!(super::path(Q4_1, Isa::NeonI8mm, 2, 2), Path::Mmla);
    assert_eq!(
        super::path(Q4K, Isa::NeonDotprod, 4, 8),
        Path::VecDot(Lanes::Sdot)
    );
}

/// A half-way value rounds to even, as `vcvtnq_s32_f32` does; `id` is `1 / d`.
#[test]
fn quantizer_rounds_half_to_even() {
    let mut x = [0f32; 32];
    x[0] = 127.0; // d = 1, id = 1
    x[1] = 2.5;
    x[2] = -3.5;
    x[3] = 0.5;
    x[4] = 1.5;
    let b = super::act::block_q8_0(&x);
    assert_eq!(&b.qs[..5], &[127, 2, -4, 0, 2]);
    assert_eq!(b, r::quantize_block_q8_0(&x));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn quantizer_matches_model(seed: u64, ties: bool) {
        let mut rng = StdRng::seed_from_u64(seed);
        let x = if ties { tie_heavy(&mut rng, 32 * 8) } else { random_x(&mut rng, 32 * 8) };
        for isa in arm_levels() {
            let q0 = act::quantize_q8_0(&x, isa);
            let q1 = act::quantize_q8_1(&x, isa);
            for ((b0, b1), xs) in q0.iter().zip(&q1).zip(x.chunks(32)) {
                prop_assert_eq!(*b0, r::quantize_block_q8_0(xs));
                prop_assert_eq!(*b1, r::quantize_block_q8_1(xs));
            }
        }
    }
}

fn check(ty: WeightType, n: usize, j: usize, m: usize, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let k = j * ty.block_len();
    let bytes = random_weights(&mut rng, ty, n, k);
    let w = dequantize(ty, &bytes);
    let mm = QuantMatMul::from_blocks(ty, &bytes, n, k).unwrap();
    let x = random_x(&mut rng, m * k);
    let nb = k / ty.block_len();
    for isa in arm_levels() {
        let acts = Activations::quantize_with(&x, m, k, ty.act_type(), isa);
        let mut want = vec![0f32; m * n];
        super::reference_matmul(ty, &bytes, n, nb, &acts, &mut want, isa);
        let mut got = vec![f32::NAN; m * n];
        mm.matmul_into(&acts, &mut got, isa).unwrap();
        let path = super::path(ty, isa, m, n);
        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert!(
                g.to_bits() == w.to_bits(),
                "{ty:?} {isa:?} {path:?} n={n} k={k} m={m}: [{}, {}] = {g} but the model says {w}",
                idx / n,
                idx % n
            );
        }
        // The model against float math on the dequantized values, and against the x86
        // numerics (both within rounding of the exact value).
        let mut x86 = vec![0f32; m * n];
        mm.matmul_into(&acts, &mut x86, Isa::Scalar).unwrap();
        let xa = dequant_acts(&acts);
        let rel = if ty.act_type() == super::super::super::ActType::Q8_1 {
            2e-3
        } else {
            1e-5
        };
        for i in 0..m {
            for c in 0..n {
                let (mut s, mut mag) = (0f64, 0f64);
                for e in 0..k {
                    let p = w[c * k + e] as f64 * xa[i * k + e] as f64;
                    s += p;
                    mag += p.abs();
                }
                let (got, other) = (want[i * n + c] as f64, x86[i * n + c] as f64);
                let slack = 2.0 * q8_1_slack(ty, &bytes, &acts, k, i, c);
                prop_assert!(
                    (got - s).abs() <= rel * mag + slack + 1e-6,
                    "{ty:?} {path:?} model {got} vs dequantized {s} (magnitude {mag})"
                );
                prop_assert!(
                    (got - other).abs() <= 2.0 * rel * mag + 2e-6,
                    "{ty:?} {path:?}: ARM {got} vs x86 {other} (magnitude {mag})"
                );
            }
        }
    }
    Ok(())
}

/// Weights as f32: `dequant` for the types it has, the formulas of ggml's `dequantize_row_*`
/// from the blocks' values for the others (candle's dequantizer is checked against the
/// reference on x86: `quant/tests.rs`).
fn dequantize(ty: WeightType, bytes: &[u8]) -> Vec<f32> {
    fn each<B: Pod, const N: usize>(bytes: &[u8], f: impl Fn(&B) -> [f32; N]) -> Vec<f32> {
        copy_blocks::<B>(bytes)
            .unwrap()
            .iter()
            .flat_map(f)
            .collect()
    }
    let h = f16_to_f32;
    let k4 = |d: u16, dmin: u16, scales: &[u8; 12], v: [u8; 256]| -> [f32; 256] {
        let (sc, mn) = scales_mins_k4(scales);
        std::array::from_fn(|e| {
            h(d) * sc[e / 32] as f32 * v[e] as f32 - h(dmin) * mn[e / 32] as f32
        })
    };
    match ty {
        WeightType::Q4_0 => each(bytes, |b: &BlockQ4_0| b.values().map(|v| h(b.d) * v as f32)),
        WeightType::Q5_0 => each(bytes, |b: &BlockQ5_0| b.values().map(|v| h(b.d) * v as f32)),
        WeightType::Q8_0 => each(bytes, |b: &BlockQ8_0| b.qs.map(|v| h(b.d) * v as f32)),
        WeightType::Q4_1 => each(bytes, |b: &BlockQ4_1| {
            b.values().map(|v| h(b.d) * v as f32 + h(b.m))
        }),
        WeightType::Q5_1 => each(bytes, |b: &BlockQ5_1| {
            b.values().map(|v| h(b.d) * v as f32 + h(b.m))
        }),
        WeightType::Q4K => each(bytes, |b: &BlockQ4K| k4(b.d, b.dmin, &b.scales, b.values())),
        WeightType::Q5K => each(bytes, |b: &BlockQ5K| k4(b.d, b.dmin, &b.scales, b.values())),
        WeightType::Q6K => each(bytes, |b: &BlockQ6K| {
            let v = b.values();
            std::array::from_fn::<f32, 256, _>(|e| {
                h(b.d) * b.scales[e / 16] as f32 * (v[e] as f32 - 32.0)
            })
        }),
        _ => dequant::dequantize(ty, bytes).expect("a dequantizer"),
    }
}

fn dequant_acts(acts: &Activations) -> Vec<f32> {
    use super::super::super::ActData;
    match &acts.data {
        ActData::Q8_0(b) => b
            .iter()
            .flat_map(|b| b.qs.map(|q| q as f32 * f16_to_f32(b.d)))
            .collect(),
        ActData::Q8_1(b) => b
            .iter()
            .flat_map(|b| b.qs.map(|q| q as f32 * f16_to_f32(b.d)))
            .collect(),
        ActData::Q8K(a) => a
            .rows
            .iter()
            .flat_map(|b| b.qs.map(|q| q as f32 * b.d))
            .collect(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn kernels_match_arm_models(
        t in 0usize..WeightType::ALL.len(),
        n in prop_oneof![1usize..20, (1usize..6).prop_map(|x| x * 8)],
        j in 1usize..8,
        m in prop_oneof![Just(1usize), 2usize..7],
        seed: u64,
    ) {
        check(WeightType::ALL[t], n, j, m, seed)?;
    }
}

#[test]
fn every_type_and_path() {
    let mut rng = StdRng::seed_from_u64(11);
    for ty in WeightType::ALL {
        // One row (vec_dot), odd rows (vec_dot / tinyBLAS), even rows (tinyBLAS / mmla), odd
        // and even block counts, and more rows than one chunk.
        for (n, j, m) in [(5, 3, 1), (6, 2, 3), (8, 5, 4), (300, 2, 2)] {
            check(ty, n, j, m, rng.random()).unwrap();
        }
    }
}

/// The NEON f16 helpers give the scalar code's bits (`round_f16` is F16C's / `fcvtn`'s rounding).
#[test]
fn f16_helpers_match_scalar() {
    use crate::attention::round_f16;
    let mut rng = StdRng::seed_from_u64(5);
    for n in [0usize, 3, 4, 17, 64, 130] {
        let mut x: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-70000.0f32..70000.0) * 10f32.powi(rng.random_range(-9..1)))
            .collect();
        if n > 2 {
            x[1] = 65520.0; // rounds to infinity
            x[2] = 1e-8; // f16 subnormal
        }
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let s = rng.random_range(-3.0f32..3.0);
        let mut got = x.clone();
        super::f16::scale_f16(&mut got, s, round_f16);
        let want: Vec<f32> = x.iter().map(|a| round_f16(a * s)).collect();
        assert_eq!(bits(&got), bits(&want), "scale, n = {n}");
        let mut got = x.clone();
        super::f16::axpy_f16(&mut got, &v, s, round_f16);
        let want: Vec<f32> = x
            .iter()
            .zip(&v)
            .map(|(a, v)| round_f16(v.mul_add(s, *a)))
            .collect();
        assert_eq!(bits(&got), bits(&want), "axpy, n = {n}");
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}
