//! Shard logic: one shard's queue and workload table, driven by an explicit `now`.
//!
//! Single-threaded and deterministic, so every rule can be tested exactly; the runtime runs one
//! [`Shard`] per pinned executor. Every request that reaches [`Shard::enqueue`] leaves through
//! exactly one [`Done`] passed to the caller's sink (or, for a dispatch, returned):
//!
//! | path | outcome |
//! |---|---|
//! | TTL already over on arrival | `RejectedOther(ExpiredOnArrival)` |
//! | queue full, not better than the worst queued | `RejectedCapacity` |
//! | queue full, better than the worst queued | admitted; the worst gets `EvictedDisplaced` |
//! | [`Shard::dispatch_next`] | `Dispatched` (the workload stays active until the permit drops) |
//! | [`Shard::cancel`] | `EvictedCancelled` |
//! | [`Shard::rescore`] / [`Shard::expire`] past its deadline | `EvictedTtl` |
//! | [`Shard::drain_on_shutdown`] | `EvictedShutdown` |
//! | over a `reject` quota on arrival | `RejectedCapacity`, with [`Done::quota_retry_ns`] |
//!
//! **Quotas.** A request of a workload over a `queue` quota stays in the heap under a *parked* key
//! ([`Key::parked`]), below every unparked request, so it holds nobody up. Heads are parked lazily
//! ([`Shard::settle_head`]) when their workload's quota says wait; [`Shard::wake_quotas`] unparks as
//! many as the quota then allows, when a permit of the workload is released (the worker is woken
//! for it) or when a bucket refills ([`Shard::quota_recheck_ns`]).

use crate::budget::QueueBudget;
use crate::config::{effective_ttl, EngineConfig, MAX_TTL};
use crate::fairness::VtcFloors;
use crate::gate::CROSS_SHARD_SLACK;
use crate::heap::{Handle, MaxMinHeap};
use crate::outcome::{OtherReason, Outcome};
pub use crate::queued::{Arrival, Done, Queued};
use crate::quota::{QuotaState, Wait};
use crate::quota_rule::OnExceed;
use crate::registry::{RateWindow, WorkloadEntry, WorkloadTable};
use crate::score::{Key, Scorer};
use crate::sync::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

/// `retry-after` of a quota refusal for `max_inflight` (when a slot frees is unknown).
pub const QUOTA_RELEASE_RETRY_NS: u64 = 1_000_000_000;

/// The parked requests of one workload waiting on its quota.
#[derive(Debug)]
struct ParkedWorkload {
    workload: Arc<WorkloadEntry>,
    /// Handles of its parked requests in parking order (some may have left the heap since).
    handles: Vec<Handle>,
}

/// What [`Shard::enqueue`] did with an arrival (its outcome, if final, went to the sink).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Queued; this handle cancels it.
    Queued(Handle),
    /// Refused; the sink got its outcome.
    Rejected,
}

/// One shard: a max-min heap of queued requests keyed by cached scores, and a workload table.
pub struct Shard<C> {
    /// Queued requests. Invariant: every item holds one unit of `budget` and one `active` count.
    heap: MaxMinHeap<Key, Queued<C>>,
    /// The shard's workloads.
    table: WorkloadTable,
    /// Engine-wide queue limits.
    budget: Arc<QueueBudget>,
    scorer: Scorer,
    /// Next arrival number; keys tie-break on it, so it must grow (globally unique: see `seq_stride`).
    next_seq: u64,
    /// Shards number their arrivals `index, index + stride, …` so sequence numbers never collide.
    seq_stride: u64,
    /// `queue.ttl` (at most `MAX_TTL`): the longest a request may wait.
    queue_ttl: Duration,
    /// A lower bound on the earliest queued deadline (`u64::MAX` when empty).
    earliest_deadline_ns: u64,
    /// Last time idle workloads were swept.
    last_sweep_ns: u64,
    sweep_interval_ns: u64,
    /// This shard's index, where it publishes its VTC minimum.
    index: usize,
    /// Every shard's least active VTC counter (engine-wide; a private one until
    /// [`with_floors`](Self::with_floors)).
    floors: Arc<VtcFloors>,
    /// Workloads waiting on a `queue` quota, by entry address. Invariant: exactly the workloads
    /// whose `parked` flag is set.
    parked: hashbrown::HashMap<usize, ParkedWorkload>,
    /// When a parked workload's bucket next refills (`u64::MAX`: none is waiting on time).
    quota_recheck_ns: u64,
}

