//! Shared helpers for the loom models in `tests/`.
//!
//! Everything here (and every test file) exists only under `RUSTFLAGS="--cfg flowgate_loom"`, where
//! `flowgate_engine::sync` is loom's: a plain `cargo test --workspace` compiles this crate to nothing.
//! Run the models with `scripts/loom.sh`.
//!
//! Loom explores every interleaving (and every weak-memory outcome it models) of a small closure.
//! Two of its limits shape the models:
//! - it does not model the single total order of `SeqCst` *accesses* (they behave as
//!   acquire/release), only `SeqCst` *fences*. The engine's wake-up protocols use fences, so they
//!   are checked as written; the shutdown Dekker uses `SeqCst` loads and stores, so its model
//!   encodes each with an adjacent `SeqCst` fence (see `tests/shutdown.rs`).
//! - it cannot see inside non-loom code (rtrb, crossbeam queues, glommio): those hand-offs are
//!   modelled with facade atomics of the same ordering (release on publish, acquire on consume).
//! - its modification order is only partial: when an RMW (`swap`) on a location is unordered with
//!   another thread's later store to it, loom can let a load return a value every real execution
//!   has overwritten. The doorbell model therefore rings once (see `tests/doorbell.rs`).
//!
//! Each model prints how many executions loom explored (visible with `--nocapture`).
#![cfg(flowgate_loom)]

use flowgate_engine::config::{BackendConfig, EngineConfig, SaturationConfig, WorkloadConfig};
use flowgate_engine::gate::Gate;
use flowgate_engine::permit::Permit;
use flowgate_engine::registry::{hash_workload_id, RateWindow, WorkloadEntry, WorkloadTable};
use flowgate_engine::sync::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};

/// Check `f` under loom: every interleaving, with the preemption bound from
/// `LOOM_MAX_PREEMPTIONS`, or 3 when it is unset (small models, exhaustive up to that bound).
pub fn model<F>(f: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    let executions = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = executions.clone();
    let start = std::time::Instant::now();
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f()
    });
    println!(
        "{}: {} executions explored (preemption bound {:?}) in {:.2?}",
        std::thread::current().name().unwrap_or("model"),
        executions.load(std::sync::atomic::Ordering::Relaxed),
        builder.preemption_bound,
        start.elapsed()
    );
}

/// A waker that records that it was woken in a model-checked flag.
#[derive(Debug, Default)]
pub struct Flag(AtomicBool);

impl Flag {
    /// A fresh flag and a waker that sets it.
    pub fn waker() -> (Arc<Flag>, Waker) {
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        (flag, waker)
    }

