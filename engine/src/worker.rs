//! The shard worker: the task each pinned executor runs.
//!
//! One loop, event-driven and batched: take new submitters, apply cancellations, drain the rings
//! into the heap, run the rescore/expiry timers, dispatch while slots are free and this shard's
//! head is the best in the engine, publish the head. When a pass finds nothing to do, the worker
//! sleeps on its [`Doorbell`](crate::doorbell::Doorbell) until rung or until its next timer (the
//! rescore pass or the earliest TTL deadline), never spinning. The worker owns its pinned
//! executor's thread and parks it directly (a futex wait, woken by `unpark` in a few µs): an
//! earlier version awaited the doorbell inside glommio's reactor and, under load here, lost
//! foreign wake-ups together with their timers, stalling a shard with work queued.

use crate::gate::{Refusal, NO_HEAD};
use crate::inbox::{Inbox, Submission};
use crate::outcome::{OtherReason, Outcome};
use crate::permit::Permit;
use crate::quota::QuotaNote;
use crate::shard::{Admission, Done, Shard};
use crate::shared::Shared;
use crate::slot::{Decision, Slot};
use crate::sync::Ordering;
use crate::tails::TAILS_OFFERED;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

/// Most submissions taken from one ring per pass (fairness between submitters, bounded latency).
pub const RING_BATCH: usize = 256;
/// Most dispatches per pass.
pub const DISPATCH_BATCH: usize = 256;
/// Most callers' wake-ups a pass holds back before waking them (each caller wakes once per batch of
/// its decisions instead of once per decision; the first waits at most this many deliveries).
pub const WAKE_BATCH: usize = 32;
/// Shortest sleep before an expiry scan (a TTL resolution of 1 ms at most).
const MIN_TIMER_NS: u64 = 1_000_000;
/// Longest sleep of an empty shard (the idle-workload sweep runs on its passes).
const IDLE_TIMER_NS: u64 = 1_000_000_000;
/// Longest a full engine holds arrivals back in their rings while another shard carries out the
/// displacements claimed from it (see [`Worker::must_wait_for_victims`]); past it, an arrival is
/// admitted on what is offered now. The other shard only needs to run once, but on a loaded host
/// (more runnable threads than cores) it may not be scheduled for a whole scheduler period
/// (Linux: up to 24 ms): 10 ms let `global_shedding.rs` shed out of order in 3–5 of 6 runs at load
/// average 8, 50 ms in none of 12. The wait yields the core on every pass.
pub const VICTIM_WAIT_NS: u64 = 50_000_000;

type Completion = Arc<Slot<Permit>>;

/// One shard's task state. Lives on its executor's thread.
pub(crate) struct Worker {
    index: usize,
    shard: Shard<Completion>,
    shared: Arc<Shared>,
    /// Registered submitters' ring ends.
    inboxes: Vec<Inbox>,
    /// When the next rescore pass is due, ns since the epoch.
    next_rescore_ns: u64,
    rescore_ns: u64,
    /// How long to keep polling after the last pass that did work before parking
    /// (`EngineConfig::spin_before_park`).
    spin_ns: u64,
    /// The `Shared::config_generation` this worker last applied.
    config_generation: u64,
    /// Wakers of callers whose decisions were delivered in this pass, woken at its end (or when
    /// [`WAKE_BATCH`] are held). Invariant: `len() < WAKE_BATCH` between deliveries.
    wakers: Vec<Waker>,
    /// Since when arrivals have been held back for other shards' evictions, ns; `None` when not.
    waiting_for_victims_ns: Option<u64>,
}

impl Worker {
    pub(crate) fn new(index: usize, shard: Shard<Completion>, shared: Arc<Shared>) -> Self {
        let rescore_ns = shared.config.scoring.rescore_interval.as_nanos() as u64;
        let spin_ns = shared.config.spin_before_park.as_nanos() as u64;
        let config_generation = shared.config_generation.load(Ordering::Acquire);
        Self {
            index,
            shard,
            shared,
            inboxes: Vec::new(),
            next_rescore_ns: rescore_ns,
            rescore_ns,
            spin_ns,
            config_generation,
            wakers: Vec::with_capacity(WAKE_BATCH),
            waiting_for_victims_ns: None,
        }
    }

