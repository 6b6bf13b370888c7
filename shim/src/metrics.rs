//! Prometheus metrics: GIE-compatible queue metrics plus `flowgate_*` counters and gauges.
//!
//! | name | type | labels |
//! |------|------|--------|
//! | `inference_extension_flow_control_queue_size` | gauge | `fairness_id`, `priority` |
//! | `inference_extension_flow_control_request_queue_duration_seconds` | histogram | `fairness_id`, `priority`, `outcome` |
//! | `flowgate_requests_total` | counter | `outcome` ([`Outcome::label`]) |
//! | `flowgate_inflight` | gauge | `backend` |
//! | `flowgate_queued_requests` | gauge | — |
//! | `flowgate_tracked_workloads` | gauge | — |
//! | `flowgate_context_defaults_total` | counter | `reason` ([`DefaultReason::label`]) |
//! | `flowgate_criticality_capped_total` | counter | — |
//! | `flowgate_config_reloads_total` | counter | `result` (`ok`, `error`) |
//!
//! plus the backend metrics of `backend_metrics.rs` (saturation, scrapes, GIE's pool saturation)
//! and, with a `cluster:` section, `cluster/metrics.rs`'s `flowgate_cluster_*`.
//!
//! `fairness_id` is the workload id and `priority` the criticality (after caps).
//!
//! **Bounded labels.** At most `workloads.max_tracked` distinct `fairness_id` values are admitted;
//! requests of further workloads are counted under `__overflow__` (the engine's own overflow id).
//! The `default` workload and `__overflow__` always keep their own series (not counted, never
//! swept); `default` at the default criticality is exported from start-up, so the queue gauge is
//! present before the first request.
//! A workload's series are removed (and its place freed) by [`Metrics::sweep`] once it has nothing
//! queued in the shim and the engine's registry has forgotten it (idle for `idle_timeout`); the
//! sweep runs at every scrape and periodically.
//!
//! In-flight, queued and tracked gauges are read from the engine at scrape time.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowgate_engine::context::Defaults;
use flowgate_engine::context::DEFAULT_WORKLOAD_ID;
use flowgate_engine::registry::OVERFLOW_WORKLOAD_ID;
use flowgate_engine::{DefaultReason, Outcome};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::backend_metrics::BackendMetrics;
use crate::cluster::metrics::ClusterMetrics;
use crate::view::EngineView;

/// GIE's queue-size gauge.
pub const QUEUE_SIZE: &str = "inference_extension_flow_control_queue_size";
/// GIE's queue-duration histogram.
pub const QUEUE_DURATION: &str = "inference_extension_flow_control_request_queue_duration_seconds";

/// Upper bounds of the queue-duration buckets, seconds: from 100 µs to the longest TTL.
const DURATION_BUCKETS: [f64; 20] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0, 300.0, 3600.0,
];

/// Criticalities a request can have (1..=5): the `priority` label's values.
pub const CRITICALITIES: usize = 5;

