//! The dispatch gate: global capacity, permits, and the published head scores that keep priority
//! global across shards.
//!
//! Room is what the backend table ([`BackendTable`], `backends.rs`) says: free `max_inflight`
//! slots, room by scraped metrics, or both. A shard that wants to dispatch its head first asks
//! [`Gate::may_dispatch`]: no other shard may publish a head better by more than
//! [`CROSS_SHARD_SLACK`], unless the pool has more room than requests queued in all other shards
//! together (then nobody better can be refused by this dispatch). It then takes a place with
//! [`Gate::try_acquire`]: the least-loaded backend with room, honouring per-criticality ceilings,
//! and wraps it in a `Permit` (`permit.rs`) whose drop gives the place back and wakes the shard
//! with the best head.
//!
//! No lost wake-up: a shard publishes its head and queue length, then (sleeping or not) looks for
//! room; whoever makes room (a released slot, a fresh scrape) makes it visible, then reads the
//! heads. A SeqCst fence on each side means at least one of them sees the other (`loom-tests`
//! checks both hand-offs).

use crate::backends::{BackendChanges, BackendId, BackendState, BackendTable, Grants};
use crate::clock::Clock;
use crate::config::{BackendConfig, EngineConfig, SaturationConfig};
use crate::doorbell::Doorbell;
use crate::load::ScrapeReading;
use crate::sync::{fence, AtomicBool, AtomicF64, AtomicI64, AtomicU64, Mutex, Ordering};
use crate::tails::{Offer, Tails};
use crossbeam_utils::CachePadded;

/// Published head score of a shard with nothing dispatchable.
pub const NO_HEAD: f64 = f64::NEG_INFINITY;
/// How much better another shard's head must score before this shard yields its turn to it.
///
/// Exact global order would make two shards with interleaving heads hand every dispatch across
/// (a cross-core wake-up each). A request may therefore be overtaken by one scoring at most this
/// much lower in another shard: 0.001 is 150 ms of aging with the default weights, an eightieth of
/// one criticality level, so criticality order and the wait-time boost hold across shards.
pub const CROSS_SHARD_SLACK: f64 = 0.001;

/// Tail score of a shard with nothing to displace (or whose offered tails were all claimed).
pub const NO_TAIL: f64 = f64::INFINITY;

/// What one shard publishes for the others.
#[derive(Debug)]
pub struct ShardSignal {
    /// Score of its best queued request ([`NO_HEAD`] when empty).
    head: AtomicF64,
    /// Scores of its two worst queued requests, for other shards' displacements to claim.
    tails: Tails,
    /// Requests queued in it.
    queued: AtomicU64,
    /// Its head waits on a criticality ceiling (published as [`NO_HEAD`] so others can go);
    /// every release rings it too.
    blocked: AtomicBool,
    /// Times it parked its thread (each park costs the next request a wake-up); written by the
    /// shard only, read for metrics.
    parks: AtomicU64,
    /// A permit of one of its parked workloads (waiting on a quota) was released: its quotas
    /// should be looked at again. Set by any thread, cleared by the shard.
    quota_wake: AtomicBool,
    /// Wakes it.
    pub doorbell: Doorbell,
}

impl ShardSignal {
    /// A parked workload of this shard freed a slot: flag it and wake the shard.
    pub fn wake_for_quota(&self) {
        self.quota_wake.store(true, Ordering::Release);
        self.doorbell.ring();
    }

    /// Take the quota wake-up flag (shard only): whether one came since the last take.
    pub fn take_quota_wake(&self) -> bool {
        self.quota_wake.load(Ordering::Acquire) && self.quota_wake.swap(false, Ordering::AcqRel)
    }

    /// Whether a quota wake-up is pending.
    pub fn quota_wake_pending(&self) -> bool {
        self.quota_wake.load(Ordering::Acquire)
    }
}

