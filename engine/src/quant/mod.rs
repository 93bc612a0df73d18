//! Quantized matrix multiplication `y[m, n] = x[m, k] · W[n, k]^T` over GGUF weight blocks, with
//! ggml's (llama.cpp's) x86 CPU numerics: activations are quantized exactly like ggml does
//! (once per matmul, see [`act`]), integer block sums are exact, and the float accumulation
//! follows ggml's kernels (see [`mod@reference`]), so results match llama.cpp bit for bit where its
//! kernels are the ones described there.
//!
//! Kernels: a scalar one per weight type (the reference), AVX2 (`maddubs`), AVX-VNNI (256-bit
//! `vpdpbusd`) and AVX-512 (F/BW/VL/VNNI), chosen at run time; every level gives the same bits.
//! `EXO_NO_AVX512=1` keeps to 256-bit code; `EXO_QUANT_ISA=scalar|avx2|avxvnni|avx512` caps the
//! level (at what the CPU has). On aarch64 the levels are NEON, +dotprod and +i8mm
//! (`EXO_QUANT_ISA=neon|dotprod|i8mm`), whose kernels follow ggml's ARM numerics instead
//! (`kernels/arm`). Weight types without a kernel here fall back to candle's
//! `QMatMul`.
//!
//! Work is split into chunks of weight rows run on a small pool (`pool.rs`) where the calling
//! thread takes part; inside a chunk, tiles of several weight rows by several activation rows
//! reuse each decoded weight block (prompts) or prefetch the next tile's weights (decoding).
//! Weights nothing else holds are kept on huge pages (`storage.rs`).

pub mod act;
pub mod blocks;
pub mod dequant;
mod kernels;
/// NEON f16 helpers for attention and `ops` (see `kernels/arm/f16.rs`).
#[cfg(target_arch = "aarch64")]
pub(crate) use kernels::arm::f16 as arm_f16;
/// NEON `expf`, softmax exponentials and SwiGLU for attention and `ops` (`kernels/arm/vec.rs`).
#[cfg(target_arch = "aarch64")]
pub(crate) use kernels::arm::vec as arm_vec;
mod pool;
pub mod reference;
mod storage;

use std::sync::{Arc, OnceLock};

use candle_core::{
    quantized::{GgmlDType, QMatMul, QTensor},
    DType, Device, Module, Result, Storage, Tensor,
};

use act::Q8KActs;
use blocks::*;

/// Instruction set levels the kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C, `maddubs`-based integer dot products.
    Avx2,
    /// AVX2 with 256-bit `vpdpbusd` (AVX-VNNI or AVX-512 VNNI/VL).
    AvxVnni,
    /// AVX-512 F/BW/VL/VNNI, 512-bit kernels.
    Avx512,
    /// aarch64 NEON without the dot-product extension (ggml's `vmull`+`vpadal` lanes).
    Neon,
    /// NEON with `sdot` (FEAT_DotProd).
    NeonDotprod,
    /// NEON with `sdot` and `smmla` (FEAT_I8MM).
    NeonI8mm,
}

