//! The configuration file's shape as parsed, before validation: the `Raw*` types that serde fills
//! in (unknown keys refused at every level, missing ones defaulted from the engine's own defaults,
//! so there is one source of truth), the parse-error paths, and the conversion into an
//! [`EngineConfig`]. [`ServeConfig::from_yaml`](crate::config::ServeConfig::from_yaml) validates
//! what comes out.

use std::net::SocketAddr;

use flowgate_engine::config::{
    BackendConfig, ConfigError, CriticalityCap, Detector, EngineConfig, Fairness, QueueConfig, RateUnit,
    SaturationConfig, ScoringConfig, WorkloadConfig,
};
use flowgate_engine::quota_rule::{OnExceed, Quota};

use crate::cluster::config::RawCluster;
use crate::config_values::{nullable, Dur, Listen, Size};
use crate::discovery::Discovery;
use crate::metrics_page::ModelServer;
use crate::tls::RawTls;
use serde::de::{self, Deserializer};
use serde::Deserialize;

/// Parse without validating values (only syntax and types).
pub(crate) fn parse(text: &str) -> Result<RawConfig, ConfigError> {
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
pub(crate) struct RawConfig {
    pub(crate) listen: Listen,
    pub(crate) tls: Option<RawTls>,
    pub(crate) metrics_listen: Listen,
    shards: usize,
    pub(crate) io_threads: usize,
    ring_capacity: usize,
    /// `None` when the key is missing (see `ServeConfig::from_yaml`); written with nothing under
    /// it, an empty list.
    #[serde(deserialize_with = "present")]
    pub(crate) backends: Option<Vec<RawBackend>>,
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
    pub(crate) discovery: Option<Discovery>,
    pub(crate) cluster: Option<RawCluster>,
}

/// A key that is there: `Some`, an empty list when written with nothing under it.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<RawBackend>>, D::Error> {
    Ok(Some(Option::<Vec<RawBackend>>::deserialize(d)?.unwrap_or_default()))
}

/// The engine's default backends, as the file would write them.
pub(crate) fn default_backends() -> Vec<RawBackend> {
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
    pub(crate) fn into_engine(self) -> EngineConfig {
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
pub(crate) struct RawBackend {
    pub(crate) address: String,
    /// 0 = no concurrency cap.
    #[serde(default)]
    max_inflight: u32,
    /// Its metrics page; default `http://{address}/metrics`.
    #[serde(default)]
    pub(crate) metrics: Option<String>,
    /// Which metric names its page uses.
    #[serde(default)]
    pub(crate) engine: ModelServer,
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
