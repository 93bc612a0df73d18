//! A small fork-join pool for the kernels: the calling thread takes part, and workers claim
//! chunks from a shared counter.
//!
//! Unlike a barrier, finishing does not wait for every worker to check in: the caller waits only
//! for chunks a worker actually claimed. On a machine shared with other work (two cores here), a
//! worker that the OS has not scheduled yet simply takes no chunk, instead of stalling the whole
//! matmul for a time slice. Idle workers spin briefly (decoding issues a matmul every few tens
//! of microseconds), then yield, then sleep.

use std::{
    cell::Cell,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Condvar, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

/// How long an idle worker keeps looking for work before it sleeps (`EXO_QUANT_SPIN_US`,
/// default 50 µs: decoding issues a matmul every few tens of microseconds, and a longer spin
/// takes the core from candle's own threads between matmuls).
fn spin_time() -> Duration {
    static SPIN: OnceLock<Duration> = OnceLock::new();
    *SPIN.get_or_init(|| {
        let us = std::env::var("EXO_QUANT_SPIN_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(50);
        Duration::from_micros(us)
    })
}

#[derive(Clone, Copy)]
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    n: usize,
    next: *const AtomicUsize,
    done: *const AtomicUsize,
}

// SAFETY: the pointers stay valid while the job is published (see `Pool::run`).
unsafe impl Send for Job {}

struct Slot {
    job: Option<Job>,
    /// Workers inside the current job.
    active: usize,
    panicked: bool,
}

struct Shared {
    slot: Mutex<Slot>,
    wake: Condvar,
    gen: AtomicU64,
    sleepers: AtomicUsize,
}

pub(crate) struct Pool {
    shared: &'static Shared,
    workers: usize,
    /// One caller at a time; others run their work inline.
    busy: Mutex<()>,
}

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    fn new(threads: usize) -> Self {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            slot: Mutex::new(Slot {
                job: None,
                active: 0,
                panicked: false,
            }),
            wake: Condvar::new(),
            gen: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
        }));
        let workers = threads.saturating_sub(1);
        for i in 0..workers {
            std::thread::Builder::new()
                .name(format!("exo-quant-{i}"))
                .spawn(move || worker(shared))
                .expect("spawn a kernel worker");
        }
        Self {
            shared,
            workers,
            busy: Mutex::new(()),
        }
    }

    /// Threads that run kernels, the caller included.
    pub(crate) fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Runs `f(i)` for every `i` in `0..n`, on the caller and the workers.
    pub(crate) fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let inline = n <= 1 || self.workers == 0 || IN_POOL.with(Cell::get);
        let guard = if inline {
            None
        } else {
            self.busy.try_lock().ok()
        };
        let Some(_guard) = guard else {
            (0..n).for_each(f);
            return;
        };
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        // SAFETY: only the lifetime is erased; the job is withdrawn, and every worker that saw
        // it has left, before this function returns.
        let f_static: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let sh = self.shared;
        sh.slot.lock().unwrap().job = Some(Job {
            f: f_static,
            n,
            next: &next,
            done: &done,
        });
        sh.gen.fetch_add(1, Ordering::Release);
        if sh.sleepers.load(Ordering::Acquire) > 0 {
            let _lock = sh.slot.lock().unwrap();
            sh.wake.notify_all();
        }
        IN_POOL.with(|c| c.set(true));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i);
            done.fetch_add(1, Ordering::Release);
        }));
        IN_POOL.with(|c| c.set(false));
        if result.is_err() {
            // Let no one start more chunks, then wait as below.
            next.store(n, Ordering::Relaxed);
        }
        // Chunks claimed by workers must finish (a claimed chunk is not given back).
        let mut spins = 0u32;
        while result.is_ok() && done.load(Ordering::Acquire) < n {
            if spins % 64 == 63 && sh.slot.lock().unwrap().panicked {
                break;
            }
            backoff(&mut spins);
        }
        // Withdraw the job and wait until the workers that took it have left.
        let panicked = loop {
            let mut slot = sh.slot.lock().unwrap();
            slot.job = None;
            if slot.active == 0 {
                break std::mem::take(&mut slot.panicked);
            }
            drop(slot);
            backoff(&mut spins);
        };
        if let Err(p) = result {
            std::panic::resume_unwind(p);
        }
        if panicked {
            panic!("a quantized matmul kernel panicked on a worker thread");
        }
    }
}

fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn worker(sh: &'static Shared) {
    IN_POOL.with(|c| c.set(true));
    let mut seen = sh.gen.load(Ordering::Acquire);
    let spin = spin_time();
    loop {
        // Wait for a new job: spin, then yield, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let g = sh.gen.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if start.elapsed() < spin {
                backoff(&mut spins);
                continue;
            }
            let slot = sh.slot.lock().unwrap();
            sh.sleepers.fetch_add(1, Ordering::AcqRel);
            if sh.gen.load(Ordering::Acquire) == seen {
                drop(sh.wake.wait(slot).unwrap());
            } else {
                drop(slot);
            }
            sh.sleepers.fetch_sub(1, Ordering::AcqRel);
        }
        let job = {
            let mut slot = sh.slot.lock().unwrap();
            match slot.job {
                Some(j) => {
                    slot.active += 1;
                    j
                }
                None => continue,
            }
        };
        // SAFETY: the caller keeps the job's data alive while `active` counts us.
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| unsafe {
            let (f, next, done) = (&*job.f, &*job.next, &*job.done);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= job.n {
                    break;
                }
                f(i);
                done.fetch_add(1, Ordering::Release);
            }
        }))
        .is_ok();
        let mut slot = sh.slot.lock().unwrap();
        slot.active -= 1;
        if !ok {
            slot.panicked = true;
        }
    }
}

/// The kernels' pool: as many threads as candle uses (`RAYON_NUM_THREADS`, else the physical
/// cores), the caller included.
pub(crate) fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(candle_core::utils::get_num_threads().max(1)))
}
