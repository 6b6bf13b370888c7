//! The backend table the gate reads: a fixed array of backend slots (`max_backends` of them),
//! each holding one model server's [`Occupancy`] word (its life, `max_inflight` and in-flight
//! count) and its [`Load`] word (the last scrape of its metrics and what was sent since).
//!
//! Room comes from the detector ([`Detector`]):
//!
//! - **slots** (`concurrency`, `both`): a capped backend has room while `inflight < max_inflight`;
//! - **metrics** (`utilization`, `both`): a backend has room while its last scrape is fresh, its
//!   KV-cache use is below `kv_cache_threshold`, and `waiting + sent < queue_depth_threshold`, where
//!   `waiting` is the scraped queue and `sent` counts what flowgate dispatched to it since that
//!   scrape was requested. A scrape's `sent` starts from what was dispatched while it was on its
//!   way (those requests may have reached the server after it answered), so one fresh scrape
//!   showing `waiting = w` lets at most `queue_depth_threshold − w` requests through after it was
//!   requested, until the next one: never a burst, even from an answer that comes late.
//!
//! The backend set changes while requests are dispatched ([`BackendTable::set`], called by one
//! controller at a time): a new backend is written into a `Free` slot and published `Active`; a
//! backend that left the set is `Draining` (no new places; its in-flight requests finish) and
//! becomes `Free` in the same compare-and-swap that gives back its last place. The dispatch path
//! reads no clock and takes no lock; only the controller and diagnostics ([`BackendTable::states`])
//! take the table's control lock.
//!
//! **Cluster mode** ([`crate::lease`]): the cap in each capped backend's occupancy word is then
//! this replica's lease of its `max_inflight` (or the local-mode share), rewritten in place by
//! the sync task ([`BackendTable::grant_leases`], [`BackendTable::local_caps`],
//! [`BackendTable::lapse_leases`]); `max_inflight` itself is kept beside it (`configured`).
//! Invariant: with leases on, a place is taken only while `inflight < lease` in the word the
//! reservation's CAS replaced, so this replica's in-flight count exceeds its current lease only by
//! places taken before a lowering (which only drain).
//!
//! Picking: among `Active` backends with room, the least loaded by the detector's score (counting
//! what was sent since the last scrape), ties by fewest in flight, then slot order.

use crate::config::{BackendConfig, Detector, SaturationConfig};
use crate::lease::{waiting_for_share, LeaseRule};
pub use crate::load::{Load, ScrapeReading};
use crate::load::{COUNT_MAX, GENERATIONS};
use crate::occupancy::{Occupancy, SlotState};
use crate::sync::{AtomicBool, AtomicF64, AtomicU32, AtomicU64, AtomicUsize, Mutex, Ordering, UnsafeCell};
use crossbeam_utils::CachePadded;

mod caps;
mod set;
pub use caps::Grants;
pub use set::BackendChanges;

/// Which backend a scraper is about: its slot and that slot's generation (a reused slot has a new
/// one, so a scraper that outlived its backend publishes nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendId {
    /// Slot index.
    pub index: u32,
    /// Generation of the slot when the backend was written in.
    pub generation: u32,
}

/// One slot of the table.
#[derive(Debug)]
struct Backend {
    /// `ip:port`. Written only by the controller, under the control lock, while the slot is
    /// `Free` (nobody holds a place on it), before it is published `Active`.
    address: UnsafeCell<String>,
    /// [`Occupancy`] bits. Invariant: `inflight ≤ max` while caps are enforced and `max > 0`
    /// (except places taken before a live lowering of `max`); `Free` ⇒ `inflight == 0`.
    occupancy: CachePadded<AtomicU64>,
    /// [`Load`] bits: replaced whole by the scraper (generation checked), `sent` bumped by
    /// dispatchers (CAS).
    load: CachePadded<AtomicU64>,
    /// Last good scrape, for picking (KV use) and reporting; written by the scraper only.
    waiting: AtomicF64,
    running: AtomicF64,
    kv: AtomicF64,
    /// When the last good scrape was published, ns on the engine clock; `u64::MAX` = never.
    scraped_ns: AtomicU64,
    /// Its `max_inflight` as configured (the occupancy word's `max` is the lease in cluster
    /// mode). Written by the controller only.
    configured: AtomicU32,
    /// Cluster mode: this replica's queue share of `queue_depth_threshold`, which the load
    /// word's waiting count is scaled to ([`crate::lease::waiting_for_share`]); [`WHOLE_QUEUE`]
    /// standalone. Written by the controller only, each change followed by a rewrite of the load
    /// word; a scraper reads it before and after publishing and publishes again if it changed.
    queue_share: AtomicU32,
}