impl<C> Shard<C> {
    /// Shard `index` of `count`, sharing `budget` and the engine-wide `tracked` workload count.
    ///
    /// ```
    /// use flowgate_engine::{budget::QueueBudget, config::EngineConfig, shard::*};
    /// use std::sync::{Arc, atomic::AtomicUsize};
    /// let cfg = EngineConfig::default();
    /// let mut shard: Shard<u32> = Shard::new(&cfg, 0, 1, Arc::new(QueueBudget::new(10, 0)), Arc::new(AtomicUsize::new(0)));
    /// let a = Arrival { workload_id: "w".into(), hash: flowgate_engine::registry::hash_workload_id("w"),
    ///     criticality: 3, ttl: None, bytes: 0, arrived_ns: 0, completion: 7 };
    /// let mut done = Vec::new();
    /// assert!(matches!(shard.enqueue(a, 0, &mut |d| done.push(d)), Admission::Queued(_)));
    /// assert_eq!(shard.dispatch_next(5).unwrap().completion, 7);
    /// ```
    pub fn new(
        config: &EngineConfig,
        index: usize,
        count: usize,
        budget: Arc<QueueBudget>,
        tracked: Arc<AtomicUsize>,
    ) -> Self {
        assert!(index < count, "shard index {index} out of {count}");
        let window = RateWindow::new(config.scoring.rate_window);
        let mut table = WorkloadTable::new(&config.workloads, window, tracked);
        table.set_scoring(&config.scoring);
        table.set_shard(index);
        let capacity = match config.queue.max_requests {
            0 => 1024,
            n => (n as usize / count).clamp(16, 1 << 20),
        };
        Self {
            heap: MaxMinHeap::with_capacity(capacity),
            table,
            budget,
            scorer: Scorer::new(&config.scoring),
            next_seq: index as u64,
            seq_stride: count as u64,
            queue_ttl: config.queue.ttl.min(MAX_TTL),
            earliest_deadline_ns: u64::MAX,
            last_sweep_ns: 0,
            sweep_interval_ns: duration_ns(config.workloads.idle_timeout / 4).max(1_000_000),
            index,
            floors: Arc::new(VtcFloors::new(count)),
            parked: hashbrown::HashMap::new(),
            quota_recheck_ns: u64::MAX,
        }
    }

    /// Share `floors` with the engine's other shards (their VTC minima make one floor).
    pub fn with_floors(mut self, floors: Arc<VtcFloors>) -> Self {
        self.floors = floors;
        self
    }

    /// Take the live part of a new configuration (a reload) at `now_ns`: the scoring rule (a new
    /// `rate_window` re-bases every workload's windows, keeping their rates), the default TTL
    /// (for requests queued from now on), the idle timeout. Queued requests keep their place and
    /// deadline until the caller's next [`rescore`](Self::rescore) rekeys them by the new rule.
    pub fn reconfigure(&mut self, config: &EngineConfig, now_ns: u64) {
        self.scorer = Scorer::new(&config.scoring);
        self.table.set_scoring(&config.scoring);
        self.table.set_window(RateWindow::new(config.scoring.rate_window), now_ns);
        self.table.set_quotas(&config.workloads.quotas);
        // New rules may let parked workloads go: look at them at the next chance.
        self.quota_recheck_ns = if self.parked.is_empty() { u64::MAX } else { 0 };
        self.queue_ttl = config.queue.ttl.min(MAX_TTL);
        self.sweep_interval_ns = duration_ns(config.workloads.idle_timeout / 4).max(1_000_000);
        self.table.set_idle_timeout(config.workloads.idle_timeout);
        self.table.set_max_tracked(config.workloads.max_tracked);
    }

    /// Queued requests in this shard.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is queued here.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Body bytes queued in this shard.
    pub fn bytes(&self) -> u64 {
        self.heap.bytes()
    }

    /// The workload table (for readers' directories and tests).
    pub fn table(&self) -> &WorkloadTable {
        &self.table
    }

