//! The backend table the gate reads: per model server, its `max_inflight` slots and in-flight
//! count, and the last scrape of its metrics together with what was sent to it since.
//!
//! Room comes from the detector ([`Detector`]):
//!
//! - **slots** (`concurrency`, `both`): a capped backend has room while `inflight < max_inflight`;
//! - **metrics** (`utilization`, `both`): a backend has room while its last scrape is fresh, its
//!   KV-cache use is below `kv_cache_threshold`, and `waiting + sent < queue_depth_threshold`, where
//!   `waiting` is the scraped queue and `sent` counts what flowgate dispatched to it since that
//!   scrape. A scrape resets `sent` to 0, so one fresh scrape showing `waiting = w` lets at most
//!   `queue_depth_threshold − w` requests through before the next one: never a burst.
//!
//! The scrape view lives in one packed word per backend ([`Load`]): the scraper stores a whole new
//! word (its `sent` = 0), a dispatcher takes a place with one compare-and-swap (`sent + 1` while
//! there is room). The dispatch path reads no clock and takes no lock; staleness is decided by the
//! scraper, which marks the word stale when no good scrape arrived in time.
//!
//! Picking: among backends with room, the least loaded by [`BackendTable::saturation`] (the
//! detector's score, counting what was sent since the last scrape), ties by fewest in flight.

use crate::config::{Detector, EngineConfig};
use crate::sync::{AtomicF64, AtomicU32, AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// Bits of each count (`waiting`, `sent`) in a [`Load`] word.
const COUNT_BITS: u32 = 24;
/// Largest count a [`Load`] holds; larger scraped queues are clamped to it (still saturated:
/// `queue_depth_threshold` ≤ 2^20).
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
/// KV-cache use at or above the threshold.
const KV_FULL: u64 = 1 << (2 * COUNT_BITS);
/// No good scrape within `staleness` (or none yet).
const STALE: u64 = 1 << (2 * COUNT_BITS + 1);

/// A backend's scrape view, packed in one `u64`: `sent` (bits 0..24), `waiting` (24..48), and two
/// flags, KV-cache full and stale.
///
/// ```
/// use flowgate_engine::backends::Load;
/// let l = Load::scraped(3, false);
/// assert_eq!(l.room(5), 2);
/// assert_eq!(l.with_one_more_sent().room(5), 1);
/// assert_eq!(Load::NEVER_SCRAPED.room(5), 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load(u64);

impl Load {
    /// Before the first good scrape: no room.
    pub const NEVER_SCRAPED: Load = Load(STALE);

    /// What a good scrape publishes: its waiting count (clamped), nothing sent since.
    pub fn scraped(waiting: u64, kv_full: bool) -> Load {
        Load((waiting.min(COUNT_MAX) << COUNT_BITS) | if kv_full { KV_FULL } else { 0 })
    }

    /// Requests the last scrape saw waiting.
    pub fn waiting(self) -> u32 {
        ((self.0 >> COUNT_BITS) & COUNT_MAX) as u32
    }

    /// Requests dispatched since the last scrape.
    pub fn sent(self) -> u32 {
        (self.0 & COUNT_MAX) as u32
    }

    /// The last scrape put KV-cache use at or above the threshold.
    pub fn kv_full(self) -> bool {
        self.0 & KV_FULL != 0
    }

    /// No good scrape is recent enough.
    pub fn stale(self) -> bool {
        self.0 & STALE != 0
    }

    /// The same view, marked stale.
    pub fn into_stale(self) -> Load {
        Load(self.0 | STALE)
    }

    /// Places left before `threshold` (0 when stale or KV-full).
    pub fn room(self, threshold: u32) -> u32 {
        if self.0 & (KV_FULL | STALE) != 0 {
            return 0;
        }
        threshold.saturating_sub(self.waiting() + self.sent())
    }

    /// One more sent. Only called with `room > 0`, so `sent < threshold ≤ COUNT_MAX`.
    pub fn with_one_more_sent(self) -> Load {
        debug_assert!(u64::from(self.sent()) < COUNT_MAX);
        Load(self.0 + 1)
    }

    /// The raw word.
    pub fn bits(self) -> u64 {
        self.0
    }
}

/// What a scrape of a backend's metrics page found.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScrapeReading {
    /// Requests waiting in the model server (summed over its models).
    pub waiting: f64,
    /// Requests running in it.
    pub running: f64,
    /// KV-cache use, a fraction (the max over its models).
    pub kv_cache_usage: f64,
}

