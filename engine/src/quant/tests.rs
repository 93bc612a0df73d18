//! Property tests: activation quantization against ggml's formulas written out independently,
//! every kernel against the scalar reference bit for bit, and the reference against candle's
//! dequantized weights.

#![allow(clippy::needless_range_loop)] // transcriptions of ggml's C loops
use std::borrow::Cow;

use candle_core::{
    quantized::{QStorage, QTensor},
    Device, Tensor,
};
use proptest::prelude::*;
use rand::{rngs::StdRng, Rng, SeedableRng};

use super::{act, blocks::*, Activations, Isa, QuantMatMul, WeightType};

/// The levels with ggml's x86 numerics, which these tests hold to the scalar reference (the
/// aarch64 levels follow ggml's ARM numerics: their tests are in `kernels/arm/tests.rs`).
fn x86_numerics() -> Vec<Isa> {
    Isa::available()
        .into_iter()
        .filter(|i| !i.is_arm())
        .collect()
}

/// ggml's `nearest_int`, bit trick and all.
fn ggml_nearest_int(fval: f32) -> i32 {
    let val = fval + 12582912.0;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// `quantize_row_q8_K_ref`, transcribed.
fn ggml_q8k_ref(x: &[f32]) -> BlockQ8K {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let mut y = BlockQ8K::default();
    if amax == 0.0 {
        return y;
    }
    let iscale = -127.0f32 / max;
    for j in 0..256 {
        let v = ggml_nearest_int(iscale * x[j]);
        y.qs[j] = v.min(127) as i8;
    }
    for j in 0..16 {
        let mut sum = 0i32;
        for ii in 0..16 {
            sum += y.qs[j * 16 + ii] as i32;
        }
        y.bsums[j] = sum as i16;
    }
    y.d = 1.0 / iscale;
    y
}

/// The AVX2 `quantize_row_q8_0`, transcribed lane by lane: `_mm256_round_ps` rounds half to even.
fn ggml_q8_0(x: &[f32]) -> BlockQ8_0 {
    let mut max_scalar = 0f32;
    for &v in x {
        max_scalar = if v.abs() > max_scalar {
            v.abs()
        } else {
            max_scalar
        };
    }
    let d = max_scalar / 127.0;
    let id = if max_scalar != 0.0 {
        127.0 / max_scalar
    } else {
        0.0
    };
    let mut qs = [0i8; 32];
    for j in 0..32 {
        let r = x[j] * id;
        // Round half to even by hand.
        let f = r.floor();
        let diff = r - f;
        let q = if diff > 0.5 || (diff == 0.5 && (f as i64) % 2 != 0) {
            f + 1.0
        } else {
            f
        };
        qs[j] = q as i8;
    }
    BlockQ8_0 {
        d: f32_to_f16(d),
        qs,
    }
}

/// Values with many exact ties: multiples of `amax / 127 / 2`.
pub(super) fn tie_heavy(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let mut x: Vec<f32> = (0..n)
        .map(|_| rng.random_range(-254i32..=254) as f32 * 0.5)
        .collect();
    // Make 127 the largest magnitude so that `id` is exactly 1.
    x[rng.random_range(0..n)] = if rng.random_bool(0.5) { 127.0 } else { -127.0 };
    x
}

pub(super) fn random_x(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let scale = 10f32.powf(rng.random_range(-3.0..2.0));
    (0..n)
        .map(|_| {
            let v: f32 = rng.random_range(-1.0..1.0);
            // A few outliers, as real activations have.
            if rng.random_ratio(1, 50) {
                v * scale * 30.0
            } else {
                v * scale
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn q8_0_matches_ggml(seed: u64, ties: bool) {
        let mut rng = StdRng::seed_from_u64(seed);
        let x = if ties { tie_heavy(&mut rng, 32 * 8) } else { random_x(&mut rng, 32 * 8) };
        for isa in x86_numerics() {
        let ours = act::quantize_q8_0(&x, isa);
        for (b, xs) in ours.iter().zip(x.chunks(32)) {
            prop_assert_eq!(*b, ggml_q8_0(xs));
        }
        let ours1 = act::quantize_q8_1(&x, isa);
        for ((b1, b0), xs) in ours1.iter().zip(&ours).zip(x.chunks(32)) {
            prop_assert_eq!(b1.qs, b0.qs);
            prop_assert_eq!(b1.d, b0.d);
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let sum: i32 = b0.qs.iter().map(|&q| q as i32).sum();
            prop_assert_eq!(b1.s, f32_to_f16(amax / 127.0 * sum as f32));
        }
        }
    }

    #[test]
    fn q8k_matches_ggml(seed: u64, ties: bool, m in 1usize..7) {
        let mut rng = StdRng::seed_from_u64(seed);
        let k = 256 * 2;
        let x = if ties { tie_heavy(&mut rng, m * k) } else { random_x(&mut rng, m * k) };
        for isa in x86_numerics() {
        let acts = act::quantize_q8k(&x, isa);
        for (b, xs) in acts.rows.iter().zip(x.chunks(256)) {
            prop_assert_eq!(*b, ggml_q8k_ref(xs));
        }
        }
    }
}

#[test]
fn exact_ties_round_to_even() {
    let mut x = vec![0f32; 32];
    x[0] = 127.0;
    x[1] = 2.5;
    x[2] = -3.5;
    x[3] = 0.5;
    x[4] = -0.5;
    x[5] = 1.5;
    let b = act::quantize_block_q8_0(&x);
    assert_eq!(&b.qs[..6], &[127, 2, -4, 0, 0, 2]);
    let mut x = vec![0f32; 256];
    x[0] = -127.0; // iscale = 1
    x[1] = 2.5;
    x[2] = -3.5;
    x[3] = 0.5;
    let b = act::quantize_block_q8k(&x);
    assert_eq!(&b.qs[..4], &[-127, 2, -4, 0]);
    assert_eq!(b.d, 1.0);
}

// ---------------------------------------------------------------------------------------------
// Kernels

fn rand_f16(rng: &mut StdRng, lo: f32, hi: f32) -> u16 {
    f32_to_f16(rng.random_range(lo..hi))
}

fn bytes_of<T: Pod>(v: Vec<T>) -> Vec<u8> {
    as_bytes(&v).to_vec()
}

/// Random weight blocks of type `ty` for `n` rows of `k` values.
pub(super) fn random_weights(rng: &mut StdRng, ty: WeightType, n: usize, k: usize) -> Vec<u8> {
    let nb = n * k / ty.block_len();
    let mut fill = |len: usize| -> Vec<u8> { (0..len).map(|_| rng.random()).collect() };
    let raw = fill(nb * 256);
    let mut rng2 = StdRng::seed_from_u64(raw.iter().map(|&b| b as u64).sum());
    let r = &mut rng2;
    let take = |i: usize, len: usize| raw[i * 256..i * 256 + len].to_vec();
    match ty {
        WeightType::Q4_0 => bytes_of(
            (0..nb)
                .map(|i| BlockQ4_0 {
                    d: rand_f16(r, -0.1, 0.1),
                    qs: take(i, 16).try_into().unwrap(),
                })
                .collect(),
        ),
        WeightType::Q4_1 => bytes_of(
            (0..nb)
                .map(|i| BlockQ4_1 {
                    d: rand_f16(r, 0.0, 0.1),
                    m: rand_f16(r, -0.5, 0.0),
                    qs: take(i, 16).try_into().unwrap(),
                })
                .collect(),
        ),
        WeightType::Q5_0 => bytes_of(
            (0..nb)
                .map(|i| BlockQ5_0 {
                    d: rand_f16(r, -0.1, 0.1),
                    qh: take(i, 4).try_into().unwrap(),
                    qs: raw[i * 256 + 4..i * 256 + 20].try_into().unwrap(),
                })
                .collect(),
        ),
        WeightType::Q5_1 => bytes_of(
            (0..nb)
                .map(|i| BlockQ5_1 {
                    d: rand_f16(r, 0.0, 0.1),
                    m: rand_f16(r, -0.5, 0.0),
                    qh: take(i, 4).try_into().unwrap(),
                    qs: raw[i * 256 + 4..i * 256 + 20].try_into().unwrap(),
                })
                .collect(),
        ),
        WeightType::Q8_0 => bytes_of(
            (0..nb)
                .map(|i| {
                    let mut qs = [0i8; 32];
                    for (q, &b) in qs.iter_mut().zip(&raw[i * 256..i * 256 + 32]) {
                        // ggml's own Q8_0 weights lie in -127..=127.
                        *q = (b as i8).max(-127);
                    }
                    BlockQ8_0 {
                        d: rand_f16(r, -0.1, 0.1),
                        qs,
                    }
                })
                .collect(),
        ),
        WeightType::Q4K => bytes_of(
            (0..nb)
                .map(|i| BlockQ4K {
                    d: rand_f16(r, 0.0, 0.01),
                    dmin: rand_f16(r, 0.0, 0.01),
                    scales: take(i, 12).try_into().unwrap(),
                    qs: raw[i * 256 + 12..i * 256 + 140].try_into().unwrap(),
                })
                .collect(),
        ),
        WeightType::Q5K => bytes_of(
            (0..nb)
                .map(|i| BlockQ5K {
                    d: rand_f16(r, 0.0, 0.01),
                    dmin: rand_f16(r, 0.0, 0.01),
                    scales: take(i, 12).try_into().unwrap(),
                    qh: raw[i * 256 + 12..i * 256 + 44].try_into().unwrap(),
                    qs: raw[i * 256 + 44..i * 256 + 172].try_into().unwrap(),
                })
                .collect(),
        ),
        WeightType::Q2K => bytes_of(
            (0..nb)
                .map(|i| BlockQ2K {
                    scales: take(i, 16).try_into().unwrap(),
                    qs: raw[i * 256 + 16..i * 256 + 80].try_into().unwrap(),
                    d: rand_f16(r, 0.0, 0.01),
                    dmin: rand_f16(r, 0.0, 0.01),
                })
                .collect(),
        ),
        WeightType::Q3K => bytes_of(
            (0..nb)
                .map(|i| BlockQ3K {
                    hmask: take(i, 32).try_into().unwrap(),
                    qs: raw[i * 256 + 32..i * 256 + 96].try_into().unwrap(),
                    scales: raw[i * 256 + 96..i * 256 + 108].try_into().unwrap(),
                    d: rand_f16(r, -0.01, 0.01),
                })
                .collect(),
        ),
        WeightType::IQ4NL => bytes_of(
            (0..nb)
                .map(|i| BlockIQ4NL {
                    d: rand_f16(r, -0.01, 0.01),
                    qs: take(i, 16).try_into().unwrap(),
                })
                .collect(),
        ),
        WeightType::MXFP4 => bytes_of(
            (0..nb)
                .map(|i| BlockMXFP4 {
                    // Scales around 2^-8 (real experts'), now and then a subnormal or a huge one.
                    e: match raw[i * 256 + 16] {
                        0 => 0,
                        1 => 1,
                        255 => 160,
                        b => 112 + b % 16,
                    },
                    qs: take(i, 16).try_into().unwrap(),
                })
                .collect(),
        ),
        WeightType::IQ4XS => bytes_of(
            (0..nb)
                .map(|i| BlockIQ4XS {
                    d: rand_f16(r, -0.01, 0.01),
                    scales_h: u16::from_le_bytes([raw[i * 256], raw[i * 256 + 1]]),
                    scales_l: raw[i * 256 + 2..i * 256 + 6].try_into().unwrap(),
                    qs: raw[i * 256 + 6..i * 256 + 134].try_into().unwrap(),
                })
                .collect(),
        ),
        WeightType::Q6K => bytes_of(
            (0..nb)
                .map(|i| {
                    let mut scales = [0i8; 16];
                    for (s, &b) in scales.iter_mut().zip(&raw[i * 256 + 192..i * 256 + 208]) {
                        // ggml's Q6_K scales lie in -128..=127 but real ones stay small.
                        *s = b as i8;
                    }
                    BlockQ6K {
                        ql: take(i, 128).try_into().unwrap(),
                        qh: raw[i * 256 + 128..i * 256 + 192].try_into().unwrap(),
                        scales,
                        d: rand_f16(r, -0.01, 0.01),
                    }
                })
                .collect(),
        ),
    }
}

fn qtensor(ty: WeightType, bytes: &[u8], n: usize, k: usize) -> QTensor {
    let dtype = ty.candle_dtype().expect("a type candle knows");
    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dtype).unwrap();
    QTensor::new(storage, (n, k)).unwrap()
}

/// Dequantized activations, to check the reference against plain float math.
fn dequant_acts(acts: &Activations) -> Vec<f32> {
    match &acts.data {
        super::ActData::Q8_0(b) => b
            .iter()
            .flat_map(|b| b.qs.map(|q| q as f32 * f16_to_f32(b.d)))
            .collect(),
        super::ActData::Q8_1(b) => b
            .iter()
            .flat_map(|b| b.qs.map(|q| q as f32 * f16_to_f32(b.d)))
            .collect(),
        super::ActData::Q8K(a) => a
            .rows
            .iter()
            .flat_map(|b| b.qs.map(|q| q as f32 * b.d))
            .collect(),
    }
}

/// How far storing Q8_1's `s = d * sum(q)` as f16 can move output `[i, r]`: per block, the
/// weight's min times half an f16 ulp of `s` (0 for types without mins). Float math on the
/// dequantized values has no such term, and no bound relative to the products covers it: the
/// min can cancel against the scaled quants in every product.
pub(super) fn q8_1_slack(
    ty: WeightType,
    bytes: &[u8],
    acts: &Activations,
    k: usize,
    i: usize,
    r: usize,
) -> f64 {
    let super::ActData::Q8_1(a) = &acts.data else {
        return 0.0;
    };
    let mins: Vec<u16> = match ty {
        WeightType::Q4_1 => copy_blocks::<BlockQ4_1>(bytes)
            .unwrap()
            .iter()
            .map(|b| b.m)
            .collect(),
        WeightType::Q5_1 => copy_blocks::<BlockQ5_1>(bytes)
            .unwrap()
            .iter()
            .map(|b| b.m)
            .collect(),
        _ => return 0.0,
    };
    let nb = k / QK;
    (0..nb)
        .map(|b| {
            let s = f16_to_f32(a[i * nb + b].s).abs() as f64;
            let m = f16_to_f32(mins[r * nb + b]).abs() as f64;
            // Half an ulp: 2^-11 of a normal f16, 2^-25 below (subnormal steps).
            m * (s * 2f64.powi(-11)).max(2f64.powi(-25))
        })
        .sum()
}

fn check_kernels(
    ty: WeightType,
    n: usize,
    j: usize,
    m: usize,
    seed: u64,
) -> Result<(), TestCaseError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let k = j * ty.block_len();
    let bytes = random_weights(&mut rng, ty, n, k);
    let ours = super::dequant::dequantize(ty, &bytes);
    let (w, mm) = match ty.candle_dtype() {
        Some(_) => {
            let qt = qtensor(ty, &bytes, n, k);
            let w: Vec<f32> = qt
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            if let Some(ours) = &ours {
                prop_assert_eq!(ours, &w, "{:?} dequantized unlike candle", ty);
            }
            // Nothing else holds the QTensor: the weights move to a private (huge page) copy.
            (w, QuantMatMul::from_arc(std::sync::Arc::new(qt)).unwrap())
        }
        None => (
            ours.expect("a dequantizer"),
            QuantMatMul::from_blocks(ty, &bytes, n, k).unwrap(),
        ),
    };
    prop_assert_eq!(mm.weight_type(), Some(ty));
    let x = random_x(&mut rng, m * k);
    let acts = Activations::quantize(&x, m, k, ty.act_type());

    let mut want = vec![0f32; m * n];
    mm.matmul_into(&acts, &mut want, Isa::Scalar).unwrap();

    // The reference against float math on dequantized values.
    let xa = dequant_acts(&acts);
    for i in 0..m {
        for r in 0..n {
            let mut s = 0f64;
            let mut mag = 0f64;
            for c in 0..k {
                let p = w[r * k + c] as f64 * xa[i * k + c] as f64;
                s += p;
                mag += p.abs();
            }
            let got = want[i * n + r] as f64;
            // Q8_1's `s = d * sum(q)` is stored as f16: the min term carries its rounding.
            let rel = if ty.act_type() == super::ActType::Q8_1 {
                2e-3
            } else {
                1e-5
            };
            let slack = 2.0 * q8_1_slack(ty, &bytes, &acts, k, i, r);
            prop_assert!(
                (got - s).abs() <= rel * mag + slack + 1e-6,
                "{ty:?} reference {got} vs dequantized {s} (magnitude {mag}) at {i},{r}"
            );
        }
    }

    for isa in x86_numerics() {
        let mut got = vec![f32::NAN; m * n];
        mm.matmul_into(&acts, &mut got, isa).unwrap();
        for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert!(
                g.to_bits() == w.to_bits(),
                "{ty:?} {isa:?} n={n} k={k} m={m}: [{}, {}] = {g} but scalar {w}",
                idx / n,
                idx % n
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn kernels_match_reference(
        t in 0usize..WeightType::ALL.len(),
        n in prop_oneof![1usize..20, (1usize..6).prop_map(|x| x * 8)],
        j in 1usize..12,
        m in prop_oneof![Just(1usize), 2usize..10],
        seed: u64,
    ) {
        check_kernels(WeightType::ALL[t], n, j, m, seed)?;
    }
}

/// A Q4_1 row whose min cancels its scaled quants: the f16 rounding of the activations' `s`
/// moves the result by more than any fraction of the products' magnitude (found by proptest
/// under qemu with ggml's ARM quantizer).
#[test]
fn q8_1_sum_rounding_is_bounded_by_the_min() {
    check_kernels(WeightType::Q4_1, 6, 1, 1, 12998798328006369587).unwrap();
}

#[test]
fn kernels_on_model_shapes() {
    // Shapes of the test models (k = 640, 896, 1024, 2048, 4864), several activation rows.
    for (ty, n, j, m) in [
        (WeightType::Q5_0, 40, 28, 1),
        (WeightType::Q5_0, 37, 20, 13),
        (WeightType::Q5_0, 75, 3, 11),
        (WeightType::Q5_1, 75, 3, 10),
        (WeightType::Q8_0, 24, 28, 5),
        (WeightType::Q4K, 16, 4, 6),
        (WeightType::Q4K, 12, 8, 3),
        (WeightType::Q6K, 9, 19, 4),
        (WeightType::Q4K, 40, 4, 11),
        (WeightType::Q5K, 35, 2, 10),
        (WeightType::Q6K, 37, 3, 9),
        (WeightType::Q4_0, 16, 7, 9),
        // gpt-oss experts: odd block counts end in a lone block, prompts take the same path.
        (WeightType::MXFP4, 17, 9, 1),
        (WeightType::MXFP4, 24, 90, 7),
        (WeightType::MXFP4, 5, 1, 3),
    ] {
        check_kernels(ty, n, j, m, 7).unwrap();
    }
}

#[test]
fn k_quant_prompt_tiles_match_reference() {
    // Prompts on Q4_K / Q6_K: 512-bit tiles over decoded weights, with weight rows and
    // activation rows that do not fill a tile (or a decoded panel) left to the 256-bit tiles.
    for (ty, n, j, m, seed) in [
        (WeightType::Q4K, 3, 1, 8, 1),
        (WeightType::Q4K, 50, 3, 12, 2),
        (WeightType::Q4K, 101, 2, 23, 3),
        (WeightType::Q4K, 7, 6, 37, 4),
        (WeightType::Q6K, 3, 1, 8, 5),
        (WeightType::Q6K, 50, 3, 14, 6),
        (WeightType::Q6K, 101, 2, 21, 7),
        (WeightType::Q6K, 7, 6, 40, 8),
    ] {
        check_kernels(ty, n, j, m, seed).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn k_quant_prompts_match_reference(
        q6 in any::<bool>(),
        n in 1usize..70,
        j in 1usize..5,
        m in 8usize..30,
        seed: u64,
    ) {
        let ty = if q6 { WeightType::Q6K } else { WeightType::Q4K };
        check_kernels(ty, n, j, m, seed)?;
    }
}

#[test]
fn matches_candle_within_float_tolerance() {
    // End to end through tensors, against candle's own quantized matmul.
    if cfg!(target_arch = "aarch64") && !Isa::NeonDotprod.supported() {
        // candle 0.11's NEON vec_dot kernels execute `sdot` without checking for it.
        eprintln!("candle's aarch64 kernels need FEAT_DotProd, which this CPU lacks: skipped");
        return;
    }
    let mut rng = StdRng::seed_from_u64(3);
    for ty in WeightType::ALL
        .into_iter()
        .filter(|t| t.candle_dtype().is_some())
    {
        let (n, k, m) = (24, 2 * 256, 3);
        let bytes = random_weights(&mut rng, ty, n, k);
        let qt = std::sync::Arc::new(qtensor(ty, &bytes, n, k));
        let ours = QuantMatMul::from_arc(qt.clone()).unwrap();
        let theirs = candle_core::quantized::QMatMul::from_arc(qt).unwrap();
        let x = Tensor::from_vec(random_x(&mut rng, m * k), (1, m, k), &Device::Cpu).unwrap();
        let a: Vec<f32> = ours
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = candle_core::Module::forward(&theirs, &x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = b.iter().fold(0f32, |s, v| s.max(v.abs()));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 0.02 * scale, "{ty:?}: {x} vs candle {y}");
        }
        // Several weights on one input give the same as one at a time.
        let many = QuantMatMul::forward_many(&[&ours, &ours], &x).unwrap();
        let c: Vec<f32> = many[1].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a, c);
    }
}

#[test]
fn mxfp4_scales_and_codes_are_ggml_s() {
    // e8m0 halved: 2^(e - 128), subnormal for e < 2.
    assert_eq!(e8m0_to_f32_half(127), 0.5);
    assert_eq!(e8m0_to_f32_half(128), 1.0);
    assert_eq!(e8m0_to_f32_half(254), 2f32.powi(126));
    assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
    assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
    // e2m1 codes 0..7 are 0, 0.5, 1, 1.5, 2, 3, 4, 6 and 8..15 their negatives; with the block
    // scale 2^0 (e = 127) the dequantized values are those.
    let mut qs = [0u8; 16];
    for (i, q) in qs.iter_mut().enumerate() {
        *q = (i as u8) | (((15 - i) as u8) << 4);
    }
    let bytes = bytes_of(vec![BlockMXFP4 { e: 127, qs }]);
    let v = super::dequant::dequantize(WeightType::MXFP4, &bytes).unwrap();
    let e2m1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
    for i in 0..16 {
        let want = |c: usize| if c < 8 { e2m1[c] } else { -e2m1[c - 8] };
        assert_eq!(v[i], want(i), "low nibble {i}");
        assert_eq!(v[16 + i], want(15 - i), "high nibble {i}");
    }
    assert_eq!(WeightType::from_ggml_id(39), Some(WeightType::MXFP4));
    assert_eq!(WeightType::MXFP4.block_bytes(), 17);
}
