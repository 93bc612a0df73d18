//! A shard of a model: the layers `start..end`, plus the embedding when it is the first shard and
//! the final norm and head when it is the last. A whole model is the shard `0..n_layers`.

use std::path::Path;

use candle_core::{quantized::QMatMul, Device, Tensor};
use exo_protocol::LayerRange;

use crate::{
    error::{EngineError, Result},
    kv_cache::KvCache,
    layers::{last_position, Block, EmbedTable, Embedding, Head, Linear, Weights},
    models,
    source::Source,
    spec::Spec,
};

/// What a shard consumes.
pub enum ShardInput<'a> {
    /// Token ids (first shard).
    Tokens(&'a [u32]),
    /// Hidden states `[1, seq, hidden]` from the previous shard.
    Hidden(Tensor),
}

/// Which positions the last shard computes logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every position from this index on (perplexity, tests; `From(0)` is every position).
    From(usize),
}

pub struct ShardModel {
    spec: Spec,
    range: LayerRange,
    embed: Option<Embedding>,
    blocks: Vec<Block>,
    head: Option<Head>,
    device: Device,
}

impl ShardModel {
    /// Loads `range` of the model at `path` (a GGUF file or a safetensors directory); `None`
    /// loads every layer. Only the shard's own tensors are read.
    pub fn load(path: &Path, range: Option<LayerRange>, device: &Device) -> Result<Self> {
        let src = Source::open(path)?;
        Self::from_source(&src, range, device)
    }

    pub fn from_source(src: &Source, range: Option<LayerRange>, dev: &Device) -> Result<Self> {
        Self::from_source_reusing(src, range, dev, None)
    }

    /// Loads `range` of the model at `path`, taking the layers (and embedding or head) that
    /// `previous` — another shard of the same model — already holds instead of reading them
    /// again: when a ring changes, only the layers that moved are loaded.
    pub fn load_reusing(
        path: &Path,
        range: LayerRange,
        device: &Device,
        previous: Option<&ShardModel>,
    ) -> Result<Self> {
        let src = Source::open(path)?;
        Self::from_source_reusing(&src, Some(range), device, previous)
    }

    fn from_source_reusing(
        src: &Source,
        range: Option<LayerRange>,
        dev: &Device,
        previous: Option<&ShardModel>,
    ) -> Result<Self> {
        let spec = models::spec(src)?;
        let n = spec.hp.n_layers as u32;
        let range = range.unwrap_or(LayerRange::full(n));
        if !range.is_valid() || range.n_layers != n {
            return Err(EngineError::BadShard {
                range: range.to_string(),
                n_layers: n,
            });
        }
        let w = Weights::new(src, dev, models::hf_names(&spec.arch), spec.hp.eps);
        let norm = |name: &str| models::final_norm(&spec, &w, name);
        let linear = |name: &str| Linear::load(&w, name);

        let embed_table = || -> Result<EmbedTable> {
            const NAME: &str = "token_embd.weight";
            let candle_type = src
                .gguf()
                .and_then(|g| g.tensor_info(NAME))
                .is_none_or(|t| t.ggml_type.candle().is_some());
            Ok(if candle_type {
                EmbedTable::Candle(QMatMul::from_arc(std::sync::Arc::new(w.qtensor(NAME)?))?)
            } else {
                EmbedTable::Blocks(w.matmul(NAME)?)
            })
        };
        let previous =
            previous.filter(|p| p.range.n_layers == range.n_layers && p.spec.arch == spec.arch);
        let mut table = None;
        let embed = if let Some(e) = previous
            .and_then(|p| p.embed.clone())
            .filter(|_| range.is_first())
        {
            table = Some(e.table.clone());
            Some(e)
        } else if range.is_first() {
            let t = embed_table()?;
            table = Some(t.clone());
            Some(Embedding {
                table: t,
                scale: spec.embed_scale,
            })
        } else {
            None
        };
        let head = if let Some(h) = previous
            .and_then(|p| p.head.clone())
            .filter(|_| range.is_last())
        {
            Some(h)
        } else if range.is_last() {
            let output = if w.has("output.weight") {
                linear("output")?
            } else {
                // Tied embeddings: share the table with the embedding when this shard has it.
                match table {
                    Some(t) => t,
                    None => embed_table()?,
                }
                .as_linear()
            };
            Some(Head {
                norm: norm("output_norm")?,
                output,
            })
        } else {
            None
        };

        let mut blocks = Vec::with_capacity(range.len() as usize);
        let mut reused = 0;
        for i in range.start as usize..range.end as usize {
            if let Some(prev) =
                previous.filter(|p| (p.range.start as usize..p.range.end as usize).contains(&i))
            {
                blocks.push(prev.blocks[i - prev.range.start as usize].clone());
                reused += 1;
                continue;
            }
            blocks.push(models::block(&spec, &w, i)?);
        }
        tracing::debug!(arch = %spec.arch, %range, reused, path = %src.path().display(), "shard loaded");
        Ok(Self {
            spec,
            range,
            embed,
            blocks,
            head,
            device: dev.clone(),
        })
    }

    pub fn range(&self) -> LayerRange {
        self.range
    }

    pub fn spec(&self) -> &Spec {
        &self.spec
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.blocks.len())
    }

    /// Runs the shard on `input` at the cache's position. Returns hidden states `[1, seq, hidden]`
    /// or, on the last shard, logits `[1, positions, vocab]`.
    pub fn forward(
        &self,
        input: ShardInput<'_>,
        cache: &mut KvCache,
        logits: Logits,
    ) -> Result<Tensor> {
        let mut x = match (input, &self.embed) {
            (ShardInput::Tokens(ids), Some(embed)) => {
                let ids = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
                embed.forward(&ids)?
            }
            (ShardInput::Hidden(h), None) => h,
            (ShardInput::Tokens(_), None) => {
                return Err(EngineError::Invalid(format!(
                    "shard {} does not start at layer 0 and cannot take token ids",
                    self.range
                )))
            }
            (ShardInput::Hidden(_), Some(_)) => {
                return Err(EngineError::Invalid(format!(
                    "shard {} is the first shard and takes token ids, not hidden states",
                    self.range
                )))
            }
        };
        let (_, seq, hidden) = x.dims3()?;
        if hidden != self.spec.hp.hidden {
            return Err(EngineError::Invalid(format!(
                "hidden states of width {hidden} for a model of width {}",
                self.spec.hp.hidden
            )));
        }
        let pos = cache.position();
        let context = self.spec.hp.context_length;
        if pos + seq > context {
            return Err(EngineError::ContextFull {
                needed: pos + seq,
                context,
            });
        }
        let ctx = crate::layers::StepContext::new(&self.spec.ropes, pos, seq, &self.device)?;
        for (i, (block, kv)) in self.blocks.iter().zip(cache.layers.iter_mut()).enumerate() {
            crate::dump::set_layer(Some(self.range.start as usize + i));
            x = block.forward(&x, &self.spec.ropes, &ctx, kv)?;
        }
        crate::dump::set_layer(None);
        cache.advance(seq);
        match &self.head {
            Some(head) => {
                let x = match logits {
                    Logits::Last => last_position(&x)?,
                    Logits::From(start) => {
                        let start = start.min(seq);
                        x.narrow(1, start, seq - start)?
                    }
                };
                Ok(head.forward(&x)?)
            }
            None => Ok(x),
        }
    }
}
