//! Weights back to f32 for the types candle does not know (IQ4_NL, IQ4_XS, MXFP4) and the k-quants
//! added with them, as ggml's `dequantize_row_*` computes them: token embeddings are looked up
//! this way, and tests compare the kernels with float math on these values.

use super::{blocks::*, WeightType};

/// `bytes` (whole blocks of `ty`) as f32 values; None for a type handled by candle or a length
/// that is not a whole number of blocks.
pub fn dequantize(ty: WeightType, bytes: &[u8]) -> Option<Vec<f32>> {
    fn each<B: Pod, const N: usize>(bytes: &[u8], f: impl Fn(&B) -> [f32; N]) -> Option<Vec<f32>> {
        let blocks = copy_blocks::<B>(bytes)?;
        Some(blocks.iter().flat_map(f).collect())
    }
    match ty {
        WeightType::Q2K => each(bytes, |b: &BlockQ2K| {
            let (d, min) = (f16_to_f32(b.d), f16_to_f32(b.dmin));
            let v = b.values();
            std::array::from_fn::<f32, 256, _>(|e| {
                let sc = b.scales[e / 16];
                let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
                dl * v[e] as f32 - ml
            })
        }),
        WeightType::Q3K => each(bytes, |b: &BlockQ3K| {
            let d = f16_to_f32(b.d);
            let (v, sc) = (b.values(), b.scales());
            std::array::from_fn::<f32, 256, _>(|e| d * sc[e / 16] as f32 * v[e] as f32)
        }),
        WeightType::IQ4NL => each(bytes, |b: &BlockIQ4NL| {
            let d = f16_to_f32(b.d);
            b.values().map(|v| d * v as f32)
        }),
        WeightType::IQ4XS => each(bytes, |b: &BlockIQ4XS| {
            let d = f16_to_f32(b.d);
            let (v, ls) = (b.values(), b.scales());
            std::array::from_fn::<f32, 256, _>(|e| d * ls[e / 32] as f32 * v[e] as f32)
        }),
        WeightType::MXFP4 => each(bytes, |b: &BlockMXFP4| {
            let d = e8m0_to_f32_half(b.e);
            b.values().map(|v| d * v as f32)
        }),
        _ => None,
    }
}