impl Isa {
    /// Whether this CPU can run kernels of this level.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            match self {
                Isa::Scalar => true,
                Isa::Avx2 => avx2,
                Isa::AvxVnni => avx2 && is_x86_feature_detected!("avxvnni"),
                Isa::Avx512 => {
                    avx2 && is_x86_feature_detected!("avx512f")
                        && is_x86_feature_detected!("avx512bw")
                        && is_x86_feature_detected!("avx512vl")
                        && is_x86_feature_detected!("avx512vnni")
                }
                _ => false,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            use std::arch::is_aarch64_feature_detected as has;
            match self {
                Isa::Scalar => true,
                Isa::Neon => has!("neon"),
                Isa::NeonDotprod => has!("neon") && has!("dotprod"),
                Isa::NeonI8mm => has!("neon") && has!("dotprod") && has!("i8mm"),
                _ => false,
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            self == Isa::Scalar
        }
    }

    /// Whether this is an aarch64 level (whose kernels follow ggml's ARM numerics, see
    /// `kernels/arm`).
    pub fn is_arm(self) -> bool {
        matches!(self, Isa::Neon | Isa::NeonDotprod | Isa::NeonI8mm)
    }

    /// The kernel set's name, as `exo-p2p --version` and the bench table print it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512 => "avx512-vnni",
            Isa::Neon => "neon",
            Isa::NeonDotprod => "neon+dotprod",
            Isa::NeonI8mm => "neon+dotprod+i8mm",
        }
    }

    /// Every level of this architecture, lowest first (the order `best_up_to` caps along).
    #[cfg(target_arch = "aarch64")]
    const ALL: [Isa; 4] = [Isa::Scalar, Isa::Neon, Isa::NeonDotprod, Isa::NeonI8mm];
    #[cfg(not(target_arch = "aarch64"))]
    const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512];
    const TOP: Isa = Isa::ALL[3];

    /// The best supported level not above `cap`.
    /// (A cap of another architecture means no cap but `Scalar`'s.)
    pub fn best_up_to(cap: Isa) -> Isa {
        Isa::ALL
            .into_iter()
            .filter(|i| *i <= cap && i.supported())
            .max()
            .unwrap_or(Isa::Scalar)
    }

    /// The best level this CPU supports.
    pub fn detect() -> Isa {
        Isa::best_up_to(Isa::TOP)
    }

    /// The level in use: [`Isa::detect`] limited by `EXO_NO_AVX512` and `EXO_QUANT_ISA`.
    pub fn current() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let mut cap = Isa::TOP;
            let on = |v: &str| std::env::var(v).is_ok_and(|s| !s.is_empty() && s != "0");
            if on("EXO_NO_AVX512") && cap == Isa::Avx512 {
                cap = Isa::AvxVnni;
            }
            if let Ok(s) = std::env::var("EXO_QUANT_ISA") {
                let want = match s.to_ascii_lowercase().as_str() {
                    "scalar" => Some(Isa::Scalar),
                    "avx2" => Some(Isa::Avx2),
                    "avxvnni" | "vnni" => Some(Isa::AvxVnni),
                    "avx512" => Some(Isa::Avx512),
                    "neon" => Some(Isa::Neon),
                    "dotprod" | "neon+dotprod" => Some(Isa::NeonDotprod),
                    "i8mm" | "neon+dotprod+i8mm" => Some(Isa::NeonI8mm),
                    _ => None,
                };
                if let Some(w) = want {
                    cap = cap.min(w);
                }
            }
            Isa::best_up_to(cap)
        })
    }

    /// Levels this CPU can run, lowest first (for tests).
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported()).collect()
    }
}

/// Weight types with kernels here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    /// Non-linear 4-bit code book, blocks of 32 (against Q8_0 activations).
    IQ4NL,
    /// IQ4_NL's code book in super-blocks of 256 with 6-bit sub-block scales (against Q8_K).
    IQ4XS,
    /// gpt-oss's microscaling FP4: e2m1 codes and a power-of-two scale per 32 (against Q8_0).
    MXFP4,
}

/// How activations are quantized for a weight type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActType {
    Q8_0,
    Q8_1,
    Q8K,
}

