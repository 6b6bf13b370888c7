//! The `flowgate serve` configuration file: YAML → [`ServeConfig`].
//!
//! The schema is the one in the design brief (`flowgate serve` contract); `default.yaml` next to
//! this file is the embedded default and a commented example of every field. Rules:
//!
//! * Unknown keys are an error, at every level.
//! * A missing key or section takes its default (the engine's defaults); a section written with
//!   nothing under it (`queue:`) counts as missing, so does an empty file.
//! * Durations are **strings** with a unit: `50us`, `250ms`, `30s`, `5m`, `1h` (a decimal such as `1.5s`
//!   is fine). A bare number is refused, because `ttl: 30` could mean seconds or milliseconds.
//! * Sizes are a plain integer of bytes (`1048576`), or a string with a unit: `64KiB`, `512MiB`,
//!   `1GiB`, `1TiB` (powers of 1024), `KB`/`MB`/`GB`/`TB` (powers of 1000) or `B`.
//! * `rate_cap` is in requests per second (the engine's `rate_cap_per_s`).
//! * `workloads.caps` entries are `{workload_id, max_criticality}`; `workload_id` is an exact id
//!   or a prefix with one trailing `*`.
//!
//! Every error names the field it is about with a path such as `scoring.wait_cap` or
//! `backends[0].max_inflight`: parse errors through `serde_path_to_error`, value errors through
//! [`EngineConfig::validate`], plus the listener checks done here.

use std::net::SocketAddr;

use flowgate_engine::config::{
    BackendConfig, ConfigError, CriticalityCap, Detector, EngineConfig, Fairness, QueueConfig, RateUnit,
    SaturationConfig, ScoringConfig, WorkloadConfig,
};
use flowgate_engine::layout::Layout;
use flowgate_engine::quota_rule::{OnExceed, Quota};

use crate::cluster::config::{ClusterConfig, RawCluster};
use crate::discovery::Discovery;
use crate::metrics_page::ModelServer;
use crate::tls::{RawTls, TlsConfig};
use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::config_values::{check_metrics_url, nullable, Dur, Listen, Size};
pub use crate::config_values::{
    format_duration, format_size, parse_duration, parse_size, MAX_METRICS_URL_BYTES,
};

/// The embedded default configuration (used when `serve` gets no `--config`).
pub const DEFAULT_YAML: &str = include_str!("default.yaml");
/// Most threads `io_threads` may ask for.
pub const MAX_IO_THREADS: usize = 1024;

/// Everything `flowgate serve` needs: where to listen and how to run the engine.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeConfig {
    /// ext_proc gRPC listener.
    pub listen: SocketAddr,
    /// TLS (and mTLS) on the ext_proc listener; `None` = plaintext.
    pub tls: Option<TlsConfig>,
    /// Metrics / health / workload API HTTP listener.
    pub metrics_listen: SocketAddr,
    /// Threads of the server's async runtime (gRPC, HTTP, scrapes); 0 = auto, one per CPU the
    /// shards leave, at least 1 ([`flowgate_engine::layout`]). At most [`MAX_IO_THREADS`].
    pub io_threads: usize,
    /// The engine's configuration.
    pub engine: EngineConfig,
    /// Where each backend's metrics page is and how to read it, in the order of
    /// `engine.backends`.
    pub scrape: Vec<ScrapeTarget>,
    /// `discovery:`: backends found at run time, added to `engine.backends`. When it is set,
    /// `engine.backends` may rightly be empty, but the engine's own check still asks for one
    /// (see [`ServeConfig::validate`]).
    pub discovery: Option<Discovery>,
    /// `cluster:`: replicas sharing one pool through Redis; `None` = standalone.
    pub cluster: Option<ClusterConfig>,
}

/// One backend's metrics page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScrapeTarget {
    /// `http://host:port/path` (default `http://{address}/metrics`).
    pub url: String,
    /// Which metric names to read.
    pub engine: ModelServer,
}

