//! Engine configuration: every limit the engine enforces lives here, with its unit in its name.
//!
//! The shim turns the operator's YAML into an [`EngineConfig`]; tests and benches build one directly.
//! [`EngineConfig::validate`] (in `config_check.rs`) refuses impossible values instead of silently
//! defaulting them.

pub use crate::config_error::{ConfigError, UNCAPPED_WARNING};
use crate::quota_rule::{first_match, Quota};
use std::time::Duration;

/// Longest id a workload may have, in bytes. Longer ids are refused (see `context.rs`).
pub const MAX_WORKLOAD_ID_BYTES: usize = 256;
/// Longest TTL the configuration or a request may ask for.
pub const MAX_TTL: Duration = Duration::from_secs(3600);
/// Most shards an engine may run.
pub const MAX_SHARDS: usize = 256;
/// Most backends (model servers) one engine may dispatch to.
pub const MAX_BACKENDS: usize = 4096;
/// Default [`EngineConfig::max_backends`].
pub const DEFAULT_MAX_BACKENDS: usize = 1024;
/// Shortest scrape interval accepted (`saturation.scrape_interval`).
pub const MIN_SCRAPE_INTERVAL: Duration = Duration::from_millis(10);
/// Highest `saturation.queue_depth_threshold` accepted (the gate packs waiting and sent counts into
/// 24 bits each).
pub const MAX_QUEUE_DEPTH_THRESHOLD: u32 = 1 << 20;
/// Most in-flight requests one backend may be configured to hold.
pub const MAX_BACKEND_INFLIGHT: u32 = 1 << 20;
/// Number of buckets the sliding rate window is split into (the rate's error bound is one bucket).
pub const RATE_BUCKETS: usize = 12;
/// Longest [`EngineConfig::spin_before_park`] accepted.
pub const MAX_SPIN_BEFORE_PARK: Duration = Duration::from_millis(10);

/// The scoring rule: `score = w_wait·min(wait/wait_cap, 1) + w_crit·crit/5 − w_rate·min(rate/rate_cap, 1)`.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoringConfig {
    /// Weight of the wait-time term (`w_wait`), ≥ 0.
    pub wait_weight: f64,
    /// Weight of the criticality term (`w_crit`), ≥ 0.
    pub criticality_weight: f64,
    /// Weight of the request-rate penalty (`w_rate`), ≥ 0.
    pub rate_weight: f64,
    /// Wait at which the wait term is full; > 0.
    pub wait_cap: Duration,
    /// Request rate (requests/s) at which the rate penalty is full; > 0.
    pub rate_cap_per_s: f64,
    /// Length of the sliding window the rate is measured over; ≥ [`RATE_BUCKETS`] ms. Live: a
    /// reload re-bases every workload's windows ([`crate::rate_window`]).
    pub rate_window: Duration,
    /// How often each shard refreshes cached keys (rates and the wait cap); > 0.
    pub rescore_interval: Duration,
    /// What the rate penalty counts: requests, or weighted tokens (`rate_cap_per_s` in that unit).
    pub rate_unit: RateUnit,
    /// Price of one prompt token in weighted tokens (VTC's input price); 0..=1000.
    pub input_token_weight: f64,
    /// Price of one generated token in weighted tokens (VTC's output price); 0..=1000.
    pub output_token_weight: f64,
    /// What the penalty term measures: the workload's rate, or its VTC lag.
    pub fairness: Fairness,
    /// `fairness: vtc`: the lag, in weighted tokens served ahead of the least-served active
    /// workload, at which the penalty is full; > 0.
    pub vtc_cap_tokens: f64,
}

/// `scoring.rate_unit`: what a workload's rate counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RateUnit {
    /// Arrivals per second (the seed's formula).
    #[default]
    Requests,
    /// Weighted tokens charged per second (`input_token_weight`·prompt + `output_token_weight`·completion).
    Tokens,
}

/// `scoring.fairness`: what the penalty term measures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fairness {
    /// `min(rate / rate_cap, 1)`, the rate in `rate_unit`.
    #[default]
    Rate,
    /// Virtual token counter: `min(lag / vtc_cap, 1)`, the lag being the weighted tokens a workload
    /// was served beyond the least-served active workload.
    Vtc,
}

