//! The bound on generations: `max_concurrent` run, `max_queued` wait up to `queue_timeout`, the
//! rest get 429 at once. A slot is held until the response is fully sent or the client leaves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

pub struct Limiter {
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    waiting: AtomicUsize,
    max_queued: usize,
    timeout: Duration,
}

/// A running generation's slot; dropping it frees the slot.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Limiter {
    pub fn new(max_concurrent: usize, max_queued: usize, timeout: Duration) -> Self {
        let max_concurrent = max_concurrent.clamp(1, Semaphore::MAX_PERMITS);
        Limiter {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            max_concurrent,
            waiting: AtomicUsize::new(0),
            max_queued,
            timeout,
        }
    }

    pub fn in_use(&self) -> usize {
        self.max_concurrent - self.slots.available_permits()
    }

    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub async fn acquire(&self) -> Result<Slot, ApiError> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot { _permit: permit });
        }
        let busy = || {
            ApiError::too_many_requests(format!(
                "This server is busy: {} generations are running and the queue is full. \
                 Retry shortly.",
                self.max_concurrent
            ))
        };
        if self.timeout.is_zero() {
            return Err(busy());
        }
        let ahead = self.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiting);
        if ahead >= self.max_queued {
            return Err(busy());
        }
        // The semaphore is fair: waiters are served in arrival order.
        match tokio::time::timeout(self.timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot { _permit: permit }),
            _ => Err(busy()),
        }
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