    /// The worker's life: passes until shutdown, then the final drain. Runs on its pinned
    /// executor's thread and owns it: nothing else is scheduled there.
    pub(crate) fn run(mut self) {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        // When the last pass that did anything ended: the spin window runs from here.
        let mut worked_ns = 0;
        loop {
            if self.shared.shutting_down.load(Ordering::SeqCst) {
                self.shut_down();
                return;
            }
            if self.pass() {
                worked_ns = self.shared.clock.now_ns();
            } else if !self.spin(worked_ns.saturating_add(self.spin_ns)) {
                self.sleep(&waker);
            }
        }
    }

    /// Poll for work, read-only, until `until_ns`; `true` as soon as there is some, or a timer
    /// (rescore, TTL deadline) is due. Busy traffic (the next request within the window) never
    /// pays for a park and its futex wake-up; an idle engine spins at most once per burst, then
    /// parks. Each poll yields the core: a producer sharing it runs at once instead of waiting out
    /// a time slice.
    fn spin(&self, until_ns: u64) -> bool {
        let timer_ns = self.next_rescore_ns.min(self.shard.next_deadline_ns());
        loop {
            let now = self.shared.clock.now_ns();
            if now >= until_ns {
                return false;
            }
            if now >= timer_ns || self.has_work() {
                return true;
            }
            std::thread::yield_now();
        }
    }

    /// One pass over every source of work; `true` if it did anything.
    fn pass(&mut self) -> bool {
        let now = self.shared.clock.now_ns();
        let mut worked = false;
        // 0. A reload: take the new rules now, rescore by them in step 5.
        let generation = self.shared.config_generation.load(Ordering::Acquire);
        if generation != self.config_generation {
            self.config_generation = generation;
            let config = self.shared.live.lock().unwrap_or_else(|p| p.into_inner()).clone();
            self.shard.reconfigure(&config, now);
            self.rescore_ns = config.scoring.rescore_interval.as_nanos() as u64;
            self.next_rescore_ns = now;
            worked = true;
        }
        // 1. New submitters.
        while let Some(inbox) = self.shared.registrations[self.index].pop() {
            self.inboxes.push(inbox);
            worked = true;
        }
        // 2. Cancellations: drop the request from the heap at once.
        while let Some(slot) = self.shared.cancels[self.index].pop() {
            worked = true;
            // SAFETY: this is the shard thread the request was handed to.
            if let Some(handle) = unsafe { slot.position() } {
                if let Some(done) = self.shard.cancel(handle, now) {
                    self.finish(done);
                }
            }
        }
        // 3. Cross-shard displacements: another shard admitted a better request in our tail's place.
        let mut displaced = false;
        while let Some(score) = self.shared.displacements[self.index].pop() {
            worked = true;
            displaced = true;
            let mut done = Vec::new();
            self.shard.displace_below(score, now, &mut |d| done.push(d));
            done.into_iter().for_each(|d| self.finish(d));
        }
        if displaced {
            // Offer the next-lowest at once: newcomers elsewhere may be holding back for it.
            self.publish_tails();
        }
        // 3b. Quotas: a parked workload released a slot, or a bucket refilled.
        if self.shared.gate.shard(self.index).take_quota_wake() || now >= self.shard.quota_recheck_ns() {
            self.shard.wake_quotas(now);
            worked = true;
        }
        // 4. Arrivals, a bounded batch per ring; held back (left in the ring) while the queue is
        // full and another shard owes evictions, so each newcomer sees every shard's tails.
        let mut inboxes = std::mem::take(&mut self.inboxes);
        let mut held_back = false;
        inboxes.retain_mut(|inbox| {
            let n = inbox.consumer.slots().min(RING_BATCH);
            if n == 0 {
                // Keep it unless the submitter is gone and its ring is empty.
                return !inbox.consumer.is_abandoned();
            }
            worked = true;
            // Announce what this batch may queue before any of it takes queue room: below nearly
            // full our tails are published once a pass, so a shard that fills the queue meanwhile
            // must read that we may hold requests we have not offered, and hold back for our
            // publication instead of refusing. Once per batch, not per request: the word lives in
            // the shard's padded signal slot beside the doorbell every submitter reads (per request
            // it cost 1-shard saturation 5-8 % of req/s). The pass's publication ends it.
            self.shared.gate.announce_queued(self.index, (self.shard.len() + n) as u64);
            let mut chunk = inbox.consumer.read_chunk(n).expect("slots() were available").into_iter();
            while !held_back {
                if self.must_wait_for_victims(now) {
                    held_back = true;
                    break;
                }
                let Some(arrival) = chunk.next() else { break };
                self.admit(arrival, now);
            }
            // Dropping `chunk` takes only the arrivals iterated; the rest stay queued in the ring.
            true
        });
        debug_assert!(self.inboxes.is_empty());
        self.inboxes = inboxes;
        if !held_back {
            self.waiting_for_victims_ns = None;
        }
        // 5. Timers: the periodic rescore (which also expires), else expiry when a deadline passed.
        if now >= self.next_rescore_ns {
            self.next_rescore_ns = now + self.rescore_ns;
            if !self.shard.is_empty() {
                worked = true;
            }
            let mut done = Vec::new();
            self.shard.rescore(now, &mut |d| done.push(d));
            done.into_iter().for_each(|d| self.finish(d));
        } else if self.shard.next_deadline_ns() <= now {
            let mut done = Vec::new();
            self.shard.expire(now, &mut |d| done.push(d));
            done.into_iter().for_each(|d| self.finish(d));
        }
        // 6. Dispatch, then wake the callers whose decisions this pass delivered.
        worked |= self.dispatch(now);
        self.flush_wakes();
        if held_back {
            // The shard we wait for may share this core: let it run.
            std::thread::yield_now();
        }
        worked
    }