/// One model server.
#[derive(Debug)]
struct Backend {
    /// `ip:port`.
    address: String,
    /// Its `max_inflight`; 0 = no cap.
    max: u32,
    /// Requests holding a slot on it. Invariant: ≤ `max` while slots are enforced and `max > 0`.
    inflight: CachePadded<AtomicU32>,
    /// [`Load`] bits: replaced whole by the scraper, `sent` bumped by dispatchers (CAS).
    load: CachePadded<AtomicU64>,
    /// Last good scrape, for picking (KV use) and reporting; written by the scraper only.
    waiting: AtomicF64,
    running: AtomicF64,
    kv: AtomicF64,
    /// When the last good scrape was published, ns on the engine clock; `u64::MAX` = never.
    scraped_ns: AtomicU64,
}

/// A copy of one backend's state, for metrics and the backend API.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendState {
    /// `ip:port`.
    pub address: String,
    /// `max_inflight` (0 = no cap).
    pub max_inflight: u32,
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
    /// The detector's score; ≥ 1 = saturated.
    pub saturation: f64,
    /// Time since the last good scrape, ns (`None` before the first).
    pub metrics_age_ns: Option<u64>,
    /// Its metrics count as stale (or were never scraped).
    pub stale: bool,
}

/// Every backend of the engine, in configuration order.
#[derive(Debug)]
pub struct BackendTable {
    backends: Box<[Backend]>,
    /// Enforce `max_inflight` caps.
    slots: bool,
    /// Gate on scraped metrics.
    metrics: bool,
    /// `saturation.queue_depth_threshold`, ≥ 1.
    threshold: u32,
    /// `saturation.kv_cache_threshold`, in (0, 1].
    kv_threshold: f64,
}

impl BackendTable {
    /// The table for `config`'s backends and detector.
    pub fn new(config: &EngineConfig) -> Self {
        let detector: Detector = config.saturation.detector;
        Self {
            backends: config
                .backends
                .iter()
                .map(|b| Backend {
                    address: b.address.clone(),
                    max: b.max_inflight,
                    inflight: CachePadded::new(AtomicU32::new(0)),
                    load: CachePadded::new(AtomicU64::new(Load::NEVER_SCRAPED.bits())),
                    waiting: AtomicF64::new(0.0),
                    running: AtomicF64::new(0.0),
                    kv: AtomicF64::new(0.0),
                    scraped_ns: AtomicU64::new(u64::MAX),
                })
                .collect(),
            slots: detector.uses_slots(),
            metrics: detector.uses_metrics(),
            threshold: config.saturation.queue_depth_threshold.max(1),
            kv_threshold: config.saturation.kv_cache_threshold,
        }
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// `ip:port` of backend `i`.
    pub fn address(&self, i: usize) -> &str {
        &self.backends[i].address
    }

    /// Σ `max_inflight` of the capped backends (what slot ceilings are fractions of).
    pub fn capacity(&self) -> u64 {
        self.backends.iter().map(|b| u64::from(b.max)).sum()
    }

    /// Σ free slots of the capped backends.
    pub fn free_slots(&self) -> u64 {
        self.backends
            .iter()
            .map(|b| u64::from(b.max.saturating_sub(b.inflight.load(Ordering::Acquire))))
            .sum()
    }

    /// In-flight count per backend.
    pub fn inflight(&self) -> Vec<u32> {
        self.backends.iter().map(|b| b.inflight.load(Ordering::Relaxed)).collect()
    }

    /// Dispatch places backend `b` has now: the smaller of its free slots and its metrics room
    /// (`u32::MAX` when neither limits it).
    fn room_of(&self, b: &Backend) -> u32 {
        self.room(b, b.inflight.load(Ordering::Acquire), Load(b.load.load(Ordering::Acquire)))
    }

    /// The places `b` has given its in-flight count and load word.
    fn room(&self, b: &Backend, inflight: u32, load: Load) -> u32 {
        let slots = if self.slots && b.max > 0 { b.max.saturating_sub(inflight) } else { u32::MAX };
        let metrics = if self.metrics { load.room(self.threshold) } else { u32::MAX };
        slots.min(metrics)
    }

    /// Does any backend have room?
    pub fn has_room(&self) -> bool {
        self.backends.iter().any(|b| self.room_of(b) > 0)
    }

    /// Is the pool's room (Σ over backends) above `n`? Stops counting as soon as it is.
    pub fn room_exceeds(&self, n: u64) -> bool {
        let mut room = 0u64;
        for b in self.backends.iter() {
            room += u64::from(self.room_of(b));
            if room > n {
                return true;
            }
        }
        false
    }

    /// The detector's score of `b` given its in-flight count and load word; ≥ 1 = saturated.
    fn score(&self, b: &Backend, inflight: u32, load: Load) -> f64 {
        let mut score = 0.0f64;
        if self.slots && b.max > 0 {
            score = f64::from(inflight) / f64::from(b.max);
        }
        if self.metrics {
            let queue = f64::from(load.waiting() + load.sent()) / f64::from(self.threshold);
            let kv = b.kv.load(Ordering::Relaxed) / self.kv_threshold;
            score = score.max(queue).max(kv);
            if load.stale() || load.kv_full() {
                score = score.max(1.0);
            }
        }
        score
    }

    /// Backend `i`'s saturation score now (the detector's; ≥ 1 = saturated).
    pub fn saturation(&self, i: usize) -> f64 {
        let b = &self.backends[i];
        self.score(b, b.inflight.load(Ordering::Relaxed), Load(b.load.load(Ordering::Relaxed)))
    }

    /// The least-loaded backend with room (ties: fewest in flight, then configuration order).
    pub fn pick(&self) -> Option<usize> {
        let mut pick: Option<(usize, f64, u32)> = None;
        for (i, b) in self.backends.iter().enumerate() {
            // One read of each word decides both room and score.
            let inflight = b.inflight.load(Ordering::Acquire);
            let load = Load(b.load.load(Ordering::Acquire));
            if self.room(b, inflight, load) == 0 {
                continue;
            }
            let score = self.score(b, inflight, load);
            if pick.is_none_or(|(_, s, n)| score < s || (score == s && inflight < n)) {
                pick = Some((i, score, inflight));
            }
        }
        pick.map(|(i, _, _)| i)
    }

    /// Take a place on backend `i`: a metrics place (`sent + 1`) first, then a slot. `false` if
    /// either was gone (another dispatcher or a scrape got there first). A metrics place taken
    /// before a slot turned out to be full stays counted until the next scrape: conservative, and
    /// nothing to undo, so nobody needs waking.
    pub fn try_reserve(&self, i: usize) -> bool {
        let b = &self.backends[i];
        if self.metrics {
            let mut current = Load(b.load.load(Ordering::Acquire));
            loop {
                if current.room(self.threshold) == 0 {
                    return false;
                }
                match b.load.compare_exchange_weak(
                    current.bits(),
                    current.with_one_more_sent().bits(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(now) => current = Load(now),
                }
            }
        }
        if self.slots && b.max > 0 {
            b.inflight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < b.max).then_some(n + 1))
                .is_ok()
        } else {
            b.inflight.fetch_add(1, Ordering::AcqRel);
            true
        }
    }