/// [`Backend::queue_share`] standalone: the whole threshold, whatever it is reloaded to.
pub(crate) const WHOLE_QUEUE: u32 = u32::MAX;

impl Backend {
    fn free() -> Self {
        Self {
            address: UnsafeCell::new(String::new()),
            occupancy: CachePadded::new(AtomicU64::new(Occupancy::FREE.bits())),
            load: CachePadded::new(AtomicU64::new(Load::never_scraped(0).bits())),
            waiting: AtomicF64::new(0.0),
            running: AtomicF64::new(0.0),
            kv: AtomicF64::new(0.0),
            scraped_ns: AtomicU64::new(u64::MAX),
            configured: AtomicU32::new(0),
            queue_share: AtomicU32::new(WHOLE_QUEUE),
        }
    }

    fn occupancy(&self) -> Occupancy {
        Occupancy::from_bits(self.occupancy.load(Ordering::Acquire))
    }

    fn load(&self) -> Load {
        Load::from_bits(self.load.load(Ordering::Acquire))
    }

    /// Apply `f` to the occupancy word until it sticks or `f` declines: the words before and
    /// after, or the word `f` declined.
    fn update_occupancy(
        &self,
        f: impl Fn(Occupancy) -> Option<Occupancy>,
    ) -> Result<(Occupancy, Occupancy), Occupancy> {
        self.occupancy
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                f(Occupancy::from_bits(bits)).map(|o| o.bits())
            })
            .map(|bits| {
                let before = Occupancy::from_bits(bits);
                (before, f(before).expect("f accepted this word"))
            })
            .map_err(Occupancy::from_bits)
    }
}

/// A copy of one backend's state, for metrics and the backend API.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendState {
    /// Which slot (for the scraper's publications).
    pub id: BackendId,
    /// `ip:port`.
    pub address: String,
    /// `max_inflight` (0 = no cap).
    pub max_inflight: u32,
    /// Cluster mode: the slots of it this replica may use now (its lease, or the local-mode
    /// share); `None` standalone or uncapped.
    pub lease: Option<u32>,
    /// Cluster mode with a metrics detector: this replica's share of `queue_depth_threshold`
    /// (what it may send per scrape is that share of the room; see [`crate::lease`]); `None`
    /// standalone or without metrics.
    pub queue_share: Option<u32>,
    /// Requests holding a slot on it.
    pub inflight: u32,
    /// Last scraped waiting count (`None` before the first good scrape).
    pub waiting: Option<f64>,
    /// Last scraped running count.
    pub running: Option<f64>,
    /// Last scraped KV-cache use.
    pub kv_cache_usage: Option<f64>,
    /// Dispatched to it since the last scrape.
    pub sent_since_scrape: u32,
    /// The detector's score; ≥ 1 = saturated (in cluster mode, relative to this replica's queue
    /// share).
    pub saturation: f64,
    /// Time since the last good scrape, ns (`None` before the first).
    pub metrics_age_ns: Option<u64>,
    /// Its metrics count as stale (or were never scraped).
    pub stale: bool,
    /// It left the backend set: no new requests; it leaves the table when its last one ends.
    pub draining: bool,
}

/// The detector's rules, replaced live by [`BackendTable::set_saturation`].
#[derive(Debug)]
struct Rules {
    /// Enforce `max_inflight` caps.
    slots: AtomicBool,
    /// Gate on scraped metrics.
    metrics: AtomicBool,
    /// `saturation.queue_depth_threshold`, ≥ 1.
    threshold: AtomicU32,
    /// `saturation.kv_cache_threshold`, in (0, 1].
    kv_threshold: AtomicF64,
}

/// One read of [`Rules`], used for a whole scan.
#[derive(Clone, Copy, Debug)]
struct RuleSet {
    slots: bool,
    metrics: bool,
    threshold: u32,
    kv_threshold: f64,
}

/// Every backend of the engine, in slots.
#[derive(Debug)]
pub struct BackendTable {
    backends: Box<[Backend]>,
    /// 1 + the highest slot ever written: scans stop there. Only grows.
    high: AtomicUsize,
    /// `Active` slots.
    active: AtomicU32,
    rules: CachePadded<Rules>,
    /// Cluster mode's cap rule (standalone unless a sync task switched it).
    lease: LeaseRule,
    /// Held by the controller while it changes the set, and by readers of addresses that hold
    /// no place ([`states`](Self::states)).
    control: Mutex<()>,
}