    /// Key of the best queued request.
    pub fn head_key(&self) -> Option<Key> {
        self.heap.peek_head().map(|(_, k, _)| k)
    }

    /// Key of the best queued request that may be dispatched: the head unless it is parked
    /// (then everything here waits on its quota).
    pub fn dispatch_head(&self) -> Option<Key> {
        self.head_key().filter(|k| !k.is_parked())
    }

    /// Key of the worst queued request.
    pub fn tail_key(&self) -> Option<Key> {
        self.heap.peek_tail().map(|(_, k, _)| k)
    }

    /// Keys of the two worst queued requests, worst first.
    pub fn lowest_two(&self) -> [Option<Key>; 2] {
        self.heap.lowest_two()
    }

    /// Evict the worst queued request as `EvictedDisplaced` if it scores below `score` (another
    /// shard admitted a better request over the limit in its place). Returns whether it did.
    pub fn displace_below(&mut self, score: f64, now_ns: u64, sink: &mut impl FnMut(Done<C>)) -> bool {
        match self.heap.peek_tail() {
            Some((handle, tail, _)) if tail.score < score || tail.is_parked() => {
                let victim = self.heap.remove(handle).expect("tail handle is live");
                sink(self.leave(victim.value, victim.bytes, Outcome::EvictedDisplaced, now_ns));
                true
            }
            _ => false,
        }
    }

    /// Criticality of the best queued request.
    pub fn head_criticality(&self) -> Option<u8> {
        self.heap.peek_head().map(|(_, _, q)| q.criticality)
    }

    /// A lower bound on the earliest TTL deadline queued here; `u64::MAX` if none.
    pub fn next_deadline_ns(&self) -> u64 {
        self.earliest_deadline_ns
    }

    /// Admit `arrival` at `now_ns`: queue it, displacing worse requests of this shard if the queue
    /// is full, or refuse it. Outcomes of refused and displaced requests go to `sink`.
    pub fn enqueue(&mut self, arrival: Arrival<C>, now_ns: u64, sink: &mut impl FnMut(Done<C>)) -> Admission {
        self.enqueue_or_steal(arrival, now_ns, sink, &mut |_, _, _| false)
    }