impl WeightType {
    pub fn from_ggml(d: GgmlDType) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.candle_dtype() == Some(d))
    }

    /// ggml's `ggml_type` number (the type id GGUF files store).
    pub fn ggml_id(self) -> u32 {
        [2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 20, 23, 39][self as usize]
    }

    /// The type of a ggml type id, if it has kernels here.
    pub fn from_ggml_id(id: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.ggml_id() == id)
    }

    /// candle's name for this type; None for the types candle does not know.
    pub fn candle_dtype(self) -> Option<GgmlDType> {
        Self::GGML[self as usize]
    }

    pub fn act_type(self) -> ActType {
        match self {
            Self::Q4_0 | Self::Q5_0 | Self::Q8_0 | Self::IQ4NL | Self::MXFP4 => ActType::Q8_0,
            Self::Q4_1 | Self::Q5_1 => ActType::Q8_1,
            Self::Q2K | Self::Q3K | Self::Q4K | Self::Q5K | Self::Q6K | Self::IQ4XS => ActType::Q8K,
        }
    }

    /// Every type, in declaration order.
    pub const ALL: [WeightType; 13] = [
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q2K,
        Self::Q3K,
        Self::Q4K,
        Self::Q5K,
        Self::Q6K,
        Self::IQ4NL,
        Self::IQ4XS,
        Self::MXFP4,
    ];
    /// candle's name of each type of [`WeightType::ALL`].
    const GGML: [Option<GgmlDType>; 13] = [
        Some(GgmlDType::Q4_0),
        Some(GgmlDType::Q4_1),
        Some(GgmlDType::Q5_0),
        Some(GgmlDType::Q5_1),
        Some(GgmlDType::Q8_0),
        Some(GgmlDType::Q2K),
        Some(GgmlDType::Q3K),
        Some(GgmlDType::Q4K),
        Some(GgmlDType::Q5K),
        Some(GgmlDType::Q6K),
        None,
        None,
        None,
    ];

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        use std::mem::size_of;
        match self {
            Self::Q4_0 => size_of::<BlockQ4_0>(),
            Self::Q4_1 => size_of::<BlockQ4_1>(),
            Self::Q5_0 => size_of::<BlockQ5_0>(),
            Self::Q5_1 => size_of::<BlockQ5_1>(),
            Self::Q8_0 => size_of::<BlockQ8_0>(),
            Self::Q2K => size_of::<BlockQ2K>(),
            Self::Q3K => size_of::<BlockQ3K>(),
            Self::Q4K => size_of::<BlockQ4K>(),
            Self::Q5K => size_of::<BlockQ5K>(),
            Self::Q6K => size_of::<BlockQ6K>(),
            Self::IQ4NL => size_of::<BlockIQ4NL>(),
            Self::IQ4XS => size_of::<BlockIQ4XS>(),
            Self::MXFP4 => size_of::<BlockMXFP4>(),
        }
    }

    /// Values per block.
    pub fn block_len(self) -> usize {
        match self.act_type() {
            ActType::Q8K => QK_K,
            _ => QK,
        }
    }
}

/// Quantized activations: `m` rows of `k` values.
pub struct Activations {
    pub m: usize,
    pub k: usize,
    pub data: ActData,
    /// The scale of every Q8_0 / Q8_1 block as f32 (empty for Q8_K, whose scale is f32).
    pub d32: Vec<f32>,
    /// For Q8_0 blocks: minus the sum of each 4 consecutive quants (the offset correction of
    /// kernels that see weights as unsigned bytes).
    pub neg_sums: Vec<[i32; 8]>,
}

pub enum ActData {
    Q8_0(Vec<BlockQ8_0>),
    Q8_1(Vec<BlockQ8_1>),
    Q8K(Q8KActs),
}

impl Activations {
    /// Quantizes `x` (`m` rows of `k` values, row-major) for weights of type `ty`.
    pub fn quantize(x: &[f32], m: usize, k: usize, ty: ActType) -> Self {
        Self::quantize_with(x, m, k, ty, Isa::current())
    }

    /// [`Activations::quantize`] with the code of `isa` (limited to what the CPU has); every
    /// level gives the same bits.
    pub fn quantize_with(x: &[f32], m: usize, k: usize, ty: ActType, isa: Isa) -> Self {
        assert_eq!(x.len(), m * k);
        let isa = Isa::best_up_to(isa);
        let data = match ty {
            ActType::Q8_0 => ActData::Q8_0(act::quantize_q8_0(x, isa)),
            ActType::Q8_1 => ActData::Q8_1(act::quantize_q8_1(x, isa)),
            ActType::Q8K => ActData::Q8K(act::quantize_q8k(x, isa)),
        };
        let d32 = match &data {
            ActData::Q8_0(b) => b.iter().map(|b| f16_to_f32(b.d)).collect(),
            ActData::Q8_1(b) => b.iter().map(|b| f16_to_f32(b.d)).collect(),
            ActData::Q8K(_) => Vec::new(),
        };
        let neg_sums = match &data {
            ActData::Q8_0(b) => b
                .iter()
                .map(|b| {
                    std::array::from_fn(|l| {
                        -b.qs[4 * l..4 * l + 4]
                            .iter()
                            .map(|&q| q as i32)
                            .sum::<i32>()
                    })
                })
                .collect(),
            _ => Vec::new(),
        };
        Self {
            m,
            k,
            data,
            d32,
            neg_sums,
        }
    }

    pub fn act_type(&self) -> ActType {
        match self.data {
            ActData::Q8_0(_) => ActType::Q8_0,
            ActData::Q8_1(_) => ActType::Q8_1,
            ActData::Q8K(_) => ActType::Q8K,
        }
    }
}

/// Where a kernel writes: `out[i * ld + j]` for activation row `i` and weight row `j`.
#[derive(Clone, Copy)]
pub struct OutPtr {
    ptr: *mut f32,
    ld: usize,
}

