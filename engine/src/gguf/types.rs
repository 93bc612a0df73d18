//! ggml tensor types: every type id ggml defines (ggml.h at llama.cpp 0c1e570), with its name,
//! block size and bytes per block, so that a tensor's size is known and a type nothing here can
//! compute with is still named in errors.

use candle_core::quantized::GgmlDType;

/// A ggml tensor type, as stored in a GGUF tensor info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(u32);

/// `(id, name, values per block, bytes per block)`, from ggml's `type_traits`.
const TYPES: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
    (40, "NVFP4", 64, 36),
    (41, "Q1_0", 128, 18),
    (42, "Q2_0", 64, 18),
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const IQ4_NL: GgmlType = GgmlType(20);
    pub const IQ4_XS: GgmlType = GgmlType(23);
    pub const BF16: GgmlType = GgmlType(30);

    /// The type with ggml id `id`, if ggml defines one.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().any(|t| t.0 == id).then_some(Self(id))
    }

    pub fn id(self) -> u32 {
        self.0
    }

    fn traits(self) -> (u32, &'static str, u64, u64) {
        *TYPES
            .iter()
            .find(|t| t.0 == self.0)
            .expect("GgmlType holds only known ids")
    }

    /// ggml's name in capitals, as llama.cpp prints it (`Q4_K`, `IQ4_XS`, `F16`).
    pub fn name(self) -> &'static str {
        self.traits().1
    }

    /// Values per block.
    pub fn block_size(self) -> u64 {
        self.traits().2
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> u64 {
        self.traits().3
    }

    /// Bytes of `n` values (`n` a multiple of the block size).
    pub fn bytes_for(self, n: u64) -> u64 {
        n / self.block_size() * self.block_bytes()
    }

    /// The same type in candle, for the types candle can hold in a `QTensor`.
    pub fn candle(self) -> Option<GgmlDType> {
        Some(match self.0 {
            0 => GgmlDType::F32,
            1 => GgmlDType::F16,
            2 => GgmlDType::Q4_0,
            3 => GgmlDType::Q4_1,
            6 => GgmlDType::Q5_0,
            7 => GgmlDType::Q5_1,
            8 => GgmlDType::Q8_0,
            10 => GgmlDType::Q2K,
            11 => GgmlDType::Q3K,
            12 => GgmlDType::Q4K,
            13 => GgmlDType::Q5K,
            14 => GgmlDType::Q6K,
            30 => GgmlDType::BF16,
            _ => return None,
        })
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_is_named_with_its_block_layout() {
        let t = |id| GgmlType::from_id(id).unwrap();
        assert_eq!(
            (t(12).name(), t(12).block_size(), t(12).block_bytes()),
            ("Q4_K", 256, 144)
        );
        assert_eq!((t(23).name(), t(23).block_bytes()), ("IQ4_XS", 136));
        assert_eq!((t(20).name(), t(20).block_size()), ("IQ4_NL", 32));
        assert_eq!((t(39).name(), t(39).block_bytes()), ("MXFP4", 17));
        assert_eq!(t(35).name(), "TQ2_0");
        assert_eq!(t(19).name(), "IQ1_S");
        assert_eq!(t(14).bytes_for(512), 420);
        // Removed and unknown ids are not types.
        for id in [4, 5, 31, 36, 43, 1000] {
            assert!(GgmlType::from_id(id).is_none(), "{id}");
        }
        assert!(t(20).candle().is_none());
        assert_eq!(t(12).candle(), Some(GgmlDType::Q4K));
    }
}