impl ServeConfig {
    /// Parse and validate a YAML document; every problem found, as `path: reason` errors.
    pub fn from_yaml(text: &str) -> Result<ServeConfig, Vec<ConfigError>> {
        let mut raw = parse(text).map_err(|e| vec![e])?;
        let discovery = raw.discovery.take();
        let cluster = raw.cluster.take().map(RawCluster::validate).transpose();
        // No `backends` key: the engine's default backend, unless discovery finds them.
        if raw.backends.is_none() && discovery.is_none() {
            raw.backends = Some(default_backends());
        }
        let scrape = raw
            .backends
            .iter()
            .flatten()
            .map(|b| ScrapeTarget {
                url: b.metrics.clone().unwrap_or_else(|| format!("http://{}/metrics", b.address)),
                engine: b.engine,
            })
            .collect();
        let config = ServeConfig {
            listen: raw.listen.0,
            tls: raw.tls.take().map(TlsConfig::from),
            metrics_listen: raw.metrics_listen.0,
            io_threads: raw.io_threads,
            engine: raw.into_engine(),
            scrape,
            discovery,
            cluster: cluster.as_ref().ok().cloned().flatten(),
        };
        let mut errors = config.validate();
        if let Err(cluster_errors) = cluster {
            errors.extend(cluster_errors);
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> ServeConfig {
        ServeConfig::from_yaml(DEFAULT_YAML).expect("the embedded default.yaml is valid")
    }

    /// Every problem with this configuration (empty = valid): the engine's checks plus the
    /// listeners'.
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.listen.port() != 0 && self.listen == self.metrics_listen {
            errors.push(ConfigError {
                path: "metrics_listen".into(),
                reason: format!("{} is also the ext_proc listen address", self.metrics_listen),
            });
        }
        errors.extend(self.tls.as_ref().map(TlsConfig::validate).unwrap_or_default());
        if self.io_threads > MAX_IO_THREADS {
            errors.push(ConfigError {
                path: "io_threads".into(),
                reason: format!("{} is above the limit of {MAX_IO_THREADS}", self.io_threads),
            });
        }
        errors.extend(self.engine.validate());
        let discovering = self.discovery.as_ref().is_some_and(|d| !d.is_empty());
        if self.engine.backends.is_empty() && !discovering {
            errors.push(ConfigError {
                path: "backends".into(),
                reason: "at least one backend is needed to dispatch anything (or a discovery source)".into(),
            });
        }
        if let Some(d) = &self.discovery {
            errors.extend(d.validate());
            errors.extend(d.validate_for(self.engine.saturation.detector));
        }
        let e = &self.engine;
        if e.saturation.detector.uses_metrics() {
            for (i, t) in self.scrape.iter().enumerate() {
                if let Err(reason) = check_metrics_url(&t.url) {
                    errors.push(ConfigError { path: format!("backends[{i}].metrics"), reason });
                }
            }
        }
        errors
    }

    /// The fields of `next` that differ from `self`'s but need a restart (a reload keeps the
    /// running values); the engine's own are `EngineConfig::restart_only_changes`.
    pub fn restart_only_changes(&self, next: &ServeConfig) -> Vec<&'static str> {
        let mut changed = Vec::new();
        if self.listen != next.listen {
            changed.push("listen");
        }
        if self.metrics_listen != next.metrics_listen {
            changed.push("metrics_listen");
        }
        if self.tls != next.tls {
            changed.push("tls");
        }
        if self.discovery != next.discovery {
            changed.push("discovery");
        }
        if self.io_threads != next.io_threads {
            changed.push("io_threads");
        }
        if self.cluster != next.cluster {
            changed.push("cluster");
        }
        changed
    }

    /// `, discovery file P + dns N:port` (empty without discovery).
    fn discovery_summary(&self) -> String {
        let Some(d) = &self.discovery else { return String::new() };
        let mut parts = Vec::new();
        if let Some(f) = &d.file {
            parts.push(format!("file {}{}", f.path.display(), if f.watch { " (watched)" } else { "" }));
        }
        if let Some(n) = &d.dns {
            parts.push(format!("dns {}:{} every {}", n.name, n.port, format_duration(n.refresh)));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(", discovery {}", parts.join(" + "))
        }
    }

    /// Where the shards and the I/O threads run on this machine ([`Layout`]).
    pub fn layout(&self) -> Layout {
        Layout::for_this_process(self.engine.shard_count(), self.io_threads)
    }