// SAFETY: chunks handed to different threads write disjoint elements.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// # Safety
    /// `(i, j)` must be inside the output and written by one thread only.
    #[inline(always)]
    pub unsafe fn set(self, i: usize, j: usize, v: f32) {
        *self.ptr.add(i * self.ld + j) = v;
    }

    #[inline(always)]
    pub fn offset_rows(self, i: usize) -> Self {
        Self {
            ptr: self.ptr.wrapping_add(i * self.ld),
            ld: self.ld,
        }
    }

    #[inline(always)]
    pub fn offset_cols(self, j: usize) -> Self {
        Self {
            ptr: self.ptr.wrapping_add(j),
            ld: self.ld,
        }
    }
}

/// Multiplies `m` activation rows by a weight chunk of `w.len() / nb` rows; writes every output
/// of the chunk.
pub(crate) type ChunkFn<'a, W, A> = &'a (dyn Fn(&[W], &[A], usize, usize, OutPtr) + Sync);

/// Threads that run the kernels (see [`pool`]).
pub(crate) fn num_threads() -> usize {
    pool::pool().threads()
}

/// Runs `f(i)` for `i` in `0..n` on the kernels' threads.
pub(crate) fn par_for(n: usize, f: impl Fn(usize) + Sync) {
    pool::pool().run(n, &f);
}

/// Runs `kernel` over chunks of weight rows in parallel.
pub(crate) fn run_chunks<W: Sync, A: Sync>(
    w: &[W],
    n: usize,
    nb: usize,
    a: &[A],
    m: usize,
    out: &mut [f32],
    kernel: ChunkFn<'_, W, A>,
) {
    assert_eq!(w.len(), n * nb);
    assert!(a.len() >= m * nb);
    assert_eq!(out.len(), m * n);
    let o = OutPtr {
        ptr: out.as_mut_ptr(),
        ld: n,
    };
    let threads = num_threads();
    let work = m * n * nb;
    if threads <= 1 || work < 1 << 12 || n <= 8 {
        kernel(w, a, nb, m, o);
        return;
    }
    // Chunks of a multiple of 8 rows (at least 16, the widest kernel tile), several per thread
    // so that a thread slowed down by anything else on the machine does not hold the others up.
    let per = n.div_ceil(threads * 8).next_multiple_of(8).clamp(16, 256);
    let chunks = n.div_ceil(per);
    par_for(chunks, |c| {
        let j0 = c * per;
        let j1 = (j0 + per).min(n);
        kernel(&w[j0 * nb..j1 * nb], a, nb, m, o.offset_cols(j0));
    });
}

/// `x[m, k] · W[n, k]^T` for f16 weights, each dot product in ggml's `vec_dot_f16` order, so a
/// row's result does not depend on the other rows in the batch.
fn dense_f16(w: &[half::f16], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    use half::slice::HalfFloatSliceExt;
    use rayon::prelude::*;
    let mut by_row = vec![0f32; n * m];
    by_row.par_chunks_mut(m).enumerate().for_each(|(o, dst)| {
        let mut wf = vec![0f32; k];
        w[o * k..(o + 1) * k].convert_to_f32_slice(&mut wf);
        for (i, d) in dst.iter_mut().enumerate() {
            *d = crate::ggml_vec::dot_f16(&wf, &x[i * k..(i + 1) * k]);
        }
    });
    let mut out = vec![0f32; m * n];
    for o in 0..n {
        for i in 0..m {
            out[i * n + o] = by_row[o * m + i];
        }
    }
    out
}

/// Where the weight blocks are.
#[derive(Clone)]
enum Weights {
    /// In the QTensor, which something else holds too (a tied embedding table).
    Shared(Arc<QTensor>),
    /// A private copy on huge pages (see [`storage`]); several matrices may share one (the
    /// experts of a 3-D tensor), each its own byte range.
    Owned(Arc<storage::HugeBuf>, std::ops::Range<usize>),
}

