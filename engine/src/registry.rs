//! Workload tables: per-workload atomic counters, owned by the shard the workload hashes to.
//!
//! Workloads are hashed to shards by id, so each workload lives in exactly one shard's
//! [`WorkloadTable`], and only that shard's thread inserts, records arrivals and forgets. The
//! counters are atomics anyway because two other parties touch them: a dispatched request's permit
//! releases `active` from whatever thread finishes the request, and metrics readers read them
//! through a [`RegistryView`](crate::registry_view::RegistryView). The hot path (a request of a
//! known workload) takes no lock; the first request of a new workload, and the idle sweep, take
//! the shard's uncontended directory mutex so readers can list workloads.
//!
//! **Rate.** Arrivals are counted in [`RATE_BUCKETS`] buckets of `rate_window / RATE_BUCKETS` each;
//! the rate is the sum of the last [`RATE_BUCKETS`] buckets (the current, partial one included),
//! divided by the window. So it covers between `window − bucket` and `window` of history: it may
//! miss up to one bucket's worth of the oldest arrivals (a twelfth of the window: 5 s with the 60 s
//! default) and never counts one older than the window. Reads are O(1) (12 loads). A reload that
//! changes `rate_window` re-bases both windows on the owning shard ([`crate::rate_window`]).
//!
//! **Tokens.** A dispatched request's usage is charged by its permit, from whatever thread learns
//! it ([`WorkloadEntry::charge`]): totals of prompt and completion tokens, a [`TokenWindow`] of
//! weighted tokens (the same bucket geometry as the arrivals, any-thread writes) and the VTC
//! counter of weighted tokens served. The table's [`Penalty`] decides which of the arrival rate,
//! the token rate or the VTC lag the keys are built from (`cached_pressure`).
//!
//! **Bounds.** At most `max_tracked` workloads are tracked across all shards (a shared atomic
//! count); beyond it, new ids share one [`OVERFLOW_WORKLOAD_ID`] entry per shard. Idle workloads
//! (nothing active, no arrival for `idle_timeout`) are forgotten by [`WorkloadTable::sweep`].

use crate::config::{ScoringConfig, WorkloadConfig, RATE_BUCKETS};
use crate::fairness::Penalty;
use crate::quota::QuotaState;
use crate::quota_rule::{first_match, Quota};
pub use crate::rate_window::RateWindow;
use crate::rate_window::{seed_share, slot_bucket, WindowCell};
use crate::sync::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Mutex, Ordering};
use crate::tokens::{TokenPrices, TokenWindow};
use hashbrown::HashTable;
use std::hash::BuildHasher;
use std::sync::Arc;

/// The id under which workloads beyond `max_tracked` are counted together.
pub const OVERFLOW_WORKLOAD_ID: &str = "__overflow__";

/// The hasher every party uses for workload ids: producers hash once to pick a shard, the shard
/// reuses that hash in its table. Seeded randomly once per process (so clients cannot aim
/// collisions at a table), then fixed, so a hash computed anywhere is valid everywhere.
pub fn hash_workload_id(id: &str) -> u64 {
    static HASHER: std::sync::OnceLock<hashbrown::DefaultHashBuilder> = std::sync::OnceLock::new();
    HASHER.get_or_init(Default::default).hash_one(id)
}