    /// A one-line description, for `check-config` and the startup log.
    pub fn summary(&self) -> String {
        let e = &self.engine;
        format!(
            "listen {}{}, metrics {}, {} shard(s){}, {} I/O thread(s){}, {} static backend(s) with {} slot(s){}, detector {}, queue {} requests / {}, ttl {}, {} criticality cap(s), fairness {} by {}, {} quota(s){}",
            self.listen,
            match &self.tls {
                None => "",
                Some(t) if t.mtls() => " (mTLS)",
                Some(_) => " (TLS)",
            },
            self.metrics_listen,
            e.shard_count(),
            if e.shards == 0 { " (auto)" } else { "" },
            self.layout().io_threads,
            if self.io_threads == 0 { " (auto)" } else { "" },
            e.backends.len(),
            e.total_slots(),
            self.discovery_summary(),
            e.saturation.detector.name(),
            e.queue.max_requests,
            format_size(e.queue.max_bytes),
            format_duration(e.queue.ttl),
            e.workloads.caps.len(),
            e.scoring.fairness.name(),
            match e.scoring.fairness {
                Fairness::Vtc => "weighted tokens served",
                Fairness::Rate => e.scoring.rate_unit.name(),
            },
            e.workloads.quotas.len(),
            self.cluster.as_ref().map(ClusterConfig::summary).unwrap_or_default(),
        )
    }
}

/// Parse without validating values (only syntax and types).
fn parse(text: &str) -> Result<RawConfig, ConfigError> {
    let de = serde_yaml::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, Option<RawConfig>>(de) {
        Ok(raw) => Ok(raw.unwrap_or_default()),
        Err(e) => Err(parse_error(e)),
    }
}

/// Turn a parse error into `path: reason`, naming an unknown key in the path itself.
fn parse_error(e: serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let path = e.path().to_string();
    let inner = e.inner();
    let mut reason = inner.to_string();
    // serde_yaml appends " at line L column C"; the path says where for field errors.
    if let Some(at) = reason.rfind(" at line ") {
        reason.truncate(at);
    }
    let path = if path == "." { String::new() } else { path };
    // serde_yaml also tracks the path and puts it in front of its message.
    // (For an unknown key, serde_yaml's path is the parent's.)
    let parent = path.rfind(['.', '[']).map_or("", |i| &path[..i]);
    for prefix in [path.as_str(), parent] {
        if let Some(rest) = reason.strip_prefix(&format!("{prefix}: ")) {
            reason = rest.to_string();
            break;
        }
    }
    if let Some(rest) = reason.strip_prefix("unknown field `") {
        if let Some((key, expected)) = rest.split_once('`') {
            let expected = expected.trim_start_matches(", ");
            // serde_path_to_error's path already ends with the unknown key.
            let full = if path.is_empty() || path.ends_with(key) {
                if path.is_empty() {
                    key.to_string()
                } else {
                    path.clone()
                }
            } else {
                format!("{path}.{key}")
            };
            return ConfigError { path: full, reason: format!("unknown key ({expected})") };
        }
    }
    if path.is_empty() {
        if let Some(loc) = inner.location() {
            reason = format!("{reason} (line {}, column {})", loc.line(), loc.column());
        }
        return ConfigError { path: "config".into(), reason };
    }
    ConfigError { path, reason }
}

// ---------------------------------------------------------------------------------------------
// The file's shape. Defaults come from the engine's own defaults, so there is one source of truth.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    listen: Listen,
    tls: Option<RawTls>,
    metrics_listen: Listen,
    shards: usize,
    io_threads: usize,
    ring_capacity: usize,
    /// `None` when the key is missing (see `ServeConfig::from_yaml`); written with nothing under
    /// it, an empty list.
    #[serde(deserialize_with = "present")]
    backends: Option<Vec<RawBackend>>,
    #[serde(deserialize_with = "nullable")]
    saturation: RawSaturation,
    #[serde(deserialize_with = "nullable")]
    queue: RawQueue,
    #[serde(deserialize_with = "nullable")]
    scoring: RawScoring,
    #[serde(deserialize_with = "nullable")]
    workloads: RawWorkloads,
    ceilings: [f64; 5],
    spin_before_park: Dur,
    discovery: Option<Discovery>,
    cluster: Option<RawCluster>,
}

/// A key that is there: `Some`, an empty list when written with nothing under it.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<RawBackend>>, D::Error> {
    Ok(Some(Option::<Vec<RawBackend>>::deserialize(d)?.unwrap_or_default()))
}