/// A copy of what one shard last published.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShardState {
    /// Head score ([`NO_HEAD`] if empty or blocked).
    pub head: f64,
    /// Least offered tail score ([`NO_TAIL`] if empty or claimed).
    pub tail: f64,
    /// Requests queued.
    pub queued: u64,
    /// Head waiting on a criticality ceiling.
    pub blocked: bool,
    /// Asleep on its doorbell.
    pub sleeping: bool,
    /// Times it has parked its thread since the engine started.
    pub parks: u64,
}

/// Why [`Gate::try_acquire`] found no place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No backend has room.
    NoRoom,
    /// Some backend has room, but this criticality's ceiling is reached.
    Ceiling,
}

/// A place [`Gate::try_acquire`] took: the backend slot, and whether it counts against the
/// ceilings (it does when ceilings were on as it was taken; its release then uncounts it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// Slot index of the backend.
    pub backend: u32,
    /// Counted in the gate's `held`.
    pub counted: bool,
}

/// The backends' room and the shards' published heads.
#[derive(Debug)]
pub struct Gate {
    /// The model servers.
    backends: BackendTable,
    /// Places taken while ceilings were on, not yet given back. Invariant: ≤
    /// `ceiling_slots[4]` (criticality 5's ceiling) except after a live lowering.
    held: CachePadded<AtomicI64>,
    /// Some ceiling is below the pool's capacity (then places are counted in `held`).
    ceilings: AtomicBool,
    /// Criticality `c` dispatches only while held < `ceiling_slots[c - 1]`.
    ceiling_slots: [AtomicI64; 5],
    /// The configured fractions the slots are computed from, for recomputing them when the
    /// backend set changes (control side only).
    ceiling_fractions: Mutex<[f64; 5]>,
    /// One per shard.
    shards: Box<[CachePadded<ShardSignal>]>,
    /// Set once at shutdown; no waking afterwards.
    closed: AtomicBool,
    clock: Clock,
}

impl Gate {
    /// A gate for `config`'s backends and `shards` shards.
    pub fn new(config: &EngineConfig, shards: usize, clock: Clock) -> Self {
        let backends = BackendTable::new(&config.backends, config.max_backends, &config.saturation);
        let gate = Self {
            backends,
            held: CachePadded::new(AtomicI64::new(0)),
            ceilings: AtomicBool::new(false),
            ceiling_slots: std::array::from_fn(|_| AtomicI64::new(1)),
            ceiling_fractions: Mutex::new(config.ceilings),
            shards: (0..shards)
                .map(|_| {
                    CachePadded::new(ShardSignal {
                        head: AtomicF64::new(NO_HEAD),
                        tails: Tails::new(),
                        queued: AtomicU64::new(0),
                        blocked: AtomicBool::new(false),
                        parks: AtomicU64::new(0),
                        quota_wake: AtomicBool::new(false),
                        doorbell: Doorbell::new(),
                    })
                })
                .collect(),
            closed: AtomicBool::new(false),
            clock,
        };
        gate.recompute_ceilings();
        gate
    }

    /// Turn the ceiling fractions into slot counts for the current usable capacity (control side:
    /// after the backend set, the fractions or, in cluster mode, the leases change).
    fn recompute_ceilings(&self) {
        let fractions = *self.ceiling_fractions.lock().unwrap_or_else(|p| p.into_inner());
        let capacity = self.backends.usable_capacity() as i64;
        for (slots, c) in self.ceiling_slots.iter().zip(fractions) {
            slots.store(((c * capacity as f64).ceil() as i64).clamp(1, capacity.max(1)), Ordering::Relaxed);
        }
        // Validation allows ceilings below 1 only when every backend has enforced slots. On by the
        // configured capacity, not the lease: a lease of 0 (before the first grant) keeps them on,
        // so a grant that makes room is never briefly open to every criticality.
        let on = fractions.iter().any(|c| *c < 1.0) && self.backends.capacity() > 0;
        self.ceilings.store(on, Ordering::Release);
    }

