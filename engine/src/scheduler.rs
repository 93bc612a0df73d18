//! Continuous batching for one loaded shard: a thread that, each iteration, takes every step
//! waiting (whatever arrived while the previous forward ran) and runs one forward over all of
//! them — each sequence at its own position over its own cache — then answers each finished step.
//!
//! Prompts are split into chunks of [`CHUNK`] tokens (llama.cpp's default micro-batch, so prefill
//! numerics match its) and at most [`PREFILL_BUDGET`] prompt tokens join a forward, beside every
//! waiting decode step: a long new prompt does not stall the streams already running. How a
//! prompt is chunked depends on its length alone, and each row of a forward is computed
//! independently of the others, so a step's result does not depend on what it is batched with.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use candle_core::Tensor;

use crate::{
    error::{EngineError, Result},
    kv_cache::KvCache,
    model::{Logits, SeqStep, ShardInput, ShardModel},
};

/// Tokens of one prompt per forward.
pub const CHUNK: usize = 512;
/// Prompt tokens per forward across all prompts being prefilled (at least one chunk runs).
const PREFILL_BUDGET: usize = 512;
/// How long a forward waits for the steps of the streams the previous one answered.
const GATHER: Duration = Duration::from_millis(5);
/// Steps waiting to join a batch; callers beyond it block until there is room.
const QUEUE: usize = 256;

/// What a step feeds the shard.
pub enum StepInput {
    Tokens(Vec<u32>),
    Hidden(Tensor),
}

impl StepInput {
    fn len(&self) -> Result<usize> {
        Ok(match self {
            StepInput::Tokens(t) => t.len(),
            StepInput::Hidden(h) => h.dims3()?.1,
        })
    }
}

struct Job {
    position: usize,
    input: StepInput,
    /// On the last shard: the positions of the step whose logits are wanted.
    logits: Logits,
    cache: Arc<Mutex<KvCache>>,
    reply: mpsc::SyncSender<Result<Tensor>>,
}

/// A job being worked through, chunk by chunk.
struct Active {
    job: Job,
    len: usize,
    /// Tokens already run.
    done: usize,
    /// Hidden states of the chunks run so far, or on the last shard the wanted logits.
    outputs: Vec<Tensor>,
}

impl Active {
    fn next_chunk(&self) -> usize {
        (self.len - self.done).min(CHUNK)
    }

    /// The logits the next chunk of `n` tokens computes (last shard): the step's own choice
    /// moved to the chunk, and only the last row for a chunk before the wanted ones.
    fn chunk_logits(&self, n: usize) -> Logits {
        match self.job.logits {
            Logits::From(from) if from < self.done + n => {
                Logits::From(from.saturating_sub(self.done))
            }
            _ => Logits::Last,
        }
    }

    /// Whether the chunk of `n` tokens just run produced rows the step wants (last shard).
    fn keeps(&self, n: usize) -> bool {
        match self.job.logits {
            Logits::From(from) => from < self.done + n,
            Logits::Last => self.done + n == self.len,
        }
    }
}

/// The handle steps are submitted through; the thread stops when it is dropped.
pub struct Scheduler {
    tx: mpsc::SyncSender<Job>,
    range: String,
    stats: Arc<Stats>,
}

/// Counts of the work done, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Forward passes run.
    pub forwards: AtomicU64,
    /// Sequence chunks run, summed over forwards (the mean batch is `seqs / forwards`).
    pub seqs: AtomicU64,
}

impl Scheduler {
    pub fn start(model: Arc<ShardModel>) -> Self {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let range = model.range().to_string();
        let stats = Arc::new(Stats::default());
        let counts = stats.clone();
        std::thread::Builder::new()
            .name(format!("batch {range}"))
            .spawn(move || run(&model, rx, &counts))
            .expect("cannot start a batching thread");
        Self { tx, range, stats }
    }

