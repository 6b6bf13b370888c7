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

use flowgate_engine::config::{ConfigError, EngineConfig, Fairness};
use flowgate_engine::layout::Layout;

use crate::cluster::config::{ClusterConfig, RawCluster};
use crate::config_raw::{default_backends, parse};
use crate::config_values::check_metrics_url;
pub use crate::config_values::{
    format_duration, format_size, parse_duration, parse_size, MAX_METRICS_URL_BYTES,
};
use crate::discovery::Discovery;
use crate::metrics_page::ModelServer;
use crate::tls::TlsConfig;

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

    /// What is valid but likely not meant, as `path: reason` lines for `check-config` and the
    /// startup log: a backend without a cap (`max_inflight: 0`, the default) under detector
    /// `concurrency`, which nothing limits. (Discovered backends are logged as they arrive.)
    pub fn warnings(&self) -> Vec<ConfigError> {
        let mut warnings = self.engine.warnings();
        if let Some(d) = &self.discovery {
            warnings.extend(d.warnings_for(self.engine.saturation.detector));
        }
        warnings
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

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "config_saturation_tests.rs"]
mod saturation_tests;

#[cfg(test)]
#[path = "config_tls_tests.rs"]
mod tls_tests;