    /// Controller side: make the backend set `desired` ([`BackendTable::set`]), recompute the
    /// ceilings for the new capacity, and wake the best shard (new backends have room).
    pub fn set_backends(&self, desired: &[BackendConfig]) -> BackendChanges {
        let changes = self.backends.set(desired);
        self.recompute_ceilings();
        fence(Ordering::SeqCst);
        self.wake_best(None);
        changes
    }

    /// Cluster side: [`BackendTable::grant_leases`], then the ceilings for the new leases (they
    /// are fractions of what this replica may use). `true` if some room grew; the caller fences
    /// and wakes.
    pub fn grant_leases(&self, grants: Grants<'_>, deadline_ns: u64) -> bool {
        let grew = self.backends.grant_leases(grants, deadline_ns);
        self.recompute_ceilings();
        grew
    }

    /// Cluster side: [`BackendTable::local_caps`], then the ceilings. `true` if some room grew.
    pub fn local_caps(&self, replicas: u32) -> bool {
        let grew = self.backends.local_caps(replicas);
        self.recompute_ceilings();
        grew
    }

    /// Cluster side: [`BackendTable::lapse_leases`] now, then the ceilings if they lapsed.
    pub fn lapse_leases(&self, replicas: u32) -> bool {
        let lapsed = self.backends.lapse_leases(self.clock.now_ns(), replicas);
        if lapsed {
            self.recompute_ceilings();
        }
        lapsed
    }

    /// Controller side: new ceiling fractions and detector rules (a reload); wakes the best
    /// shard, since either may have made room.
    pub fn reconfigure(&self, ceilings: [f64; 5], saturation: &SaturationConfig) {
        *self.ceiling_fractions.lock().unwrap_or_else(|p| p.into_inner()) = ceilings;
        self.backends.set_saturation(saturation);
        self.recompute_ceilings();
        fence(Ordering::SeqCst);
        self.wake_best(None);
    }

    /// Shard `i`'s signal.
    pub fn shard(&self, i: usize) -> &ShardSignal {
        &self.shards[i]
    }

