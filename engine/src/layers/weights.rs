//! How layers read their tensors: by GGUF name, whatever the source. For a safetensors directory
//! the architecture's own GGUF → Hugging Face name map (beside each file in `models/`) gives the
//! name stored there.

use std::sync::Arc;

use candle_core::{quantized::QTensor, Device, Tensor};

use crate::{
    error::{EngineError, Result},
    gguf::GgufError,
    quant::{QuantMatMul, WeightType},
    source::Source,
};

/// A GGUF tensor name → the Hugging Face name of the same weights.
pub type HfNames = fn(&str) -> String;

pub struct Weights<'a> {
    src: &'a Source,
    dev: &'a Device,
    hf_names: HfNames,
    /// The model's RMS norm epsilon.
    pub eps: f32,
}

impl<'a> Weights<'a> {
    pub fn new(src: &'a Source, dev: &'a Device, hf_names: HfNames, eps: f32) -> Self {
        Self {
            src,
            dev,
            hf_names,
            eps,
        }
    }

    pub fn is_gguf(&self) -> bool {
        self.src.is_gguf()
    }

    pub fn device(&self) -> &Device {
        self.dev
    }

    /// The name `gguf` has in the source.
    fn stored(&self, gguf: &str) -> String {
        if self.src.is_gguf() {
            gguf.to_string()
        } else {
            (self.hf_names)(gguf)
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.src.has_tensor(&self.stored(name))
    }

    /// A tensor as a candle `QTensor` (dense safetensors weights as F32).
    pub fn qtensor(&self, name: &str) -> Result<QTensor> {
        self.src.tensor(&self.stored(name), self.dev)
    }

    /// A tensor as dense f32 (norm weights, biases).
    pub fn dense(&self, name: &str) -> Result<Tensor> {
        Ok(self.qtensor(name)?.dequantize(self.dev)?)
    }

    /// A 2-D weight matrix for `x · W^T`, of any type with a kernel here (IQ4_NL and IQ4_XS,
    /// which candle does not know, included). Types nothing here computes with fail naming the
    /// tensor and its type.
    pub fn matmul(&self, name: &str) -> Result<QuantMatMul> {
        if let Some(t) = self.src.gguf().and_then(|g| g.tensor(name)) {
            let ty = t.info.ggml_type;
            if ty.candle().is_none() {
                let wt = WeightType::from_ggml_id(ty.id()).ok_or_else(|| {
                    EngineError::Gguf(GgufError::UnsupportedType {
                        path: t.path.to_path_buf(),
                        tensor: name.to_string(),
                        ty,
                    })
                })?;
                let [k, n] = t.info.dims[..] else {
                    return Err(self.bad(name, format!("a matrix of dims {:?}", t.info.dims)));
                };
                return Ok(QuantMatMul::from_blocks(
                    wt, t.bytes, n as usize, k as usize,
                )?);
            }
        }
        Ok(QuantMatMul::from_arc(Arc::new(self.qtensor(name)?))?)
    }

    /// The `n_expert` matrices of a mixture: slices of one 3-D GGUF tensor `{stacked}.weight`
    /// (`ffn_gate_exps`, dims `[k, n, n_expert]`), viewed in one copy of its blocks, or one
    /// tensor per expert (`per_expert(e)`: older GGUF files and Hugging Face checkpoints).
    pub fn experts(
        &self,
        stacked: &str,
        per_expert: impl Fn(usize) -> String,
        n_expert: usize,
    ) -> Result<Vec<QuantMatMul>> {
        let name = format!("{stacked}.weight");
        let Some(t) = self.src.gguf().and_then(|g| g.tensor(&name)) else {
            return (0..n_expert)
                .map(|e| self.matmul(&format!("{}.weight", per_expert(e))))
                .collect();
        };
        let [k, n, e] = t.info.dims[..] else {
            return Err(self.bad(
                &name,
                format!("dims {:?}, not [k, n, experts]", t.info.dims),
            ));
        };
        if e as usize != n_expert {
            return Err(self.bad(
                &name,
                format!("{e} experts where the metadata says {n_expert}"),
            ));
        }
        let (n, k) = (n as usize, k as usize);
        let ty = t.info.ggml_type;
        if let Some(wt) = WeightType::from_ggml_id(ty.id()) {
            return Ok(QuantMatMul::stacked(wt, t.bytes, n_expert, n, k)?);
        }
        // Dense experts (F32, F16, BF16): one candle tensor each.
        let dtype = ty.candle().ok_or_else(|| {
            EngineError::Gguf(GgufError::UnsupportedType {
                path: t.path.to_path_buf(),
                tensor: name.clone(),
                ty,
            })
        })?;
        let per = t.bytes.len() / n_expert;
        (0..n_expert)
            .map(|i| -> Result<QuantMatMul> {
                let bytes = &t.bytes[i * per..(i + 1) * per];
                let qt = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    bytes,
                    vec![n, k],
                    self.dev,
                )?;
                Ok(QuantMatMul::from_arc(Arc::new(qt))?)
            })
            .collect()
    }

    fn bad(&self, name: &str, reason: String) -> EngineError {
        EngineError::Gguf(GgufError::Tensor {
            path: self.src.path().to_path_buf(),
            tensor: name.to_string(),
            reason,
        })
    }
}