    /// Should the next arrival wait in its ring? Yes while the queue is full (it must displace
    /// someone), another shard has queued requests but offers none (all claimed by displacements
    /// it has yet to carry out, or admitted in a pass that has not published them yet), and we have
    /// not waited [`VICTIM_WAIT_NS`] for it already: admitted now, it could only displace our own
    /// tail or be refused, though the lowest request may be there.
    fn must_wait_for_victims(&mut self, now: u64) -> bool {
        let gate = &self.shared.gate;
        // The budget first: below full (nearly always) no shard's tails need reading.
        let other =
            if self.shared.budget.is_full() { gate.offers_exhausted_elsewhere(self.index) } else { None };
        let Some(other) = other else {
            // Nothing to wait for, or the shard we waited for has run and offers again: the next
            // wait starts afresh (the bound is per wait, not per burst of them).
            self.waiting_for_victims_ns = None;
            return false;
        };
        // Its next pass publishes what it holds; if it is asleep, that pass starts now.
        gate.shard(other).doorbell.ring();
        let since = *self.waiting_for_victims_ns.get_or_insert(now);
        now.saturating_sub(since) < VICTIM_WAIT_NS
    }

    /// Queue one arrival (or answer it at once).
    fn admit(&mut self, arrival: Submission, now: u64) {
        if arrival.completion.is_cancelled() {
            // Its caller left before it reached the shard: nothing to queue.
            self.shared.outcomes[self.index].count(Outcome::EvictedCancelled);
            return;
        }
        if self.shared.gate.backends().active() == 0 {
            // No backend in the set (all removed, or none discovered): nothing to wait for.
            self.refuse(&arrival, Outcome::RejectedOther(OtherReason::NoEndpoints), now);
            return;
        }
        let slot = arrival.completion.clone();
        let mut refused = Vec::new();
        let (index, shared) = (self.index, &self.shared);
        // When the queue is full, the engine's lowest request makes room; if that is in another
        // shard, admit now (the count may pass max_requests by at most TAILS_OFFERED per shard)
        // and tell that shard to evict its tail.
        let mut steal = |below: f64, score: f64, bytes: u64| {
            // Room first (a claim is not undone), then the victim, then its eviction order.
            if !shared.budget.try_reserve_over(bytes, shared.shards() as u64 * TAILS_OFFERED as u64) {
                return false;
            }
            let Some(victim) = shared.gate.claim_victim(index, below) else {
                shared.budget.release(bytes);
                return false;
            };
            if shared.displacements[victim].push(score).is_err() {
                shared.budget.release(bytes);
                return false;
            }
            shared.gate.shard(victim).doorbell.ring();
            true
        };
        let admission = self.shard.enqueue_or_steal(arrival, now, &mut |d| refused.push(d), &mut steal);
        if let Admission::Queued(handle) = admission {
            // SAFETY: this is the shard thread the request was handed to.
            unsafe { slot.set_position(handle) };
        }
        refused.into_iter().for_each(|d| self.finish(d));
        if self.shared.budget.is_nearly_full() {
            // A (nearly) full queue: other shards' newcomers pick their victims from what we
            // offer, so offer our tails as they are now, not at the end of this pass.
            self.publish_tails();
        }
    }