    /// [`enqueue`](Self::enqueue) with other shards: when the queue is full, the engine's lowest
    /// request makes room, wherever it is. `steal(below, score, bytes)` asks whether another shard
    /// holds a request scoring under `below` that it will evict for this newcomer scoring `score`
    /// (the callee then reserves the room itself, see [`QueueBudget::try_reserve_over`]); it is asked
    /// first, and this shard's own tail goes only if no other shard's is lower by more than
    /// [`CROSS_SHARD_SLACK`].
    pub fn enqueue_or_steal(
        &mut self,
        arrival: Arrival<C>,
        now_ns: u64,
        sink: &mut impl FnMut(Done<C>),
        steal: &mut dyn FnMut(f64, f64, u64) -> bool,
    ) -> Admission {
        let Arrival { workload_id, hash, criticality, ttl, bytes, arrived_ns, completion } = arrival;
        assert!((1..=5).contains(&criticality), "criticality {criticality} reached a shard");
        // 1. Count the arrival; the key uses the workload's rate including this request.
        let workload = self.table.arrive(&workload_id, hash, criticality, now_ns);
        let ttl_ns = duration_ns(effective_ttl(ttl, self.queue_ttl));
        let deadline_ns = arrived_ns.saturating_add(ttl_ns);
        let refuse = |outcome, completion, quota_retry_ns| Done {
            completion,
            outcome,
            workload: workload.clone(),
            criticality,
            queued_ns: now_ns.saturating_sub(arrived_ns),
            quota_retry_ns,
            remaining: None,
            reserved_tokens: 0,
        };
        let reject = |outcome, completion| refuse(outcome, completion, None);
        // 2. Too late already: refuse without queueing.
        if deadline_ns <= now_ns {
            sink(reject(Outcome::RejectedOther(OtherReason::ExpiredOnArrival), completion));
            return Admission::Rejected;
        }
        let mut key =
            self.scorer.key(arrived_ns, now_ns, criticality, workload.cached_pressure(), self.next_seq);
        self.next_seq += self.seq_stride;
        // 2b. Its quota: over a `reject` one, refused now; a `queue` one that already has it
        // waiting, queued parked behind everyone else.
        let mut takes_quota = false;
        if let Some(quota) = self.table.quota_of(&workload) {
            let state = workload.quota();
            match quota.on_exceed {
                OnExceed::Reject => match state.check(quota, workload.active(), now_ns) {
                    Ok(()) => takes_quota = true,
                    Err(wait) => {
                        let retry_ns = match wait {
                            Wait::Release => QUOTA_RELEASE_RETRY_NS,
                            Wait::Until(at) => at.saturating_sub(now_ns).max(1),
                        };
                        sink(refuse(Outcome::RejectedCapacity, completion, Some(retry_ns)));
                        return Admission::Rejected;
                    }
                },
                OnExceed::Queue if state.parked() => key = key.parked(),
                OnExceed::Queue => {}
            }
        }
        // 3. Reserve queue room; when full, displace worse requests from the tail while that helps.
        if !self.budget.could_fit(bytes) {
            sink(reject(Outcome::RejectedCapacity, completion));
            return Admission::Rejected;
        }
        while !self.budget.try_reserve(bytes) {
            // 3a. The lowest request of the engine goes: another shard's if it scores below ours
            // (by more than the slack) or we have none below the newcomer. A parked request never
            // pushes another shard's request out; nor is a byte limit relieved by a count.
            let local = self.heap.peek_tail().filter(|&(_, tail_key, _)| tail_key < key);
            let below = match local {
                Some((_, tail_key, _)) if tail_key.is_parked() => None,
                Some((_, tail_key, _)) => Some(tail_key.score - CROSS_SHARD_SLACK),
                None => Some(key.score),
            };
            let may_steal = !key.is_parked() && !self.budget.bytes_bound(bytes);
            if let Some(below) = below.filter(|_| may_steal) {
                if steal(below, key.score, bytes) {
                    break;
                }
            }
            // 3b. Else our own tail, if the newcomer beats it; else the newcomer is the lowest.
            let Some((handle, _, _)) = local else {
                sink(reject(Outcome::RejectedCapacity, completion));
                return Admission::Rejected;
            };
            let victim = self.heap.remove(handle).expect("tail handle is live");
            sink(self.leave(victim.value, victim.bytes, Outcome::EvictedDisplaced, now_ns));
        }
        // 4. Queued: the request is active until its outcome (or its permit) releases it.
        let mut reserved_tokens = 0;
        if takes_quota {
            let quota = self.table.quota_of(&workload).expect("bound above");
            workload.quota().take(quota, now_ns);
            reserved_tokens = workload.quota().reserve(now_ns);
        }
        workload.acquire();
        workload.quota().count_queued(1);
        self.earliest_deadline_ns = self.earliest_deadline_ns.min(deadline_ns);
        let parked = key.is_parked().then(|| workload.clone());
        let queued = Queued {
            completion,
            workload,
            arrived_ns,
            aging_from_ns: arrived_ns,
            deadline_ns,
            criticality,
            reserved_tokens,
        };
        let handle = self.heap.push(key, bytes, queued);
        if let Some(workload) = parked {
            self.park_handle(workload, handle);
        }
        Admission::Queued(handle)
    }

    /// Record `handle` (already keyed parked) among `workload`'s parked requests.
    fn park_handle(&mut self, workload: Arc<WorkloadEntry>, handle: Handle) {
        let slot = self
            .parked
            .entry(Arc::as_ptr(&workload) as usize)
            .or_insert_with(|| ParkedWorkload { workload: workload.clone(), handles: Vec::new() });
        slot.handles.push(handle);
        // Bounded by what is queued: drop the handles of requests that left meanwhile.
        if slot.handles.len() > 2 * workload.quota().queued() as usize + 16 {
            let heap = &self.heap;
            slot.handles.retain(|h| heap.contains(*h));
        }
    }

