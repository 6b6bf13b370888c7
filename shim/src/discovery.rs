//! Backend discovery (issue #11): where backends come from besides the static `backends` list,
//! as *desired sets* that the serve side merges into the engine's backend table.
//!
//! ```yaml
//! discovery:
//!   file: { path: endpoints.yaml, watch: true }
//!   dns: { name: vllm.default.svc.cluster.local, port: 8000, refresh: 5s, max_inflight: 8 }
//! ```
//!
//! **Sources.** [`Source::Static`] is the `backends` list of the config file; [`Source::File`] is
//! an endpoints file in llm-d's file-discovery shape ([`crate::discovery_file`]);
//! [`Source::Dns`] is every A/AAAA record of one name ([`crate::discovery_dns`]).
//!
//! **Output.** Each dynamic source runs as one task, started with a [`CancellationToken`], that
//! publishes every new *good* set of [`DiscoveredBackend`]s into a
//! `tokio::sync::watch::Sender<Arc<Vec<DiscoveredBackend>>>`, only when the set differs from the
//! one already in the channel (see [`publish`]). A set is sorted by address, with no duplicate
//! address. A source that has nothing usable (a refused file, a missing file, a failed lookup)
//! publishes nothing: the last good set stays in the channel. What each source saw last is also
//! on a second channel, [`SourceStatus`], for logs, metrics and tests
//! ([`SourceHandle::status`]).
//!
//! **Config.** [`Discovery`] is the `discovery:` section: unknown keys are an error, durations are
//! strings with a unit (`refresh: 5s`), and [`Discovery::validate`] gives `path: reason` errors
//! such as `discovery.dns.refresh: ...`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flowgate_engine::config::{ConfigError, Detector, MAX_BACKEND_INFLIGHT, UNCAPPED_WARNING};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config_values::parse_duration;
use crate::metrics_page::ModelServer;

#[cfg(doc)]
use tokio_util::sync::CancellationToken;

/// `discovery.dns.refresh` when none is written.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
/// Shortest `discovery.dns.refresh` accepted.
pub const MIN_DNS_REFRESH: Duration = Duration::from_millis(100);
/// Longest `discovery.dns.refresh` accepted.
pub const MAX_DNS_REFRESH: Duration = Duration::from_secs(3600);
/// Longest DNS name accepted (RFC 1035's limit for a name written out).
pub const MAX_DNS_NAME_BYTES: usize = 253;

/// Where a backend came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The config file's `backends` list.
    Static,
    /// `discovery.file`.
    File,
    /// `discovery.dns`.
    Dns,
}

impl Source {
    /// `static`, `file` or `dns` (the `source` field of `GET /api/v1/backends`).
    pub fn name(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::File => "file",
            Source::Dns => "dns",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One backend a source wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveredBackend {
    /// `ip:port` (`[v6]:port` for IPv6), the form [`std::net::SocketAddr`] prints; the key two
    /// sources' sets are merged on.
    pub address: String,
    /// Most requests in flight on it; 0 = no concurrency cap.
    pub max_inflight: u32,
    /// Its Prometheus page, `http://host:port/path` (default `http://{address}/metrics`).
    pub metrics: String,
    /// Which metric names its page uses.
    pub engine: ModelServer,
    /// The endpoint's name in the discovery file, if it has one (for logs).
    pub name: Option<String>,
}

/// What a source saw last. `events` counts every report, so a waiter can tell two equal
/// reports apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStatus {
    /// Reports so far (1 for the first).
    pub events: u64,
    /// The last report.
    pub last: SourceEvent,
}

/// One thing a source noticed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    /// The task started (nothing read yet).
    Started,
    /// A good set was read; `published` when it differed from the channel's and was sent.
    Applied {
        /// Backends in the set.
        backends: usize,
        /// Entries skipped as bad (file only).
        skipped: usize,
        /// Whether the set was new.
        published: bool,
    },
    /// The source is readable again and says what it said before (nothing published).
    Unchanged,
    /// Nothing usable (file refused whole, unreadable, lookup failed): the last good set is kept.
    Refused(String),
    /// The discovery file is gone: the last good set is kept.
    Missing,
}

/// A running source task.
#[derive(Debug)]
pub struct SourceHandle {
    /// The task; it ends when its cancellation token is cancelled.
    pub task: JoinHandle<()>,
    /// What it saw last.
    pub status: watch::Receiver<SourceStatus>,
}

/// The sender side of [`SourceHandle::status`].
pub(crate) struct StatusSender(watch::Sender<SourceStatus>);

impl StatusSender {
    /// A new channel, its first value [`SourceEvent::Started`].
    pub(crate) fn new() -> (StatusSender, watch::Receiver<SourceStatus>) {
        let (tx, rx) = watch::channel(SourceStatus { events: 1, last: SourceEvent::Started });
        (StatusSender(tx), rx)
    }

