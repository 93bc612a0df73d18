//! A loaded shard serving many requests: one KV cache (and, on the last shard, one sampler) per
//! request, bounded in count and memory, freed on release or after sitting idle.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use candle_core::Tensor;
use exo_protocol::{SamplingParams, TokenOut};

use crate::{
    error::{EngineError, Result},
    kv_cache::KvCache,
    model::{Logits, ShardInput, ShardModel},
    sampling::Sampler,
};

#[derive(Debug, Clone)]
pub struct RunnerLimits {
    /// Requests holding a KV cache at once.
    pub max_requests: usize,
    /// Total KV-cache memory across requests.
    pub max_kv_bytes: usize,
    /// A request untouched this long is dropped (its driver is presumably gone).
    pub idle_timeout: Duration,
}

impl Default for RunnerLimits {
    fn default() -> Self {
        Self {
            max_requests: 64,
            max_kv_bytes: 4 << 30,
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// What one step of a shard produced.
pub enum StepOutput {
    /// Hidden states for the next shard.
    Hidden(Tensor),
    /// The sampled token (last shard).
    Token(TokenOut),
}

struct RequestState {
    cache: KvCache,
    sampler: Option<Sampler>,
    last_used: Instant,
}

pub struct ShardRunner {
    model: Arc<ShardModel>,
    limits: RunnerLimits,
    requests: Mutex<HashMap<String, Arc<Mutex<RequestState>>>>,
}

impl ShardRunner {
    pub fn new(model: Arc<ShardModel>, limits: RunnerLimits) -> Self {
        Self {
            model,
            limits,
            requests: Mutex::new(HashMap::new()),
        }
    }

    pub fn model(&self) -> &Arc<ShardModel> {
        &self.model
    }

    /// Runs one step of request `key`. Position 0 starts the request afresh (a new prompt or a
    /// replay after recovery); later positions must continue the request's cache exactly.
    pub fn step(
        &self,
        key: &str,
        position: usize,
        tokens: &[u32],
        hidden: Option<Tensor>,
        sampling: &SamplingParams,
    ) -> Result<StepOutput> {
        let state = self.state_for(key, position, sampling)?;
        let mut state = state.lock().expect("request state poisoned");
        if state.cache.position() != position {
            return Err(EngineError::Invalid(format!(
                "request {key} is at position {} on {}, frame is for position {position}",
                state.cache.position(),
                self.model.range()
            )));
        }
        state.last_used = Instant::now();
        let input = match hidden {
            Some(h) => ShardInput::Hidden(h),
            None => ShardInput::Tokens(tokens),
        };
        let out = self.model.forward(input, &mut state.cache, Logits::Last)?;
        match state.sampler.as_mut() {
            Some(sampler) => {
                sampler.observe(tokens);
                Ok(StepOutput::Token(
                    sampler.sample(&out, sampling.allowed.as_ref())?,
                ))
            }
            None => Ok(StepOutput::Hidden(out)),
        }
    }

    fn state_for(
        &self,
        key: &str,
        position: usize,
        sampling: &SamplingParams,
    ) -> Result<Arc<Mutex<RequestState>>> {
        let mut requests = self.requests.lock().expect("requests poisoned");
        if position > 0 {
            return requests
                .get(key)
                .cloned()
                .ok_or_else(|| EngineError::MissingCache {
                    key: key.to_string(),
                    range: self.model.range().to_string(),
                });
        }
        requests.remove(key);
        self.evict_idle(&mut requests);
        if requests.len() >= self.limits.max_requests {
            return Err(EngineError::Busy(format!(
                "{} requests already hold a KV cache on {}",
                requests.len(),
                self.model.range()
            )));
        }
        let used: usize = requests
            .values()
            .filter_map(|s| s.try_lock().ok().map(|s| s.cache.bytes()))
            .sum();
        if used >= self.limits.max_kv_bytes {
            return Err(EngineError::Busy(format!(
                "KV cache memory limit of {} bytes reached on {}",
                self.limits.max_kv_bytes,
                self.model.range()
            )));
        }
        let state = Arc::new(Mutex::new(RequestState {
            cache: self.model.new_cache(),
            sampler: self
                .model
                .range()
                .is_last()
                .then(|| Sampler::new(sampling.clone())),
            last_used: Instant::now(),
        }));
        requests.insert(key.to_string(), state.clone());
        Ok(state)
    }

    fn evict_idle(&self, requests: &mut HashMap<String, Arc<Mutex<RequestState>>>) {
        let timeout = self.limits.idle_timeout;
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
    }

    /// Frees requests idle past the timeout; returns how many remain.
    pub fn sweep(&self) -> usize {
        let mut requests = self.requests.lock().expect("requests poisoned");
        self.evict_idle(&mut requests);
        requests.len()
    }

    /// Frees a request's KV cache. Returns whether it existed.
    pub fn release(&self, key: &str) -> bool {
        self.requests
            .lock()
            .expect("requests poisoned")
            .remove(key)
            .is_some()
    }

    /// Requests currently holding a cache, and the bytes those caches use.
    pub fn usage(&self) -> (usize, usize) {
        let requests = self.requests.lock().expect("requests poisoned");
        let bytes = requests
            .values()
            .filter_map(|s| s.try_lock().ok().map(|s| s.cache.bytes()))
            .sum();
        (requests.len(), bytes)
    }
}