    /// Park the head while its workload's `queue` quota says wait, until the head is one that may
    /// go (or parked: everything left waits). Call before each dispatch.
    pub fn settle_head(&mut self, now_ns: u64) {
        loop {
            let Some((handle, key, q)) = self.heap.peek_head() else { return };
            if key.is_parked() {
                return;
            }
            let Some(quota) = self.table.quota_of(&q.workload) else { return };
            if quota.on_exceed != OnExceed::Queue {
                return;
            }
            let workload = q.workload.clone();
            let state = workload.quota();
            let Err(wait) = state.check(quota, in_flight(&workload), now_ns) else { return };
            // Announce the parking, then look again: a permit released meanwhile either sees the
            // flag (and wakes us) or its release is seen here.
            state.set_parked(true);
            crate::sync::fence(crate::sync::Ordering::SeqCst);
            let wait = match state.check(quota, in_flight(&workload), now_ns) {
                Ok(()) if !self.parked.contains_key(&(Arc::as_ptr(&workload) as usize)) => {
                    state.set_parked(false);
                    return;
                }
                Ok(()) => return,
                Err(_) => wait,
            };
            if let Wait::Until(at) = wait {
                self.quota_recheck_ns = self.quota_recheck_ns.min(at);
            }
            self.heap.rekey(handle, key.parked()).expect("head handle is live");
            self.park_handle(workload, handle);
        }
    }

    /// When a parked workload's bucket refills next (`u64::MAX`: none waits on time).
    pub fn quota_recheck_ns(&self) -> u64 {
        self.quota_recheck_ns
    }

    /// Whether any workload waits on its quota here.
    pub fn has_parked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Look at every parked workload's quota again (a permit of one was released, a bucket
    /// refilled, or the rules changed) and unpark as many of its requests as the quota now allows,
    /// rekeyed as of `now_ns`.
    pub fn wake_quotas(&mut self, now_ns: u64) {
        let mut recheck = u64::MAX;
        let scorer = self.scorer;
        let Self { parked, heap, table, .. } = self;
        parked.retain(|_, p| {
            let state = p.workload.quota();
            // How many may go now: unbounded without a rule (the rules changed), else what each
            // limit still allows.
            let allowance = match table.quota_of(&p.workload) {
                None => usize::MAX,
                Some(quota) if quota.on_exceed != OnExceed::Queue => usize::MAX,
                Some(quota) => match state.check(quota, in_flight(&p.workload), now_ns) {
                    Err(Wait::Until(at)) => {
                        recheck = recheck.min(at);
                        0
                    }
                    Err(Wait::Release) => 0,
                    Ok(()) => {
                        let room = quota
                            .max_inflight
                            .map_or(u64::MAX, |m| u64::from(m).saturating_sub(in_flight(&p.workload)));
                        let left = state.remaining(quota, now_ns).requests.unwrap_or(u64::MAX);
                        room.min(left).max(1) as usize
                    }
                },
            };
            let mut woken = 0;
            p.handles.retain(|&h| {
                let Some((key, _)) = heap.get(h) else { return false };
                if woken >= allowance {
                    return true;
                }
                woken += 1;
                // Back in the queue as of now: its wait on its own quota does not age it.
                let q = heap.value_mut(h).expect("live handle");
                q.aging_from_ns = now_ns;
                let fresh = scorer.key(now_ns, now_ns, q.criticality, q.workload.cached_pressure(), key.seq);
                heap.rekey(h, fresh.unparked()).expect("live handle");
                false
            });
            let still = !p.handles.is_empty();
            state.set_parked(still);
            still
        });
        self.quota_recheck_ns = recheck;
    }

    /// Pop the best request as `Dispatched`. The caller must hold a free slot for it.
    pub fn dispatch_next(&mut self, now_ns: u64) -> Option<Done<C>> {
        debug_assert!(self.heap.peek_head().is_none_or(|(_, k, _)| !k.is_parked()), "parked head dispatched");
        let entry = self.heap.pop_head()?;
        self.budget.release(entry.bytes);
        let q = entry.value;
        let state = q.workload.quota();
        state.count_queued(-1);
        let mut reserved_tokens = q.reserved_tokens;
        let remaining = self.table.quota_of(&q.workload).map(|quota| {
            if QuotaState::queues(quota) {
                state.take(quota, now_ns);
                reserved_tokens += state.reserve(now_ns);
            }
            state.remaining(quota, now_ns)
        });
        Some(Done {
            completion: q.completion,
            outcome: Outcome::Dispatched,
            workload: q.workload,
            criticality: q.criticality,
            queued_ns: now_ns.saturating_sub(q.arrived_ns),
            quota_retry_ns: None,
            remaining,
            reserved_tokens,
        })
    }

