//! Block layouts, byte for byte the same as ggml's (`ggml-common.h`), so GGUF tensor data can be
//! read in place. Scales stored as IEEE half precision are kept as raw `u16` bits.

use half::f16;

pub const QK: usize = 32;
pub const QK_K: usize = 256;

#[inline(always)]
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Round to nearest, ties to even, like F16C's `_cvtss_sh(x, 0)`.
#[inline(always)]
pub fn f32_to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ4_0 {
    pub d: u16,
    pub qs: [u8; 16],
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ4_1 {
    pub d: u16,
    pub m: u16,
    pub qs: [u8; 16],
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ5_0 {
    pub d: u16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ5_1 {
    pub d: u16,
    pub m: u16,
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ8_0 {
    pub d: u16,
    pub qs: [i8; 32],
}

/// Activation block for Q4_1 / Q5_1 weights: `s` is `d * sum(qs)`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockQ8_1 {
    pub d: u16,
    pub s: u16,
    pub qs: [i8; 32],
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ4K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: u16,
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ2K {
    /// Per 16 values: scale in the low nibble, min in the high nibble.
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: u16,
    pub dmin: u16,
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ3K {
    /// The third bit of each quant, cleared where ggml subtracts 4.
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    /// Sixteen 6-bit scales (ggml's `kmask` packing), offset by 32.
    pub scales: [u8; 12],
    pub d: u16,
}

/// ggml's non-linear 4-bit code book (`kvalues_iq4nl`).
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockIQ4NL {
    pub d: u16,
    pub qs: [u8; 16],
}

/// ggml's `kvalues_mxfp4`: the e2m1 (FP4) values doubled, so that they are integers.
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// MXFP4 (OCP microscaling FP4, gpt-oss's experts): 32 e2m1 codes sharing one power-of-two
/// scale, stored as an e8m0 exponent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[repr(C)]
pub struct BlockMXFP4 {
    pub e: u8,
    pub qs: [u8; 16],
}

/// `2^(e - 127) / 2` (ggml's `GGML_E8M0_TO_FP32_HALF`): the scale of an MXFP4 block, halved
/// because [`KVALUES_MXFP4`] holds doubled values. Exponents 0 and 1 give subnormals.
#[inline(always)]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (e as u32 - 1) << 23
    };
    f32::from_bits(bits)
}

#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockIQ4XS {
    pub d: u16,
    /// High two bits of the eight 6-bit sub-block scales.
    pub scales_h: u16,
    /// Low four bits of the sub-block scales, two per byte.
    pub scales_l: [u8; 4],
    pub qs: [u8; 128],
}

/// Activation block for the k-quants.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl Default for BlockQ8K {
    fn default() -> Self {
        Self {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16],
        }
    }
}

const _: () = {
    assert!(std::mem::size_of::<BlockQ4_0>() == 18);
    assert!(std::mem::size_of::<BlockQ4_1>() == 20);
    assert!(std::mem::size_of::<BlockQ5_0>() == 22);
    assert!(std::mem::size_of::<BlockQ5_1>() == 24);
    assert!(std::mem::size_of::<BlockQ8_0>() == 34);
    assert!(std::mem::size_of::<BlockQ8_1>() == 36);
    assert!(std::mem::size_of::<BlockQ4K>() == 144);
    assert!(std::mem::size_of::<BlockQ5K>() == 176);
    assert!(std::mem::size_of::<BlockQ6K>() == 210);
    assert!(std::mem::size_of::<BlockQ8K>() == 292);
    assert!(std::mem::size_of::<BlockQ2K>() == 84);
    assert!(std::mem::size_of::<BlockQ3K>() == 110);
    assert!(std::mem::size_of::<BlockIQ4NL>() == 18);
    assert!(std::mem::size_of::<BlockIQ4XS>() == 136);
    assert!(std::mem::size_of::<BlockMXFP4>() == 17);
};

/// Plain-old-data blocks: any byte pattern is a valid value.
///
/// # Safety
/// Implementors must be `repr(C)` structs of integer fields without padding.
pub unsafe trait Pod: Copy + 'static {}
unsafe impl Pod for BlockQ4_0 {}
unsafe impl Pod for BlockQ4_1 {}
unsafe impl Pod for BlockQ5_0 {}
unsafe impl Pod for BlockQ5_1 {}
unsafe impl Pod for BlockQ8_0 {}
unsafe impl Pod for BlockQ8_1 {}
unsafe impl Pod for BlockQ4K {}
unsafe impl Pod for BlockQ5K {}
unsafe impl Pod for BlockQ6K {}
unsafe impl Pod for BlockQ8K {}
unsafe impl Pod for BlockQ2K {}
unsafe impl Pod for BlockQ3K {}
unsafe impl Pod for BlockIQ4NL {}
unsafe impl Pod for BlockIQ4XS {}
unsafe impl Pod for BlockMXFP4 {}