    /// Report one event.
    pub(crate) fn report(&self, event: SourceEvent) {
        self.0.send_modify(|s| {
            s.events += 1;
            s.last = event;
        });
    }
}

/// Put `set` into the channel if it differs from what is there; whether it did.
pub fn publish(tx: &watch::Sender<Arc<Vec<DiscoveredBackend>>>, set: Vec<DiscoveredBackend>) -> bool {
    tx.send_if_modified(|current| {
        if **current == set {
            false
        } else {
            *current = Arc::new(set);
            true
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The `discovery:` section.

/// The `discovery:` section of the config file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// `discovery.file`.
    #[serde(default)]
    pub file: Option<FileDiscovery>,
    /// `discovery.dns`.
    #[serde(default)]
    pub dns: Option<DnsDiscovery>,
}

/// `discovery.file`: an endpoints file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDiscovery {
    /// The file (relative paths are relative to the working directory).
    pub path: PathBuf,
    /// Whether changes are picked up while running (default `true`).
    #[serde(default = "yes")]
    pub watch: bool,
}

/// `discovery.dns`: every A/AAAA record of a name.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsDiscovery {
    /// The name to resolve (e.g. a headless Service: one record per ready pod).
    pub name: String,
    /// The port every resolved address gets.
    pub port: u16,
    /// How often the name is resolved again (default 5s, at least 100ms).
    #[serde(default = "default_refresh", deserialize_with = "duration")]
    pub refresh: Duration,
    /// `max_inflight` of every resolved backend (0 = no cap, as for a static backend).
    #[serde(default)]
    pub max_inflight: u32,
    /// Which metric names their pages use (default `vllm`); pages are `http://{ip:port}/metrics`.
    #[serde(default)]
    pub engine: ModelServer,
}

fn yes() -> bool {
    true
}

fn default_refresh() -> Duration {
    DEFAULT_DNS_REFRESH
}

/// A duration string (`5s`); a bare number is refused, as everywhere in the file.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let value = serde_yaml::Value::deserialize(d)?;
    match value {
        serde_yaml::Value::String(s) => parse_duration(&s).ok_or_else(|| {
            de::Error::custom(format!("{s:?} is not a duration (write a number and a unit: 250ms, 5s, 1m)"))
        }),
        serde_yaml::Value::Number(n) => Err(de::Error::custom(format!(
            "{n} has no unit: write durations as strings such as \"{n}s\" or \"{n}ms\""
        ))),
        _ => Err(de::Error::custom("expected a duration string such as \"5s\"")),
    }
}

impl Discovery {
    /// Every problem with this section (empty = valid), as `discovery.…` paths. The checks that
    /// depend on the saturation detector are [`Discovery::warnings_for`]'s (warnings, not errors).
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut bad = |path: &str, reason: String| {
            errors.push(ConfigError { path: format!("discovery.{path}"), reason })
        };
        if let Some(f) = &self.file {
            if f.path.as_os_str().is_empty() {
                bad("file.path", "is empty".into());
            }
        }
        if let Some(d) = &self.dns {
            if let Err(reason) = check_dns_name(&d.name) {
                bad("dns.name", reason);
            }
            if d.port == 0 {
                bad("dns.port", "must be between 1 and 65535".into());
            }
            if d.refresh < MIN_DNS_REFRESH || d.refresh > MAX_DNS_REFRESH {
                bad(
                    "dns.refresh",
                    format!(
                        "must be between {}ms and {}s",
                        MIN_DNS_REFRESH.as_millis(),
                        MAX_DNS_REFRESH.as_secs()
                    ),
                );
            }
            if d.max_inflight > MAX_BACKEND_INFLIGHT {
                bad(
                    "dns.max_inflight",
                    format!("must be at most {MAX_BACKEND_INFLIGHT} (0 = no concurrency cap)"),
                );
            }
        }
        errors
    }

    /// What is valid but likely not meant under `saturation.detector`: `discovery.dns.max_inflight`
    /// 0 (no cap) with detector `concurrency`, which nothing limits.
    pub fn warnings_for(&self, detector: Detector) -> Vec<ConfigError> {
        match &self.dns {
            Some(d) if d.max_inflight == 0 && !detector.uses_metrics() => {
                vec![ConfigError {
                    path: "discovery.dns.max_inflight".into(),
                    reason: UNCAPPED_WARNING.into(),
                }]
            }
            _ => Vec::new(),
        }
    }

    /// Whether any dynamic source is configured.
    pub fn is_empty(&self) -> bool {
        self.file.is_none() && self.dns.is_none()
    }
}

/// A name `getaddrinfo` can be asked about: an IP literal, or dot-separated labels of letters,
/// digits, `-` and `_`.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_DNS_NAME_BYTES {
        return Err(format!("longer than {MAX_DNS_NAME_BYTES} bytes"));
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if trimmed.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a DNS name (labels of letters, digits and '-', joined by '.')"))
    }
}

#[cfg(test)]
#[path = "discovery_tests.rs"]
mod tests;
