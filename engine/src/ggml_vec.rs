//! ggml-cpu's float vector primitives with their exact numerics: the f16 dot product
//! (`ggml_vec_dot_f16`), the vectorised `expf` (`ggml_v_expf`) and the sums of softmax tiles
//! (`ggml_vec_soft_max_f32`). Each has a 256-bit form (AVX2 builds, and native builds on CPUs
//! without AVX-512), a 512-bit one and a 128-bit NEON one (aarch64), which group lanes and round
//! differently; [`path`] picks the one a native llama.cpp build takes on this CPU, so results
//! match it bit for bit. On aarch64 the NEON code itself is in `quant::kernels::arm`
//! (`vec.rs`, `f16.rs`); the functions here are its scalar models.

use std::sync::OnceLock;

/// Which of ggml-cpu's float code paths is followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VecPath {
    /// `__AVX2__ && __FMA__`: 8-lane vectors.
    Avx2,
    /// `__AVX512F__ && __AVX512DQ__`: 16-lane vectors.
    Avx512,
    /// `__ARM_NEON && __aarch64__` (without SVE): 4-lane vectors.
    Neon,
}

impl VecPath {
    /// Lanes of the path's vectors: ggml's loops treat the values past the last whole vector
    /// apart (libm's `expf`, sums in f64).
    pub const fn lanes(self) -> usize {
        match self {
            VecPath::Avx2 => 8,
            VecPath::Avx512 => 16,
            VecPath::Neon => 4,
        }
    }
}

/// The path of a native build on this CPU: NEON on aarch64; on x86, AVX-512 when the CPU has
/// AVX-512 F and DQ and `EXO_NO_AVX512` is not set (then it is llama.cpp's AVX2 build that
/// matches).
pub fn path() -> VecPath {
    static PATH: OnceLock<VecPath> = OnceLock::new();
    *PATH.get_or_init(|| {
        if cfg!(target_arch = "aarch64") {
            return VecPath::Neon;
        }
        let off = std::env::var("EXO_NO_AVX512").is_ok_and(|s| !s.is_empty() && s != "0");
        #[cfg(target_arch = "x86_64")]
        if !off && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") {
            return VecPath::Avx512;
        }
        let _ = off;
        VecPath::Avx2
    })
}

// ---------------------------------------------------------------------------------------------
// expf

/// `ggml_v_expf` (from ARM's optimized routines): a degree-5 polynomial on the reduced argument,
/// scaled by 2^n, in the form of `path`. Not libm's `expf`. The NEON form has the 256-bit one's
/// constants, fused operations and rescaled branch (vec.h), so its lanes are [`expf_avx2`]'s.
#[inline(always)]
pub fn expf(path: VecPath, x: f32) -> f32 {
    match path {
        VecPath::Avx2 | VecPath::Neon => expf_avx2(x),
        VecPath::Avx512 => expf_avx512(x),
    }
}

const EXP_R: u32 = 0x4b40_0000; // 0x1.8p23
const LOG2E: u32 = 0x3fb8_aa3b; // 0x1.715476p+0
const LN2_HI: u32 = 0x3f31_7200; // 0x1.62e4p-1
const LN2_LO: u32 = 0x35bf_be8e; // 0x1.7f7d1cp-20
const C5: u32 = 0x3c07_2010; // 0x1.0e4020p-7
const C4: u32 = 0x3d2b_9f17; // 0x1.573e2ep-5
const C3: u32 = 0x3e2a_af33; // 0x1.555e66p-3
const C2: u32 = 0x3eff_fedb; // 0x1.fffdb6p-2
const C1: u32 = 0x3f7f_fff6; // 0x1.ffffecp-1

#[inline(always)]
fn c(bits: u32) -> f32 {
    f32::from_bits(bits)
}