// The only non-`Sync` field is each slot's `address` cell. It is written only under `control`
// while its slot is `Free`, i.e. with no place held on it; it is read either under `control`, or
// by a holder of a place on that slot (see `address_held`), which the occupancy word's
// acquire/release order after the write and before the next one.
// SAFETY: shared access to `address` follows that protocol, so sharing the table is sound.
unsafe impl Sync for BackendTable {}

impl BackendTable {
    /// A table of `capacity` slots holding `backends`, with `saturation`'s detector.
    pub fn new(backends: &[BackendConfig], capacity: usize, saturation: &SaturationConfig) -> Self {
        let table = Self {
            backends: (0..capacity.max(backends.len())).map(|_| Backend::free()).collect(),
            high: AtomicUsize::new(0),
            active: AtomicU32::new(0),
            rules: CachePadded::new(Rules {
                slots: AtomicBool::new(true),
                metrics: AtomicBool::new(false),
                threshold: AtomicU32::new(1),
                kv_threshold: AtomicF64::new(1.0),
            }),
            lease: LeaseRule::default(),
            control: Mutex::new(()),
        };
        table.set_saturation(saturation);
        table.set(backends);
        table
    }

    /// Slots (the most backends, draining ones included).
    pub fn capacity_slots(&self) -> usize {
        self.backends.len()
    }

    /// Backends in the set (`Active`).
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    fn rules(&self) -> RuleSet {
        RuleSet {
            slots: self.rules.slots.load(Ordering::Relaxed),
            metrics: self.rules.metrics.load(Ordering::Relaxed),
            threshold: self.rules.threshold.load(Ordering::Relaxed),
            kv_threshold: self.rules.kv_threshold.load(Ordering::Relaxed),
        }
    }

    /// Replace the detector's rules (a reload). Slot caps and the metrics gate switch at once;
    /// backends not scraped before count as stale until their first scrape.
    pub fn set_saturation(&self, saturation: &SaturationConfig) {
        let detector: Detector = saturation.detector;
        self.rules.slots.store(detector.uses_slots(), Ordering::Relaxed);
        self.rules.metrics.store(detector.uses_metrics(), Ordering::Relaxed);
        self.rules.threshold.store(saturation.queue_depth_threshold.max(1), Ordering::Relaxed);
        self.rules.kv_threshold.store(saturation.kv_cache_threshold, Ordering::Relaxed);
    }

    /// The slots that may hold a backend.
    fn used(&self) -> &[Backend] {
        &self.backends[..self.high.load(Ordering::Acquire)]
    }

    /// `ip:port` of the backend in slot `i`.
    ///
    /// # Safety
    /// The caller holds a place on slot `i` (taken by [`try_reserve`](Self::try_reserve), not yet
    /// given back): the slot cannot be freed, so its address cannot be rewritten, meanwhile.
    pub unsafe fn address_held(&self, i: usize) -> &str {
        // SAFETY: the caller's place keeps the slot from `Free`, the only state in which the
        // controller writes the address; the reserve's acquire saw the write that made it `Active`.
        self.backends[i].address.with(|p| unsafe { (*p).as_str() })
    }

    /// Σ `max_inflight` of the capped `Active` backends (configured values, not leases).
    pub fn capacity(&self) -> u64 {
        self.used()
            .iter()
            .filter(|b| b.occupancy().state() == SlotState::Active)
            .map(|b| u64::from(b.configured.load(Ordering::Relaxed)))
            .sum()
    }

    /// Σ caps of the capped `Active` backends: their `max_inflight`, or in cluster mode this
    /// replica's lease (or local share) of it. What criticality ceilings are fractions of.
    pub fn usable_capacity(&self) -> u64 {
        self.used()
            .iter()
            .map(|b| b.occupancy())
            .filter(|o| o.state() == SlotState::Active)
            .map(|o| u64::from(o.max()))
            .sum()
    }

    /// Σ free slots of the capped `Active` backends.
    pub fn free_slots(&self) -> u64 {
        self.used()
            .iter()
            .map(|b| b.occupancy())
            .filter(|o| o.state() == SlotState::Active)
            .map(|o| u64::from(o.max().saturating_sub(o.inflight())))
            .sum()
    }

    /// Requests in flight on every backend, draining ones included.
    pub fn inflight_total(&self) -> u64 {
        self.used().iter().map(|b| u64::from(b.occupancy().inflight())).sum()
    }

