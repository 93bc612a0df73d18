//! Rotary position embeddings, computed as ggml computes them.

use candle_core::{Device, Result, Tensor};

/// How rotary embeddings pair up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimensions `i` and `i + d/2` (GPT-NeoX; Qwen2, Gemma, Hugging Face Llama).
    Neox,
    /// Dimensions `2i` and `2i + 1` (GGUF Llama, whose Q/K weights llama.cpp permuted).
    Interleaved,
}

/// Rotary embedding settings; a model may use several (Gemma 3: local and global layers).
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub style: RopeStyle,
    pub dim: usize,
    pub base: f32,
    /// Positions are multiplied by this (linear scaling is `1 / factor`).
    pub freq_scale: f32,
    /// Per-dimension divisors (Llama 3 `rope_freqs`), `dim / 2` long.
    pub freq_factors: Option<Vec<f32>>,
    /// YaRN's ramp between interpolated and extrapolated angles (gpt-oss).
    pub yarn: Option<Yarn>,
}

/// YaRN context extension as llama.cpp applies it (`rope_yarn` in ggml-cpu's ops.cpp, with
/// `ext_factor` 1 and the attention factor llama_context derives): dimensions below
/// `corr_dims[0]` keep their trained angle, those past `corr_dims[1]` are interpolated by
/// `freq_scale`, and cos/sin are scaled by `mscale`.
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    corr_dims: [f32; 2],
    mscale: f32,
}

impl Yarn {
    /// For a rope of `dim` dimensions and `base`, scaled by `factor` from a trained context of
    /// `n_ctx_orig` tokens, with `beta_fast` / `beta_slow` (llama.cpp's defaults: 32 and 1).
    pub fn new(dim: usize, base: f32, factor: f32, n_ctx_orig: usize, beta: (f32, f32)) -> Self {
        // ggml_rope_yarn_corr_dims
        let corr_dim = |n_rot: f32| {
            dim as f32 * (n_ctx_orig as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * base.ln())
        };
        let start = corr_dim(beta.0).floor();
        let end = corr_dim(beta.1).ceil();
        let corr_dims = [start.max(0.0), end.min(dim as f32 - 1.0)];
        // llama_context: attn_factor = get_mscale(factor) / (1 + 0.1 ln factor), which ggml's
        // rope then multiplies by 1 + 0.1 ln(1 / freq_scale); each rounding kept, and each
        // `0.1 * ln(x) + 1` fused as the C++ compiler fuses it.
        let freq_scale = 1.0 / factor;
        let one_plus = |x: f32| 0.1f32.mul_add(x.ln(), 1.0);
        let get_mscale = if factor <= 1.0 { 1.0 } else { one_plus(factor) };
        let attn_factor = get_mscale * (1.0 / one_plus(factor));
        let mscale = attn_factor * one_plus(1.0 / freq_scale);
        Self { corr_dims, mscale }
    }

    /// ggml's `rope_yarn_ramp` at pair `i` (dimension `2i`).
    fn ramp(&self, i: usize) -> f32 {
        let [low, high] = self.corr_dims;
        let y = (i as f32 - low) / (high - low).max(0.001);
        1.0 - y.clamp(0.0, 1.0)
    }
}

impl Rope {
    /// cos and sin tables `[rows, dim/2]` for the positions `pos..pos+len` of each segment in
    /// turn, computed the way ggml does (f32 angle advanced by repeated multiplication) so long
    /// contexts match llama.cpp.
    pub fn tables(&self, segments: &[Segment], dev: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.dim / 2;
        let theta_scale = self.base.powf(-2.0 / self.dim as f32);
        let rows: usize = segments.iter().map(|s| s.len).sum();
        let mut cos = Vec::with_capacity(rows * half);
        let mut sin = Vec::with_capacity(rows * half);
        for p in segments.iter().flat_map(|s| s.pos..s.pos + s.len) {
            let mut theta = p as f32;
            for i in 0..half {
                let ff = self.freq_factors.as_ref().map_or(1.0, |f| f[i]);
                let extrap = theta / ff;
                let interp = self.freq_scale * extrap;
                match &self.yarn {
                    None => {
                        cos.push(interp.cos());
                        sin.push(interp.sin());
                    }
                    Some(y) => {
                        let mix = y.ramp(i);
                        // `interp * (1 - mix) + extrap * mix`, its first product fused.
                        let t = interp.mul_add(1.0 - mix, extrap * mix);
                        cos.push(t.cos() * y.mscale);
                        sin.push(t.sin() * y.mscale);
                    }
                }
                theta *= theta_scale;
            }
        }
        Ok((
            Tensor::from_vec(cos, (rows, half), dev)?,
            Tensor::from_vec(sin, (rows, half), dev)?,
        ))
    }

    /// Rotates `[batch, heads, seq, dim]` by the tables of [`Rope::tables`] (dimensions past
    /// `self.dim` are left as they are).
    pub(super) fn apply(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let dims = x.dims4()?;
        let (seq, dim) = (dims.2, dims.3);
        let mut v: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let (cos, sin): (Vec<f32>, Vec<f32>) =
            (cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?);
        let half = self.dim / 2;
        for (r, row) in v.chunks_mut(dim).enumerate() {
            let t = r % seq;
            for i in 0..half {
                let (c, s) = (cos[t * half + i], sin[t * half + i]);
                let (a, b) = match self.style {
                    RopeStyle::Neox => (i, i + half),
                    RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                };
                let (x0, x1) = (row[a], row[b]);
                // ggml's C compiles `x0*cos - x1*sin` with the first product fused into an fma;
                // the same operations here keep keys and queries bit-identical to llama.cpp's.
                row[a] = x0.mul_add(c, -(x1 * s));
                row[b] = x0.mul_add(s, x1 * c);
            }
        }
        Tensor::from_vec(v, dims, x.device())
    }
}

/// One sequence's rows in a batched forward: `len` tokens at positions `pos..pos+len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub pos: usize,
    pub len: usize,
}

/// Per-forward values shared by all layers: the sequences whose rows are stacked in the batch,
/// in row order, and the rope tables of each rope setting for those rows.
pub struct StepContext {
    pub segments: Vec<Segment>,
    pub(super) ropes: Vec<(Tensor, Tensor)>,
}

impl StepContext {
    pub fn new(ropes: &[Rope], segments: Vec<Segment>, dev: &Device) -> Result<Self> {
        let ropes = ropes
            .iter()
            .map(|r| r.tables(&segments, dev))
            .collect::<Result<_>>()?;
        Ok(Self { segments, ropes })
    }
}