/// The 256-bit form: `j` without the constant term, the result `k + k * j` with `k = 2^n`
/// built from the exponent bits, and a rescaled branch for |n| > 126.
#[inline(always)]
pub fn expf_avx2(x: f32) -> f32 {
    let z = x.mul_add(c(LOG2E), c(EXP_R));
    let n = z - c(EXP_R);
    let b = (-n).mul_add(c(LN2_LO), (-n).mul_add(c(LN2_HI), x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let u = b * b;
    let j = c(C5)
        .mul_add(b, c(C4))
        .mul_add(u, c(C3).mul_add(b, c(C2)))
        .mul_add(u, c(C1) * b);
    // `_CMP_GT_OQ`: false for NaN.
    let rescale = n.abs() > 126.0;
    if !rescale {
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        return s1 * s1;
    }
    s2.mul_add(j, s2) * s1
}

/// The 512-bit form: `j` with the constant term, scaled by `_mm512_scalef_ps`.
#[inline(always)]
pub fn expf_avx512(x: f32) -> f32 {
    let z = x.mul_add(c(LOG2E), c(EXP_R));
    let n = z - c(EXP_R);
    let b = (-n).mul_add(c(LN2_LO), (-n).mul_add(c(LN2_HI), x));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = c(C5)
        .mul_add(b, c(C4))
        .mul_add(u, c(C3).mul_add(b, c(C2)))
        .mul_add(u, c(C1).mul_add(b, 1.0));
    // j * 2^n, rounded once (as `_mm512_scalef_ps` does, subnormals included).
    let pow2 = f64::from_bits(((n as i64 + 1023) as u64) << 52); // exact: |n| <= 192
    (j as f64 * pow2) as f32
}

// ---------------------------------------------------------------------------------------------
// Softmax tile sums

/// `ggml_vec_soft_max_f32`'s sum of `p` (a multiple of the vector width long): each vector of
/// lanes reduced in f32 the way the path's horizontal add does, the vectors summed in f64.
pub fn softmax_sum(path: VecPath, p: &[f32]) -> f64 {
    match path {
        VecPath::Avx2 => {
            debug_assert!(p.len().is_multiple_of(8));
            p.chunks_exact(8)
                .map(|v| {
                    // extractf128 + add, movehl + add, movehdup + add_ss.
                    let w: [f32; 4] = std::array::from_fn(|i| v[i + 4] + v[i]);
                    ((w[0] + w[2]) + (w[1] + w[3])) as f64
                })
                .sum()
        }
        VecPath::Avx512 => {
            debug_assert!(p.len().is_multiple_of(16));
            p.chunks_exact(16)
                .map(|v| reduce16(std::array::from_fn(|i| v[i])) as f64)
                .sum()
        }
        VecPath::Neon => {
            debug_assert!(p.len().is_multiple_of(4));
            // `vaddvq_f32`: `faddp` of the pairs, then of the two sums.
            p.chunks_exact(4)
                .map(|v| ((v[0] + v[1]) + (v[2] + v[3])) as f64)
                .sum()
        }
    }
}

/// `_mm512_reduce_add_ps` (GCC's): halves added down to four lanes, then `(0+2) + (1+3)`.
#[inline(always)]
fn reduce16(a: [f32; 16]) -> f32 {
    let t3: [f32; 8] = std::array::from_fn(|i| a[i + 8] + a[i]);
    let t6: [f32; 4] = std::array::from_fn(|i| t3[i + 4] + t3[i]);
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

// ---------------------------------------------------------------------------------------------
// f16 dot product

/// `ggml_vec_dot_f16` of two f16 vectors (here already widened to f32) in the form of
/// [`path`]: per step of 4 vectors, one fused multiply-add accumulator per vector, the
/// accumulators folded pairwise and reduced horizontally; the tail in f64.
pub fn dot_f16(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    // ggml's NEON build has one form (`GGML_F32Cx4`: no FP16 vector arithmetic).
    #[cfg(target_arch = "aarch64")]
    {
        let (sum, np) = crate::quant::arm_f16::dot_f16_steps(x, y);
        return tail_f64(&x[np..], &y[np..], sum as f64);
    }
    #[allow(unreachable_code)]
    match path() {
        VecPath::Avx2 => {
            #[cfg(target_arch = "x86_64")]
            if avx2_fma() {
                // SAFETY: the CPU has the features; the lengths match.
                return unsafe { x86::dot_f16_8(x, y) };
            }
            dot_f16_8(x, y)
        }
        VecPath::Avx512 => {
            #[cfg(target_arch = "x86_64")]
            if avx2_fma() {
                // SAFETY: as above.
                return unsafe { x86::dot_f16_16(x, y) };
            }
            dot_f16_16(x, y)
        }
        VecPath::Neon => dot_f16_4(x, y),
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

fn tail_f64(x: &[f32], y: &[f32], sum: f64) -> f32 {
    let mut sum = sum;
    for (a, b) in x.iter().zip(y) {
        sum += (a * b) as f64;
    }
    sum as f32
}

/// The 256-bit form: four 8-lane accumulators over 32-value steps, `GGML_F32x8_REDUCE`.
pub fn dot_f16_8(x: &[f32], y: &[f32]) -> f32 {
    let np = x.len() & !31;
    let mut acc = [[0f32; 8]; 4];
    for i in (0..np).step_by(32) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, lane) in a.iter_mut().enumerate() {
                let o = i + 8 * j + l;
                *lane = x[o].mul_add(y[o], *lane);
            }
        }
    }
    let [a0, a1, a2, a3] = acc;
    let s: [f32; 8] = std::array::from_fn(|l| (a0[l] + a2[l]) + (a1[l] + a3[l]));
    let t0: [f32; 4] = std::array::from_fn(|i| s[i] + s[i + 4]);
    let sum = ((t0[0] + t0[1]) + (t0[2] + t0[3])) as f64;
    tail_f64(&x[np..], &y[np..], sum)
}

/// The NEON form of a build without FP16 vector arithmetic (`GGML_F32Cx4`, as
/// `-march=armv8.2-a+dotprod` compiles it): four 4-lane accumulators over 16-value steps,
/// `GGML_F32x4_REDUCE` (accumulators folded pairwise, then `vaddvq_f32`).
pub fn dot_f16_4(x: &[f32], y: &[f32]) -> f32 {
    let np = x.len() & !15;
    let mut acc = [[0f32; 4]; 4];
    for i in (0..np).step_by(16) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, lane) in a.iter_mut().enumerate() {
                let o = i + 4 * j + l;
                *lane = x[o].mul_add(y[o], *lane);
            }
        }
    }
    let [a0, a1, a2, a3] = acc;
    let s: [f32; 4] = std::array::from_fn(|l| (a0[l] + a2[l]) + (a1[l] + a3[l]));
    let sum = ((s[0] + s[1]) + (s[2] + s[3])) as f64;
    tail_f64(&x[np..], &y[np..], sum)
}