    /// (forward passes, sequence chunks) run so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.stats.forwards.load(Ordering::Relaxed),
            self.stats.seqs.load(Ordering::Relaxed),
        )
    }

    /// Runs `input` at `position` of `cache` in the next forward that has room for it; returns
    /// the shard's output for the whole step (hidden states of every token, or on the last
    /// shard the logits `logits` asks for: the last position's, or every one from an index on,
    /// which is how speculative drafts are verified).
    pub fn step(
        &self,
        position: usize,
        input: StepInput,
        cache: Arc<Mutex<KvCache>>,
        logits: Logits,
    ) -> Result<Tensor> {
        let stopped =
            || EngineError::Invalid(format!("the batching thread of {} stopped", self.range));
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx
            .send(Job {
                position,
                input,
                logits,
                cache,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }
}

fn run(model: &ShardModel, rx: mpsc::Receiver<Job>, stats: &Stats) {
    let mut active: VecDeque<Active> = VecDeque::new();
    // Steps answered by the last forward: their requests' next steps are on their way.
    let mut returning = 0;
    loop {
        let mut arrived = 0;
        if active.is_empty() {
            match rx.recv() {
                Ok(job) => admit(model, job, &mut active),
                Err(_) => return,
            }
            arrived += 1;
        }
        // Give the streams just answered a moment to send their next token, so that they join
        // this forward rather than split into alternating small batches.
        let deadline = Instant::now() + GATHER;
        while arrived < returning {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(job) => admit(model, job, &mut active),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            arrived += 1;
        }
        while let Ok(job) = rx.try_recv() {
            admit(model, job, &mut active);
        }
        returning = 0;
        if active.is_empty() {
            continue;
        }
        let picked = pick(&active);
        let chunks: Vec<usize> = picked.iter().map(|&i| active[i].next_chunk()).collect();
        stats.forwards.fetch_add(1, Ordering::Relaxed);
        stats.seqs.fetch_add(picked.len() as u64, Ordering::Relaxed);
        if picked.len() > 1 {
            tracing::debug!(range = %model.range(), seqs = picked.len(), tokens = chunks.iter().sum::<usize>(), "batched forward");
        }
        let result = {
            let mut guards: Vec<_> = picked
                .iter()
                .map(|&i| {
                    active[i]
                        .job
                        .cache
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                })
                .collect();
            let inputs: Vec<Result<ShardInput<'_>>> = picked
                .iter()
                .zip(&chunks)
                .map(|(&i, &n)| {
                    let a = &active[i];
                    Ok(match &a.job.input {
                        StepInput::Tokens(t) => ShardInput::Tokens(&t[a.done..a.done + n]),
                        StepInput::Hidden(h) => ShardInput::Hidden(if a.done == 0 && n == a.len {
                            h.clone()
                        } else {
                            h.narrow(1, a.done, n)?
                        }),
                    })
                })
                .collect();
            let mut logits_of = picked
                .iter()
                .zip(&chunks)
                .map(|(&i, &n)| active[i].chunk_logits(n));
            let seqs = inputs
                .into_iter()
                .zip(guards.iter_mut())
                .map(|(input, cache)| {
                    Ok(SeqStep {
                        input: input?,
                        cache,
                        logits: logits_of.next().expect("one per sequence"),
                    })
                })
                .collect::<Result<Vec<_>>>();
            seqs.and_then(|seqs| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.forward_batch(seqs)))
                    .unwrap_or_else(|panic| {
                        Err(EngineError::Invalid(format!(
                            "forward pass on {} panicked: {}",
                            model.range(),
                            panic_message(&*panic)
                        )))
                    })
            })
        };
        match result {
            Ok(outs) => {
                for ((&i, n), out) in picked.iter().zip(chunks).zip(outs) {
                    let a = &mut active[i];
                    if !model.range().is_last() || a.keeps(n) {
                        a.outputs.push(out);
                    }
                    a.done += n;
                }
            }
            Err(e) => {
                tracing::warn!(range = %model.range(), steps = picked.len(), error = %e, "batched forward failed");
                // Every step of the failed batch gets the error (the error itself when alone).
                let msg = e.to_string();
                let mut e = Some(e);
                for &i in picked.iter().rev() {
                    let a = active.remove(i).expect("picked index");
                    let err = match (picked.len(), e.take()) {
                        (1, Some(e)) => e,
                        _ => EngineError::Invalid(msg.clone()),
                    };
                    let _ = a.job.reply.send(Err(err));
                }
                continue;
            }
        }
        // Answer the steps whose every token has run.
        let mut i = 0;
        while i < active.len() {
            if active[i].done == active[i].len {
                let a = active.remove(i).expect("index in range");
                let out = match a.outputs.len() {
                    1 => Ok(a.outputs.into_iter().next().expect("one")),
                    _ => Tensor::cat(&a.outputs, 1).map_err(EngineError::from),
                };
                let _ = a.job.reply.send(out);
                returning += 1;
            } else {
                i += 1;
            }
        }
    }
}

/// Checks a new step against its cache and the model; answers it at once if it cannot run.
fn admit(model: &ShardModel, job: Job, active: &mut VecDeque<Active>) {
    let checked = job.input.len().and_then(|len| {
        let at = job
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .position();
        // A step of a request that still has one in the queue would run on a moved cache.
        let queued = active.iter().any(|a| Arc::ptr_eq(&a.job.cache, &job.cache));
        if at != job.position || queued {
            return Err(EngineError::Invalid(format!(
                "a step for position {} on {}, where its cache is at position {at}{}",
                job.position,
                model.range(),
                if queued {
                    " with a step still queued"
                } else {
                    ""
                }
            )));
        }
        model.check_step(job.position, len)?;
        Ok(len)
    });
    match checked {
        Ok(len) => active.push_back(Active {
            job,
            len,
            done: 0,
            outputs: Vec::new(),
        }),
        Err(e) => {
            let _ = job.reply.send(Err(e));
        }
    }
}

/// The steps of the next forward: every decode step (one token left), then prompt chunks in
/// arrival order within [`PREFILL_BUDGET`], at least one.
fn pick(active: &VecDeque<Active>) -> Vec<usize> {
    let mut picked: Vec<usize> = (0..active.len())
        .filter(|&i| active[i].len - active[i].done == 1)
        .collect();
    let mut budget = PREFILL_BUDGET;
    for (i, a) in active.iter().enumerate() {
        let n = a.next_chunk();
        if n > 1 && (n <= budget || picked.is_empty()) {
            picked.push(i);
            budget = budget.saturating_sub(n);
        }
    }
    picked.sort_unstable();
    picked
}

/// The text a caught panic carries (`panic!` with a literal or a formatted message).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("unknown panic")
}