/// One workload's counters. Shared (`Arc`) by its shard's table, its queued requests and the permits
/// of its dispatched requests.
#[derive(Debug)]
pub struct WorkloadEntry {
    /// The workload id; for the overflow entry, [`OVERFLOW_WORKLOAD_ID`].
    id: Arc<str>,
    /// `hash_workload_id(id)`, kept so the table can rehash without hashing strings again.
    hash: u64,
    /// Arrivals ever seen. Written by the owning shard only.
    total: AtomicU64,
    /// Requests queued or in flight. Incremented by the owning shard at admission; decremented by
    /// the shard on eviction, or by the permit's drop after dispatch. Never below zero (asserted).
    active: AtomicU64,
    /// Time of the last arrival or release, ns since the engine epoch.
    last_activity_ns: AtomicU64,
    /// Criticality of the last arrival (1..=5).
    criticality: AtomicU8,
    /// Arrivals per bucket; bucket `b` (absolute index) lives at `b % RATE_BUCKETS`. Owning shard
    /// writes, anyone reads.
    buckets: [AtomicU32; RATE_BUCKETS],
    /// Absolute index of the newest bucket written; buckets older than it by ≥ RATE_BUCKETS are stale.
    head_bucket: AtomicU64,
    /// The penalty input (f64 bits, in the unit of the table's [`Penalty`]) as of the owning
    /// shard's last arrival or rescore; what keys are built from.
    cached_pressure: AtomicU64,
    /// Prompt tokens charged, ever. Any thread adds.
    prompt_tokens: AtomicU64,
    /// Completion tokens charged, ever. Any thread adds.
    completion_tokens: AtomicU64,
    /// Weighted tokens charged per bucket of the rate window. Any thread charges.
    tokens: TokenWindow,
    /// VTC's counter: weighted tokens served, plus the lifts to the active floor. Only grows.
    served: AtomicU64,
    /// Prices of prompt and completion tokens: the owning table's, swapped live.
    prices: Arc<TokenPrices>,
    /// The geometry both windows (arrivals, tokens) are in: the table's, re-based at a reload.
    window: WindowCell,
    /// Its quota's binding and buckets.
    quota: QuotaState,
    /// Cluster mode: this workload's arrival rate on the other replicas (f64 bits, requests/s),
    /// as of the last sync; added to the local rate in the penalty. Written by the sync task,
    /// read by the owning shard; an independent value (nothing else is published with it), so
    /// `Relaxed` both ways. 0 standalone.
    remote_rate: AtomicU64,
    /// Likewise, weighted tokens/s.
    remote_token_rate: AtomicU64,
}

/// A point-in-time copy of one workload's counters, for the metrics API.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSnapshot {
    /// Workload id.
    pub workload_id: Arc<str>,
    /// Criticality of its most recent request.
    pub criticality: u8,
    /// Requests queued or in flight.
    pub active: u64,
    /// Requests ever seen.
    pub total: u64,
    /// Arrival rate over the sliding window, requests/s.
    pub rate_per_s: f64,
    /// Nanoseconds since its last activity.
    pub idle_ns: u64,
    /// Prompt tokens charged, ever.
    pub prompt_tokens: u64,
    /// Completion tokens charged, ever.
    pub completion_tokens: u64,
    /// Weighted tokens charged per second over the sliding window.
    pub token_rate_per_s: f64,
    /// Cluster mode: its arrival rate on the other replicas, requests/s (0 standalone); the
    /// penalty counts `rate_per_s + remote_rate_per_s`.
    pub remote_rate_per_s: f64,
    /// Cluster mode: its weighted token rate on the other replicas.
    pub remote_token_rate_per_s: f64,
}