/// The engine's default backends, as the file would write them.
fn default_backends() -> Vec<RawBackend> {
    EngineConfig::default()
        .backends
        .into_iter()
        .map(|b| RawBackend {
            address: b.address,
            max_inflight: b.max_inflight,
            metrics: None,
            engine: ModelServer::default(),
        })
        .collect()
}

impl Default for RawConfig {
    fn default() -> Self {
        let e = EngineConfig::default();
        Self {
            listen: Listen(SocketAddr::from(([127, 0, 0, 1], 9002))),
            tls: None,
            metrics_listen: Listen(SocketAddr::from(([127, 0, 0, 1], 9090))),
            shards: e.shards,
            io_threads: 0,
            ring_capacity: e.ring_capacity,
            backends: None,
            saturation: RawSaturation::default(),
            queue: RawQueue::default(),
            scoring: RawScoring::default(),
            workloads: RawWorkloads::default(),
            ceilings: e.ceilings,
            spin_before_park: Dur(e.spin_before_park),
            discovery: None,
            cluster: None,
        }
    }
}

impl RawConfig {
    fn into_engine(self) -> EngineConfig {
        EngineConfig {
            shards: self.shards,
            ring_capacity: self.ring_capacity,
            backends: self
                .backends
                .into_iter()
                .flatten()
                .map(|b| BackendConfig { address: b.address, max_inflight: b.max_inflight })
                .collect(),
            saturation: SaturationConfig {
                detector: self.saturation.detector.0,
                scrape_interval: self.saturation.scrape_interval.0,
                scrape_timeout: self.saturation.scrape_timeout.0,
                queue_depth_threshold: self.saturation.queue_depth_threshold,
                kv_cache_threshold: self.saturation.kv_cache_threshold,
                staleness: self.saturation.staleness.0,
            },
            queue: QueueConfig {
                max_requests: self.queue.max_requests,
                max_bytes: self.queue.max_bytes.0,
                ttl: self.queue.ttl.0,
            },
            scoring: ScoringConfig {
                wait_weight: self.scoring.wait_weight,
                criticality_weight: self.scoring.criticality_weight,
                rate_weight: self.scoring.rate_weight,
                wait_cap: self.scoring.wait_cap.0,
                rate_cap_per_s: self.scoring.rate_cap,
                rate_window: self.scoring.rate_window.0,
                rescore_interval: self.scoring.rescore_interval.0,
                rate_unit: self.scoring.rate_unit.0,
                input_token_weight: self.scoring.input_token_weight,
                output_token_weight: self.scoring.output_token_weight,
                fairness: self.scoring.fairness.0,
                vtc_cap_tokens: self.scoring.vtc_cap,
            },
            workloads: WorkloadConfig {
                default_criticality: self.workloads.default_criticality,
                idle_timeout: self.workloads.idle_timeout.0,
                max_tracked: self.workloads.max_tracked,
                caps: self
                    .workloads
                    .caps
                    .into_iter()
                    .map(|c| CriticalityCap { pattern: c.workload_id, max_criticality: c.max_criticality })
                    .collect(),
                quotas: self
                    .workloads
                    .quotas
                    .into_iter()
                    .map(|q| Quota {
                        pattern: q.workload_id,
                        max_inflight: q.max_inflight,
                        requests_per_minute: q.requests_per_minute,
                        tokens_per_minute: q.tokens_per_minute,
                        on_exceed: q.on_exceed.0,
                    })
                    .collect(),
            },
            ceilings: self.ceilings,
            spin_before_park: self.spin_before_park.0,
            ..EngineConfig::default()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: String,
    /// 0 = no concurrency cap.
    #[serde(default)]
    max_inflight: u32,
    /// Its metrics page; default `http://{address}/metrics`.
    #[serde(default)]
    metrics: Option<String>,
    /// Which metric names its page uses.
    #[serde(default)]
    engine: ModelServer,
}

/// A config value written as one of its kind's names (`kind.name()`), refused with the list of
/// names otherwise: `named_value!(doc, Raw(Kind) in [Kind::A, Kind::B], "a kind (a or b)")`.
macro_rules! named_value {
    ($doc:literal $(#[$meta:meta])* $raw:ident($kind:ty) in [$($variant:expr),+], $what:literal) => {
        #[doc = $doc]
        $(#[$meta])*
        struct $raw($kind);

        impl<'de> Deserialize<'de> for $raw {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let name = String::deserialize(d)?;
                [$($variant),+]
                    .into_iter()
                    .find(|k| k.name() == name)
                    .map($raw)
                    .ok_or_else(|| de::Error::custom(format!("{name:?} is not {}", $what)))
            }
        }
    };
}

named_value!(
    "`concurrency` | `utilization` | `both`."
    RawDetector(Detector) in [Detector::Concurrency, Detector::Utilization, Detector::Both],
    "a detector (concurrency, utilization or both)"
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSaturation {
    detector: RawDetector,
    scrape_interval: Dur,
    scrape_timeout: Dur,
    queue_depth_threshold: u32,
    kv_cache_threshold: f64,
    staleness: Dur,
}

impl Default for RawSaturation {
    fn default() -> Self {
        let s = SaturationConfig::default();
        Self {
            detector: RawDetector(s.detector),
            scrape_interval: Dur(s.scrape_interval),
            scrape_timeout: Dur(s.scrape_timeout),
            queue_depth_threshold: s.queue_depth_threshold,
            kv_cache_threshold: s.kv_cache_threshold,
            staleness: Dur(s.staleness),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQueue {
    max_requests: u64,
    max_bytes: Size,
    ttl: Dur,
}

impl Default for RawQueue {
    fn default() -> Self {
        let q = QueueConfig::default();
        Self { max_requests: q.max_requests, max_bytes: Size(q.max_bytes), ttl: Dur(q.ttl) }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawScoring {
    wait_weight: f64,
    criticality_weight: f64,
    rate_weight: f64,
    wait_cap: Dur,
    rate_cap: f64,
    rate_window: Dur,
    rescore_interval: Dur,
    rate_unit: RawRateUnit,
    input_token_weight: f64,
    output_token_weight: f64,
    fairness: RawFairness,
    vtc_cap: f64,
}

impl Default for RawScoring {
    fn default() -> Self {
        let s = ScoringConfig::default();
        Self {
            wait_weight: s.wait_weight,
            criticality_weight: s.criticality_weight,
            rate_weight: s.rate_weight,
            wait_cap: Dur(s.wait_cap),
            rate_cap: s.rate_cap_per_s,
            rate_window: Dur(s.rate_window),
            rescore_interval: Dur(s.rescore_interval),
            rate_unit: RawRateUnit(s.rate_unit),
            input_token_weight: s.input_token_weight,
            output_token_weight: s.output_token_weight,
            fairness: RawFairness(s.fairness),
            vtc_cap: s.vtc_cap_tokens,
        }
    }
}

named_value!(
    "`requests` | `tokens`."
    RawRateUnit(RateUnit) in [RateUnit::Requests, RateUnit::Tokens],
    "a rate unit (requests or tokens)"
);

named_value!(
    "`rate` | `vtc`."
    RawFairness(Fairness) in [Fairness::Rate, Fairness::Vtc],
    "a fairness rule (rate or vtc)"
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWorkloads {
    default_criticality: u8,
    idle_timeout: Dur,
    max_tracked: usize,
    #[serde(deserialize_with = "nullable")]
    caps: Vec<RawCap>,
    #[serde(deserialize_with = "nullable")]
    quotas: Vec<RawQuota>,
}

impl Default for RawWorkloads {
    fn default() -> Self {
        let w = WorkloadConfig::default();
        Self {
            default_criticality: w.default_criticality,
            idle_timeout: Dur(w.idle_timeout),
            max_tracked: w.max_tracked,
            caps: Vec::new(),
            quotas: Vec::new(),
        }
    }
}

/// One `workloads.quotas[]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    workload_id: String,
    #[serde(default)]
    max_inflight: Option<u32>,
    #[serde(default)]
    requests_per_minute: Option<u32>,
    #[serde(default)]
    tokens_per_minute: Option<u64>,
    #[serde(default)]
    on_exceed: RawOnExceed,
}

named_value!(
    "`queue` | `reject`."
    #[derive(Default)] RawOnExceed(OnExceed) in [OnExceed::Queue, OnExceed::Reject],
    "an on_exceed (queue or reject)"
);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCap {
    workload_id: String,
    max_criticality: u8,
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "config_saturation_tests.rs"]
mod saturation_tests;

#[cfg(test)]
#[path = "config_tls_tests.rs"]
mod tls_tests;