impl RateUnit {
    /// The name the configuration file uses.
    pub fn name(self) -> &'static str {
        match self {
            RateUnit::Requests => "requests",
            RateUnit::Tokens => "tokens",
        }
    }
}

impl Fairness {
    /// The name the configuration file uses.
    pub fn name(self) -> &'static str {
        match self {
            Fairness::Rate => "rate",
            Fairness::Vtc => "vtc",
        }
    }
}

/// Default [`ScoringConfig::vtc_cap_tokens`]: a few long requests' worth of weighted tokens.
pub const DEFAULT_VTC_CAP_TOKENS: f64 = 20_000.0;
/// Highest token weight accepted.
pub const MAX_TOKEN_WEIGHT: f64 = 1000.0;

impl Default for ScoringConfig {
    fn default() -> Self {
        Self {
            wait_weight: 0.4,
            criticality_weight: 0.4,
            rate_weight: 0.2,
            wait_cap: Duration::from_secs(60),
            rate_cap_per_s: 100.0,
            rate_window: Duration::from_secs(60),
            rescore_interval: Duration::from_millis(100),
            rate_unit: RateUnit::Requests,
            input_token_weight: 1.0,
            output_token_weight: 2.0,
            fairness: Fairness::Rate,
            vtc_cap_tokens: DEFAULT_VTC_CAP_TOKENS,
        }
    }
}

impl ScoringConfig {
    /// Whether the score needs each request's token usage (so its response must be read).
    pub fn needs_usage(&self) -> bool {
        self.rate_unit == RateUnit::Tokens || self.fairness == Fairness::Vtc
    }
}

/// Limits on what may wait in the queue (all shards together).
#[derive(Clone, Debug, PartialEq)]
pub struct QueueConfig {
    /// Most queued (not in-flight) requests; 0 = unlimited.
    pub max_requests: u64,
    /// Most request-body bytes held queued; 0 = unlimited.
    pub max_bytes: u64,
    /// Default time a request may wait before it is evicted with `EvictedTtl`; ≤ [`MAX_TTL`].
    pub ttl: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { max_requests: 10_000, max_bytes: 1 << 30, ttl: Duration::from_secs(30) }
    }
}

/// How long a request may wait: its own `ttl_ms` when it is shorter than the queue's `ttl`,
/// else the queue's (a client can shorten its wait, never lengthen it past what the operator
/// allows, and what Envoy's `message_timeout` was set above).
///
/// ```
/// use flowgate_engine::config::effective_ttl;
/// use std::time::Duration;
/// let queue = Duration::from_millis(500);
/// assert_eq!(effective_ttl(Some(Duration::from_millis(100)), queue), Duration::from_millis(100));
/// assert_eq!(effective_ttl(Some(Duration::from_secs(3)), queue), queue);
/// assert_eq!(effective_ttl(None, queue), queue);
/// ```
pub fn effective_ttl(request: Option<Duration>, queue_ttl: Duration) -> Duration {
    request.map_or(queue_ttl, |t| t.min(queue_ttl))
}

/// A trust rule: workloads whose id matches `pattern` cannot claim a criticality above `max_criticality`.
#[derive(Clone, Debug, PartialEq)]
pub struct CriticalityCap {
    /// An exact id, or a prefix followed by a single trailing `*`.
    pub pattern: String,
    /// Highest criticality (1..=5) such a workload may have.
    pub max_criticality: u8,
}

impl CriticalityCap {
    /// Does `workload_id` fall under this cap?
    ///
    /// ```
    /// use flowgate_engine::config::CriticalityCap;
    /// let cap = CriticalityCap { pattern: "batch-*".into(), max_criticality: 2 };
    /// assert!(cap.matches("batch-7"));
    /// assert!(!cap.matches("chat"));
    /// ```
    pub fn matches(&self, workload_id: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => workload_id.starts_with(prefix),
            None => workload_id == self.pattern,
        }
    }
}

