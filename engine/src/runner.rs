//! A loaded shard serving many requests: one KV cache (and, on the last shard, one sampler) per
//! request, bounded in count and memory, freed on release or after sitting idle. Steps of all
//! requests run through the shard's [`Scheduler`], which batches those waiting together into one
//! forward.
//!
//! Admission: a new request reserves KV memory for its prompt and [`DECODE_ROOM`] tokens of
//! output; when that does not fit in the budget it waits (in a bounded queue, for at most
//! `admit_timeout`) for other requests to finish, and is refused as busy only when the queue is
//! full, the wait runs out or it could never fit.

use std::{
    collections::HashMap,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use candle_core::Tensor;
use exo_protocol::{SamplingParams, TokenOut};

use crate::{
    error::{EngineError, Result},
    kv_cache::KvCache,
    model::Logits,
    model::ShardModel,
    sampling::Sampler,
    scheduler::{Scheduler, StepInput},
};

/// Tokens of output a new request reserves KV memory for, beyond its prompt.
pub const DECODE_ROOM: usize = 512;

#[derive(Debug, Clone)]
pub struct RunnerLimits {
    /// Requests holding a KV cache at once.
    pub max_requests: usize,
    /// Total KV-cache memory across requests.
    pub max_kv_bytes: usize,
    /// A request untouched this long is dropped (its driver is presumably gone).
    pub idle_timeout: Duration,
    /// New requests that may wait for KV memory at once; more are refused as busy.
    pub max_waiting: usize,
    /// How long a new request waits for KV memory before it is refused as busy.
    pub admit_timeout: Duration,
}

impl Default for RunnerLimits {
    fn default() -> Self {
        Self {
            max_requests: 64,
            max_kv_bytes: 4 << 30,
            idle_timeout: Duration::from_secs(120),
            max_waiting: 32,
            admit_timeout: Duration::from_secs(30),
        }
    }
}

/// What one step of a shard produced.
pub enum StepOutput {
    /// Hidden states for the next shard.
    Hidden(Tensor),
    /// The sampled token (last shard).
    Token(TokenOut),
    /// The token sampled after each position from the step's `logits_from` on (last shard):
    /// what the target model says follows each draft token it is verifying.
    Tokens(Vec<TokenOut>),
}

struct RequestState {
    /// Locked by the scheduler while a forward runs over it.
    cache: Arc<Mutex<KvCache>>,
    sampler: Option<Sampler>,
    last_used: Instant,
    /// Position the next step must be for.
    position: usize,
    /// Tokens of KV memory reserved at admission.
    reserved: usize,
}

impl RequestState {
    /// Tokens counted against the KV budget.
    fn held(&self) -> usize {
        self.reserved.max(self.position)
    }
}

#[derive(Default)]
struct Table {
    requests: HashMap<String, Arc<Mutex<RequestState>>>,
    /// New requests waiting for KV memory.
    waiting: usize,
}

pub struct ShardRunner {
    model: Arc<ShardModel>,
    limits: RunnerLimits,
    table: Mutex<Table>,
    /// Signalled when a request frees its cache.
    room: Condvar,
    scheduler: Scheduler,
}

impl ShardRunner {
    pub fn new(model: Arc<ShardModel>, limits: RunnerLimits) -> Self {
        Self {
            scheduler: Scheduler::start(model.clone()),
            model,
            limits,
            table: Mutex::new(Table::default()),
            room: Condvar::new(),
        }
    }

    pub fn model(&self) -> &Arc<ShardModel> {
        &self.model
    }

    /// Runs one step of request `key`: `tokens` (first shard) or `hidden` states at `position`.
    /// Position 0 starts the request afresh (a new prompt or a replay after recovery); a later
    /// position continues the request's cache, rolling it back first when the position is
    /// behind it (the tokens after it were speculative drafts the target rejected). Blocks until
    /// the scheduler has run the step in a batch with whatever else was waiting.
    ///
    /// With `logits_from = Some(i)` the last shard samples a token after each position from
    /// the step's `i`-th token on ([`StepOutput::Tokens`]), otherwise after the last one.
    pub fn step(
        &self,
        key: &str,
        position: usize,
        tokens: &[u32],
        hidden: Option<Tensor>,
        sampling: &SamplingParams,
        logits_from: Option<usize>,
    ) -> Result<StepOutput> {
        let len = match &hidden {
            Some(h) => h.dims3()?.1,
            None => tokens.len(),
        };
        let state = self.state_for(key, position, len, sampling)?;
        let cache = {
            let mut s = state.lock().expect("request state poisoned");
            if position > 0 && position < s.position {
                // Only this request's steps use its cache, one at a time: no forward holds it.
                s.cache
                    .lock()
                    .expect("KV cache poisoned")
                    .truncate(position);
                tracing::trace!(request = %key, from = s.position, to = position, range = %self.model.range(), "rolled back KV cache");
                s.position = position;
            }
            if s.position != position {
                return Err(EngineError::Invalid(format!(
                    "request {key} is at position {} on {}, frame is for position {position}",
                    s.position,
                    self.model.range()
                )));
            }
            s.last_used = Instant::now();
            s.cache.clone()
        };
        let input = match hidden {
            Some(h) => StepInput::Hidden(h),
            None => StepInput::Tokens(tokens.to_vec()),
        };
        let logits = match logits_from {
            Some(from) if from < len => Logits::From(from),
            Some(from) => {
                return Err(EngineError::Invalid(format!(
                    "logits from token {from} of a step of {len} tokens"
                )))
            }
            None => Logits::Last,
        };
        let out = self.scheduler.step(position, input, cache, logits)?;
        let mut state = state.lock().expect("request state poisoned");
        state.position = position + len;
        state.last_used = Instant::now();
        let Some(sampler) = state.sampler.as_mut() else {
            return Ok(StepOutput::Hidden(out));
        };
        let Some(from) = logits_from else {
            sampler.observe(tokens);
            return Ok(StepOutput::Token(
                sampler.sample(&out, sampling.allowed.as_ref())?,
            ));
        };
        // Each row is sampled as a plain step at that position would be: after the tokens up
        // to and including its own.
        sampler.observe(&tokens[..(from + 1).min(tokens.len())]);
        let rows = out.dims3()?.1;
        let mut picked = Vec::with_capacity(rows);
        for r in 0..rows {
            if r > 0 {
                sampler.observe(tokens.get(from + r..from + r + 1).unwrap_or(&[]));
            }
            picked.push(sampler.sample(&out.narrow(1, r, 1)?, sampling.allowed.as_ref())?);
        }
        Ok(StepOutput::Tokens(picked))
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().expect("request table poisoned")
    }

    fn state_for(
        &self,
        key: &str,
        position: usize,
        len: usize,
        sampling: &SamplingParams,
    ) -> Result<Arc<Mutex<RequestState>>> {
        let mut table = self.table();
        if position > 0 {
            return table
                .requests
                .get(key)
                .cloned()
                .ok_or_else(|| EngineError::MissingCache {
                    key: key.to_string(),
                    range: self.model.range().to_string(),
                });
        }
        if table.requests.remove(key).is_some() {
            self.room.notify_all();
        }
        let range = self.model.range();
        let per_token = self.model.kv_bytes_per_token().max(1);
        let reserved = (len + DECODE_ROOM).min(self.model.spec().hp.context_length.max(len));
        let budget_tokens = self.limits.max_kv_bytes / per_token;
        if reserved > budget_tokens {
            return Err(EngineError::Busy(format!(
                "a request of {len} prompt tokens needs KV memory for {reserved} tokens \
                 ({} bytes) on {range}, more than its budget of {} bytes",
                reserved * per_token,
                self.limits.max_kv_bytes
            )));
        }
        let deadline = Instant::now() + self.limits.admit_timeout;
        let mut queued = false;
        loop {
            self.evict_idle(&mut table.requests);
            let held: usize = table
                .requests
                .values()
                .map(|s| s.lock().expect("request state poisoned").held())
                .sum();
            let fits = held + reserved <= budget_tokens;
            if fits && table.requests.len() < self.limits.max_requests {
                break;
            }
            let why = if fits {
                format!(
                    "{} requests already hold a KV cache on {range}",
                    table.requests.len()
                )
            } else {
                format!(
                    "KV cache memory limit of {} bytes reached on {range} ({} held, {} wanted)",
                    self.limits.max_kv_bytes,
                    held * per_token,
                    reserved * per_token
                )
            };
            if !queued {
                if table.waiting >= self.limits.max_waiting {
                    return Err(EngineError::Busy(format!(
                        "{}, and {} requests are already waiting",
                        why, table.waiting
                    )));
                }
                table.waiting += 1;
                queued = true;
                tracing::debug!(request = %key, %range, "waiting for KV memory");
            }
            let now = Instant::now();
            if now >= deadline {
                let msg = format!("{} for {:?}", why, self.limits.admit_timeout);
                table.waiting -= 1;
                return Err(EngineError::Busy(msg));
            }
            table = self
                .room
                .wait_timeout(table, deadline - now)
                .expect("request table poisoned")
                .0;
        }
        if queued {
            table.waiting -= 1;
        }
        let state = Arc::new(Mutex::new(RequestState {
            cache: Arc::new(Mutex::new(self.model.new_cache())),
            sampler: range.is_last().then(|| Sampler::new(sampling.clone())),
            last_used: Instant::now(),
            position: 0,
            reserved,
        }));
        table.requests.insert(key.to_string(), state.clone());
        Ok(state)
    }

    fn evict_idle(&self, requests: &mut HashMap<String, Arc<Mutex<RequestState>>>) {
        let timeout = self.limits.idle_timeout;
        let before = requests.len();
        requests.retain(|key, s| {
            let keep = s
                .try_lock()
                .map(|s| s.last_used.elapsed() < timeout)
                .unwrap_or(true);
            if !keep {
                tracing::info!(request = %key, range = %self.model.range(), "freed idle request's KV cache");
            }
            keep
        });
        if requests.len() < before {
            self.room.notify_all();
        }
    }

    /// Frees requests idle past the timeout; returns how many remain.
    pub fn sweep(&self) -> usize {
        let mut table = self.table();
        self.evict_idle(&mut table.requests);
        table.requests.len()
    }

    /// Frees a request's KV cache. Returns whether it existed.
    pub fn release(&self, key: &str) -> bool {
        let (freed, idle) = {
            let mut table = self.table();
            let freed = table.requests.remove(key).is_some();
            (freed, table.requests.is_empty())
        };
        if freed {
            self.room.notify_all();
            if idle {
                return_freed_memory();
            }
        }
        freed
    }

    /// (forward passes, sequence chunks) the shard's scheduler has run: how much batching there
    /// was.
    pub fn batch_stats(&self) -> (u64, u64) {
        self.scheduler.stats()
    }

    /// Requests currently holding a cache, and the bytes those caches use.
    pub fn usage(&self) -> (usize, usize) {
        let table = self.table();
        let tokens: usize = table
            .requests
            .values()
            .map(|s| s.lock().expect("request state poisoned").position)
            .sum();
        (
            table.requests.len(),
            tokens * self.model.kv_bytes_per_token(),
        )
    }
}

/// Hands the heap's free pages back to the OS once a shard holds no request. glibc keeps what
/// the scheduler thread's arena freed (KV caches, batch activations) otherwise, so a node's
/// resident memory would stay at its peak after a burst of requests.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap memory to the OS; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