impl WorkloadEntry {
    fn new(id: Arc<str>, hash: u64, now_ns: u64, prices: Arc<TokenPrices>, window: RateWindow) -> Self {
        Self {
            id,
            hash,
            total: AtomicU64::new(0),
            active: AtomicU64::new(0),
            last_activity_ns: AtomicU64::new(now_ns),
            criticality: AtomicU8::new(3),
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            head_bucket: AtomicU64::new(0),
            cached_pressure: AtomicU64::new(0f64.to_bits()),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            tokens: TokenWindow::default(),
            served: AtomicU64::new(0),
            prices,
            window: WindowCell::new(window),
            quota: QuotaState::default(),
            remote_rate: AtomicU64::new(0f64.to_bits()),
            remote_token_rate: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Cluster mode: this workload's rates on the other replicas (requests/s, weighted tokens/s),
    /// which the penalty adds to the local ones from the owning shard's next arrival or rescore.
    /// Negative or non-finite values read as 0.
    pub fn set_remote_rates(&self, requests_per_s: f64, tokens_per_s: f64) {
        let clean = |v: f64| if v.is_finite() && v > 0.0 { v } else { 0.0 };
        self.remote_rate.store(clean(requests_per_s).to_bits(), Ordering::Relaxed);
        self.remote_token_rate.store(clean(tokens_per_s).to_bits(), Ordering::Relaxed);
    }

    /// The other replicas' rates as last set: (requests/s, weighted tokens/s).
    pub fn remote_rates(&self) -> (f64, f64) {
        (
            f64::from_bits(self.remote_rate.load(Ordering::Relaxed)),
            f64::from_bits(self.remote_token_rate.load(Ordering::Relaxed)),
        )
    }

    /// Its quota state.
    #[inline]
    pub fn quota(&self) -> &QuotaState {
        &self.quota
    }

    /// The workload id.
    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    /// Requests queued or in flight.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// Requests ever seen.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Charge a finished request's usage at `now_ns`: the token totals, the token window and the
    /// VTC counter. Any thread (the permit's holder); returns the weighted cost.
    ///
    /// ```
    /// use flowgate_engine::{config::WorkloadConfig, registry::*};
    /// use std::sync::{Arc, atomic::AtomicUsize};
    /// let mut t = WorkloadTable::new(&WorkloadConfig::default(), RateWindow::new(std::time::Duration::from_secs(60)), Arc::new(AtomicUsize::new(0)));
    /// let e = t.arrive("chat", hash_workload_id("chat"), 3, 1_000);
    /// assert_eq!(e.charge(2_000, 100, 10), 120); // input weight 1, output weight 2
    /// let s = e.snapshot(2_000);
    /// assert_eq!((s.prompt_tokens, s.completion_tokens), (100, 10));
    /// assert_eq!(s.token_rate_per_s, 2.0); // 120 weighted tokens over the 60 s window
    /// ```
    pub fn charge(&self, now_ns: u64, prompt_tokens: u64, completion_tokens: u64) -> u64 {
        self.charge_reserved(now_ns, prompt_tokens, completion_tokens, 0)
    }

    /// [`charge`](Self::charge) for a request that reserved `reserved_tokens` of its token quota
    /// ([`QuotaState::reserve`]): the quota is settled against the reservation.
    pub fn charge_reserved(
        &self,
        now_ns: u64,
        prompt_tokens: u64,
        completion_tokens: u64,
        reserved_tokens: u64,
    ) -> u64 {
        let cost = self.prices.weigh(prompt_tokens, completion_tokens);
        self.prompt_tokens.fetch_add(prompt_tokens, Ordering::Relaxed);
        self.completion_tokens.fetch_add(completion_tokens, Ordering::Relaxed);
        self.tokens.charge(self.window.get().bucket_of(now_ns), cost);
        self.served.fetch_add(cost, Ordering::Relaxed);
        self.quota.settle(reserved_tokens, cost, now_ns);
        cost
    }

    /// The rate window's geometry this workload is measured in now.
    pub fn window(&self) -> RateWindow {
        self.window.get()
    }

    /// Weighted tokens charged per second over the window ending at `now_ns`.
    pub fn token_rate_per_s(&self, now_ns: u64) -> f64 {
        let window = self.window.get();
        self.tokens.sum(window.bucket_of(now_ns)) as f64 / window.window_s()
    }

    /// VTC's counter: weighted tokens served (plus lifts).
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Count an arrival at `now_ns` (owning shard only).
    fn record_arrival(&self, now_ns: u64, criticality: u8) {
        let bucket = self.window.get().bucket_of(now_ns);
        let head = self.head_bucket.load(Ordering::Relaxed);
        if bucket > head {
            // Zero the buckets the window has slid past, at most one full lap.
            let stale = (bucket - head).min(RATE_BUCKETS as u64);
            for b in (bucket + 1 - stale)..=bucket {
                self.buckets[(b % RATE_BUCKETS as u64) as usize].store(0, Ordering::Relaxed);
            }
            self.head_bucket.store(bucket, Ordering::Release);
        }
        // A late arrival (bucket < head, possible only across shard clock reads) counts in the head.
        let slot = &self.buckets[(bucket.max(head) % RATE_BUCKETS as u64) as usize];
        slot.store(slot.load(Ordering::Relaxed).saturating_add(1), Ordering::Relaxed);
        self.total.store(self.total.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        self.criticality.store(criticality, Ordering::Relaxed);
        self.last_activity_ns.store(now_ns, Ordering::Relaxed);
    }

    /// Recompute and cache the penalty input as of `now_ns` (owning shard only); returns it.
    /// `floor` is the VTC floor, used by [`Penalty::VtcLag`] only.
    fn refresh_pressure(&self, now_ns: u64, penalty: Penalty, floor: u64) -> f64 {
        let pressure = match penalty {
            Penalty::RequestRate => self.rate_per_s(now_ns) + self.remote_rates().0,
            Penalty::TokenRate => self.token_rate_per_s(now_ns) + self.remote_rates().1,
            Penalty::VtcLag => self.served().saturating_sub(floor) as f64,
        };
        self.cached_pressure.store(pressure.to_bits(), Ordering::Relaxed);
        pressure
    }

    /// The penalty input as of the last arrival or [`WorkloadTable::refresh_pressures`] (in the
    /// table's [`Penalty`] unit): one load, for keys.
    #[inline]
    pub fn cached_pressure(&self) -> f64 {
        f64::from_bits(self.cached_pressure.load(Ordering::Relaxed))
    }

    /// Arrivals per second over the window ending at `now_ns`.
    pub fn rate_per_s(&self, now_ns: u64) -> f64 {
        let window = self.window.get();
        self.arrivals_in(window, now_ns) as f64 / window.window_s()
    }

    /// Arrivals counted in `window`'s buckets ending at `now_ns`.
    fn arrivals_in(&self, window: RateWindow, now_ns: u64) -> u64 {
        let now_bucket = window.bucket_of(now_ns);
        let head = self.head_bucket.load(Ordering::Acquire);
        let mut sum = 0u64;
        for (i, count) in self.buckets.iter().enumerate() {
            let Some(abs) = slot_bucket(head, i) else { continue };
            if abs + (RATE_BUCKETS as u64) > now_bucket {
                sum += u64::from(count.load(Ordering::Relaxed));
            }
        }
        sum
    }

    /// Owning shard, at a reload that changed `scoring.rate_window`: move both windows to `to`
    /// as of `now_ns`, keeping their rates (see [`crate::rate_window`]).
    fn rebase_window(&self, to: RateWindow, now_ns: u64) {
        let from = self.window.get();
        if from == to {
            return;
        }
        let arrivals = to.rescale(self.arrivals_in(from, now_ns), from);
        let tokens = to.rescale(self.tokens.sum(from.bucket_of(now_ns)), from);
        let head = to.bucket_of(now_ns);
        for (i, slot) in self.buckets.iter().enumerate() {
            let share = slot_bucket(head, i).map_or(0, |b| seed_share(arrivals, head, b));
            slot.store(share.min(u64::from(u32::MAX)) as u32, Ordering::Relaxed);
        }
        self.head_bucket.store(head, Ordering::Release);
        self.tokens.reseed(head, tokens);
        // Last: a charge that reads the new width (acquire) adds to the seeded buckets.
        self.window.set(to);
    }

    /// One more request is active (owning shard, at admission).
    pub(crate) fn acquire(&self) {
        self.active.fetch_add(1, Ordering::AcqRel);
    }

    /// [`acquire`](Self::acquire), public only under `flowgate_loom` so the loom models
    /// (`loom-tests`) can stand in for the owning shard.
    #[cfg(flowgate_loom)]
    pub fn acquire_as_shard(&self) {
        self.acquire()
    }

    /// A request stopped being active (shard at eviction, or a permit's drop on any thread).
    pub fn release(&self, now_ns: u64) {
        let before = self.active.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "workload {:?}: active count would go negative", self.id);
        self.last_activity_ns.fetch_max(now_ns, Ordering::Relaxed);
    }

    /// A copy of the counters as of `now_ns`.
    pub fn snapshot(&self, now_ns: u64) -> WorkloadSnapshot {
        WorkloadSnapshot {
            workload_id: self.id.clone(),
            criticality: self.criticality.load(Ordering::Relaxed),
            active: self.active(),
            total: self.total(),
            rate_per_s: self.rate_per_s(now_ns),
            idle_ns: now_ns.saturating_sub(self.last_activity_ns.load(Ordering::Relaxed)),
            prompt_tokens: self.prompt_tokens.load(Ordering::Relaxed),
            completion_tokens: self.completion_tokens.load(Ordering::Relaxed),
            token_rate_per_s: self.token_rate_per_s(now_ns),
            remote_rate_per_s: self.remote_rates().0,
            remote_token_rate_per_s: self.remote_rates().1,
        }
    }
}

/// The list of a shard's workloads that readers may see; guarded by a mutex the shard takes only
/// when the set of workloads changes.
pub type Directory = Arc<Mutex<Vec<Arc<WorkloadEntry>>>>;

/// One shard's workload table. Owned by one thread; `!Sync` by construction (no interior locking).
#[derive(Debug)]
pub struct WorkloadTable {
    /// Tracked workloads by id hash. Invariant: the same set as `directory`.
    map: HashTable<Arc<WorkloadEntry>>,
    /// Where ids beyond `max_tracked` are counted.
    overflow: Arc<WorkloadEntry>,
    /// Whether `overflow` is currently listed in `directory`.
    overflow_listed: bool,
    /// Readers' copy of the membership.
    directory: Directory,
    /// Workloads tracked by all shards together; ≤ `max_tracked`.
    tracked: Arc<AtomicUsize>,
    max_tracked: usize,
    idle_timeout_ns: u64,
    window: RateWindow,
    /// What keys are built from.
    penalty: Penalty,
    /// Token prices, shared with every entry.
    prices: Arc<TokenPrices>,
    /// The VTC floor as of the last pass (engine-wide least counter of an active workload); a
    /// workload becoming active is lifted to it.
    vtc_floor: u64,
    /// Quota rules, first match binds a workload (at its first arrival, and again on a reload).
    quotas: Vec<Quota>,
    /// The owning shard's index (quota wake-ups ring it).
    shard: usize,
}

impl WorkloadTable {
    /// A table sharing the engine-wide `tracked` count.
    ///
    /// ```
    /// use flowgate_engine::{config::WorkloadConfig, registry::*};
    /// use std::sync::{Arc, atomic::AtomicUsize};
    /// let mut t = WorkloadTable::new(&WorkloadConfig::default(), RateWindow::new(std::time::Duration::from_secs(60)), Arc::new(AtomicUsize::new(0)));
    /// let e = t.arrive("chat", hash_workload_id("chat"), 3, 1_000);
    /// assert_eq!(e.total(), 1);
    /// ```
    pub fn new(config: &WorkloadConfig, window: RateWindow, tracked: Arc<AtomicUsize>) -> Self {
        let scoring = ScoringConfig::default();
        let prices = Arc::new(TokenPrices::new(&scoring));
        Self {
            map: HashTable::new(),
            overflow: Arc::new(WorkloadEntry::new(
                Arc::from(OVERFLOW_WORKLOAD_ID),
                hash_workload_id(OVERFLOW_WORKLOAD_ID),
                0,
                prices.clone(),
                window,
            )),
            overflow_listed: false,
            directory: Arc::new(Mutex::new(Vec::new())),
            tracked,
            max_tracked: config.max_tracked,
            idle_timeout_ns: config.idle_timeout.as_nanos().min(u64::MAX as u128) as u64,
            window,
            penalty: Penalty::of(&scoring),
            prices,
            vtc_floor: 0,
            quotas: config.quotas.clone(),
            shard: 0,
        }
    }

    /// The owning shard is shard `index` (before any arrival).
    pub fn set_shard(&mut self, index: usize) {
        self.shard = index;
        self.bind(&self.overflow);
    }

    /// Take a reloaded list of quota rules and rebind every workload (buckets keep what was spent).
    pub fn set_quotas(&mut self, quotas: &[Quota]) {
        self.quotas = quotas.to_vec();
        for e in self.map.iter() {
            self.bind(e);
        }
        self.bind(&self.overflow);
    }

    /// The quota rule binding `entry` (one of this table's), if any.
    #[inline]
    pub fn quota_of(&self, entry: &WorkloadEntry) -> Option<&Quota> {
        entry.quota.rule().map(|i| &self.quotas[i])
    }

    fn bind(&self, entry: &WorkloadEntry) {
        let index = first_match(&self.quotas, &entry.id);
        entry.quota.bind(index, index.map(|i| &self.quotas[i]), self.shard);
    }

    /// Take `scoring`'s penalty and token prices (at start and on a reload); keys follow at the
    /// next [`refresh_pressures`](Self::refresh_pressures).
    pub fn set_scoring(&mut self, scoring: &ScoringConfig) {
        self.penalty = Penalty::of(scoring);
        self.prices.set(scoring);
    }

    /// What keys are built from.
    pub fn penalty(&self) -> Penalty {
        self.penalty
    }

    /// A new `scoring.rate_window` (a reload) as of `now_ns`: every workload's windows move to it,
    /// keeping their rates; new workloads start in it.
    pub fn set_window(&mut self, window: RateWindow, now_ns: u64) {
        if window == self.window {
            return;
        }
        self.window = window;
        for e in self.map.iter().chain(std::iter::once(&self.overflow)) {
            e.rebase_window(window, now_ns);
        }
    }

    /// A new `max_tracked` (a reload): new ids are tracked while fewer than `max_tracked` are;
    /// lowered below the count, every new id goes to the overflow entry until idle ones leave.
    pub fn set_max_tracked(&mut self, max_tracked: usize) {
        assert!(max_tracked > 0, "max_tracked is validated to be at least 1");
        self.max_tracked = max_tracked;
    }

    /// A new idle timeout (a reload); the next sweep uses it.
    pub fn set_idle_timeout(&mut self, idle_timeout: std::time::Duration) {
        self.idle_timeout_ns = idle_timeout.as_nanos().min(u64::MAX as u128) as u64;
    }

    /// The readers' handle on this table's membership.
    pub fn directory(&self) -> Directory {
        self.directory.clone()
    }

    /// Workloads in this table (the overflow entry not counted).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no workload is tracked here.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Record an arrival of `id` (whose [`hash_workload_id`] is `hash`) and return its entry.
    pub fn arrive(&mut self, id: &str, hash: u64, criticality: u8, now_ns: u64) -> Arc<WorkloadEntry> {
        debug_assert_eq!(hash, hash_workload_id(id));
        let entry = match self.map.find(hash, |e| &*e.id == id) {
            Some(e) => e.clone(),
            None => self.insert(id, hash, now_ns),
        };
        if self.penalty == Penalty::VtcLag && entry.active() == 0 {
            // Becoming active: idle time banks no credit (VTC's lift to the active floor).
            entry.served.fetch_max(self.vtc_floor, Ordering::Relaxed);
        }
        entry.record_arrival(now_ns, criticality);
        entry.refresh_pressure(now_ns, self.penalty, self.vtc_floor);
        entry
    }

    /// Look up a tracked workload without recording anything.
    pub fn get(&self, id: &str) -> Option<&Arc<WorkloadEntry>> {
        self.map.find(hash_workload_id(id), |e| &*e.id == id)
    }

    fn insert(&mut self, id: &str, hash: u64, now_ns: u64) -> Arc<WorkloadEntry> {
        // Reserve a place in the engine-wide bound, or count under overflow.
        let reserved = self
            .tracked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_tracked).then_some(n + 1))
            .is_ok();
        let mut dir = self.directory.lock().unwrap_or_else(|p| p.into_inner());
        if !reserved {
            if !self.overflow_listed {
                self.overflow_listed = true;
                dir.push(self.overflow.clone());
            }
            return self.overflow.clone();
        }
        let entry =
            Arc::new(WorkloadEntry::new(Arc::from(id), hash, now_ns, self.prices.clone(), self.window));
        self.bind(&entry);
        self.map.insert_unique(hash, entry.clone(), |e| e.hash);
        dir.push(entry.clone());
        entry
    }

