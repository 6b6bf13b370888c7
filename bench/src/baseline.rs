//! What flowgate replaces, behind the same interface as the engine, so scenarios run identically.
//!
//! Every implementation is a [`Queue`]: [`Queue::submit`] returns a [`Ticket`] (a future, or
//! [`Ticket::wait`] to block) resolving to a [`Decision`]; a dispatched decision carries a
//! [`Permit`] whose drop frees the model-server slot. Four implementations:
//!
//! - [`EngineQueue`]: `flowgate_engine::Engine` with 1 or N shards.
//! - [`SeedQueue`]: the seed's design, modelled faithfully: one `Mutex`-guarded binary max-heap
//!   whose comparator, **on every comparison**, reads the clock (`Instant::now()`, once per side as
//!   the seed's `Less` calls `time.Now()` twice) and looks the workload's rate up in a
//!   `Mutex`-guarded registry (`HashMap<String, WorkloadMetrics>` with a sliding-window count),
//!   computing `w_wait·min(wait/cap,1) + w_crit·crit/5 − w_rate·min(rate/rate_cap,1)`; plus the
//!   seed's registry updates per request (`IncrementActive` at arrival, `DecrementActive` at
//!   completion). The registry lock is taken inside the heap lock, as in the seed.
//! - [`FifoQueue`]: upstream's default: one global `Mutex<VecDeque>`.
//!
//! Both locked baselines dispatch from one dispatcher thread, as upstream's per-shard worker loop
//! does: callers enqueue under the lock and block on their ticket; the dispatcher sleeps on a
//! condvar until a head and a free slot exist, pops every head it can under the lock and completes
//! the tickets outside it. That is *kinder* to the baselines than upstream's worker, which wakes on
//! a 1 ms ticker and dispatches at most one item per cycle (about 1000 dispatches/s); flowgate is
//! compared with the stronger version.
//! TTL is checked lazily when an item reaches the head (upstream sweeps every second); a full queue
//! refuses the arrival (upstream has no displacement).

use flowgate_engine::config::{EngineConfig, ScoringConfig};
use flowgate_engine::{Engine, Outcome, Request, SubmitError, WorkloadContext};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A request as every implementation receives it.
#[derive(Clone, Debug)]
pub struct Req {
    /// Workload id.
    pub workload: Arc<str>,
    /// Criticality 1..=5.
    pub criticality: u8,
    /// Per-request TTL (`None` = the queue's default).
    pub ttl: Option<Duration>,
}

impl Req {
    /// A request of `workload` at `criticality` with the default TTL.
    pub fn new(workload: &Arc<str>, criticality: u8) -> Self {
        Req { workload: workload.clone(), criticality, ttl: None }
    }
}

/// A held model-server slot; dropping it frees the slot.
#[derive(Debug)]
pub enum Permit {
    /// Granted by the engine.
    Engine(flowgate_engine::Permit),
    /// Granted by a locked baseline.
    Locked(LockedPermit),
}

/// The one outcome of a submitted request.
#[derive(Debug)]
pub struct Decision {
    /// What happened.
    pub outcome: Outcome,
    /// `Some` exactly when dispatched.
    pub permit: Option<Permit>,
    /// Submission to decision, ns (as the implementation measured it).
    pub queued_ns: u64,
}

/// Why a submit did not produce a ticket (nothing was queued).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The submission ring is full; try again.
    Backpressure,
    /// The queue is shutting down.
    ShuttingDown,
}

/// A claim on one request's decision.
#[derive(Debug)]
pub enum Ticket {
    /// The engine's ticket.
    Engine(flowgate_engine::Ticket),
    /// A locked baseline's ticket.
    Locked(LockedTicket),
}

impl Ticket {
    /// Block until the decision.
    pub fn wait(self) -> Decision {
        match self {
            Ticket::Engine(t) => from_engine(t.wait()),
            Ticket::Locked(t) => t.wait(),
        }
    }
}

impl Future for Ticket {
    type Output = Decision;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Decision> {
        match self.get_mut() {
            Ticket::Engine(t) => Pin::new(t).poll(cx).map(from_engine),
            Ticket::Locked(t) => Pin::new(t).poll(cx),
        }
    }
}

fn from_engine(d: flowgate_engine::runtime::Decision) -> Decision {
    Decision { outcome: d.outcome, permit: d.permit.map(Permit::Engine), queued_ns: d.queued_ns }
}

