//! The running engine: pinned shard executors, submission, capacity, shutdown.
//!
//! [`Engine::start`] launches one glommio executor per shard, pinned to a CPU (`shard i` on the
//! `i`-th allowed CPU, see [`Layout`]), each running one worker (`worker.rs`) that owns its shard's heap and workload
//! table. Producers submit through per-thread [`Submitter`]s (or [`Engine::submit`], which keeps
//! one per thread); tickets resolve to a [`Decision`]; a dispatched decision carries a [`Permit`]
//! whose drop frees the backend slot.

use crate::backends::{BackendChanges, BackendId, BackendState, Grants};
use crate::budget::QueueBudget;
use crate::clock::Clock;
use crate::config::{ConfigError, EngineConfig};
use crate::fairness::VtcFloors;
use crate::gate::Gate;
use crate::layout::Layout;
use crate::load::ScrapeReading;
use crate::outcome::Outcome;
use crate::registry::Directory;
use crate::registry_view::RegistryView;
use crate::shard::Shard;
use crate::shared::{OutcomeCounters, Shared};
use crate::sync::{fence, AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use crate::worker::Worker;
use crossbeam_queue::ArrayQueue;
use std::cell::RefCell;
use std::sync::{Arc, Mutex};

pub use crate::permit::Permit;
pub use crate::ring::{RegisterError, Request, SubmitError, Submitter};
pub use crate::shared::{Decision, CANCEL_QUEUE_CAPACITY, DISPLACE_QUEUE_CAPACITY};
pub use crate::ticket::Ticket;

/// io_uring memory each shard executor locks (glommio's floor is 512 KiB; the default 10 MiB would
/// exceed an 8 MiB `RLIMIT_MEMLOCK`). Shards do no file I/O.
pub const SHARD_IO_MEMORY_BYTES: usize = 512 << 10;

/// Why an engine did not start.
#[derive(Debug)]
pub enum StartError {
    /// The configuration is invalid; every problem is listed.
    Config(Vec<ConfigError>),
    /// A shard executor could not be created (e.g. io_uring unavailable).
    Executor(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(errors) => {
                f.write_str("invalid configuration:")?;
                errors.iter().try_for_each(|e| write!(f, " {e};"))
            }
            StartError::Executor(e) => write!(f, "shard executor failed to start: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A point-in-time view of the engine's load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Requests queued in all shards.
    pub queued: u64,
    /// Body bytes queued.
    pub queued_bytes: u64,
    /// Requests holding a backend slot.
    pub inflight: u64,
    /// Total backend slots (Σ `max_inflight` of the capped backends).
    pub capacity: u64,
}

/// What [`Engine::reconfigure`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Fields that changed but need a restart: their running values were kept.
    pub restart_only: Vec<&'static str>,
    /// What changed in the backend set.
    pub backends: BackendChanges,
}

/// A running engine. Dropping it shuts it down.
pub struct Engine {
    shared: Arc<Shared>,
    registry: RegistryView,
    executors: Mutex<Vec<glommio::ExecutorJoinHandle<()>>>,
}

static NEXT_ENGINE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    /// This thread's submitters, one per engine it has submitted to.
    static SUBMITTERS: RefCell<Vec<Submitter>> = const { RefCell::new(Vec::new()) };
}

impl Engine {
    /// Validate `config` and start its shards.
    ///
    /// ```
    /// use flowgate_engine::{runtime::{Engine, Request}, EngineConfig, Outcome, WorkloadContext};
    /// let mut config = EngineConfig::default();
    /// config.shards = 1;
    /// let engine = Engine::start(config).unwrap();
    /// let ticket = engine.submit(Request { context: WorkloadContext::default_workload(3), bytes: 0 }).unwrap();
    /// let decision = ticket.wait();
    /// assert_eq!(decision.outcome, Outcome::Dispatched);
    /// assert_eq!(decision.permit.as_ref().unwrap().address(), "127.0.0.1:8000");
    /// engine.shutdown();
    /// ```
    pub fn start(config: EngineConfig) -> Result<Engine, StartError> {
        let errors = config.validate();
        if !errors.is_empty() {
            return Err(StartError::Config(errors));
        }
        let shards = config.shard_count();
        let clock = Clock::new();
        let gate = Arc::new(Gate::new(&config, shards, clock));
        let budget = Arc::new(QueueBudget::new(config.queue.max_requests, config.queue.max_bytes));
        let tracked = Arc::new(AtomicUsize::new(0));
        let shared = Arc::new(Shared {
            id: NEXT_ENGINE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            config: config.clone(),
            live: crate::sync::Mutex::new(Arc::new(config.clone())),
            config_generation: AtomicU64::new(0),
            default_criticality: AtomicU8::new(config.workloads.default_criticality),
            clock,
            gate,
            budget: budget.clone(),
            registrations: (0..shards).map(|_| ArrayQueue::new(config.max_submitters)).collect(),
            cancels: (0..shards).map(|_| ArrayQueue::new(CANCEL_QUEUE_CAPACITY)).collect(),
            displacements: (0..shards).map(|_| ArrayQueue::new(DISPLACE_QUEUE_CAPACITY)).collect(),
            shutting_down: AtomicBool::new(false),
            submitters: AtomicUsize::new(0),
            outcomes: (0..shards).map(|_| OutcomeCounters::default()).collect(),
            shard_cpus: Layout::for_this_process(shards, 0).shard_cpus.into(),
        });
        let mut directories: Vec<Directory> = Vec::with_capacity(shards);
        let mut executors = Vec::with_capacity(shards);
        let floors = Arc::new(VtcFloors::new(shards));
        for index in 0..shards {
            let shard = Shard::new(&config, index, shards, budget.clone(), tracked.clone())
                .with_floors(floors.clone());
            directories.push(shard.table().directory());
            let worker = Worker::new(index, shard, shared.clone());
            let spawned =
                glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(shared.shard_cpu(index)))
                    .name(&format!("flowgate-shard-{index}"))
                    .io_memory(SHARD_IO_MEMORY_BYTES)
                    // The worker owns the pinned thread; glommio supplies the placement.
                    .spawn(move || async move { worker.run() });
            match spawned {
                Ok(handle) => executors.push(handle),
                Err(e) => {
                    let engine = Engine {
                        shared: shared.clone(),
                        registry: empty_view(clock),
                        executors: Mutex::new(executors),
                    };
                    engine.shutdown();
                    return Err(StartError::Executor(e.to_string()));
                }
            }
        }
        let registry = RegistryView::new(directories, tracked, clock);
        Ok(Engine { shared, registry, executors: Mutex::new(executors) })
    }

    /// A new submitter for a producer thread (one ring per shard).
    pub fn submitter(&self) -> Result<Submitter, RegisterError> {
        Submitter::register(self.shared.clone())
    }

    /// Submit from any thread, through this thread's own submitter (registered on first use).
    pub fn submit(&self, request: Request) -> Result<Ticket, SubmitError> {
        SUBMITTERS.with(|cell| {
            let mut subs = cell.borrow_mut();
            // Forget submitters of engines that have shut down.
            subs.retain(|s| !s.shared().shutting_down.load(Ordering::Relaxed));
            if let Some(s) = subs.iter_mut().find(|s| s.shared().id == self.shared.id) {
                return s.submit(request);
            }
            match Submitter::register(self.shared.clone()) {
                Ok(mut s) => {
                    let ticket = s.submit(request);
                    subs.push(s);
                    ticket
                }
                Err(RegisterError::ShuttingDown) => Err(SubmitError::ShuttingDown(request)),
                Err(RegisterError::TooMany) => Err(SubmitError::Backpressure(request)),
            }
        })
    }

    /// Read-only view of every shard's workloads.
    pub fn registry(&self) -> RegistryView {
        self.registry.clone()
    }

    /// Current load.
    pub fn stats(&self) -> EngineStats {
        let gate = &self.shared.gate;
        EngineStats {
            queued: self.shared.budget.requests(),
            queued_bytes: self.shared.budget.bytes(),
            inflight: gate.inflight_total(),
            capacity: gate.capacity(),
        }
    }

    /// How many requests ended with each outcome so far.
    pub fn outcome_counts(&self) -> Vec<(Outcome, u64)> {
        Outcome::ALL
            .iter()
            .enumerate()
            .map(|(i, o)| (*o, self.shared.outcomes.iter().map(|c| c.0[i].load(Ordering::Relaxed)).sum()))
            .collect()
    }

    /// The configuration it runs with now (the last one [`reconfigure`](Self::reconfigure) applied;
    /// its `backends` are the set as of then, see [`backend_states`](Self::backend_states) for
    /// the set now).
    pub fn config(&self) -> Arc<EngineConfig> {
        self.shared.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Apply a new configuration while requests flow: validated first (refused whole, nothing
    /// changed, when invalid); restart-only fields ([`EngineConfig::restart_only_changes`]) keep
    /// their running values and are reported. Applied at once: queue limits, ceilings, the
    /// detector's rules, the backend set ([`set_backends`](Self::set_backends)), the default
    /// criticality; at each shard's next pass: the scoring rule, default TTL (for new requests)
    /// and idle timeout, followed by a rescore of every queued request. Nothing queued is dropped.
    ///
    /// ```
    /// use flowgate_engine::{runtime::Engine, config::BackendConfig, EngineConfig};
    /// let mut config = EngineConfig::default();
    /// config.shards = 1;
    /// let engine = Engine::start(config.clone()).unwrap();
    /// config.backends.push(BackendConfig { address: "127.0.0.1:8001".into(), max_inflight: 4 });
    /// config.shards = 2; // restart-only: kept at 1
    /// let done = engine.reconfigure(config).unwrap();
    /// assert_eq!(done.restart_only, vec!["shards"]);
    /// assert_eq!(done.backends.added.len(), 1);
    /// assert_eq!(engine.stats().capacity, 12);
    /// engine.shutdown();
    /// ```
    pub fn reconfigure(&self, config: EngineConfig) -> Result<Reconfigured, Vec<ConfigError>> {
        let errors = config.validate();
        if !errors.is_empty() {
            return Err(errors);
        }
        let shared = &self.shared;
        // Held throughout: reloads apply one at a time, in order.
        let mut live = shared.live.lock().unwrap_or_else(|p| p.into_inner());
        let restart_only = config.restart_only_changes(&shared.config);
        let config = config.keeping_restart_only(&shared.config);
        shared.budget.set_limits(config.queue.max_requests, config.queue.max_bytes);
        shared.default_criticality.store(config.workloads.default_criticality, Ordering::Relaxed);
        shared.gate.reconfigure(config.ceilings, &config.saturation);
        let backends = shared.gate.set_backends(&config.backends);
        *live = Arc::new(config);
        shared.config_generation.fetch_add(1, Ordering::Release);
        drop(live);
        for i in 0..shared.shards() {
            shared.gate.shard(i).doorbell.ring();
        }
        Ok(Reconfigured { restart_only, backends })
    }

    /// Make the backend set `desired` while requests flow (discovery): new backends take requests
    /// at once; those not in it drain (no new requests; in-flight ones finish and free their
    /// places) and leave the table with their last request; the rest take their new
    /// `max_inflight`. Entries past the table's `max_backends` slots are refused and reported.
    ///
    /// ```
    /// use flowgate_engine::{runtime::Engine, config::BackendConfig, EngineConfig};
    /// let mut config = EngineConfig::default();
    /// config.shards = 1;
    /// let engine = Engine::start(config).unwrap();
    /// let next = [BackendConfig { address: "127.0.0.1:8001".into(), max_inflight: 2 }];
    /// let changes = engine.set_backends(&next);
    /// assert_eq!(changes.drained, vec!["127.0.0.1:8000".to_string()]);
    /// let states = engine.backend_states();
    /// assert_eq!(states.len(), 1); // idle, so the old one left at once
    /// assert_eq!(states[0].address, "127.0.0.1:8001");
    /// engine.shutdown();
    /// ```
    pub fn set_backends(&self, desired: &[crate::config::BackendConfig]) -> BackendChanges {
        for b in desired {
            debug_assert!(
                b.address.parse::<std::net::SocketAddr>().is_ok(),
                "{:?} is not an ip:port",
                b.address
            );
        }
        self.shared.gate.set_backends(desired)
    }

    /// Every backend's state: slots, last scrape, saturation score, draining (slot order).
    pub fn backend_states(&self) -> Vec<BackendState> {
        self.shared.gate.backend_states()
    }

    /// `saturation.queue_depth_threshold` when a metrics detector gates dispatch (what cluster
    /// queue shares are shares of), `None` otherwise.
    pub fn queue_depth_threshold(&self) -> Option<u32> {
        self.shared.gate.backends().queue_depth_threshold()
    }

    /// Scraper side: publish a good scrape of backend `id` that saw every request sent to it
    /// (wakes a shard if it made room); `false` if that backend has left the table.
    pub fn publish_scrape(&self, id: BackendId, reading: ScrapeReading) -> bool {
        self.shared.gate.publish_scrape(id, reading)
    }

    /// Scraper side: requests sent to backend `id` since its last scrape, read just before the
    /// next scrape is requested and handed to [`publish_scrape_since`](Self::publish_scrape_since).
    pub fn sent_since_scrape(&self, id: BackendId) -> u32 {
        self.shared.gate.backends().sent_since_scrape(id)
    }

    /// Scraper side: publish a good scrape requested when [`sent_since_scrape`](Self::sent_since_scrape)
    /// read `sent_before`: the requests sent while it was on its way still count against the
    /// backend's room (the server may not have seen them), so an answer that arrives late never
    /// lets a second burst through.
    pub fn publish_scrape_since(&self, id: BackendId, reading: ScrapeReading, sent_before: u32) -> bool {
        self.shared.gate.publish_scrape_since(id, reading, sent_before)
    }

    /// Scraper side: backend `id` had no good scrape within `saturation.staleness`.
    pub fn mark_stale(&self, id: BackendId) {
        self.shared.gate.mark_stale(id);
    }

    /// Cluster side: this replica's leases and queue shares from a good sync, valid until
    /// `deadline_ns` on the engine clock
    /// ([`BackendTable::grant_leases`](crate::backends::BackendTable::grant_leases)); wakes a
    /// shard if one grew.
    pub fn grant_leases(&self, grants: Grants<'_>, deadline_ns: u64) {
        let gate = &self.shared.gate;
        if gate.grant_leases(grants, deadline_ns) {
            fence(Ordering::SeqCst);
            gate.wake_best(None);
        }
    }

    /// Cluster side: local mode, `max(1, ⌊max_inflight / replicas⌋)` per capped backend; wakes a
    /// shard if that made room.
    pub fn local_caps(&self, replicas: u32) {
        let gate = &self.shared.gate;
        if gate.local_caps(replicas) {
            fence(Ordering::SeqCst);
            gate.wake_best(None);
        }
    }

    /// Cluster side: lapse the leases to local mode if their deadline has passed (call every
    /// tick, whatever Redis does); `true` if they lapsed now.
    pub fn lapse_leases(&self, replicas: u32) -> bool {
        let gate = &self.shared.gate;
        let lapsed = gate.lapse_leases(replicas);
        if lapsed {
            fence(Ordering::SeqCst);
            gate.wake_best(None);
        }
        lapsed
    }

    /// The engine clock now, ns since its epoch (what lease deadlines are on).
    pub fn now_ns(&self) -> u64 {
        self.shared.gate.clock().now_ns()
    }

    /// What each shard last published (head/tail scores, queue length, ceiling-blocked, asleep).
    pub fn shard_states(&self) -> Vec<crate::gate::ShardState> {
        self.shared.gate.shard_states()
    }

    /// Number of shards running.
    pub fn shards(&self) -> usize {
        self.shared.shards()
    }

    /// Whether [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::Acquire)
    }

    /// Stop intake, answer every queued and in-ring request with its shutdown outcome, and join
    /// the shards. Idempotent; permits already granted stay valid until dropped.
    pub fn shutdown(&self) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        for i in 0..self.shared.shards() {
            self.shared.gate.shard(i).doorbell.ring();
        }
        let executors: Vec<_> =
            std::mem::take(&mut *self.executors.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in executors {
            // A worker that panicked has already answered nothing more; surface it loudly.
            if let Err(e) = handle.join() {
                panic!("shard executor failed: {e}");
            }
        }
        self.shared.gate.close();
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("shards", &self.shards()).field("stats", &self.stats()).finish()
    }
}

fn empty_view(clock: Clock) -> RegistryView {
    RegistryView::new(Vec::new(), Arc::new(AtomicUsize::new(0)), clock)
}
