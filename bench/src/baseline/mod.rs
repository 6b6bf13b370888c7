//! What flowgate replaces, behind the same interface as the engine, so scenarios run identically.
//!
//! Every implementation is a [`Queue`]: [`Queue::submit`] returns a [`Ticket`] (a future, or
//! [`Ticket::wait`] to block) resolving to a [`Decision`]; a dispatched decision carries a
//! [`Permit`] whose drop frees the model-server slot. Four implementations:
//!
//! - [`EngineQueue`]: `flowgate_engine::Engine` with 1 or N shards (also: scraped backends,
//!   [`Kind::FlowgateScraped`]; a backend set changing every millisecond, [`Kind::FlowgateChurn`]).
//! - [`SeedQueue`]: the seed's design, modelled faithfully: one `Mutex`-guarded binary max-heap
//!   whose comparator, **on every comparison**, reads the clock (`Instant::now()`, once per side as
//!   the seed's `Less` calls `time.Now()` twice) and looks the workload's rate up in a
//!   `Mutex`-guarded registry (`HashMap<String, WorkloadMetrics>` with a sliding-window count),
//!   computing `w_wait·min(wait/cap,1) + w_crit·crit/5 − w_rate·min(rate/rate_cap,1)`; plus the
//!   seed's registry updates per request (`IncrementActive` at arrival, `DecrementActive` at
//!   completion). The registry lock is taken inside the heap lock, as in the seed.
//! - [`FifoQueue`]: upstream's default: one global `Mutex<VecDeque>`.
//!
//! Both locked baselines ([`SeedQueue`], [`FifoQueue`]) are instances of [`Locked`], one
//! `Mutex`-guarded queue with a dispatcher thread; they differ only in their ordering
//! [`Discipline`].
//!
//! This file holds the interface ([`Queue`], [`Req`], [`Ticket`], [`Decision`], [`Permit`],
//! [`Kind`], [`Spec`]) and [`EngineQueue`]; `locked.rs` the locked baselines' shared machinery,
//! `seed.rs` the seed's design, `fifo.rs` the FIFO.

mod fifo;
mod locked;
mod seed;

pub use crate::measurement::SetChanges;
pub use fifo::{Fifo, FifoQueue};
pub use locked::{Discipline, Locked, LockedPermit, LockedSlot, LockedTicket, Waiting};
pub use seed::{Seed, SeedCore, SeedHeap, SeedItem, SeedQueue, SeedRegistry, SeedScore, WorkloadMetrics};

use flowgate_engine::backends::ScrapeReading;
use flowgate_engine::config::{
    BackendConfig, Detector, EngineConfig, ScoringConfig, MAX_QUEUE_DEPTH_THRESHOLD,
};
use flowgate_engine::{Engine, Outcome, Request, SubmitError, WorkloadContext};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

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
    /// What the backend-set controller has done so far ([`Kind::FlowgateChurn`],
    /// [`Kind::FlowgateSteady`]; `None` for the rest).
    fn set_changes(&self) -> Option<SetChanges> {
        None
    }
    /// Answer everything still queued and stop.
    fn shutdown(&self);
}

