//! 512-bit kernels for the hottest weight types.

use super::super::super::{Activations, WeightType};

pub(crate) fn matmul(
    _ty: WeightType,
    _repacked: bool,
    _bytes: &[u8],
    _n: usize,
    _nb: usize,
    _acts: &Activations,
    _out: &mut [f32],
) -> bool {
    false
}
