//! A shard of a model: the layers `start..end`, plus the embedding when it is the first shard and
//! the final norm and head when it is the last. A whole model is the shard `0..n_layers`.

use std::path::Path;

use candle_core::{quantized::QMatMul, Device, Tensor};
use exo_protocol::LayerRange;

use crate::{
    error::{EngineError, Result},
    kv_cache::KvCache,
    layers::{Block, EmbedTable, Embedding, Head, Linear, Segment, StepContext, Weights},
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

    /// Bytes of KV cache one token takes on this shard (keys and values of every layer, held as
    /// f32).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.blocks
            .iter()
            .map(|b| 2 * b.attn.n_kv_head * b.attn.head_dim * 4)
            .sum()
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
        let mut out = self.forward_batch(vec![SeqStep {
            input,
            cache,
            logits,
        }])?;
        Ok(out.pop().expect("one output per sequence"))
    }

    /// Whether `len` tokens at `position` can be run: at least one, within the context window.
    pub fn check_step(&self, position: usize, len: usize) -> Result<()> {
        if len == 0 {
            return Err(EngineError::Invalid(format!(
                "an empty step at position {position} on {}",
                self.range
            )));
        }
        let context = self.spec.hp.context_length;
        if position + len > context {
            return Err(EngineError::ContextFull {
                needed: position + len,
                context,
            });
        }
        Ok(())
    }

    /// Runs one forward over several sequences, each at its own cache's position: their rows are
    /// stacked so every weight matrix is read once for all of them, and each attends over its
    /// own cache. A sequence's result does not depend on the others in the batch (the kernels
    /// compute each row independently). Returns, per sequence in order, what
    /// [`ShardModel::forward`] returns for it.
    pub fn forward_batch(&self, mut seqs: Vec<SeqStep<'_>>) -> Result<Vec<Tensor>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::new();
        let mut hiddens = Vec::new();
        let mut segments = Vec::with_capacity(seqs.len());
        for s in &seqs {
            let len = match (&s.input, &self.embed) {
                (ShardInput::Tokens(t), Some(_)) => {
                    ids.extend_from_slice(t);
                    t.len()
                }
                (ShardInput::Hidden(h), None) => {
                    let (_, len, hidden) = h.dims3()?;
                    if hidden != self.spec.hp.hidden {
                        return Err(EngineError::Invalid(format!(
                            "hidden states of width {hidden} for a model of width {}",
                            self.spec.hp.hidden
                        )));
                    }
                    hiddens.push(h.clone());
                    len
                }
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
            let pos = s.cache.position();
            self.check_step(pos, len)?;
            segments.push(Segment { pos, len });
        }
        let mut x = match &self.embed {
            Some(embed) => {
                embed.forward(&Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?)?
            }
            None if hiddens.len() == 1 => hiddens.pop().expect("one"),
            None => Tensor::cat(&hiddens, 1)?,
        };
        let ctx = StepContext::new(&self.spec.ropes, segments, &self.device)?;
        for (i, block) in self.blocks.iter().enumerate() {
            crate::dump::set_layer(Some(self.range.start as usize + i));
            let mut kvs: Vec<_> = seqs.iter_mut().map(|s| &mut s.cache.layers[i]).collect();
            x = block.forward(&x, &self.spec.ropes, &ctx, &mut kvs)?;
        }
        crate::dump::set_layer(None);
        for (s, seg) in seqs.iter_mut().zip(&ctx.segments) {
            s.cache.advance(seg.len);
        }
        let single = ctx.segments.len() == 1;
        let mut starts = Vec::with_capacity(ctx.segments.len());
        let mut start = 0;
        for seg in &ctx.segments {
            starts.push(start);
            start += seg.len;
        }
        let Some(head) = &self.head else {
            if single {
                return Ok(vec![x]);
            }
            return ctx
                .segments
                .iter()
                .zip(&starts)
                .map(|(seg, &start)| Ok(x.narrow(1, start, seg.len)?))
                .collect();
        };
        // The rows each sequence wants logits for, gathered so the head runs once.
        let wanted: Vec<std::ops::Range<usize>> = seqs
            .iter()
            .zip(&ctx.segments)
            .zip(&starts)
            .map(|((s, seg), &start)| match s.logits {
                Logits::Last => start + seg.len - 1..start + seg.len,
                Logits::From(from) => start + from.min(seg.len)..start + seg.len,
            })
            .collect();
        let x = if single {
            let r = &wanted[0];
            x.narrow(1, r.start, r.len())?
        } else {
            let index: Vec<u32> = wanted
                .iter()
                .flat_map(|r| r.clone())
                .map(|i| i as u32)
                .collect();
            x.index_select(&Tensor::new(index.as_slice(), &self.device)?, 1)?
        };
        let logits = head.forward(&x)?;
        if single {
            return Ok(vec![logits]);
        }
        let mut at = 0;
        wanted
            .iter()
            .map(|r| {
                let out = logits.narrow(1, at, r.len())?;
                at += r.len();
                Ok(out)
            })
            .collect()
    }
}

/// One sequence of a batched forward ([`ShardModel::forward_batch`]): its input, its cache
/// (whose position is where the input goes) and the logits it wants.
pub struct SeqStep<'a> {
    pub input: ShardInput<'a>,
    pub cache: &'a mut KvCache,
    pub logits: Logits,
}