    /// Shard side: shard `i` is about to park its thread.
    pub fn count_park(&self, i: usize) {
        let parks = &self.shards[i].parks;
        parks.store(parks.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// What every shard has published, for diagnostics and metrics.
    pub fn shard_states(&self) -> Vec<ShardState> {
        self.shards
            .iter()
            .map(|s| ShardState {
                head: s.head.load(Ordering::Relaxed),
                tail: s.tails.least(),
                queued: s.queued.load(Ordering::Relaxed),
                blocked: s.blocked.load(Ordering::Relaxed),
                sleeping: s.doorbell.is_sleeping(),
                parks: s.parks.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Σ `max_inflight` of the capped backends.
    pub fn capacity(&self) -> u64 {
        self.backends.capacity()
    }

    /// Free slots of the capped backends now.
    pub fn free(&self) -> u64 {
        self.backends.free_slots()
    }

    /// Requests in flight on every backend.
    pub fn inflight_total(&self) -> u64 {
        self.backends.inflight_total()
    }

    /// `ip:port` of backend slot `backend`.
    ///
    /// # Safety
    /// The caller holds a place on it (see [`BackendTable::address_held`]).
    pub unsafe fn address_held(&self, backend: u32) -> &str {
        // SAFETY: forwarded to the caller.
        unsafe { self.backends.address_held(backend as usize) }
    }

    /// The backend table.
    pub fn backends(&self) -> &BackendTable {
        &self.backends
    }

    /// Every backend's state, for metrics and the backend API.
    pub fn backend_states(&self) -> Vec<BackendState> {
        self.backends.states(self.clock.now_ns())
    }

    /// Scraper side: publish a good scrape of backend `id`, then wake the shard with the best head
    /// if the scrape made room (fence, as [`release`](Self::release) does). `false` if the slot
    /// holds another backend by now (nothing published).
    pub fn publish_scrape(&self, id: BackendId, reading: ScrapeReading) -> bool {
        self.publish_scrape_since(id, reading, u32::MAX)
    }

    /// [`publish_scrape`](Self::publish_scrape) of a scrape requested when `sent_before` had been
    /// sent to the backend since its previous one ([`BackendTable::sent_since_scrape`]): what was
    /// sent after the request still counts.
    pub fn publish_scrape_since(&self, id: BackendId, reading: ScrapeReading, sent_before: u32) -> bool {
        if !self.backends.publish_scrape(id, reading, sent_before, self.clock.now_ns()) {
            return false;
        }
        fence(Ordering::SeqCst);
        self.wake_best(None);
        true
    }

    /// Scraper side: backend `id`'s metrics are stale; it takes nothing until a good scrape.
    pub fn mark_stale(&self, id: BackendId) {
        self.backends.mark_stale(id);
    }

    /// Shard side: publish the head score, the two lowest scores (least first; `pending` of them
    /// already claimed by displacements not yet carried out, see [`Tails::publish`]) and queue
    /// length, then report whether a slot is free (the fence orders this against
    /// [`release`](Self::release)).
    pub fn publish(
        &self,
        shard: usize,
        head: f64,
        lowest: [Option<f64>; 2],
        pending: usize,
        queued: u64,
        blocked: bool,
    ) -> bool {
        let s = &self.shards[shard];
        s.tails.publish(lowest, pending);
        s.blocked.store(blocked, Ordering::Relaxed);
        s.head.store(if blocked { NO_HEAD } else { head }, Ordering::Relaxed);
        s.queued.store(queued, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.backends.has_room()
    }

    /// Shard side: publish only the two lowest scores and the queue length (between full
    /// publications, while the queue is full).
    pub fn publish_tails(&self, shard: usize, lowest: [Option<f64>; 2], pending: usize, queued: u64) {
        let s = &self.shards[shard];
        s.tails.publish(lowest, pending);
        s.queued.store(queued, Ordering::Relaxed);
    }

    /// May `shard`, whose head scores `head`, dispatch it now without jumping a request queued
    /// elsewhere that scores more than [`CROSS_SHARD_SLACK`] better? (Yes also when the pool has
    /// room for every request queued elsewhere.)
    pub fn may_dispatch(&self, shard: usize, head: f64) -> bool {
        let mut others_queued = 0u64;
        let mut best_elsewhere = true;
        for (i, s) in self.shards.iter().enumerate() {
            if i == shard {
                continue;
            }
            others_queued += s.queued.load(Ordering::Relaxed);
            if s.head.load(Ordering::Relaxed) > head + CROSS_SHARD_SLACK {
                best_elsewhere = false;
            }
        }
        best_elsewhere || self.backends.room_exceeds(others_queued)
    }

    /// Claim the engine's lowest offered tail scoring below `below` in a shard other than `except`,
    /// for a cross-shard displacement: returns that shard, which no other newcomer can claim the
    /// same request of (see [`Tails`]).
    pub fn claim_victim(&self, except: usize, below: f64) -> Option<usize> {
        loop {
            let mut lowest: Option<(usize, Offer)> = None;
            for (i, s) in self.shards.iter().enumerate() {
                if i == except {
                    continue;
                }
                if let Some(o) = s.tails.offer() {
                    if o.score < below && lowest.is_none_or(|(_, l)| o.score < l.score) {
                        lowest = Some((i, o));
                    }
                }
            }
            let (i, offer) = lowest?;
            if self.shards[i].tails.claim(offer) {
                return Some(i);
            }
        }
    }

    /// A shard other than `except` that holds queued requests but offers none of them: its offered
    /// tails all claimed by displacements it has not carried out yet, or not yet published for
    /// requests it admitted in its current pass (see [`announce_queued`](Self::announce_queued)).
    /// Then a newcomer that needs a victim cannot tell whether the engine's lowest request is there.
    pub fn offers_exhausted_elsewhere(&self, except: usize) -> Option<usize> {
        self.shards
            .iter()
            .enumerate()
            .find(|(i, s)| *i != except && s.tails.offer().is_none() && s.queued.load(Ordering::Relaxed) > 0)
            .map(|(i, _)| i)
    }

    /// Shard side: at most `queued` requests will be queued in `shard` by the end of the batch of
    /// arrivals it is taking, before its tails show them. Announced before the batch reserves
    /// queue room (the budget's release-acquire then carries it to any shard that finds the queue
    /// full because of such a reservation), so that shard never reads "nothing queued there" while
    /// its victim may be there unpublished. Too high until the shard's next publication: harmless
    /// (a newcomer elsewhere holds back until then).
    pub fn announce_queued(&self, shard: usize, queued: u64) {
        self.shards[shard].queued.store(queued, Ordering::Relaxed);
    }

    /// The shard (other than `except`) whose published head is best, if any has one.
    pub fn best_shard(&self, except: Option<usize>) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, s) in self.shards.iter().enumerate() {
            let h = s.head.load(Ordering::Relaxed);
            if Some(i) == except || h == NO_HEAD {
                continue;
            }
            if best.is_none_or(|(_, b)| h > b) {
                best = Some((i, h));
            }
        }
        best.map(|(i, _)| i)
    }

    /// Would [`try_acquire`](Self::try_acquire)`(criticality)` find a place now?
    pub fn has_slot_for(&self, criticality: u8) -> bool {
        self.under_ceiling(criticality) && self.backends.has_room()
    }

    /// Criticality `criticality`'s ceiling is not reached.
    fn under_ceiling(&self, criticality: u8) -> bool {
        !self.ceilings.load(Ordering::Acquire)
            || self.held.load(Ordering::Acquire)
                < self.ceiling_slots[usize::from(criticality.clamp(1, 5)) - 1].load(Ordering::Relaxed)
    }

    /// Take a place for a request of `criticality` on the least-loaded backend with room; its
    /// index, or why there is none.
    ///
    /// Steps: pick a backend with room (read only: a full pool costs no write); count the request
    /// against the ceilings (one CAS, only when ceilings are set); take the backend's place
    /// ([`BackendTable::try_reserve`]). If another dispatcher or a scrape took that place first,
    /// undo the ceiling count (waking whoever it may have held back) and pick again.
    pub fn try_acquire(&self, criticality: u8) -> Result<Place, Refusal> {
        loop {
            let Some(i) = self.backends.pick() else { return Err(Refusal::NoRoom) };
            let counted = self.ceilings.load(Ordering::Acquire);
            let ceiling =
                self.ceiling_slots[usize::from(criticality.clamp(1, 5)) - 1].load(Ordering::Relaxed);
            if counted
                && self
                    .held
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < ceiling).then_some(n + 1))
                    .is_err()
            {
                return Err(Refusal::Ceiling);
            }
            if self.backends.try_reserve(i) {
                return Ok(Place { backend: i as u32, counted });
            }
            if counted {
                self.held.fetch_sub(1, Ordering::AcqRel);
                fence(Ordering::SeqCst);
                self.wake_best(None);
            }
        }
    }

    /// Give a backend place back and wake the shard whose head is best. (A draining backend whose
    /// last place this was leaves the table here.)
    pub fn release(&self, place: Place) {
        self.backends.release(place.backend as usize);
        if place.counted {
            self.held.fetch_sub(1, Ordering::AcqRel);
        }
        fence(Ordering::SeqCst);
        self.wake_best(None);
    }

    /// Ring the doorbell of the shard with the best head (other than `except`).
    pub fn wake_best(&self, except: Option<usize>) {
        if self.closed.load(Ordering::Relaxed) {
            return;
        }
        if let Some(i) = self.best_shard(except) {
            self.shards[i].doorbell.ring();
        }
        for (i, s) in self.shards.iter().enumerate() {
            if Some(i) != except && s.blocked.load(Ordering::Relaxed) {
                s.doorbell.ring();
            }
        }
    }

    /// Stop waking shards (they are gone).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The engine's clock.
    pub fn clock(&self) -> Clock {
        self.clock
    }
}