    /// The places `b` has given its occupancy and load words (0 unless `Active`).
    fn room(rules: RuleSet, occupancy: Occupancy, load: Load) -> u32 {
        let slots = occupancy.room(rules.slots);
        let metrics = if rules.metrics { load.room(rules.threshold) } else { u32::MAX };
        slots.min(metrics)
    }

    /// Does any backend have room?
    pub fn has_room(&self) -> bool {
        let rules = self.rules();
        self.used().iter().any(|b| Self::room(rules, b.occupancy(), b.load()) > 0)
    }

    /// Is the pool's room (Σ over backends) above `n`? Stops counting as soon as it is.
    pub fn room_exceeds(&self, n: u64) -> bool {
        let rules = self.rules();
        let mut room = 0u64;
        for b in self.used() {
            room += u64::from(Self::room(rules, b.occupancy(), b.load()));
            if room > n {
                return true;
            }
        }
        false
    }

    /// The detector's score of `b` given its words; ≥ 1 = saturated.
    fn score(rules: RuleSet, b: &Backend, occupancy: Occupancy, load: Load) -> f64 {
        let mut score = 0.0f64;
        if rules.slots && occupancy.max() > 0 {
            score = f64::from(occupancy.inflight()) / f64::from(occupancy.max());
        } else if rules.slots && occupancy.leased() {
            score = 1.0; // a lease of 0: no room
        }
        if rules.metrics {
            let queue = f64::from(load.waiting() + load.sent()) / f64::from(rules.threshold);
            let kv = b.kv.load(Ordering::Relaxed) / rules.kv_threshold;
            score = score.max(queue).max(kv);
            if load.stale() || load.kv_full() {
                score = score.max(1.0);
            }
        }
        score
    }

    /// The least-loaded `Active` backend with room (ties: fewest in flight, then slot order).
    pub fn pick(&self) -> Option<usize> {
        let rules = self.rules();
        let mut pick: Option<(usize, f64, u32)> = None;
        for (i, b) in self.used().iter().enumerate() {
            // One read of each word decides both room and score.
            let occupancy = b.occupancy();
            let load = b.load();
            if Self::room(rules, occupancy, load) == 0 {
                continue;
            }
            let score = Self::score(rules, b, occupancy, load);
            let inflight = occupancy.inflight();
            if pick.is_none_or(|(_, s, n)| score < s || (score == s && inflight < n)) {
                pick = Some((i, score, inflight));
            }
        }
        pick.map(|(i, _, _)| i)
    }