/// Content type of the OpenMetrics rendering.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text rendering.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    fairness_id: Arc<str>,
    priority: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    fairness_id: Arc<str>,
    priority: u8,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShardLabels {
    shard: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type HistogramFamily = Family<DurationLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Which workload ids may have their own label, and how many of their requests the shim holds.
#[derive(Debug)]
struct Admission {
    max: usize,
    /// Admitted id → requests between [`Metrics::enqueue`] and their end.
    live: HashMap<Arc<str>, u64>,
    overflow: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    queue_size: Family<QueueLabels, Gauge>,
    queue_duration: HistogramFamily,
    requests: Family<OutcomeLabels, Counter>,
    inflight: Family<BackendLabels, Gauge>,
    queued: Gauge,
    tracked: Gauge,
    defaults: Family<ReasonLabels, Counter>,
    capped: Counter,
    /// Set from the engine at each scrape.
    shard_parks: Family<ShardLabels, Counter>,
    /// `flowgate_config_reloads_total{result}`.
    reloads: Family<ResultLabels, Counter>,
    /// `flowgate_usage_reported_total`: responses whose usage the model server reported.
    usage_reported: Counter,
    /// `flowgate_usage_estimated_total`: responses charged an estimate (no usage found).
    usage_estimated: Counter,
    /// `flowgate_quota_refusals_total`: requests refused for a `reject` quota (429 `quota`).
    quota_refusals: Counter,
    /// Saturation detector metrics (`backend_metrics.rs`).
    backends: BackendMetrics,
    /// Cluster mode's metrics (`cluster/metrics.rs`), when registered.
    cluster: Option<Arc<ClusterMetrics>>,
    admission: Mutex<Admission>,
    /// The queue gauge's series summed by `priority` (index `priority - 1`), kept beside the
    /// family because a family cannot be iterated.
    queued_by_priority: [AtomicI64; CRITICALITIES],
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics with at most `max_tracked` per-workload label values (plus `default` and
    /// `__overflow__`). The default workload's queue series at `default_criticality` exists from
    /// the start, so the queue gauge is exported before the first request.
    pub fn new(max_tracked: usize, default_criticality: u8) -> Metrics {
        let mut registry = Registry::default();
        let queue_size = Family::<QueueLabels, Gauge>::default();
        let queue_duration = HistogramFamily::new_with_constructor(duration_histogram);
        let requests = Family::<OutcomeLabels, Counter>::default();
        let inflight = Family::<BackendLabels, Gauge>::default();
        let queued = Gauge::default();
        let tracked = Gauge::default();
        let defaults = Family::<ReasonLabels, Counter>::default();
        let capped = Counter::default();
        registry.register(
            QUEUE_SIZE,
            "Requests currently queued by flow control, by workload (fairness_id) and criticality (priority)",
            queue_size.clone(),
        );
        registry.register(
            QUEUE_DURATION,
            "Time requests spent queued before their outcome, by workload, criticality and outcome",
            queue_duration.clone(),
        );
        registry.register("flowgate_requests", "Requests by outcome", requests.clone());
        registry.register("flowgate_inflight", "Requests in flight per backend", inflight.clone());
        registry.register(
            "flowgate_queued_requests",
            "Requests queued in the engine, all shards together",
            queued.clone(),
        );
        registry.register(
            "flowgate_tracked_workloads",
            "Distinct workloads tracked by the engine (overflow entry not counted)",
            tracked.clone(),
        );
        registry.register(
            "flowgate_context_defaults",
            "Defaults applied to a request's workload context, by reason",
            defaults.clone(),
        );
        registry.register(
            "flowgate_criticality_capped",
            "Requests whose criticality was lowered by a workloads.caps rule",
            capped.clone(),
        );
        let shard_parks = Family::<ShardLabels, Counter>::default();
        registry.register(
            "flowgate_shard_parks",
            "Times a shard parked its thread after spin_before_park without work (the next request \
             to it pays a wake-up)",
            shard_parks.clone(),
        );
        let backends = BackendMetrics::register(&mut registry);
        // Pre-register every outcome and reason so rates start from zero.
        for outcome in Outcome::ALL {
            let _ = requests.get_or_create(&OutcomeLabels { outcome: outcome.label() });
        }
        for reason in DefaultReason::ALL {
            let _ = defaults.get_or_create(&ReasonLabels { reason: reason.label() });
        }
        // The GIE families exist from the first scrape, before any request (as the default
        // workload's series; a family with no series renders nothing at all).
        let _ = queue_size.get_or_create(&QueueLabels {
            fairness_id: Arc::from(DEFAULT_WORKLOAD_ID),
            priority: default_criticality,
        });
        let _ = queue_duration.get_or_create(&DurationLabels {
            fairness_id: Arc::from(DEFAULT_WORKLOAD_ID),
            priority: default_criticality,
            outcome: Outcome::Dispatched.label(),
        });
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "flowgate_config_reloads",
            "Configuration reloads (SIGHUP, --watch-config), by result: ok or error (refused, old config kept)",
            reloads.clone(),
        );
        for result in ["ok", "error"] {
            let _ = reloads.get_or_create(&ResultLabels { result });
        }
        let usage_reported = Counter::default();
        registry.register(
            "flowgate_usage_reported",
            "Dispatched requests charged the usage their response reported",
            usage_reported.clone(),
        );
        let usage_estimated = Counter::default();
        registry.register(
            "flowgate_usage_estimated",
            "Dispatched requests charged an estimate (body bytes / 4): the response carried no usage",
            usage_estimated.clone(),
        );
        let quota_refusals = Counter::default();
        registry.register(
            "flowgate_quota_refusals",
            "Requests refused for their workload's reject quota (429 quota; also counted as rejected_capacity)",
            quota_refusals.clone(),
        );
        Metrics {
            reloads,
            usage_reported,
            usage_estimated,
            quota_refusals,
            registry,
            queue_size,
            queue_duration,
            requests,
            backends,
            cluster: None,
            inflight,
            queued,
            tracked,
            defaults,
            capped,
            shard_parks,
            admission: Mutex::new(Admission {
                max: max_tracked,
                live: HashMap::new(),
                overflow: Arc::from(OVERFLOW_WORKLOAD_ID),
            }),
            queued_by_priority: Default::default(),
        }
    }

    /// A new bound on per-workload label values (a reload of `workloads.max_tracked`): labels
    /// already admitted stay; new workloads are admitted while fewer than `max_tracked` are.
    pub fn set_max_tracked(&self, max_tracked: usize) {
        self.admission().max = max_tracked;
    }

    fn admission(&self) -> std::sync::MutexGuard<'_, Admission> {
        self.admission.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A request of `workload_id` at `priority` enters the queue: the queue gauge goes up until the
    /// returned guard is finished or dropped.
    pub fn enqueue(self: &Arc<Self>, workload_id: &Arc<str>, priority: u8) -> Queued {
        let label = {
            let mut a = self.admission();
            let max = a.max;
            let len = a.live.len();
            match a.live.get_mut(workload_id) {
                _ if is_permanent(workload_id) => Some(workload_id.clone()),
                Some(n) => {
                    *n += 1;
                    Some(workload_id.clone())
                }
                None if len < max => {
                    a.live.insert(workload_id.clone(), 1);
                    Some(workload_id.clone())
                }
                None => None,
            }
            .unwrap_or_else(|| a.overflow.clone())
        };
        let labels = QueueLabels { fairness_id: label, priority };
        self.queue_size.get_or_create(&labels).inc();
        if let Some(n) = self.priority_slot(priority) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        Queued { metrics: self.clone(), labels: Some(labels) }
    }

    /// Count the defaults a request's context needed.
    pub fn count_defaults(&self, defaults: Defaults) {
        for reason in defaults.iter() {
            self.defaults.get_or_create(&ReasonLabels { reason: reason.label() }).inc();
        }
    }

    /// Count a request whose criticality a cap lowered.
    pub fn count_capped(&self) {
        self.capped.inc();
    }

    /// Forget the series of workloads with nothing in the shim that `tracked` (the ids the
    /// engine's registry still holds) no longer contains; returns how many were forgotten.
    pub fn sweep(&self, tracked: &HashSet<Arc<str>>) -> usize {
        let gone: Vec<Arc<str>> = {
            let mut a = self.admission();
            let gone: Vec<Arc<str>> = a
                .live
                .iter()
                .filter(|(id, n)| **n == 0 && !tracked.contains(*id))
                .map(|(id, _)| id.clone())
                .collect();
            for id in &gone {
                a.live.remove(id);
            }
            gone
        };
        for id in &gone {
            for priority in 1..=5 {
                self.queue_size.remove(&QueueLabels { fairness_id: id.clone(), priority });
                for outcome in Outcome::ALL {
                    self.queue_duration.remove(&DurationLabels {
                        fairness_id: id.clone(),
                        priority,
                        outcome: outcome.label(),
                    });
                }
            }
        }
        gone.len()
    }

    /// Sweep against `view`'s registry (see [`Metrics::sweep`]).
    pub fn sweep_with(&self, view: &dyn EngineView) -> usize {
        let has_idle = self.admission().live.values().any(|n| *n == 0);
        if !has_idle {
            return 0;
        }
        let tracked: HashSet<Arc<str>> =
            view.registry().workloads().into_iter().map(|w| w.workload_id).collect();
        self.sweep(&tracked)
    }

    /// The saturation detector's metrics (scrape counters, backend gauges).
    pub fn backends(&self) -> &BackendMetrics {
        &self.backends
    }

    /// Requests the shim holds in the queue, by criticality (index `criticality - 1`): the
    /// [`QUEUE_SIZE`] gauge summed over workloads.
    pub fn queued_by_priority(&self) -> [u64; CRITICALITIES] {
        self.queued_by_priority.each_ref().map(|n| u64::try_from(n.load(Ordering::Relaxed)).unwrap_or(0))
    }

    fn priority_slot(&self, priority: u8) -> Option<&AtomicI64> {
        self.queued_by_priority.get(usize::from(priority).checked_sub(1)?)
    }

    /// Count one configuration reload: applied (`ok`) or refused (`error`).
    pub fn count_reload(&self, ok: bool) {
        self.reloads.get_or_create(&ResultLabels { result: if ok { "ok" } else { "error" } }).inc();
    }

    /// Count one charged usage: reported by the model server, or estimated.
    pub fn count_usage(&self, reported: bool) {
        if reported {
            self.usage_reported.inc();
        } else {
            self.usage_estimated.inc();
        }
    }

    /// Count one request refused for its workload's `reject` quota.
    pub fn count_quota_refusal(&self) {
        self.quota_refusals.inc();
    }

    /// Register the `flowgate_cluster_*` metrics (a `cluster:` section); their handles.
    pub fn register_cluster(&mut self) -> Arc<ClusterMetrics> {
        let c = Arc::new(ClusterMetrics::register(&mut self.registry));
        self.cluster = Some(c.clone());
        c
    }

    /// Workload ids with their own label right now (for tests and debugging).
    pub fn admitted(&self) -> usize {
        self.admission().live.len()
    }

    /// Refresh the scrape-time gauges from `view`, sweep, and render: OpenMetrics text when
    /// `openmetrics`, else the classic Prometheus text format (version 0.0.4).
    pub fn render(&self, view: &dyn EngineView, openmetrics: bool) -> String {
        let stats = view.stats();
        self.queued.set(i64::try_from(stats.queued).unwrap_or(i64::MAX));
        let registry = view.registry();
        self.tracked.set(i64::try_from(registry.tracked()).unwrap_or(i64::MAX));
        let states = view.backend_states();
        for s in &states {
            self.inflight
                .get_or_create(&BackendLabels { backend: s.address.clone() })
                .set(i64::from(s.inflight));
        }
        // A backend keeps its series while it is in the table (draining included), not after.
        for gone in self.backends.refresh(&states) {
            self.inflight.remove(&BackendLabels { backend: gone });
        }
        for (shard, parks) in view.shard_parks().into_iter().enumerate() {
            let labels = ShardLabels { shard: u32::try_from(shard).unwrap_or(u32::MAX) };
            // The engine's own count is monotonic: the counter mirrors it.
            self.shard_parks.get_or_create(&labels).inner().store(parks, Ordering::Relaxed);
        }
        self.sweep_with(view);
        if let Some(c) = &self.cluster {
            c.refresh();
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        if openmetrics {
            text
        } else {
            openmetrics_to_prometheus(&text)
        }
    }
}

/// The default workload and the overflow entry always have their own label: they take no place
/// in the bound and are never swept.
fn is_permanent(workload_id: &str) -> bool {
    workload_id == DEFAULT_WORKLOAD_ID || workload_id == OVERFLOW_WORKLOAD_ID
}

/// One request's stay in the queue, as the metrics see it. [`Queued::finish`] records its outcome;
/// dropping it unfinished only takes it out of the queue gauge.
#[derive(Debug)]
pub struct Queued {
    metrics: Arc<Metrics>,
    labels: Option<QueueLabels>,
}

impl Queued {
    /// The request left the queue with `outcome` after `waited`.
    pub fn finish(mut self, outcome: Outcome, waited: Duration) {
        let Some(labels) = self.labels.take() else {
            return;
        };
        let m = &self.metrics;
        m.requests.get_or_create(&OutcomeLabels { outcome: outcome.label() }).inc();
        m.queue_duration
            .get_or_create(&DurationLabels {
                fairness_id: labels.fairness_id.clone(),
                priority: labels.priority,
                outcome: outcome.label(),
            })
            .observe(waited.as_secs_f64());
        m.leave(labels);
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(labels) = self.labels.take() {
            self.metrics.leave(labels);
        }
    }
}

impl Metrics {
    fn leave(&self, labels: QueueLabels) {
        self.queue_size.get_or_create(&labels).dec();
        if let Some(n) = self.priority_slot(labels.priority) {
            n.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(n) = self.admission().live.get_mut(&labels.fairness_id) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Rewrite prometheus-client's OpenMetrics text as the classic Prometheus text format: counters'
/// `# HELP`/`# TYPE` lines name the `_total` series, and `# UNIT` / `# EOF` lines are dropped.
pub fn openmetrics_to_prometheus(text: &str) -> String {
    let counters: HashSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Does an `Accept` header ask for OpenMetrics?
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let mut params = part.split(';').map(str::trim);
            let is_om = params.next() == Some("application/openmetrics-text");
            // `q=0` means "not acceptable".
            is_om && !params.any(|p| p.replace(' ', "") == "q=0")
        })
    })
}

/// Render one labelled sample line, for tests: `name{k="v",...}`.
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut s = String::from(name);
    if !labels.is_empty() {
        s.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{k}=\"{v}\"");
        }
        s.push('}');
    }
    s
}

/// The value of the sample `series` (as built by [`series`]) in a rendering, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
