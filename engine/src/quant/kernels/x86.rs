//! AVX2 / AVX-VNNI / AVX-512 kernels.

use super::super::{Activations, Isa, WeightType};

#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    _ty: WeightType,
    _repacked: bool,
    _bytes: &[u8],
    _n: usize,
    _nb: usize,
    _acts: &Activations,
    _out: &mut [f32],
    _isa: Isa,
) -> bool {
    false
}