/// The workload interface every implementation offers.
pub trait Queue: Send + Sync {
    /// Short name for tables and files.
    fn name(&self) -> String;
    /// Submit `req`; never blocks.
    fn submit(&self, req: &Req) -> Result<Ticket, Refused>;
    /// Requests queued (not in flight) now.
    fn queued(&self) -> u64;
    /// Answer everything still queued and stop.
    fn shutdown(&self);
}

/// Which implementation to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// flowgate with this many shards.
    Flowgate(usize),
    /// The seed's design.
    Seed,
    /// A global `Mutex<VecDeque>`.
    Fifo,
}

impl Kind {
    /// Short name for tables and files.
    pub fn label(self) -> String {
        match self {
            Kind::Flowgate(n) => format!("flowgate-{n}sh"),
            Kind::Seed => "seed-heap".into(),
            Kind::Fifo => "fifo".into(),
        }
    }
}

/// The engine's `spin_before_park` for every flowgate built in this process, when set (the
/// bench's `--spin-before-park-us`; unset = the engine's default).
static SPIN_BEFORE_PARK: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();

/// Set the `spin_before_park` every flowgate engine built from now on uses; once per process.
/// Returns `false` if it was set already.
pub fn set_spin_before_park(spin: Duration) -> bool {
    SPIN_BEFORE_PARK.set(spin).is_ok()
}

/// The `spin_before_park` set by [`set_spin_before_park`], if any.
pub fn spin_before_park() -> Option<Duration> {
    SPIN_BEFORE_PARK.get().copied()
}

/// What every implementation is configured with.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Model-server slots (dispatch capacity).
    pub slots: u32,
    /// Most queued requests; 0 = unlimited.
    pub max_requests: u64,
    /// Default TTL.
    pub ttl: Duration,
    /// The scoring rule (the seed baseline uses the same weights and caps).
    pub scoring: ScoringConfig,
}

impl Default for Spec {
    fn default() -> Self {
        Spec { slots: 8, max_requests: 0, ttl: Duration::from_secs(30), scoring: ScoringConfig::default() }
    }
}

impl Spec {
    /// The engine configuration for `shards` shards.
    pub fn engine_config(&self, shards: usize) -> EngineConfig {
        let mut c = EngineConfig { shards, ..Default::default() };
        c.backends[0].max_inflight = self.slots;
        c.queue.max_requests = self.max_requests;
        c.queue.max_bytes = 0;
        c.queue.ttl = self.ttl;
        c.scoring = self.scoring.clone();
        if let Some(spin) = spin_before_park() {
            c.spin_before_park = spin;
        }
        c
    }