/// The 512-bit form: four 16-lane accumulators over 64-value steps, `_mm512_reduce_add_ps`.
pub fn dot_f16_16(x: &[f32], y: &[f32]) -> f32 {
    let np = x.len() & !63;
    let mut acc = [[0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, a) in acc.iter_mut().enumerate() {
            for (l, lane) in a.iter_mut().enumerate() {
                let o = i + 16 * j + l;
                *lane = x[o].mul_add(y[o], *lane);
            }
        }
    }
    let [a0, a1, a2, a3] = acc;
    let a: [f32; 16] = std::array::from_fn(|l| (a0[l] + a2[l]) + (a1[l] + a3[l]));
    tail_f64(&x[np..], &y[np..], reduce16(a) as f64)
}

/// The dot products with AVX2 registers; every lane sees the operations of the scalar forms.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::tail_f64;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f16_8(x: &[f32], y: &[f32]) -> f32 {
        let np = x.len() & !31;
        let (px, py) = (x.as_ptr(), y.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        for i in (0..np).step_by(32) {
            for (j, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * j;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(o)), _mm256_loadu_ps(py.add(o)), *a);
            }
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[1], acc[3]));
        let t0 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let t1 = _mm_hadd_ps(t0, t0);
        let sum = _mm_cvtss_f32(_mm_hadd_ps(t1, t1)) as f64;
        tail_f64(&x[np..], &y[np..], sum)
    }

    /// Each 16-lane accumulator of the 512-bit form as two 8-lane halves.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dot_f16_16(x: &[f32], y: &[f32]) -> f32 {
        let np = x.len() & !63;
        let (px, py) = (x.as_ptr(), y.as_ptr());
        // acc[2j] and acc[2j + 1]: lanes 0..8 and 8..16 of accumulator j.
        let mut acc = [_mm256_setzero_ps(); 8];
        for i in (0..np).step_by(64) {
            for (h, a) in acc.iter_mut().enumerate() {
                let o = i + 8 * h;
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(px.add(o)), _mm256_loadu_ps(py.add(o)), *a);
            }
        }
        let half = |h: usize| {
            _mm256_add_ps(
                _mm256_add_ps(acc[h], acc[4 + h]),
                _mm256_add_ps(acc[2 + h], acc[6 + h]),
            )
        };
        let t3 = _mm256_add_ps(half(1), half(0));
        let t6 = _mm_add_ps(_mm256_extractf128_ps(t3, 1), _mm256_castps256_ps128(t3));
        let mut t = [0f32; 4];
        _mm_storeu_ps(t.as_mut_ptr(), t6);
        let sum = ((t[0] + t[2]) + (t[1] + t[3])) as f64;
        tail_f64(&x[np..], &y[np..], sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn f16_dots_are_close_to_exact_and_simd_equals_scalar() {
        let (x, y) = (values(200, 5), values(200, 6));
        let exact: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
        for f in [dot_f16_4, dot_f16_8, dot_f16_16, dot_f16] {
            assert!((f(&x, &y) as f64 - exact).abs() < 1e-4);
        }
        // An aarch64 build has the NEON form only, whatever `path` says: the NEON loop
        // (`quant::arm_f16::dot_f16_steps`) against its scalar model.
        #[cfg(target_arch = "aarch64")]
        for n in [0, 3, 15, 16, 17, 64, 100, 128, 256, 1000] {
            let (x, y) = (values(n, n as u32), values(n, 3 * n as u32 + 1));
            assert_eq!(dot_f16(&x, &y).to_bits(), dot_f16_4(&x, &y).to_bits());
        }
        // Below one step everything is the f64 tail.
        let tail = ((x[0] * y[0]) as f64 + (x[1] * y[1]) as f64 + (x[2] * y[2]) as f64) as f32;
        assert_eq!(dot_f16_8(&x[..3], &y[..3]), tail);
        assert_eq!(dot_f16_16(&x[..3], &y[..3]), tail);
        #[cfg(target_arch = "x86_64")]
        if avx2_fma() {
            for n in [0, 3, 32, 64, 100, 128, 200, 256] {
                let (x, y) = (values(n, n as u32), values(n, 7 * n as u32 + 1));
                // SAFETY: checked the features.
                let (a8, a16) = unsafe { (x86::dot_f16_8(&x, &y), x86::dot_f16_16(&x, &y)) };
                assert_eq!(a8.to_bits(), dot_f16_8(&x, &y).to_bits(), "n = {n}");
                assert_eq!(a16.to_bits(), dot_f16_16(&x, &y).to_bits(), "n = {n}");
            }
        }
    }

    #[test]
    fn the_two_dot_forms_round_differently() {
        // Not a property of ggml, but a check that the forms are not the same code: over many
        // vectors of 128 some results must differ.
        let differ = (0..200u32)
            .filter(|&s| {
                let (x, y) = (values(128, s), values(128, s + 1000));
                dot_f16_8(&x, &y) != dot_f16_16(&x, &y)
            })
            .count();
        assert!(differ > 0);
        let differ = (0..200u32)
            .filter(|&s| {
                let (x, y) = (values(64, s), values(64, s + 1000));
                dot_f16_4(&x, &y) != dot_f16_8(&x, &y)
            })
            .count();
        assert!(differ > 0);
    }

    #[test]
    fn both_expf_forms_are_close_to_libm_and_saturate() {
        for i in -2000..2000 {
            let x = i as f32 * 0.04;
            let want = x.exp();
            for got in [expf_avx2(x), expf_avx512(x)] {
                assert!(
                    (got - want).abs() <= 4.0 * f32::EPSILON * want,
                    "{x}: {got} vs {want}"
                );
            }
        }
        for f in [expf_avx2, expf_avx512] {
            assert_eq!(f(-200.0), 0.0);
            assert_eq!(f(200.0), f32::INFINITY);
            assert_eq!(f(f32::NEG_INFINITY), 0.0);
            assert_eq!(f(0.0), 1.0);
        }
        // Between 2^-126 and 2^-149 the 256-bit form goes through its rescaled branch.
        let x = -100.0f32;
        let (a, b) = (expf_avx2(x), x.exp());
        assert!(
            a > 0.0 && (a - b).abs() <= 4.0 * f32::EPSILON * b,
            "{a} vs {b}"
        );
    }

    #[test]
    fn softmax_sums_group_lanes_like_the_horizontal_adds() {
        let p = values(64, 9);
        let exact: f64 = p.iter().map(|&v| v as f64).sum();
        for path in [VecPath::Avx2, VecPath::Avx512] {
            assert!((softmax_sum(path, &p) - exact).abs() < 1e-5);
        }
        // One vector of powers of two: the grouping shows in what is lost.
        let mut v = [0f32; 8];
        v[0] = 1.0;
        v[4] = 1e-8;
        v[2] = -1.0;
        // (v0 + v4) + (v2 + v6) = (1 + 1e-8) - 1 = 0 in f32.
        assert_eq!(softmax_sum(VecPath::Avx2, &v), 0.0);
        // NEON's `vaddvq_f32` pairs neighbours: ((1 + 0) + (-1 + 0)) + ((1e-8 + 0) + 0) in two
        // vectors of four, summed in f64.
        assert_eq!(softmax_sum(VecPath::Neon, &v), 1e-8f32 as f64);
        assert!((softmax_sum(VecPath::Neon, &p) - exact).abs() < 1e-5);
        assert_eq!(VecPath::Neon.lanes(), 4);
        #[cfg(target_arch = "aarch64")]
        assert_eq!(path(), VecPath::Neon);
    }
}
