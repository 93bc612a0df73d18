//! Hidden states to and from the wire's raw little-endian tensor frames.

use candle_core::{DType, Device, Tensor};
use exo_protocol::{TensorDType, TensorFrame};

use crate::error::{EngineError, Result};

pub fn to_frame(t: &Tensor) -> Result<TensorFrame> {
    let t = t.to_dtype(DType::F32)?.contiguous()?;
    let shape = t.dims().iter().map(|&d| d as u32).collect();
    let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    Ok(TensorFrame {
        dtype: TensorDType::F32,
        shape,
        data,
    })
}

pub fn from_frame(frame: &TensorFrame, dev: &Device) -> Result<Tensor> {
    frame
        .validate()
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    let shape: Vec<usize> = frame.shape.iter().map(|&d| d as usize).collect();
    let t = match frame.dtype {
        TensorDType::F32 => {
            let v: Vec<f32> = frame
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Tensor::from_vec(v, shape, dev)?
        }
        TensorDType::F16 => {
            let v: Vec<half::f16> = frame
                .data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]))
                .collect();
            Tensor::from_vec(v, shape, dev)?.to_dtype(DType::F32)?
        }
        TensorDType::BF16 => {
            let v: Vec<half::bf16> = frame
                .data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]))
                .collect();
            Tensor::from_vec(v, shape, dev)?.to_dtype(DType::F32)?
        }
    };
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_exactly() -> Result<()> {
        let t = Tensor::new(
            &[[[1.5f32, -0.0, f32::MIN_POSITIVE], [3e38, -7.25, 0.1]]],
            &Device::Cpu,
        )?;
        let frame = to_frame(&t)?;
        assert_eq!(frame.shape, [1, 2, 3]);
        assert_eq!(frame.data.len(), 24);
        let back = from_frame(&frame, &Device::Cpu)?;
        assert_eq!(back.to_vec3::<f32>()?, t.to_vec3::<f32>()?);
        Ok(())
    }

    #[test]
    fn bad_frames_are_errors() {
        let frame = TensorFrame {
            dtype: TensorDType::F32,
            shape: vec![1, 2],
            data: vec![0; 7],
        };
        assert!(from_frame(&frame, &Device::Cpu).is_err());
    }
}