    /// Build `kind`.
    pub fn build(&self, kind: Kind) -> Arc<dyn Queue> {
        match kind {
            Kind::Flowgate(n) => Arc::new(EngineQueue::start(self.engine_config(n)).expect("engine starts")),
            Kind::Seed => SeedQueue::new(self),
            Kind::Fifo => FifoQueue::new(self),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// flowgate

/// `flowgate_engine::Engine` as a [`Queue`].
#[derive(Debug)]
pub struct EngineQueue {
    engine: Engine,
}

impl EngineQueue {
    /// Start an engine.
    pub fn start(config: EngineConfig) -> Result<Self, flowgate_engine::runtime::StartError> {
        Ok(EngineQueue { engine: Engine::start(config)? })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Queue for EngineQueue {
    fn name(&self) -> String {
        Kind::Flowgate(self.engine.shards()).label()
    }

    fn submit(&self, req: &Req) -> Result<Ticket, Refused> {
        let context =
            WorkloadContext { workload_id: req.workload.clone(), criticality: req.criticality, ttl: req.ttl };
        match self.engine.submit(Request { context, bytes: 0 }) {
            Ok(t) => Ok(Ticket::Engine(t)),
            Err(SubmitError::Backpressure(_)) => Err(Refused::Backpressure),
            Err(SubmitError::ShuttingDown(_)) => Err(Refused::ShuttingDown),
        }
    }

    fn queued(&self) -> u64 {
        self.engine.stats().queued
    }

    fn shutdown(&self) {
        self.engine.shutdown();
    }
}

// ---------------------------------------------------------------------------------------------
// The locked baselines' common machinery: tickets, permits, the dispatcher.

/// Completion slot shared by a [`LockedTicket`] and its queued item.
#[derive(Debug, Default)]
pub struct LockedSlot {
    inner: Mutex<SlotInner>,
}

#[derive(Debug, Default)]
struct SlotInner {
    decision: Option<Decision>,
    waker: Option<Waker>,
    /// The decision was delivered (taken or not).
    done: bool,
    /// The ticket was dropped before its decision.
    cancelled: bool,
}

impl LockedSlot {
    /// Deliver `d`; hands it back if the ticket is gone.
    fn complete(&self, d: Decision) -> Result<(), Decision> {
        let waker = {
            let mut s = lock(&self.inner);
            if s.cancelled {
                return Err(d);
            }
            s.decision = Some(d);
            s.done = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

/// A locked baseline's ticket. Dropping it while queued marks the item cancelled; it leaves when
/// it reaches the head (a zombie until then, like upstream's before its sweep).
#[derive(Debug)]
pub struct LockedTicket {
    slot: Option<Arc<LockedSlot>>,
}

impl LockedTicket {
    fn wait(mut self) -> Decision {
        let slot = self.slot.take().expect("ticket already resolved");
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        loop {
            {
                let mut s = lock(&slot.inner);
                if let Some(d) = s.decision.take() {
                    return d;
                }
                s.waker = Some(waker.clone());
            }
            std::thread::park();
        }
    }
}

impl Future for LockedTicket {
    type Output = Decision;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Decision> {
        let slot = self.slot.as_ref().expect("ticket polled after it resolved");
        let mut s = lock(&slot.inner);
        if let Some(d) = s.decision.take() {
            drop(s);
            self.slot = None;
            return Poll::Ready(d);
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for LockedTicket {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut s = lock(&slot.inner);
            s.cancelled = true;
            // A decision delivered but never taken: its permit drops here, outside every queue lock.
            let d = s.decision.take();
            drop(s);
            drop(d);
        }
    }
}

struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// A locked baseline's slot; dropping it frees the slot (and wakes the dispatcher if work waits).
pub struct LockedPermit {
    queue: Arc<dyn Releaser>,
    workload: Arc<str>,
}

impl std::fmt::Debug for LockedPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedPermit").field("workload", &self.workload).finish()
    }
}

impl Drop for LockedPermit {
    fn drop(&mut self) {
        self.queue.release(&self.workload);
    }
}

trait Releaser: Send + Sync {
    fn release(&self, workload: &Arc<str>);
}

/// A queued request in a locked baseline.
#[derive(Debug)]
pub struct Waiting {
    /// Its workload.
    pub workload: Arc<str>,
    /// Criticality 1..=5.
    pub criticality: u8,
    /// When it was submitted.
    pub enqueued: Instant,
    /// When its TTL runs out.
    pub deadline: Instant,
    slot: Arc<LockedSlot>,
}

/// The ordering policy inside a locked baseline.
pub trait Discipline: Send + 'static {
    /// Queue an item (under the queue lock).
    fn push(&mut self, item: Waiting);
    /// Take the next item to dispatch (under the queue lock).
    fn pop(&mut self) -> Option<Waiting>;
    /// Items queued.
    fn len(&self) -> usize;
    /// Whether nothing is queued.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Seed registry hook: a request arrived (called before the queue lock is taken).
    fn arrive(_registry: &Self::Registry, _workload: &str) {}
    /// Seed registry hook: a request finished (called outside the queue lock).
    fn finish(_registry: &Self::Registry, _workload: &str) {}
    /// Shared state the hooks need (the seed registry; `()` for FIFO).
    type Registry: Send + Sync + 'static;
}

struct LockedState<D> {
    queue: D,
    /// Free model-server slots.
    free: u32,
    shut: bool,
    /// The dispatcher waits on the condvar (so a notify is needed to wake it).
    dispatcher_waiting: bool,
}

/// A `Mutex`-guarded queue with a dispatcher thread; [`SeedQueue`] and [`FifoQueue`] are instances.
pub struct Locked<D: Discipline> {
    state: Mutex<LockedState<D>>,
    /// Wakes the dispatcher: work arrived while a slot is free, or a slot freed while work waits.
    work: Condvar,
    registry: Arc<D::Registry>,
    max_requests: u64,
    ttl: Duration,
    name: &'static str,
    /// Weak self, handed to permits.
    me: std::sync::Weak<Locked<D>>,
    dispatcher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Something to complete once the queue lock is released.
type Completion = (Arc<LockedSlot>, Decision);

impl<D: Discipline> Locked<D> {
    fn build(queue: D, registry: Arc<D::Registry>, spec: &Spec, name: &'static str) -> Arc<Self> {
        let q = Arc::new_cyclic(|me| Locked {
            state: Mutex::new(LockedState {
                queue,
                free: spec.slots,
                shut: false,
                dispatcher_waiting: false,
            }),
            work: Condvar::new(),
            registry,
            max_requests: spec.max_requests,
            ttl: spec.ttl,
            name,
            me: me.clone(),
            dispatcher: Mutex::new(None),
        });
        let worker = q.clone();
        let handle = std::thread::Builder::new()
            .name(format!("{name}-dispatcher"))
            .spawn(move || worker.dispatcher_loop())
            .expect("dispatcher thread starts");
        *lock(&q.dispatcher) = Some(handle);
        q
    }

    /// The seed registry (or `()`).
    pub fn registry(&self) -> &Arc<D::Registry> {
        &self.registry
    }

    /// The dispatcher: upstream's per-shard worker loop, minus its 1 ms ticker and its one item
    /// per cycle: it sleeps until there is a head and a free slot, then dispatches every head it
    /// can and completes the tickets outside the lock.
    fn dispatcher_loop(self: Arc<Self>) {
        let mut out = Vec::new();
        loop {
            {
                let mut s = lock(&self.state);
                while !s.shut && (s.free == 0 || s.queue.is_empty()) {
                    s.dispatcher_waiting = true;
                    s = self.work.wait(s).unwrap_or_else(|p| p.into_inner());
                    s.dispatcher_waiting = false;
                }
                if s.shut {
                    return;
                }
                self.dispatch(&mut s, &mut out);
            }
            Self::deliver(&mut out);
        }
    }

    /// Pop heads while a slot is free (expired and cancelled heads leave without one).
    fn dispatch(&self, s: &mut LockedState<D>, out: &mut Vec<Completion>) {
        while s.free > 0 {
            let Some(item) = s.queue.pop() else { return };
            let now = Instant::now();
            let queued_ns = now.saturating_duration_since(item.enqueued).as_nanos() as u64;
            if item.deadline <= now {
                out.push((item.slot, Decision { outcome: Outcome::EvictedTtl, permit: None, queued_ns }));
                D::finish(&self.registry, &item.workload);
                continue;
            }
            if lock(&item.slot.inner).cancelled {
                D::finish(&self.registry, &item.workload);
                continue;
            }
            s.free -= 1;
            let permit =
                LockedPermit { queue: self.me.upgrade().expect("queue alive"), workload: item.workload };
            out.push((
                item.slot,
                Decision { outcome: Outcome::Dispatched, permit: Some(Permit::Locked(permit)), queued_ns },
            ));
        }
    }

    fn deliver(out: &mut Vec<Completion>) {
        for (slot, d) in out.drain(..) {
            // A cancelled ticket hands the decision back: dropping it (and its permit) here, with
            // no lock held, frees the slot again.
            drop(slot.complete(d));
        }
    }

    fn submit_inner(&self, req: &Req) -> Result<Ticket, Refused> {
        let now = Instant::now();
        let ttl = req.ttl.map_or(self.ttl, |t| t.min(self.ttl));
        let slot = Arc::new(LockedSlot::default());
        // The seed's HandleRequestHeaders: IncrementActive before EnqueueAndWait.
        D::arrive(&self.registry, &req.workload);
        let wake = {
            let mut s = lock(&self.state);
            if s.shut {
                drop(s);
                D::finish(&self.registry, &req.workload);
                return Err(Refused::ShuttingDown);
            }
            if self.max_requests != 0 && s.queue.len() as u64 >= self.max_requests {
                drop(s);
                D::finish(&self.registry, &req.workload);
                let d = Decision { outcome: Outcome::RejectedCapacity, permit: None, queued_ns: 0 };
                let _ = slot.complete(d);
                return Ok(Ticket::Locked(LockedTicket { slot: Some(slot) }));
            }
            s.queue.push(Waiting {
                workload: req.workload.clone(),
                criticality: req.criticality,
                enqueued: now,
                deadline: now + ttl,
                slot: slot.clone(),
            });
            s.free > 0 && s.dispatcher_waiting
        };
        if wake {
            self.work.notify_one();
        }
        Ok(Ticket::Locked(LockedTicket { slot: Some(slot) }))
    }
}

impl<D: Discipline> Releaser for Locked<D> {
    fn release(&self, workload: &Arc<str>) {
        // The seed's deferred DecrementActive at request completion.
        D::finish(&self.registry, workload);
        let wake = {
            let mut s = lock(&self.state);
            s.free += 1;
            !s.queue.is_empty() && s.dispatcher_waiting
        };
        if wake {
            self.work.notify_one();
        }
    }
}

impl<D: Discipline> Queue for Locked<D> {
    fn name(&self) -> String {
        self.name.to_string()
    }

    fn submit(&self, req: &Req) -> Result<Ticket, Refused> {
        self.submit_inner(req)
    }

    fn queued(&self) -> u64 {
        lock(&self.state).queue.len() as u64
    }

    fn shutdown(&self) {
        let mut out = Vec::new();
        {
            let mut s = lock(&self.state);
            s.shut = true;
            while let Some(item) = s.queue.pop() {
                let queued_ns = item.enqueued.elapsed().as_nanos() as u64;
                D::finish(&self.registry, &item.workload);
                out.push((
                    item.slot,
                    Decision { outcome: Outcome::EvictedShutdown, permit: None, queued_ns },
                ));
            }
        }
        self.work.notify_all();
        let handle = lock(&self.dispatcher).take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                h.join().expect("dispatcher thread");
            }
        }
        Self::deliver(&mut out);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---------------------------------------------------------------------------------------------
// (b) FIFO

/// Upstream's default list queue: one global `Mutex<VecDeque>`.
#[derive(Debug, Default)]
pub struct Fifo(VecDeque<Waiting>);

impl Discipline for Fifo {
    type Registry = ();
    fn push(&mut self, item: Waiting) {
        self.0.push_back(item);
    }
    fn pop(&mut self) -> Option<Waiting> {
        self.0.pop_front()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The FIFO baseline.
pub type FifoQueue = Locked<Fifo>;

impl FifoQueue {
    /// A FIFO baseline for `spec`.
    pub fn new(spec: &Spec) -> Arc<Self> {
        Locked::build(Fifo::default(), Arc::new(()), spec, "fifo")
    }
}

// ---------------------------------------------------------------------------------------------
// (a) The seed's design

/// The seed's `WorkloadMetrics`.
#[derive(Clone, Debug)]
pub struct WorkloadMetrics {
    /// Requests ever seen.
    pub total_requests: i64,
    /// In queue or being processed.
    pub active_requests: i64,
    /// Requests in the current window.
    pub sliding_window_requests: i64,
    /// Start of the current window.
    pub window_start: Instant,
    /// Last arrival.
    pub last_request: Instant,
}

/// The seed's `WorkloadRegistry`, behind one `Mutex` as the brief models it.
#[derive(Debug)]
pub struct SeedRegistry {
    workloads: Mutex<HashMap<String, WorkloadMetrics>>,
    window: Duration,
}

impl SeedRegistry {
    /// An empty registry with a `window` rate window.
    pub fn new(window: Duration) -> Self {
        SeedRegistry { workloads: Mutex::new(HashMap::new()), window }
    }

    /// `IncrementActive`: count an arrival (total, active, window count; the window restarts when
    /// it has run out).
    pub fn increment_active(&self, workload: &str) {
        self.increment_active_at(workload, Instant::now());
    }

    /// [`increment_active`](Self::increment_active) at a given time (tests).
    pub fn increment_active_at(&self, workload: &str, now: Instant) {
        let mut map = lock(&self.workloads);
        let m = match map.get_mut(workload) {
            Some(m) => m,
            None => map.entry(workload.to_string()).or_insert(WorkloadMetrics {
                total_requests: 0,
                active_requests: 0,
                sliding_window_requests: 0,
                window_start: now,
                last_request: now,
            }),
        };
        if now.saturating_duration_since(m.window_start) >= self.window {
            m.window_start = now;
            m.sliding_window_requests = 0;
        }
        m.total_requests += 1;
        m.active_requests += 1;
        m.sliding_window_requests += 1;
        m.last_request = now;
    }

    /// `DecrementActive` (never below zero).
    pub fn decrement_active(&self, workload: &str) {
        if let Some(m) = lock(&self.workloads).get_mut(workload) {
            m.active_requests = (m.active_requests - 1).max(0);
        }
    }

    /// `GetRequestRate`: requests in the current window per second of window (0 once it ran out).
    pub fn request_rate(&self, workload: &str, now: Instant) -> f64 {
        match lock(&self.workloads).get(workload) {
            Some(m) if now.saturating_duration_since(m.window_start) < self.window => {
                m.sliding_window_requests as f64 / self.window.as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// `GetMetrics`.
    pub fn metrics(&self, workload: &str) -> Option<WorkloadMetrics> {
        lock(&self.workloads).get(workload).cloned()
    }
}

/// The seed's `computeScore`, with the weights and caps of a [`ScoringConfig`].
#[derive(Clone, Copy, Debug)]
pub struct SeedScore {
    w_wait: f64,
    w_crit: f64,
    w_rate: f64,
    wait_cap_s: f64,
    rate_cap: f64,
}

impl SeedScore {
    /// From a scoring configuration.
    pub fn new(c: &ScoringConfig) -> Self {
        SeedScore {
            w_wait: c.wait_weight,
            w_crit: c.criticality_weight,
            w_rate: c.rate_weight,
            wait_cap_s: c.wait_cap.as_secs_f64(),
            rate_cap: c.rate_cap_per_s,
        }
    }

    /// `w_wait·min(wait/cap, 1) + w_crit·crit/5 − w_rate·min(rate/rate_cap, 1)`.
    #[inline]
    pub fn score(&self, wait_s: f64, criticality: u8, rate: f64) -> f64 {
        (wait_s / self.wait_cap_s).min(1.0) * self.w_wait + f64::from(criticality) / 5.0 * self.w_crit
            - (rate / self.rate_cap).min(1.0) * self.w_rate
    }
}

/// An item of the seed's heap.
#[derive(Debug)]
pub struct SeedItem<T> {
    /// Workload id (the registry key).
    pub workload: Arc<str>,
    /// Criticality.
    pub criticality: u8,
    /// `EnqueueTime()`.
    pub enqueued: Instant,
    /// Payload.
    pub value: T,
}

/// The seed's heap: a binary max-heap whose comparator reads the clock and the registry on every
/// comparison (so, as in the seed, its invariant silently decays as time passes).
#[derive(Debug)]
pub struct SeedHeap<T> {
    items: Vec<SeedItem<T>>,
    registry: Arc<SeedRegistry>,
    score: SeedScore,
}

impl<T> SeedHeap<T> {
    /// An empty heap scoring with `scoring` against `registry`.
    pub fn new(registry: Arc<SeedRegistry>, scoring: &ScoringConfig) -> Self {
        SeedHeap { items: Vec::new(), registry, score: SeedScore::new(scoring) }
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The registry it reads.
    pub fn registry(&self) -> &Arc<SeedRegistry> {
        &self.registry
    }

    /// `computeScore(item, now)`: one registry lookup under its lock.
    fn compute_score(&self, item: &SeedItem<T>, now: Instant) -> f64 {
        let rate = self.registry.request_rate(&item.workload, now);
        let wait = now.saturating_duration_since(item.enqueued).as_secs_f64();
        self.score.score(wait, item.criticality, rate)
    }

    /// The seed's comparator: `computeScore(a, time.Now()) > computeScore(b, time.Now())`.
    #[inline(never)]
    fn higher(&self, a: usize, b: usize) -> bool {
        let sa = self.compute_score(&self.items[a], Instant::now());
        let sb = self.compute_score(&self.items[b], Instant::now());
        sa > sb
    }

    /// Push (sift up with the live comparator).
    pub fn push(&mut self, item: SeedItem<T>) {
        self.items.push(item);
        let mut i = self.items.len() - 1;
        while i > 0 {
            let parent = (i - 1) / 2;
            if !self.higher(i, parent) {
                break;
            }
            self.items.swap(i, parent);
            i = parent;
        }
    }

    /// Pop the head (sift down with the live comparator).
    pub fn pop(&mut self) -> Option<SeedItem<T>> {
        let n = self.items.len();
        if n == 0 {
            return None;
        }
        self.items.swap(0, n - 1);
        let top = self.items.pop();
        let n = n - 1;
        let mut i = 0;
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut best = i;
            if l < n && self.higher(l, best) {
                best = l;
            }
            if r < n && self.higher(r, best) {
                best = r;
            }
            if best == i {
                break;
            }
            self.items.swap(i, best);
            i = best;
        }
        top
    }
}

/// The seed's design as a [`Discipline`].
pub struct Seed(SeedHeap<(u8, Instant, Arc<LockedSlot>)>);

impl Discipline for Seed {
    type Registry = SeedRegistry;
    fn push(&mut self, w: Waiting) {
        let Waiting { workload, criticality, enqueued, deadline, slot } = w;
        self.0.push(SeedItem { workload, criticality, enqueued, value: (criticality, deadline, slot) });
    }
    fn pop(&mut self) -> Option<Waiting> {
        self.0.pop().map(|i| Waiting {
            workload: i.workload,
            criticality: i.value.0,
            enqueued: i.enqueued,
            deadline: i.value.1,
            slot: i.value.2,
        })
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn arrive(registry: &SeedRegistry, workload: &str) {
        registry.increment_active(workload);
    }
    fn finish(registry: &SeedRegistry, workload: &str) {
        registry.decrement_active(workload);
    }
}

/// The seed-design baseline.
pub type SeedQueue = Locked<Seed>;

impl SeedQueue {
    /// A seed baseline for `spec`.
    pub fn new(spec: &Spec) -> Arc<Self> {
        let registry = Arc::new(SeedRegistry::new(spec.scoring.rate_window));
        let heap = SeedHeap::new(registry.clone(), &spec.scoring);
        Locked::build(Seed(heap), registry, spec, "seed-heap")
    }
}

/// The seed's enqueue and dispatch steps with no capacity or tickets around them, for the
/// micro-benchmark that mirrors `Shard::enqueue` + `Shard::dispatch_next`: `push` is
/// `IncrementActive` + lock + heap push; `pop` is lock + heap pop.
#[derive(Debug)]
pub struct SeedCore<T> {
    heap: Mutex<SeedHeap<T>>,
    registry: Arc<SeedRegistry>,
}

impl<T> SeedCore<T> {
    /// An empty core scoring with `scoring`.
    pub fn new(scoring: &ScoringConfig) -> Self {
        let registry = Arc::new(SeedRegistry::new(scoring.rate_window));
        SeedCore { heap: Mutex::new(SeedHeap::new(registry.clone(), scoring)), registry }
    }

    /// Count the arrival and queue it.
    pub fn push(&self, workload: &Arc<str>, criticality: u8, value: T) {
        self.registry.increment_active(workload);
        lock(&self.heap).push(SeedItem {
            workload: workload.clone(),
            criticality,
            enqueued: Instant::now(),
            value,
        });
    }

    /// Take the best item.
    pub fn pop(&self) -> Option<SeedItem<T>> {
        lock(&self.heap).pop()
    }

    /// Items queued.
    pub fn len(&self) -> usize {
        lock(&self.heap).len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoring() -> ScoringConfig {
        ScoringConfig::default()
    }

    #[test]
    fn seed_heap_pops_in_the_seed_formula_order() {
        let registry = Arc::new(SeedRegistry::new(Duration::from_secs(60)));
        let now = Instant::now();
        // Workload rates: "busy" 6000 arrivals in the window (100 req/s, the cap), "calm" one.
        for _ in 0..6000 {
            registry.increment_active_at("busy", now);
        }
        registry.increment_active_at("calm", now);
        let mut heap: SeedHeap<u32> = SeedHeap::new(registry.clone(), &scoring());
        let s = SeedScore::new(&scoring());
        // (workload, criticality, waited seconds)
        let cases: [(&str, u8, u64); 8] = [
            ("calm", 1, 0),
            ("calm", 5, 0),
            ("busy", 5, 0),
            ("calm", 3, 1),
            ("calm", 1, 50),
            ("busy", 4, 20),
            ("calm", 2, 30),
            ("busy", 1, 59),
        ];
        let mut expected: Vec<(f64, u32)> = Vec::new();
        for (i, (w, c, waited)) in cases.iter().enumerate() {
            let enqueued = now.checked_sub(Duration::from_secs(*waited)).expect("clock far enough from boot");
            heap.push(SeedItem { workload: Arc::from(*w), criticality: *c, enqueued, value: i as u32 });
            let rate = registry.request_rate(w, now);
            expected.push((s.score(*waited as f64, *c, rate), i as u32));
        }
        // Scores differ by far more than the time this test takes to run.
        expected.sort_by(|a, b| b.0.total_cmp(&a.0));
        let popped: Vec<u32> = std::iter::from_fn(|| heap.pop().map(|i| i.value)).collect();
        let want: Vec<u32> = expected.iter().map(|e| e.1).collect();
        assert_eq!(popped, want);
    }

    #[test]
    fn seed_score_matches_the_formula() {
        let s = SeedScore::new(&scoring());
        assert!((s.score(0.0, 5, 0.0) - 0.4).abs() < 1e-12);
        assert!((s.score(30.0, 1, 50.0) - (0.2 + 0.08 - 0.1)).abs() < 1e-12);
        // Both caps saturate.
        assert!((s.score(600.0, 3, 1e6) - (0.4 + 0.24 - 0.2)).abs() < 1e-12);
        // The engine's reference formula agrees.
        let e = flowgate_engine::score::Scorer::new(&scoring());
        assert!((e.reference_score(30_000_000_000, 1, 50.0) - s.score(30.0, 1, 50.0)).abs() < 1e-12);
    }

    #[test]
    fn seed_registry_counts_and_windows() {
        let r = SeedRegistry::new(Duration::from_secs(60));
        let t0 = Instant::now();
        r.increment_active_at("a", t0);
        r.increment_active_at("a", t0);
        assert_eq!(r.metrics("a").unwrap().active_requests, 2);
        assert!((r.request_rate("a", t0) - 2.0 / 60.0).abs() < 1e-12);
        r.decrement_active("a");
        r.decrement_active("a");
        r.decrement_active("a");
        assert_eq!(r.metrics("a").unwrap().active_requests, 0, "never below zero");
        assert_eq!(r.request_rate("a", t0 + Duration::from_secs(61)), 0.0);
        r.increment_active_at("a", t0 + Duration::from_secs(61));
        let m = r.metrics("a").unwrap();
        assert_eq!((m.total_requests, m.sliding_window_requests), (3, 1));
    }

    fn exercise(q: Arc<dyn Queue>) {
        let w: Arc<str> = Arc::from("w");
        // Two slots: two dispatch at once, the third queues until a permit drops.
        let a = q.submit(&Req::new(&w, 3)).unwrap().wait();
        let b = q.submit(&Req::new(&w, 3)).unwrap().wait();
        assert_eq!((a.outcome, b.outcome), (Outcome::Dispatched, Outcome::Dispatched));
        let low = q.submit(&Req::new(&w, 1)).unwrap();
        let high = q.submit(&Req::new(&w, 5)).unwrap();
        // The engine queues asynchronously (ring → shard): wait until both sit in the queue.
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.queued() < 2 {
            assert!(Instant::now() < deadline, "both requests queue");
            std::thread::yield_now();
        }
        drop(a);
        let first = high.wait();
        assert_eq!(first.outcome, Outcome::Dispatched);
        drop(b);
        assert_eq!(low.wait().outcome, Outcome::Dispatched);
        // A dropped ticket leaves its slot free.
        drop(first);
        let third = q.submit(&Req::new(&w, 2)).unwrap();
        drop(third);
        let again = q.submit(&Req::new(&w, 2)).unwrap().wait();
        assert_eq!(again.outcome, Outcome::Dispatched);
        q.shutdown();
    }

    #[test]
    fn seed_queue_dispatches_by_priority_and_recycles_slots() {
        exercise(SeedQueue::new(&Spec { slots: 2, ..Spec::default() }));
    }

    #[test]
    fn engine_queue_behaves_like_the_baselines() {
        for shards in [1, 2] {
            let spec = Spec { slots: 2, ..Spec::default() };
            exercise(Arc::new(EngineQueue::start(spec.engine_config(shards)).unwrap()));
        }
    }

    #[test]
    fn fifo_queue_rejects_when_full_and_keeps_order() {
        let q = FifoQueue::new(&Spec { slots: 1, max_requests: 2, ..Spec::default() });
        let w: Arc<str> = Arc::from("w");
        let held = q.submit(&Req::new(&w, 3)).unwrap().wait();
        let t1 = q.submit(&Req::new(&w, 1)).unwrap();
        let t2 = q.submit(&Req::new(&w, 5)).unwrap();
        let t3 = q.submit(&Req::new(&w, 5)).unwrap().wait();
        assert_eq!(t3.outcome, Outcome::RejectedCapacity);
        drop(held);
        let d1 = t1.wait();
        assert_eq!(d1.outcome, Outcome::Dispatched, "FIFO: the first queued goes first");
        drop(d1);
        assert_eq!(t2.wait().outcome, Outcome::Dispatched);
    }
}
