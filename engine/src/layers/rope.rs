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
                let t = self.freq_scale * (theta / ff);
                cos.push(t.cos());
                sin.push(t.sin());
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