/// Which implementation to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// flowgate with this many shards.
    Flowgate(usize),
    /// flowgate with this many shards and detector `both`: every dispatch also takes a place
    /// against a scraped load word, which a feeder thread republishes every
    /// [`FEED_INTERVAL`] as a model server's scrape would (what the utilization detector costs
    /// the dispatch path).
    FlowgateScraped(usize),
    /// flowgate with this many shards whose backend set changes while requests flow: a
    /// controller thread calls `Engine::set_backends` every [`CHURN_INTERVAL`], rotating through
    /// [`churn_set`] of [`CHURN_WIDTH`] backends ({A} → {B} → {C} → {A} …, each with all the
    /// slots, as [`Kind::Flowgate`]'s one backend has), so every change adds one backend and
    /// drains another that still holds requests (what a changing backend set costs the dispatch
    /// path, against [`Kind::Flowgate`] as the fixed set).
    FlowgateChurn(usize),
    /// [`Kind::FlowgateChurn`]'s control: the same controller thread calling
    /// `Engine::set_backends` every [`CHURN_INTERVAL`], with the set it already has (one backend,
    /// all the slots), so the set never changes. What the changing set costs beyond the
    /// controller's calls is churn against this.
    FlowgateSteady(usize),
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
            Kind::FlowgateScraped(n) => format!("flowgate-scraped-{n}sh"),
            Kind::FlowgateChurn(n) => format!("flowgate-churn-{n}sh"),
            Kind::FlowgateSteady(n) => format!("flowgate-steady-{n}sh"),
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
    /// flowgate's `spin_before_park` for this queue; `None`: the process-wide
    /// [`set_spin_before_park`] value, else the engine's default.
    pub spin_before_park: Option<Duration>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            slots: 8,
            max_requests: 0,
            ttl: Duration::from_secs(30),
            scoring: ScoringConfig::default(),
            spin_before_park: None,
        }
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
        if let Some(spin) = self.spin_before_park.or_else(spin_before_park) {
            c.spin_before_park = spin;
        }
        c
    }

    /// Build `kind`.
    pub fn build(&self, kind: Kind) -> Arc<dyn Queue> {
        match kind {
            Kind::Flowgate(n) => Arc::new(EngineQueue::start(self.engine_config(n)).expect("engine starts")),
            Kind::FlowgateScraped(n) => {
                let mut config = self.engine_config(n);
                config.saturation.detector = Detector::Both;
                config.saturation.queue_depth_threshold = MAX_QUEUE_DEPTH_THRESHOLD;
                Arc::new(EngineQueue::start_scraped(config).expect("engine starts"))
            }
            Kind::FlowgateChurn(n) | Kind::FlowgateSteady(n) => {
                let mut config = self.engine_config(n);
                config.backends = churn_set(0, CHURN_WIDTH, self.slots);
                let rotate = matches!(kind, Kind::FlowgateChurn(_));
                Arc::new(EngineQueue::start_churning(config, self.slots, rotate).expect("engine starts"))
            }
            Kind::Seed => SeedQueue::new(self),
            Kind::Fifo => FifoQueue::new(self),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// flowgate

/// How often [`Kind::FlowgateScraped`]'s feeder publishes a scrape (a model server scraped every
/// 10 ms, five times the default rate).
pub const FEED_INTERVAL: Duration = Duration::from_millis(10);

/// How often [`Kind::FlowgateChurn`]'s controller changes the backend set.
pub const CHURN_INTERVAL: Duration = Duration::from_millis(1);

/// The backends [`Kind::FlowgateChurn`] rotates through (A is the default config's backend).
pub const CHURN_ADDRESSES: [&str; 3] = ["127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002"];

/// Backends in [`Kind::FlowgateChurn`]'s set at any time: one, as [`Kind::Flowgate`] has, so the
/// fixed set it is compared against differs only in not changing.
pub const CHURN_WIDTH: usize = 1;

/// A rotating backend set after `step` changes: `width` (1 or 2) consecutive
/// [`CHURN_ADDRESSES`] ({A}, {B}, {C}, … or {A,B}, {B,C}, {C,A}, …) sharing `slots` evenly
/// (rounded up), so each step drains one backend, adds another and keeps the set's capacity.
pub fn churn_set(step: usize, width: usize, slots: u32) -> Vec<BackendConfig> {
    let n = CHURN_ADDRESSES.len();
    let width = width.clamp(1, n - 1);
    (0..width)
        .map(|k| BackendConfig {
            address: CHURN_ADDRESSES[(step + k) % n].into(),
            max_inflight: slots.div_ceil(width as u32).max(1),
        })
        .collect()
}

/// What the controller of [`Kind::FlowgateChurn`] (or [`Kind::FlowgateSteady`]) has done so far.
#[derive(Debug, Default)]
pub struct ChurnCounts {
    /// `set_backends` calls that did what was meant: added exactly one backend and drained
    /// exactly one (churn), or changed nothing (steady).
    pub changes: AtomicU64,
    /// Of those, the ones after which a drained backend still held requests (dispatches then
    /// ran beside a draining backend).
    pub draining: AtomicU64,
    /// `set_backends` calls that did anything else (refused a backend, …).
    pub unexpected: AtomicU64,
}

/// Which flowgate configuration an [`EngineQueue`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Plain,
    Scraped,
    Churn,
    Steady,
}

/// `flowgate_engine::Engine` as a [`Queue`].
#[derive(Debug)]
pub struct EngineQueue {
    engine: Arc<Engine>,
    /// The scrape feeder of [`Kind::FlowgateScraped`] or the controller of
    /// [`Kind::FlowgateChurn`]: its stop flag and thread.
    feeder: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    variant: Variant,
    churn: Arc<ChurnCounts>,
}

impl EngineQueue {
    /// Start an engine.
    pub fn start(config: EngineConfig) -> Result<Self, flowgate_engine::runtime::StartError> {
        Ok(EngineQueue {
            engine: Arc::new(Engine::start(config)?),
            feeder: None,
            variant: Variant::Plain,
            churn: Arc::default(),
        })
    }

    /// Start an engine whose backend set a controller thread changes every [`CHURN_INTERVAL`]
    /// until shutdown: step `k` sets [`churn_set`]`(k, CHURN_WIDTH, slots)` (`config.backends`
    /// should be step 0); with `rotate` false, it sets step 0 every time (the same calls, no
    /// change). [`ChurnCounts`] says what it did.
    pub fn start_churning(
        config: EngineConfig,
        slots: u32,
        rotate: bool,
    ) -> Result<Self, flowgate_engine::runtime::StartError> {
        let engine = Arc::new(Engine::start(config)?);
        let stop = Arc::new(AtomicBool::new(false));
        let churn = Arc::new(ChurnCounts::default());
        let control = {
            let (engine, stop, churn) = (engine.clone(), stop.clone(), churn.clone());
            let steps = if rotate { CHURN_ADDRESSES.len() } else { 1 };
            let sets: Vec<Vec<BackendConfig>> =
                (0..steps).map(|k| churn_set(k, CHURN_WIDTH, slots)).collect();
            move || {
                let mut step = 0usize;
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(CHURN_INTERVAL);
                    step += 1;
                    let changes = engine.set_backends(&sets[step % sets.len()]);
                    let expected = if rotate {
                        changes.added.len() == 1
                            && changes.drained.len() == 1
                            && changes.updated.is_empty()
                            && changes.refused.is_empty()
                    } else {
                        changes.is_empty()
                    };
                    if !expected {
                        churn.unexpected.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    churn.changes.fetch_add(1, Ordering::Relaxed);
                    if engine.backend_states().iter().any(|s| s.draining) {
                        churn.draining.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        };
        let thread = std::thread::Builder::new().name("backend-churn".into()).spawn(control).expect("spawn");
        let variant = if rotate { Variant::Churn } else { Variant::Steady };
        Ok(EngineQueue { engine, feeder: Some((stop, thread)), variant, churn })
    }

    /// What the churn controller has done ([`Kind::FlowgateChurn`]; zeros otherwise).
    pub fn churn_counts(&self) -> &ChurnCounts {
        &self.churn
    }

    /// Start an engine whose backends are scraped: a thread publishes an empty queue (waiting 0,
    /// KV 0) for every backend every [`FEED_INTERVAL`], until shutdown.
    pub fn start_scraped(config: EngineConfig) -> Result<Self, flowgate_engine::runtime::StartError> {
        let engine = Arc::new(Engine::start(config)?);
        let stop = Arc::new(AtomicBool::new(false));
        let feed = {
            let (engine, stop) = (engine.clone(), stop.clone());
            move || {
                let ids: Vec<_> = engine.backend_states().iter().map(|s| s.id).collect();
                while !stop.load(Ordering::Acquire) {
                    for &id in &ids {
                        engine.publish_scrape(id, ScrapeReading::default());
                    }
                    std::thread::sleep(FEED_INTERVAL);
                }
            }
        };
        // The first scrape lands before any submission.
        for s in engine.backend_states() {
            engine.publish_scrape(s.id, ScrapeReading::default());
        }
        let thread = std::thread::Builder::new().name("scrape-feeder".into()).spawn(feed).expect("spawn");
        Ok(EngineQueue {
            engine,
            feeder: Some((stop, thread)),
            variant: Variant::Scraped,
            churn: Arc::default(),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Queue for EngineQueue {
    fn name(&self) -> String {
        let n = self.engine.shards();
        match self.variant {
            Variant::Plain => Kind::Flowgate(n),
            Variant::Scraped => Kind::FlowgateScraped(n),
            Variant::Churn => Kind::FlowgateChurn(n),
            Variant::Steady => Kind::FlowgateSteady(n),
        }
        .label()
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

    fn set_changes(&self) -> Option<SetChanges> {
        matches!(self.variant, Variant::Churn | Variant::Steady).then(|| SetChanges {
            calls: self.churn.changes.load(Ordering::Relaxed),
            draining: self.churn.draining.load(Ordering::Relaxed),
            unexpected: self.churn.unexpected.load(Ordering::Relaxed),
        })
    }

    fn shutdown(&self) {
        if let Some((stop, _)) = &self.feeder {
            stop.store(true, Ordering::Release);
        }
        self.engine.shutdown();
    }
}

impl Drop for EngineQueue {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.feeder.take() {
            stop.store(true, Ordering::Release);
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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
    fn a_churning_engine_keeps_dispatching_while_its_backend_set_changes() {
        for kind in [Kind::FlowgateChurn(2), Kind::FlowgateSteady(1)] {
            let q = Spec { slots: 4, ..Spec::default() }.build(kind);
            let w: Arc<str> = Arc::from("w");
            let deadline = Instant::now() + Duration::from_secs(30);
            // Until the controller has made a few calls, every request dispatches.
            while q.set_changes().unwrap().calls < 5 {
                assert!(Instant::now() < deadline, "{}: the controller makes calls", q.name());
                let held: Vec<Decision> =
                    (0..4).map(|_| q.submit(&Req::new(&w, 3)).unwrap().wait()).collect();
                assert!(held.iter().all(|d| d.outcome == Outcome::Dispatched), "{}", q.name());
            }
            let counts = q.set_changes().unwrap();
            assert_eq!(counts.unexpected, 0, "{}", q.name());
            q.shutdown();
        }
    }

    #[test]
    fn engine_queue_behaves_like_the_baselines() {
        for shards in [1, 2] {
            let spec = Spec { slots: 2, ..Spec::default() };
            exercise(Arc::new(EngineQueue::start(spec.engine_config(shards)).unwrap()));
        }
    }
}