/// How workloads are tracked.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadConfig {
    /// Criticality given to requests without a usable one (1..=5).
    pub default_criticality: u8,
    /// A workload with no activity for this long (and nothing active) is forgotten.
    pub idle_timeout: Duration,
    /// Most distinct workloads tracked; beyond it new ids share one overflow entry. ≥ 1.
    pub max_tracked: usize,
    /// Criticality caps, first match wins.
    pub caps: Vec<CriticalityCap>,
    /// Quotas, first match wins; at most [`MAX_QUOTAS`](crate::quota_rule::MAX_QUOTAS).
    pub quotas: Vec<Quota>,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            default_criticality: 3,
            idle_timeout: Duration::from_secs(300),
            max_tracked: 100_000,
            caps: Vec::new(),
            quotas: Vec::new(),
        }
    }
}

impl WorkloadConfig {
    /// The quota covering `workload_id` (first match), if any.
    pub fn quota_for(&self, workload_id: &str) -> Option<&Quota> {
        first_match(&self.quotas, workload_id).map(|i| &self.quotas[i])
    }

    /// Clamp `criticality` by the first cap matching `workload_id`; returns the result and
    /// whether a cap lowered it.
    ///
    /// ```
    /// use flowgate_engine::config::{CriticalityCap, WorkloadConfig};
    /// let mut w = WorkloadConfig::default();
    /// w.caps.push(CriticalityCap { pattern: "batch-*".into(), max_criticality: 2 });
    /// assert_eq!(w.clamp("batch-1", 5), (2, true));
    /// assert_eq!(w.clamp("chat", 5), (5, false));
    /// ```
    pub fn clamp(&self, workload_id: &str, criticality: u8) -> (u8, bool) {
        match self.caps.iter().find(|c| c.matches(workload_id)) {
            Some(cap) if criticality > cap.max_criticality => (cap.max_criticality, true),
            _ => (criticality, false),
        }
    }
}

/// One model server the engine may dispatch to.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    /// `ip:port` written into `x-gateway-destination-endpoint`.
    pub address: String,
    /// Most requests in flight on it at once; 0 = no concurrency cap (room then comes from its
    /// metrics alone, see [`Detector`]).
    pub max_inflight: u32,
}

/// What decides whether a backend has room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Detector {
    /// `max_inflight` only (the default: no metrics are read).
    #[default]
    Concurrency,
    /// The backend's scraped metrics only (waiting requests, KV-cache use); `max_inflight` is
    /// not enforced.
    Utilization,
    /// Both: a backend needs a free `max_inflight` slot and room by its metrics.
    Both,
}

impl Detector {
    /// The name the configuration file uses.
    pub fn name(self) -> &'static str {
        match self {
            Detector::Concurrency => "concurrency",
            Detector::Utilization => "utilization",
            Detector::Both => "both",
        }
    }

    /// Whether `max_inflight` caps are enforced.
    pub fn uses_slots(self) -> bool {
        self != Detector::Utilization
    }

    /// Whether scraped metrics gate dispatch.
    pub fn uses_metrics(self) -> bool {
        self != Detector::Concurrency
    }
}

/// Saturation detection: when a backend counts as full (design brief, "Backends and saturation").
#[derive(Clone, Debug, PartialEq)]
pub struct SaturationConfig {
    /// What decides room.
    pub detector: Detector,
    /// How often each backend's metrics page is scraped; ≥ [`MIN_SCRAPE_INTERVAL`].
    pub scrape_interval: Duration,
    /// A scrape slower than this has failed; > 0.
    pub scrape_timeout: Duration,
    /// Saturated when waiting (scraped, plus what was sent since that scrape) ≥ this; ≥ 1.
    pub queue_depth_threshold: u32,
    /// Saturated when KV-cache use (a fraction) ≥ this; in (0, 1].
    pub kv_cache_threshold: f64,
    /// No good scrape for this long: the backend counts as saturated; > 0.
    pub staleness: Duration,
}

impl Default for SaturationConfig {
    fn default() -> Self {
        Self {
            detector: Detector::Concurrency,
            scrape_interval: Duration::from_millis(50),
            scrape_timeout: Duration::from_secs(1),
            queue_depth_threshold: 5,
            kv_cache_threshold: 0.8,
            staleness: Duration::from_millis(200),
        }
    }
}