    /// Publish our two lowest scores (and queue length) for other shards' displacements.
    fn publish_tails(&self) {
        let lowest = self.lowest_offered();
        let pending = self.shared.displacements[self.index].len();
        self.shared.gate.publish_tails(self.index, lowest, pending, self.shard.len() as u64);
    }

    /// Our two lowest scores as offered to other shards; a parked request yields to any arrival.
    fn lowest_offered(&self) -> [Option<f64>; 2] {
        self.shard.lowest_two().map(|k| k.map(|k| if k.is_parked() { f64::MIN } else { k.score }))
    }

    /// Dispatch while a slot is free and this shard holds the engine's best head; then publish.
    /// Returns whether anything was dispatched.
    fn dispatch(&mut self, now: u64) -> bool {
        let gate = self.shared.gate.clone();
        let mut dispatched = 0;
        let mut blocked = false;
        while dispatched < DISPATCH_BATCH {
            // Heads waiting on their workload's quota step aside (parked) first.
            self.shard.settle_head(now);
            let (Some(key), Some(criticality)) = (self.shard.dispatch_head(), self.shard.head_criticality())
            else {
                break;
            };
            if !gate.may_dispatch(self.index, key.score) {
                // A better head waits elsewhere: make sure its shard is awake.
                gate.wake_best(Some(self.index));
                break;
            }
            let backend = match gate.try_acquire(criticality) {
                Ok(backend) => backend,
                Err(refusal) => {
                    // Room, but this criticality's ceiling is reached: every release rings us.
                    blocked = refusal == Refusal::Ceiling;
                    break;
                }
            };
            let done = self.shard.dispatch_next(now).expect("head exists");
            let permit = Permit::new(gate.clone(), backend, done.workload.clone(), done.reserved_tokens);
            let decision = Decision {
                outcome: Outcome::Dispatched,
                permit: Some(permit),
                queued_ns: done.queued_ns,
                quota: done.remaining.map(QuotaNote::Remaining),
            };
            match self.deliver(&done.completion, decision) {
                Ok(()) => self.shared.outcomes[self.index].count(Outcome::Dispatched),
                // The caller cancelled as we dispatched: its permit drops here, freeing the slot.
                Err(_) => self.shared.outcomes[self.index].count(Outcome::EvictedCancelled),
            }
            dispatched += 1;
        }
        let head = self.shard.dispatch_head().map_or(NO_HEAD, |k| k.score);
        // A parked tail gives way to any arrival elsewhere.
        let lowest = self.lowest_offered();
        let pending = self.shared.displacements[self.index].len();
        let slot_free = gate.publish(self.index, head, lowest, pending, self.shard.len() as u64, blocked);
        if slot_free {
            // Free capacity left: if a better head waits elsewhere, its shard must hear about it.
            gate.wake_best(Some(self.index));
        }
        dispatched > 0
    }

    /// Hand `decision` to its caller; its wake-up waits for [`flush_wakes`](Self::flush_wakes).
    /// Returns the decision back if the caller had cancelled.
    fn deliver(&mut self, slot: &Slot<Permit>, decision: Decision<Permit>) -> Result<(), Decision<Permit>> {
        if let Some(waker) = slot.complete_deferred(decision)? {
            self.wakers.push(waker);
            if self.wakers.len() == WAKE_BATCH {
                self.flush_wakes();
            }
        }
        Ok(())
    }

    /// Wake every caller whose decision this pass delivered.
    fn flush_wakes(&mut self) {
        self.wakers.drain(..).for_each(Waker::wake);
    }

    /// Answer an arrival that never reached the heap with `outcome`, and count it
    /// (`EvictedCancelled` if its caller had already left).
    fn refuse(&mut self, arrival: &Submission, outcome: Outcome, now: u64) {
        let decision = Decision {
            outcome,
            permit: None,
            queued_ns: now.saturating_sub(arrival.arrived_ns),
            quota: None,
        };
        let counted = match self.deliver(&arrival.completion, decision) {
            Ok(()) => outcome,
            Err(_) => Outcome::EvictedCancelled,
        };
        self.shared.outcomes[self.index].count(counted);
    }