/// A quantized weight matrix `[n, k]` usable as the right-hand side of `x · W^T`.
#[derive(Clone)]
pub struct QuantMatMul {
    /// Weights with a kernel here, their type and candle's name for it (None for the types
    /// candle does not know); None for the others.
    quant: Option<(Weights, WeightType, Option<GgmlDType>)>,
    /// F16 weights `[n, k]`, multiplied the way ggml does (activations rounded to f16, each row
    /// independent of the others).
    f16: Option<Arc<Vec<half::f16>>>,
    /// candle's matmul: for dense and unsupported weights (built at once) and for inputs the
    /// kernels do not take (built on first use from the blocks).
    fallback: OnceLock<QMatMul>,
    n: usize,
    k: usize,
}

impl std::fmt::Debug for QuantMatMul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.quant {
            Some((_, ty, _)) => write!(f, "QuantMatMul[{}x{} {ty:?}]", self.n, self.k),
            None => write!(f, "QuantMatMul[{}x{} candle]", self.n, self.k),
        }
    }
}

impl QuantMatMul {
    /// Takes the weight; when nothing else holds `qt`, its blocks are moved to huge pages and the
    /// QTensor is released.
    pub fn from_arc(qt: Arc<QTensor>) -> Result<Self> {
        let (n, k) = qt.shape().dims2()?;
        let dtype = qt.dtype();
        let ty = WeightType::from_ggml(dtype).filter(|t| {
            matches!(qt.device(), Device::Cpu)
                && k % t.block_len() == 0
                && qt.data().is_ok_and(|d| weight_view_ok(*t, &d))
        });
        let dequantize_all = std::env::var("CANDLE_DEQUANTIZE_ALL").is_ok_and(|v| !v.is_empty());
        let fallback = OnceLock::new();
        if dtype == GgmlDType::F16 && matches!(qt.device(), Device::Cpu) && !dequantize_all {
            let data = qt.data()?;
            let w: Vec<half::f16> = data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                .collect();
            return Ok(Self {
                quant: None,
                f16: Some(Arc::new(w)),
                fallback,
                n,
                k,
            });
        }
        let quant = match ty {
            Some(ty) if !dequantize_all => {
                let weights = if Arc::strong_count(&qt) == 1 {
                    let data = qt.data()?;
                    Weights::Owned(Arc::new(storage::HugeBuf::copy_of(&data)), 0..data.len())
                } else {
                    Weights::Shared(qt)
                };
                Some((weights, ty, Some(dtype)))
            }
            _ => {
                let _ = fallback.set(QMatMul::from_arc(qt)?);
                None
            }
        };
        Ok(Self {
            quant,
            f16: None,
            fallback,
            n,
            k,
        })
    }

    /// An `[n, k]` matrix of `ty` blocks (row-major, as a GGUF tensor stores them), copied to
    /// the kernels' storage. For types candle does not know (IQ4_NL, IQ4_XS) this is the only
    /// way in.
    pub fn from_blocks(ty: WeightType, bytes: &[u8], n: usize, k: usize) -> Result<Self> {
        let want = n * (k / ty.block_len()) * ty.block_bytes();
        if !k.is_multiple_of(ty.block_len()) || bytes.len() != want {
            candle_core::bail!(
                "{ty:?} weight [{n}, {k}]: {} bytes, expected {want} (rows of whole {}-value blocks)",
                bytes.len(),
                ty.block_len()
            )
        }
        Ok(Self::stacked(ty, bytes, 1, n, k)?
            .pop()
            .expect("one matrix"))
    }

