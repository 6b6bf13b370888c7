//! The seed's design: its workload registry, its scoring formula, its heap whose comparator reads
//! the clock and the registry, and the seed baseline ([`SeedQueue`]) built on them; plus
//! [`SeedCore`] for the micro-benchmark.

use super::{lock, Discipline, Locked, LockedSlot, Spec, Waiting};
use flowgate_engine::config::ScoringConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}