    /// Deliver a non-dispatch outcome to its caller and count it.
    fn finish(&mut self, done: Done<Completion>) {
        debug_assert_ne!(done.outcome, Outcome::Dispatched);
        let decision = Decision {
            outcome: done.outcome,
            permit: None,
            queued_ns: done.queued_ns,
            quota: done.quota_retry_ns.map(|retry_after_ns| QuotaNote::Refused { retry_after_ns }),
        };
        let counted = match self.deliver(&done.completion, decision) {
            Ok(()) => done.outcome,
            Err(_) => Outcome::EvictedCancelled,
        };
        self.shared.outcomes[self.index].count(counted);
    }

    /// Is there anything a pass would act on right now?
    fn has_work(&self) -> bool {
        let shared = &self.shared;
        shared.shutting_down.load(Ordering::SeqCst)
            || shared.config_generation.load(Ordering::Acquire) != self.config_generation
            || !shared.registrations[self.index].is_empty()
            || !shared.cancels[self.index].is_empty()
            || !shared.displacements[self.index].is_empty()
            || shared.gate.shard(self.index).quota_wake_pending()
            || (self.shard.quota_recheck_ns() != u64::MAX
                && shared.clock.now_ns() >= self.shard.quota_recheck_ns())
            || self.inboxes.iter().any(|i| i.consumer.slots() > 0 || i.consumer.is_abandoned())
            || self.dispatchable()
    }

    /// Could the head be dispatched now (a slot free, ours to take)?
    fn dispatchable(&self) -> bool {
        let gate = &self.shared.gate;
        match (self.shard.dispatch_head(), self.shard.head_criticality()) {
            (Some(k), Some(c)) => gate.has_slot_for(c) && gate.may_dispatch(self.index, k.score),
            _ => false,
        }
    }

    /// Sleep until rung or until the next timer (the next rescore, or the earliest TTL deadline).
    fn sleep(&mut self, waker: &Waker) {
        let now = self.shared.clock.now_ns();
        let wake_at = if self.shard.is_empty() {
            // Nothing queued: only the idle-workload sweep, driven by the rescore pass.
            self.next_rescore_ns.max(now + IDLE_TIMER_NS)
        } else {
            self.next_rescore_ns.min(self.shard.next_deadline_ns()).min(self.shard.quota_recheck_ns())
        }
        .max(now + MIN_TIMER_NS);
        let bell = &self.shared.gate.shard(self.index).doorbell;
        bell.prepare_sleep(waker);
        // The head was published at the end of the last pass; look for work once more: work that
        // raced the announcement is either seen here or its publisher sees `sleeping` and rings.
        if self.has_work() {
            bell.cancel_sleep();
            return;
        }
        loop {
            let now = self.shared.clock.now_ns();
            if now >= wake_at {
                bell.cancel_sleep();
                return;
            }
            self.shared.gate.count_park(self.index);
            std::thread::park_timeout(Duration::from_nanos(wake_at - now));
            if bell.rung(waker) {
                return;
            }
        }
    }

    /// Final drain: refuse what is in the rings, evict what is queued.
    fn shut_down(&mut self) {
        let now = self.shared.clock.now_ns();
        while let Some(inbox) = self.shared.registrations[self.index].pop() {
            self.inboxes.push(inbox);
        }
        for k in 0..self.inboxes.len() {
            // A producer between its shutdown check and its push finishes first (ring.rs).
            while self.inboxes[k].state.busy.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            while let Ok(arrival) = self.inboxes[k].consumer.pop() {
                let outcome = if arrival.completion.is_cancelled() {
                    Outcome::EvictedCancelled
                } else {
                    Outcome::RejectedOther(OtherReason::ShuttingDown)
                };
                self.refuse(&arrival, outcome, now);
            }
        }
        let mut done = Vec::new();
        self.shard.drain_on_shutdown(now, &mut |d| done.push(d));
        done.into_iter().for_each(|d| self.finish(d));
        while self.shared.cancels[self.index].pop().is_some() {}
        self.shared.gate.publish(self.index, NO_HEAD, [None, None], 0, 0, false);
        self.flush_wakes();
    }
}

/// Wakes the worker's thread (the doorbell's waker).
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}