    /// Give back a place taken by [`try_reserve`](Self::try_reserve). The caller wakes whoever
    /// may now dispatch.
    pub fn release(&self, i: usize) {
        let before = self.backends[i].inflight.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "backend {i}: released a slot that was not held");
    }

    /// Scraper side: publish a good scrape of backend `i` taken at `now_ns` (`sent` restarts at 0).
    /// The caller wakes whoever may now dispatch.
    pub fn publish_scrape(&self, i: usize, reading: ScrapeReading, now_ns: u64) {
        let b = &self.backends[i];
        let waiting = finite_or_zero(reading.waiting);
        let kv = finite_or_zero(reading.kv_cache_usage);
        b.waiting.store(waiting, Ordering::Relaxed);
        b.running.store(finite_or_zero(reading.running), Ordering::Relaxed);
        b.kv.store(kv, Ordering::Relaxed);
        b.scraped_ns.store(now_ns, Ordering::Relaxed);
        let waiting = waiting.ceil().min(COUNT_MAX as f64) as u64;
        b.load.store(Load::scraped(waiting, kv >= self.kv_threshold).bits(), Ordering::Release);
    }

    /// Scraper side: backend `i` had no good scrape within `staleness`: no room until the next.
    pub fn mark_stale(&self, i: usize) {
        self.backends[i].load.fetch_or(STALE, Ordering::AcqRel);
    }

    /// Backend `i`'s load word now.
    pub fn load(&self, i: usize) -> Load {
        Load(self.backends[i].load.load(Ordering::Acquire))
    }

    /// A copy of every backend's state, ages as of `now_ns`.
    pub fn states(&self, now_ns: u64) -> Vec<BackendState> {
        self.backends
            .iter()
            .map(|b| {
                let inflight = b.inflight.load(Ordering::Relaxed);
                let load = Load(b.load.load(Ordering::Relaxed));
                let scraped_ns = b.scraped_ns.load(Ordering::Relaxed);
                let seen = scraped_ns != u64::MAX;
                BackendState {
                    address: b.address.clone(),
                    max_inflight: b.max,
                    inflight,
                    waiting: seen.then(|| b.waiting.load(Ordering::Relaxed)),
                    running: seen.then(|| b.running.load(Ordering::Relaxed)),
                    kv_cache_usage: seen.then(|| b.kv.load(Ordering::Relaxed)),
                    sent_since_scrape: load.sent(),
                    saturation: self.score(b, inflight, load),
                    metrics_age_ns: seen.then(|| now_ns.saturating_sub(scraped_ns)),
                    stale: self.metrics && load.stale(),
                }
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