/// Views `bytes` as blocks; None when the length or the alignment does not fit.
pub fn cast_blocks<T: Pod>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size)
        || !(bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
    {
        return None;
    }
    // SAFETY: length and alignment checked above; T is plain old data.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr() as *const T, bytes.len() / size) })
}

/// Copies `bytes` into freshly allocated blocks (for data that is not aligned).
pub fn copy_blocks<T: Pod>(bytes: &[u8]) -> Option<Vec<T>> {
    let size = std::mem::size_of::<T>();
    if !bytes.len().is_multiple_of(size) {
        return None;
    }
    let n = bytes.len() / size;
    let mut v: Vec<T> = Vec::with_capacity(n);
    // SAFETY: the destination has room for n blocks; T is plain old data.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), v.as_mut_ptr() as *mut u8, bytes.len());
        v.set_len(n);
    }
    Some(v)
}

/// The raw bytes of a block slice.
pub fn as_bytes<T: Pod>(blocks: &[T]) -> &[u8] {
    // SAFETY: T is plain old data without padding.
    unsafe {
        std::slice::from_raw_parts(blocks.as_ptr() as *const u8, std::mem::size_of_val(blocks))
    }
}

/// Scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K block (ggml's `get_scale_min_k4`).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All eight scales and mins of a Q4_K / Q5_K block.
#[inline(always)]
pub fn scales_mins_k4(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        (sc[j], mn[j]) = scale_min_k4(j, q);
    }
    (sc, mn)
}

impl BlockQ4_0 {
    /// Quants as ggml's x86 kernels see them: `nibble - 8`.
    pub fn values(&self) -> [i8; 32] {
        let mut v = [0i8; 32];
        for i in 0..16 {
            v[i] = (self.qs[i] & 0xF) as i8 - 8;
            v[i + 16] = (self.qs[i] >> 4) as i8 - 8;
        }
        v
    }
}

impl BlockQ4_1 {
    pub fn values(&self) -> [i8; 32] {
        let mut v = [0i8; 32];
        for i in 0..16 {
            v[i] = (self.qs[i] & 0xF) as i8;
            v[i + 16] = (self.qs[i] >> 4) as i8;
        }
        v
    }
}

impl BlockQ5_0 {
    /// `(nibble | high bit << 4) - 16`.
    pub fn values(&self) -> [i8; 32] {
        let qh = u32::from_le_bytes(self.qh);
        let mut v = [0i8; 32];
        for i in 0..16 {
            let h0 = ((qh >> i) & 1) as u8;
            let h1 = ((qh >> (i + 16)) & 1) as u8;
            v[i] = ((self.qs[i] & 0xF) | (h0 << 4)) as i8 - 16;
            v[i + 16] = ((self.qs[i] >> 4) | (h1 << 4)) as i8 - 16;
        }
        v
    }
}

impl BlockQ5_1 {
    pub fn values(&self) -> [i8; 32] {
        let qh = u32::from_le_bytes(self.qh);
        let mut v = [0i8; 32];
        for i in 0..16 {
            let h0 = ((qh >> i) & 1) as u8;
            let h1 = ((qh >> (i + 16)) & 1) as u8;
            v[i] = ((self.qs[i] & 0xF) | (h0 << 4)) as i8;
            v[i + 16] = ((self.qs[i] >> 4) | (h1 << 4)) as i8;
        }
        v
    }
}

impl BlockQ4K {
    /// Unsigned 4-bit quants in element order.
    pub fn values(&self) -> [u8; 256] {
        let mut v = [0u8; 256];
        for c in 0..4 {
            for l in 0..32 {
                v[c * 64 + l] = self.qs[c * 32 + l] & 0xF;
                v[c * 64 + 32 + l] = self.qs[c * 32 + l] >> 4;
            }
        }
        v
    }
}