    /// Cancel a queued request: `Some(EvictedCancelled)`, or `None` if the handle no longer names a
    /// queued request (it already has its outcome).
    pub fn cancel(&mut self, handle: Handle, now_ns: u64) -> Option<Done<C>> {
        let entry = self.heap.remove(handle).ok()?;
        Some(self.leave(entry.value, entry.bytes, Outcome::EvictedCancelled, now_ns))
    }

    /// Evict every request whose deadline has passed, if any could have (cheap when none).
    pub fn expire(&mut self, now_ns: u64, sink: &mut impl FnMut(Done<C>)) {
        if self.earliest_deadline_ns <= now_ns {
            self.rescore(now_ns, sink);
        }
    }

    /// The periodic pass: refresh rates, rekey every request as of `now_ns` (wait cap and rates),
    /// evict the expired, rebuild the heap in O(n), and sweep idle workloads now and then.
    pub fn rescore(&mut self, now_ns: u64, sink: &mut impl FnMut(Done<C>)) {
        // A safety net under the event-driven wake-ups: parked workloads are looked at every pass.
        if !self.parked.is_empty() {
            self.wake_quotas(now_ns);
        }
        // The VTC floor: publish ours, read everyone's (at most one pass old).
        self.floors.publish(self.index, self.table.least_active_served());
        self.table.refresh_pressures(now_ns, self.floors.floor());
        let scorer = self.scorer;
        let mut earliest = u64::MAX;
        let mut expired: Vec<(Queued<C>, u64)> = Vec::new();
        self.heap.rekey_retain(
            |q, old| {
                if q.deadline_ns <= now_ns {
                    return None;
                }
                earliest = earliest.min(q.deadline_ns);
                let rate = q.workload.cached_pressure();
                let key = scorer.key(q.aging_from_ns, now_ns, q.criticality, rate, old.unparked().seq);
                Some(if old.is_parked() { key.parked() } else { key })
            },
            |entry| expired.push((entry.value, entry.bytes)),
        );
        self.earliest_deadline_ns = earliest;
        for (q, bytes) in expired {
            sink(self.leave(q, bytes, Outcome::EvictedTtl, now_ns));
        }
        if now_ns.saturating_sub(self.last_sweep_ns) >= self.sweep_interval_ns {
            self.last_sweep_ns = now_ns;
            self.table.sweep(now_ns);
        }
    }

    /// Forget idle workloads now (normally done by [`rescore`](Self::rescore) every quarter
    /// `idle_timeout`); returns how many.
    pub fn sweep_idle(&mut self, now_ns: u64) -> usize {
        self.last_sweep_ns = now_ns;
        self.table.sweep(now_ns)
    }

    /// Answer every queued request with `EvictedShutdown`.
    pub fn drain_on_shutdown(&mut self, now_ns: u64, sink: &mut impl FnMut(Done<C>)) {
        let mut drained: Vec<(Queued<C>, u64)> = Vec::with_capacity(self.heap.len());
        self.heap.drain(|entry| drained.push((entry.value, entry.bytes)));
        for (q, bytes) in drained {
            sink(self.leave(q, bytes, Outcome::EvictedShutdown, now_ns));
        }
        self.earliest_deadline_ns = u64::MAX;
    }

    /// A queued request leaves without dispatch: give back its budget, its active count and the
    /// tokens it reserved.
    fn leave(&self, q: Queued<C>, bytes: u64, outcome: Outcome, now_ns: u64) -> Done<C> {
        debug_assert_ne!(outcome, Outcome::Dispatched);
        self.budget.release(bytes);
        q.workload.quota().count_queued(-1);
        q.workload.quota().give_back(q.reserved_tokens);
        q.workload.release(now_ns);
        Done {
            completion: q.completion,
            outcome,
            workload: q.workload,
            criticality: q.criticality,
            queued_ns: now_ns.saturating_sub(q.arrived_ns),
            quota_retry_ns: None,
            remaining: None,
            reserved_tokens: 0,
        }
    }
}

/// Its requests holding a backend slot: active (queued + in flight) minus queued here.
#[inline]
fn in_flight(workload: &WorkloadEntry) -> u64 {
    workload.active().saturating_sub(workload.quota().queued())
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