    /// `count` matrices `[n, k]` of `ty` stored one after another (a GGUF 3-D tensor such as
    /// `ffn_up_exps`), as views of one copy of the blocks: a mixture reads only the experts it
    /// selects, and holds each expert once.
    pub fn stacked(
        ty: WeightType,
        bytes: &[u8],
        count: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<Self>> {
        let per = n * (k / ty.block_len()) * ty.block_bytes();
        if !k.is_multiple_of(ty.block_len()) || bytes.len() != count * per {
            candle_core::bail!(
                "{count} {ty:?} weights [{n}, {k}]: {} bytes, expected {} (rows of whole {}-value blocks)",
                bytes.len(),
                count * per,
                ty.block_len()
            )
        }
        let buf = Arc::new(storage::HugeBuf::copy_of(bytes));
        if !weight_view_ok(ty, buf.as_slice()) {
            candle_core::bail!("{ty:?} weight [{n}, {k}]: blocks not aligned in storage")
        }
        Ok((0..count)
            .map(|i| Self {
                quant: Some((
                    Weights::Owned(buf.clone(), i * per..(i + 1) * per),
                    ty,
                    ty.candle_dtype(),
                )),
                f16: None,
                fallback: OnceLock::new(),
                n,
                k,
            })
            .collect())
    }

    pub fn from_qmatmul(m: QMatMul) -> Result<Self> {
        match m {
            QMatMul::QTensor(qt) => Self::from_arc(qt),
            QMatMul::Tensor(ref t) | QMatMul::TensorF16(ref t) => {
                let (n, k) = t.dims2()?;
                let fallback = OnceLock::new();
                let _ = fallback.set(m);
                Ok(Self {
                    quant: None,
                    f16: None,
                    fallback,
                    n,
                    k,
                })
            }
        }
    }

    fn bytes(&self) -> Option<&[u8]> {
        match &self.quant {
            Some((Weights::Owned(b, r), ..)) => Some(&b.as_slice()[r.clone()]),
            // `QTensor::data` borrows the CPU storage in place.
            Some((Weights::Shared(qt), ..)) => match qt.data().ok()? {
                std::borrow::Cow::Borrowed(b) => Some(b),
                std::borrow::Cow::Owned(_) => None,
            },
            None => None,
        }
    }

    fn fallback(&self) -> Result<&QMatMul> {
        if let Some(f) = self.fallback.get() {
            return Ok(f);
        }
        if let Some(w) = &self.f16 {
            let t = Tensor::from_vec(w.as_ref().clone(), (self.n, self.k), &Device::Cpu)?;
            let _ = self.fallback.set(QMatMul::TensorF16(t));
            return Ok(self.fallback.get().expect("just set"));
        }
        let Some((weights, ty, dtype)) = &self.quant else {
            candle_core::bail!("no weights")
        };
        let Some(dtype) = dtype else {
            // A type candle does not know: a dense f32 copy.
            let bytes = self.bytes().expect("owned weights");
            let w = dequant::dequantize(*ty, bytes).expect("whole blocks checked at load");
            let t = Tensor::from_vec(w, (self.n, self.k), &Device::Cpu)?;
            let _ = self.fallback.set(QMatMul::Tensor(t));
            return Ok(self.fallback.get().expect("just set"));
        };
        let qt = match weights {
            Weights::Shared(qt) => qt.clone(),
            Weights::Owned(..) => {
                let storage = candle_core::quantized::QStorage::from_data(
                    std::borrow::Cow::Borrowed(self.bytes().expect("owned weights")),
                    &Device::Cpu,
                    *dtype,
                )?;
                Arc::new(QTensor::new(storage, (self.n, self.k))?)
            }
        };
        let _ = self.fallback.set(QMatMul::from_arc(qt)?);
        Ok(self.fallback.get().expect("just set"))
    }

    /// Rows `ids` of the matrix as f32 (a token embedding table of a type candle does not
    /// know), dequantized as ggml's `get_rows` does.
    pub fn rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let (Some(ty), Some(bytes)) = (self.weight_type(), self.bytes()) else {
            candle_core::bail!("rows of {self:?}: no blocks")
        };
        let row_bytes = self.k / ty.block_len() * ty.block_bytes();
        let mut out = Vec::with_capacity(ids.len() * self.k);
        for &id in ids {
            let id = id as usize;
            if id >= self.n {
                candle_core::bail!("row {id} of {self:?}")
            }
            let row = &bytes[id * row_bytes..(id + 1) * row_bytes];
            let Some(v) = dequant::dequantize(ty, row) else {
                candle_core::bail!("rows of {self:?}: no dequantizer for {ty:?}")
            };
            out.extend(v);
        }
        Ok(out)
    }

    pub fn weight_type(&self) -> Option<WeightType> {
        self.quant.as_ref().map(|q| q.1)
    }

    /// Size of the quantized weight data (0 for weights candle handles).
    pub fn weight_bytes(&self) -> usize {
        self.bytes().map_or(0, |b| b.len())
    }