impl BlockQ5K {
    /// Unsigned 5-bit quants in element order.
    pub fn values(&self) -> [u8; 256] {
        let mut v = [0u8; 256];
        for c in 0..4 {
            for l in 0..32 {
                let lo = self.qs[c * 32 + l];
                v[c * 64 + l] = (lo & 0xF) | (((self.qh[l] >> (2 * c)) & 1) << 4);
                v[c * 64 + 32 + l] = (lo >> 4) | (((self.qh[l] >> (2 * c + 1)) & 1) << 4);
            }
        }
        v
    }
}

impl BlockQ6K {
    /// Unsigned 6-bit quants (0..64, ggml subtracts 32) in element order.
    pub fn values(&self) -> [u8; 256] {
        let mut v = [0u8; 256];
        for h in 0..2 {
            let ql = &self.ql[h * 64..];
            let qh = &self.qh[h * 32..];
            let o = h * 128;
            for l in 0..32 {
                v[o + l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                v[o + 32 + l] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                v[o + 64 + l] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                v[o + 96 + l] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
            }
        }
        v
    }
}

impl BlockQ2K {
    /// 2-bit quants (0..4) in element order.
    pub fn values(&self) -> [u8; 256] {
        let mut v = [0u8; 256];
        for (e, v) in v.iter_mut().enumerate() {
            let (j, k, i) = (e / 128, (e / 32) % 4, e % 32);
            *v = (self.qs[32 * j + i] >> (2 * k)) & 3;
        }
        v
    }
}

impl BlockQ3K {
    /// Signed 3-bit quants (-4..4) in element order: the low two bits, minus 4 where the
    /// `hmask` bit is clear.
    pub fn values(&self) -> [i8; 256] {
        let mut v = [0i8; 256];
        for (e, v) in v.iter_mut().enumerate() {
            let (j, k, i) = (e / 128, (e / 32) % 4, e % 32);
            let lo = ((self.qs[32 * j + i] >> (2 * k)) & 3) as i8;
            let high = (self.hmask[i] >> (4 * j + k)) & 1;
            *v = lo - if high == 0 { 4 } else { 0 };
        }
        v
    }

    /// The sixteen scales (-32..32), unpacked as ggml's `aux`/`kmask` code does.
    pub fn scales(&self) -> [i8; 16] {
        let q = &self.scales;
        let aux =
            |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
        let (a0, a1, tmp) = (aux(0), aux(1), aux(2));
        const KMASK1: u32 = 0x0303_0303;
        const KMASK2: u32 = 0x0f0f_0f0f;
        let words = [
            (a0 & KMASK2) | ((tmp & KMASK1) << 4),
            (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
            ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
            ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
        ];
        let mut out = [0i8; 16];
        for (i, w) in words.iter().enumerate() {
            for (b, byte) in w.to_le_bytes().iter().enumerate() {
                out[4 * i + b] = *byte as i8 - 32;
            }
        }
        out
    }
}

impl BlockIQ4NL {
    /// Code book values in element order: low nibbles first, then high nibbles.
    pub fn values(&self) -> [i8; 32] {
        let mut v = [0i8; 32];
        for i in 0..16 {
            v[i] = KVALUES_IQ4NL[(self.qs[i] & 0xF) as usize];
            v[i + 16] = KVALUES_IQ4NL[(self.qs[i] >> 4) as usize];
        }
        v
    }
}

impl BlockMXFP4 {
    /// Code book values in element order: low nibbles, then high nibbles (as IQ4_NL).
    pub fn values(&self) -> [i8; 32] {
        let mut v = [0i8; 32];
        for i in 0..16 {
            v[i] = KVALUES_MXFP4[(self.qs[i] & 0xF) as usize];
            v[i + 16] = KVALUES_MXFP4[(self.qs[i] >> 4) as usize];
        }
        v
    }
}

impl BlockIQ4XS {
    /// Code book values in element order (each 32-value sub-block like an IQ4_NL block).
    pub fn values(&self) -> [i8; 256] {
        let mut v = [0i8; 256];
        for ib in 0..8 {
            for i in 0..16 {
                let q = self.qs[16 * ib + i];
                v[32 * ib + i] = KVALUES_IQ4NL[(q & 0xF) as usize];
                v[32 * ib + 16 + i] = KVALUES_IQ4NL[(q >> 4) as usize];
            }
        }
        v
    }

    /// The eight sub-block scales (-32..32).
    pub fn scales(&self) -> [i8; 8] {
        std::array::from_fn(|ib| {
            let lo = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
            let hi = ((self.scales_h >> (2 * ib)) & 3) as u8;
            (lo | (hi << 4)) as i8 - 32
        })
    }
}