    /// Take a place on slot `i`: a metrics place (`sent + 1`) first, then an in-flight place, which
    /// needs the slot `Active` (and, with caps, below its `max`). `false` if either was gone
    /// (another dispatcher, a scrape or a drain got there first). A metrics place taken before the
    /// slot refused stays counted until the next scrape: conservative, and nothing to undo, so
    /// nobody needs waking.
    pub fn try_reserve(&self, i: usize) -> bool {
        let rules = self.rules();
        let b = &self.backends[i];
        if rules.metrics {
            let mut current = b.load();
            loop {
                if current.room(rules.threshold) == 0 {
                    return false;
                }
                match b.load.compare_exchange_weak(
                    current.bits(),
                    current.with_one_more_sent().bits(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(now) => current = Load::from_bits(now),
                }
            }
        }
        b.update_occupancy(|o| o.reserved(rules.slots)).is_ok()
    }

    /// Give back a place taken by [`try_reserve`](Self::try_reserve); `true` if that freed a
    /// draining slot. The caller wakes whoever may now dispatch.
    ///
    /// # Panics
    /// If no place was held on slot `i`.
    pub fn release(&self, i: usize) -> bool {
        let (_, after) =
            self.backends[i].update_occupancy(|o| Some(o.released())).expect("released always applies");
        after.state() == SlotState::Free
    }

    /// Scraper side: what backend `id` was sent since its last scrape, read just before a scrape is
    /// requested and given back to [`publish_scrape`](Self::publish_scrape) (`u32::MAX` if the
    /// slot holds another backend by now).
    pub fn sent_since_scrape(&self, id: BackendId) -> u32 {
        match self.backends.get(id.index as usize).map(|b| b.load()) {
            Some(load) if load.generation() == id.generation => load.sent(),
            _ => u32::MAX,
        }
    }

    /// Scraper side: publish a good scrape of backend `id` taken at `now_ns`, requested when
    /// `sent_before` had been sent since the previous one ([`sent_since_scrape`]; `u32::MAX`: the
    /// scrape saw every send). `sent` restarts from the sends after the request. `false` (nothing
    /// published) if the slot holds another backend by now. The caller wakes whoever may now
    /// dispatch.
    ///
    /// [`sent_since_scrape`]: Self::sent_since_scrape
    pub fn publish_scrape(
        &self,
        id: BackendId,
        reading: ScrapeReading,
        sent_before: u32,
        now_ns: u64,
    ) -> bool {
        let Some(b) = self.backends.get(id.index as usize) else { return false };
        if b.load().generation() != id.generation {
            return false;
        }
        let waiting = finite_or_zero(reading.waiting);
        let kv = finite_or_zero(reading.kv_cache_usage);
        b.waiting.store(waiting, Ordering::Relaxed);
        b.running.store(finite_or_zero(reading.running), Ordering::Relaxed);
        b.kv.store(kv, Ordering::Relaxed);
        b.scraped_ns.store(now_ns, Ordering::Relaxed);
        let waiting = waiting.ceil().min(COUNT_MAX as f64) as u64;
        let kv_full = kv >= self.rules.kv_threshold.load(Ordering::Relaxed);
        loop {
            // Scale to the queue share, then look again: a controller that changed the share
            // meanwhile rewrote the word before our CAS (then ours, after it, must redo with the
            // new share, which its rewrite's release made visible to our CAS) or will rewrite it
            // after (from the waiting count stored above).
            let share = b.queue_share.load(Ordering::Acquire);
            let scaled = waiting_for_share(waiting, share, self.rules.threshold.load(Ordering::Relaxed));
            let fresh = Load::scraped(scaled, kv_full, id.generation);
            let published = b.load.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                let current = Load::from_bits(bits);
                // `sent` only grew since `sent_before` was read (only this scraper restarts it):
                // what is above it went out after the request, possibly unseen by the server.
                let after = current.sent().saturating_sub(sent_before);
                (current.generation() == id.generation).then_some(fresh.with_sent(u64::from(after)).bits())
            });
            if published.is_err() {
                return false;
            }
            if b.queue_share.load(Ordering::Acquire) == share {
                return true;
            }
        }
    }

    /// Scraper side: backend `id` had no good scrape within `staleness`: no room until the next.
    pub fn mark_stale(&self, id: BackendId) {
        let Some(b) = self.backends.get(id.index as usize) else { return };
        let _ = b.load.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
            let load = Load::from_bits(bits);
            (load.generation() == id.generation).then_some(load.into_stale().bits())
        });
    }

    /// Slot `i`'s load word now.
    pub fn load(&self, i: usize) -> Load {
        self.backends[i].load()
    }

    /// Slot `i`'s occupancy word now.
    pub fn occupancy(&self, i: usize) -> Occupancy {
        self.backends[i].occupancy()
    }

    /// A copy of every backend's state (slot order; free slots left out), ages as of `now_ns`.
    pub fn states(&self, now_ns: u64) -> Vec<BackendState> {
        let rules = self.rules();
        let _control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        self.used()
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let occupancy = b.occupancy();
                if occupancy.state() == SlotState::Free {
                    return None;
                }
                let load = b.load();
                let scraped_ns = b.scraped_ns.load(Ordering::Relaxed);
                let seen = scraped_ns != u64::MAX;
                Some(BackendState {
                    id: BackendId { index: i as u32, generation: load.generation() },
                    // SAFETY: under `control`, the only writer's lock.
                    address: b.address.with(|p| unsafe { (*p).clone() }),
                    max_inflight: b.configured.load(Ordering::Relaxed),
                    lease: occupancy.leased().then_some(occupancy.max()),
                    queue_share: if rules.metrics { self.queue_share_of(i) } else { None },
                    inflight: occupancy.inflight(),
                    waiting: seen.then(|| b.waiting.load(Ordering::Relaxed)),
                    running: seen.then(|| b.running.load(Ordering::Relaxed)),
                    kv_cache_usage: seen.then(|| b.kv.load(Ordering::Relaxed)),
                    sent_since_scrape: load.sent(),
                    saturation: Self::score(rules, b, occupancy, load),
                    metrics_age_ns: seen.then(|| now_ns.saturating_sub(scraped_ns)),
                    stale: rules.metrics && load.stale(),
                    draining: occupancy.state() == SlotState::Draining,
                })
            })
            .collect()
    }
}

/// NaN, ±∞ and negatives read as 0 (the page parser refuses them; this is the last guard).
fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() && v > 0.0 {
        v
    } else {
        0.0
    }
}
