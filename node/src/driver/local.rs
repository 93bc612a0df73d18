//! A [`Stepper`] over shards in this process (the whole model is a ring of one).

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use anyhow::Result;
use exo_engine::LocalRing;
use exo_protocol::{SamplingParams, TokenOut};

use crate::generate::Stepper;

pub struct LocalStepper {
    ring: Arc<LocalRing>,
    key: String,
}

impl LocalStepper {
    pub fn new(ring: Arc<LocalRing>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Self {
            ring,
            key: format!("local-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
        }
    }

    /// Runs `f` on this request's ring on a blocking thread: forward passes are CPU-bound and
    /// stay off the async runtime.
    async fn off_runtime<T: Send + 'static>(
        &self,
        tokens: &[u32],
        sampling: &SamplingParams,
        f: impl FnOnce(&LocalRing, &str, &[u32], &SamplingParams) -> exo_engine::Result<T>
            + Send
            + 'static,
    ) -> Result<T> {
        let (ring, key, tokens, sampling) = (
            self.ring.clone(),
            self.key.clone(),
            tokens.to_vec(),
            sampling.clone(),
        );
        Ok(tokio::task::spawn_blocking(move || f(&ring, &key, &tokens, &sampling)).await??)
    }
}

impl Stepper for LocalStepper {
    async fn step(
        &mut self,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<TokenOut> {
        self.off_runtime(tokens, sampling, move |ring, key, tokens, sampling| {
            ring.step(key, position, tokens, sampling)
        })
        .await
    }

    async fn verify(
        &mut self,
        position: usize,
        tokens: &[u32],
        sampling: &SamplingParams,
    ) -> Result<Vec<TokenOut>> {
        self.off_runtime(tokens, sampling, move |ring, key, tokens, sampling| {
            ring.verify(key, position, tokens, sampling, 0)
        })
        .await
    }

    fn can_verify(&self) -> bool {
        true
    }

    async fn release(&mut self) {
        self.ring.release(&self.key);
    }
}