    /// Rows (output features) and columns (input features).
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(Self::forward_many(&[self], x)?.pop().expect("one output"))
    }

    /// `x · W^T` for every weight in `ws`, quantizing `x` once per activation type.
    pub fn forward_many(ws: &[&QuantMatMul], x: &Tensor) -> Result<Vec<Tensor>> {
        let usable = x.dtype() == DType::F32 && x.device().is_cpu() && x.rank() >= 1;
        let k = x.dims().last().copied().unwrap_or(0);
        let mut outs: Vec<Option<Tensor>> = vec![None; ws.len()];
        if usable {
            let x = x.contiguous()?;
            let (storage, layout) = x.storage_and_layout();
            let Storage::Cpu(cpu) = &*storage else {
                unreachable!("checked the device")
            };
            let (start, end) = layout
                .contiguous_offsets()
                .expect("contiguous after contiguous()");
            let xs = &cpu.as_slice::<f32>()?[start..end];
            let m = xs.len() / k.max(1);
            let isa = Isa::current();
            for ty in [ActType::Q8_0, ActType::Q8_1, ActType::Q8K] {
                let members: Vec<usize> = (0..ws.len())
                    .filter(|&i| {
                        ws[i].weight_type().is_some_and(|t| t.act_type() == ty) && ws[i].k == k
                    })
                    .collect();
                if members.is_empty() || m == 0 {
                    continue;
                }
                let acts = Activations::quantize(xs, m, k, ty);
                for i in members {
                    let w = ws[i];
                    let mut out = vec![0f32; m * w.n];
                    w.matmul_into(&acts, &mut out, isa)?;
                    let mut shape = x.dims().to_vec();
                    *shape.last_mut().unwrap() = w.n;
                    outs[i] = Some(Tensor::from_vec(out, shape, &Device::Cpu)?);
                }
            }
            // F16 weights: activations rounded to f16 once, shared by every such weight.
            let f16_members: Vec<usize> = (0..ws.len())
                .filter(|&i| ws[i].f16.is_some() && ws[i].k == k)
                .collect();
            if !f16_members.is_empty() && m > 0 {
                let xh: Vec<f32> = xs
                    .iter()
                    .map(|&v| half::f16::from_f32(v).to_f32())
                    .collect();
                for i in f16_members {
                    let w = ws[i];
                    let out = dense_f16(w.f16.as_deref().expect("checked"), &xh, m, w.n, k);
                    let mut shape = x.dims().to_vec();
                    *shape.last_mut().unwrap() = w.n;
                    outs[i] = Some(Tensor::from_vec(out, shape, &Device::Cpu)?);
                }
            }
        }
        outs.into_iter()
            .enumerate()
            .map(|(i, o)| match o {
                Some(t) => Ok(t),
                None => ws[i].fallback()?.forward(x),
            })
            .collect()
    }

    /// `out[m, n] = acts · W^T` with the kernels of `isa` (limited to what the CPU has).
    pub fn matmul_into(&self, acts: &Activations, out: &mut [f32], isa: Isa) -> Result<()> {
        let (Some(ty), Some(bytes)) = (self.weight_type(), self.bytes()) else {
            candle_core::bail!("no quantized kernel for this weight")
        };
        if acts.k != self.k || acts.act_type() != ty.act_type() {
            candle_core::bail!("activations do not fit weight {self:?}")
        }
        let isa = Isa::best_up_to(isa);
        kernels::matmul(ty, bytes, self.n, self.k, acts, out, isa);
        Ok(())
    }
}

fn weight_view_ok(ty: WeightType, d: &[u8]) -> bool {
    match ty {
        WeightType::Q4_0 => cast_blocks::<BlockQ4_0>(d).is_some(),
        WeightType::Q4_1 => cast_blocks::<BlockQ4_1>(d).is_some(),
        WeightType::Q5_0 => cast_blocks::<BlockQ5_0>(d).is_some(),
        WeightType::Q5_1 => cast_blocks::<BlockQ5_1>(d).is_some(),
        WeightType::Q8_0 => cast_blocks::<BlockQ8_0>(d).is_some(),
        WeightType::Q2K => cast_blocks::<BlockQ2K>(d).is_some(),
        WeightType::Q3K => cast_blocks::<BlockQ3K>(d).is_some(),
        WeightType::Q4K => cast_blocks::<BlockQ4K>(d).is_some(),
        WeightType::Q5K => cast_blocks::<BlockQ5K>(d).is_some(),
        WeightType::Q6K => cast_blocks::<BlockQ6K>(d).is_some(),
        WeightType::IQ4NL => cast_blocks::<BlockIQ4NL>(d).is_some(),
        WeightType::IQ4XS => cast_blocks::<BlockIQ4XS>(d).is_some(),
        WeightType::MXFP4 => cast_blocks::<BlockMXFP4>(d).is_some(),
    }
}

#[cfg(test)]
mod tests;