    /// The least VTC counter of this table's active workloads ([`crate::fairness::NO_ACTIVE`]
    /// when none is active), for the engine-wide floor.
    pub fn least_active_served(&self) -> u64 {
        self.map
            .iter()
            .chain(std::iter::once(&self.overflow))
            .filter(|e| e.active() > 0)
            .map(|e| e.served())
            .min()
            .unwrap_or(crate::fairness::NO_ACTIVE)
    }

    /// Refresh every workload's cached penalty input as of `now_ns` (the rescore pass, before
    /// rekeying), with the engine-wide VTC `floor` when one is known.
    pub fn refresh_pressures(&mut self, now_ns: u64, floor: Option<u64>) {
        if let Some(floor) = floor {
            self.vtc_floor = floor;
        }
        for e in self.map.iter() {
            e.refresh_pressure(now_ns, self.penalty, self.vtc_floor);
        }
        self.overflow.refresh_pressure(now_ns, self.penalty, self.vtc_floor);
    }

    /// Forget workloads with nothing active and no activity for `idle_timeout`; returns how many.
    pub fn sweep(&mut self, now_ns: u64) -> usize {
        let idle_ns = self.idle_timeout_ns;
        let is_idle = |e: &WorkloadEntry| {
            e.active() == 0 && now_ns.saturating_sub(e.last_activity_ns.load(Ordering::Relaxed)) >= idle_ns
        };
        let before = self.map.len();
        self.map.retain(|e| !is_idle(e));
        let forgotten = before - self.map.len();
        let overflow_idle = self.overflow_listed && is_idle(&self.overflow);
        if forgotten > 0 || overflow_idle {
            if overflow_idle {
                self.overflow_listed = false;
            }
            // Out of the readers' directory first, then give the places back, so the directories
            // together never list more than max_tracked workloads (plus overflow entries).
            self.directory.lock().unwrap_or_else(|p| p.into_inner()).retain(|e| !is_idle(e));
            self.tracked.fetch_sub(forgotten, Ordering::AcqRel);
        }
        forgotten
    }
}