/// Everything the engine needs to run.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Shards (pinned executors); 0 = auto, the core layout's rule ([`crate::layout`]).
    pub shards: usize,
    /// Submission ring capacity per (submitter, shard) pair, in requests; ≥ 1.
    pub ring_capacity: usize,
    /// Most submitters (producer threads) registered at once; ≥ 1.
    pub max_submitters: usize,
    /// The model servers at start (the set may change later: `Engine::set_backends`). Empty: every
    /// request is refused with `no-endpoints` until a backend is set.
    pub backends: Vec<BackendConfig>,
    /// Slots of the backend table: the most backends at once, draining ones included; 1 ..=
    /// [`MAX_BACKENDS`].
    pub max_backends: usize,
    /// When a backend counts as saturated.
    pub saturation: SaturationConfig,
    /// Queue limits.
    pub queue: QueueConfig,
    /// Scoring rule.
    pub scoring: ScoringConfig,
    /// Workload tracking.
    pub workloads: WorkloadConfig,
    /// Per-criticality utilisation ceilings, index 0 = criticality 1: criticality `c` dispatches only
    /// while in-flight / capacity < `ceilings[c-1]`. 1.0 everywhere = no ceiling.
    pub ceilings: [f64; 5],
    /// How long a shard keeps polling for work after its last work, and a thread blocked in
    /// `Ticket::wait` keeps polling for its decision, before parking (≤ [`MAX_SPIN_BEFORE_PARK`];
    /// zero parks at once). A park costs a futex wake-up (tens of µs on a VM) on the next request;
    /// the spin costs at most this much CPU per burst of work and nothing while idle.
    pub spin_before_park: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            ring_capacity: 4096,
            max_submitters: 1024,
            backends: vec![BackendConfig { address: "127.0.0.1:8000".into(), max_inflight: 8 }],
            max_backends: DEFAULT_MAX_BACKENDS,
            saturation: SaturationConfig::default(),
            queue: QueueConfig::default(),
            scoring: ScoringConfig::default(),
            workloads: WorkloadConfig::default(),
            ceilings: [1.0; 5],
            spin_before_park: Duration::from_micros(50),
        }
    }
}

impl EngineConfig {
    /// Shards to run: `shards`, or the core layout's `auto` when it is 0 ([`crate::layout`]).
    pub fn shard_count(&self) -> usize {
        if self.shards == 0 {
            crate::layout::auto_shards(crate::layout::allowed_cpus().len()).min(MAX_SHARDS)
        } else {
            self.shards
        }
    }

    /// The fields that differ from `running`'s but cannot change while the engine runs (a
    /// reload keeps `running`'s value of each): shard count, ring sizes, the backend table's size,
    /// the spin window. Everything under `scoring` is live, `rate_window` included.
    ///
    /// ```
    /// let running = flowgate_engine::EngineConfig::default();
    /// let mut next = running.clone();
    /// next.shards = 7;
    /// next.scoring.wait_weight = 0.1; // live
    /// next.scoring.rate_window = std::time::Duration::from_secs(5); // live
    /// assert_eq!(next.restart_only_changes(&running), vec!["shards"]);
    /// ```
    pub fn restart_only_changes(&self, running: &EngineConfig) -> Vec<&'static str> {
        let mut changed = Vec::new();
        let mut check = |name, differs: bool| {
            if differs {
                changed.push(name);
            }
        };
        check("shards", self.shards != running.shards);
        check("ring_capacity", self.ring_capacity != running.ring_capacity);
        check("max_submitters", self.max_submitters != running.max_submitters);
        check("max_backends", self.max_backends != running.max_backends);
        check("spin_before_park", self.spin_before_park != running.spin_before_park);
        changed
    }

    /// `self` with every restart-only field taken from `running` (what a reload applies).
    pub fn keeping_restart_only(mut self, running: &EngineConfig) -> EngineConfig {
        self.shards = running.shards;
        self.ring_capacity = running.ring_capacity;
        self.max_submitters = running.max_submitters;
        self.max_backends = running.max_backends;
        self.spin_before_park = running.spin_before_park;
        self
    }

    /// Total dispatch slots: the sum of every backend's `max_inflight` (uncapped backends add 0).
    pub fn total_slots(&self) -> u64 {
        self.backends.iter().map(|b| u64::from(b.max_inflight)).sum()
    }
}