    /// Whether the waker was woken.
    pub fn woken(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// A gate over backends with the given `max_inflight`s and `shards` shards, no ceilings.
pub fn gate(max_inflight: &[u32], shards: usize) -> Arc<Gate> {
    gate_with(max_inflight, shards, SaturationConfig::default())
}

/// [`gate`] with a saturation detector.
pub fn gate_with(max_inflight: &[u32], shards: usize, saturation: SaturationConfig) -> Arc<Gate> {
    gate_sized(max_inflight, shards, saturation, max_inflight.len())
}

/// [`gate_with`] whose backend table has `max_backends` slots (each slot costs every execution
/// its loom atomics: keep it small).
pub fn gate_sized(
    max_inflight: &[u32],
    shards: usize,
    saturation: SaturationConfig,
    max_backends: usize,
) -> Arc<Gate> {
    let config = EngineConfig {
        saturation,
        max_backends,
        backends: max_inflight
            .iter()
            .enumerate()
            .map(|(i, &m)| BackendConfig { address: format!("10.0.0.{i}:8000"), max_inflight: m })
            .collect(),
        ..EngineConfig::default()
    };
    Arc::new(Gate::new(&config, shards, flowgate_engine::clock::Clock::new()))
}

/// One workload's entry, as the owning shard's table creates it on a first arrival.
pub fn workload() -> Arc<WorkloadEntry> {
    let mut table = WorkloadTable::new(
        &WorkloadConfig::default(),
        RateWindow::new(std::time::Duration::from_secs(60)),
        Arc::new(AtomicUsize::new(0)),
    );
    table.arrive("chat", hash_workload_id("chat"), 3, 0)
}

/// What a shard does to dispatch a request of `workload`: it counts as active from admission, then
/// a gate slot wrapped in a permit. `None` (and nothing held) if no slot is free.
pub fn dispatch(gate: &Arc<Gate>, workload: &Arc<WorkloadEntry>) -> Option<Permit> {
    let place = gate.try_acquire(3).ok()?;
    workload.acquire_as_shard();
    Some(Permit::new(gate.clone(), place, workload.clone(), 0))
}

/// `n` threads, each dispatching one request of `workload` as a shard would; join them for the
/// permits they got (`None` where no slot was free).
pub fn spawn_dispatchers(
    gate: &Arc<Gate>,
    workload: &Arc<WorkloadEntry>,
    n: usize,
) -> Vec<loom::thread::JoinHandle<Option<Permit>>> {
    (0..n)
        .map(|_| {
            let (gate, workload) = (gate.clone(), workload.clone());
            loom::thread::spawn(move || dispatch(&gate, &workload))
        })
        .collect()
}

/// A shard with one request queued (head score `head`) as `worker.rs` runs it on its own thread:
/// dispatch if it can, publish, sleep unless the head became dispatchable, and again, until it
/// holds a permit. A lost wake-up parks it forever, which loom reports as a deadlock.
pub fn shard_dispatches_when_room(gate: &Arc<Gate>, workload: &Arc<WorkloadEntry>, head: f64) -> Permit {
    let bell = &gate.shard(0).doorbell;
    block_on(async {
        loop {
            // The pass's dispatch step, then its publication.
            if gate.may_dispatch(0, head) {
                if let Some(p) = dispatch(gate, workload) {
                    break p;
                }
            }
            if gate.publish(0, head, [Some(head), None], 0, 1, false) {
                gate.wake_best(Some(0));
            }
            // Nothing done: sleep unless the head became dispatchable (`has_work`).
            Sleep::new(bell, || gate.has_slot_for(3) && gate.may_dispatch(0, head)).await;
        }
    })
}

/// `free + Σ inflight == capacity`, `Σ inflight == held`: no slot lost or invented.
pub fn assert_conserved(gate: &Gate, held: u64) {
    let inflight = gate.inflight_total();
    assert_eq!(inflight, held, "backend slots in flight vs permits alive");
    if gate.capacity() > 0 {
        // (Uncapped backends have no slots to count.)
        assert_eq!(gate.free() + inflight, gate.capacity(), "free + Σ inflight == capacity");
    }
}

/// A shard's sleep as `worker.rs`'s `Sleep` future does it, minus the timer: the first poll
/// announces the sleep on the doorbell and looks for work once more (`has_work`); later polls keep
/// the newest waker and return once someone has rung. Drive it with [`block_on`]: if
/// a wake-up is lost, the thread parks forever and loom reports the deadlock.
pub struct Sleep<'a, F> {
    bell: &'a flowgate_engine::doorbell::Doorbell,
    has_work: F,
    prepared: bool,
}

impl<'a, F: FnMut() -> bool + Unpin> Sleep<'a, F> {
    /// Sleep on `bell` unless `has_work` finds something after the announcement.
    pub fn new(bell: &'a flowgate_engine::doorbell::Doorbell, has_work: F) -> Self {
        Self { bell, has_work, prepared: false }
    }
}

impl<F: FnMut() -> bool + Unpin> std::future::Future for Sleep<'_, F> {
    type Output = ();

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let this = self.get_mut();
        if !this.prepared {
            this.prepared = true;
            this.bell.prepare_sleep(cx.waker());
            if (this.has_work)() {
                this.bell.cancel_sleep();
                return std::task::Poll::Ready(());
            }
        } else if this.bell.rung(cx.waker()) {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }
}

/// Drive `fut` to completion on this loom thread: poll, and wait for a wake-up while it is pending.
/// A lost wake-up leaves the thread waiting forever, which loom reports as a deadlock.
///
/// This is `loom::future::block_on` (a loom `Notify` per call). A waker that unparks the thread, as
/// `Ticket::wait` does, cannot be used: loom 0.7 lets an `unpark` that arrives while the target
/// thread is blocked on a `Mutex` (the doorbell's and the slot's waker locks) count as that lock's
/// wake-up, so the token is lost and loom reports a deadlock no real execution has.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    loom::future::block_on(fut)
}
