//! The backend set: the config's static `backends` plus what discovery found (file, DNS), merged
//! and applied to the engine's backend table; the metrics scrapers follow it.
//!
//! One [`BackendSet`] per server, the only caller of `Engine::set_backends` and
//! `Engine::reconfigure`, so changes apply one at a time and in order (its lock is held across
//! each; nothing on the request path takes it). Merging: static entries first, then the file's,
//! then DNS's; the first entry of an address wins (and names the backend's source). After each
//! change, every backend in the table that is not draining has exactly one scraper (when the
//! detector reads metrics); a draining or removed backend's scraper is stopped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use flowgate_engine::backends::{BackendChanges, BackendId, BackendState};
use flowgate_engine::config::{BackendConfig, ConfigError, EngineConfig, SaturationConfig, UNCAPPED_WARNING};
use flowgate_engine::runtime::{Engine, Reconfigured};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ScrapeTarget;
use crate::discovery::DiscoveredBackend;
pub use crate::discovery::Source;
use crate::metrics::Metrics;

/// Every source, in merge order.
const SOURCES: [Source; 3] = [Source::Static, Source::File, Source::Dns];

/// A source's place in [`Inner::members`].
fn index(source: Source) -> usize {
    match source {
        Source::Static => 0,
        Source::File => 1,
        Source::Dns => 2,
    }
}

/// One backend as a source gives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// `ip:port`.
    pub address: String,
    /// Its `max_inflight` (0 = no cap).
    pub max_inflight: u32,
    /// Its metrics page.
    pub scrape: ScrapeTarget,
}

impl From<&DiscoveredBackend> for Member {
    fn from(d: &DiscoveredBackend) -> Self {
        Member {
            address: d.address.clone(),
            max_inflight: d.max_inflight,
            scrape: ScrapeTarget { url: d.metrics.clone(), engine: d.engine },
        }
    }
}

/// A running scraper.
struct Scraper {
    target: ScrapeTarget,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

struct Inner {
    /// Each source's last good set, by [`Source::index`].
    members: [Vec<Member>; 3],
    saturation: SaturationConfig,
    scrapers: HashMap<BackendId, Scraper>,
    /// Address → the source of the entry applied for it.
    origin: HashMap<String, Source>,
    /// Set by [`BackendSet::shutdown`]: no scraper starts after it.
    closed: bool,
}

/// The server's backend set (see the module docs).
pub struct BackendSet {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for BackendSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSet").finish_non_exhaustive()
    }
}

impl BackendSet {
    /// The set of an engine started with `statics` as its backends; starts their scrapers. Must be
    /// called inside a tokio runtime.
    pub fn new(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        statics: Vec<Member>,
        saturation: SaturationConfig,
    ) -> Arc<BackendSet> {
        let set = Arc::new(BackendSet {
            engine,
            metrics,
            inner: Mutex::new(Inner {
                members: [statics, Vec::new(), Vec::new()],
                saturation,
                scrapers: HashMap::new(),
                origin: HashMap::new(),
                closed: false,
            }),
        });
        {
            let mut inner = set.lock();
            let merged = merge(&inner.members);
            set.after_change(&mut inner, &merged, &BackendChanges::default(), false);
        }
        set
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A source's new set (discovery): merged with the others and applied at once.
    pub fn set_source(&self, source: Source, members: Vec<Member>) -> BackendChanges {
        let mut inner = self.lock();
        inner.members[index(source)] = members;
        let merged = merge(&inner.members);
        let desired: Vec<BackendConfig> = merged.iter().map(|(m, _)| config_of(m)).collect();
        let changes = self.engine.set_backends(&desired);
        self.after_change(&mut inner, &merged, &changes, false);
        changes
    }

    /// A reload: apply `config` (its `backends` are the new static set, `statics` their scrape
    /// targets) with the discovered backends merged in. Refused whole when invalid.
    pub fn reload(
        &self,
        mut config: EngineConfig,
        statics: Vec<Member>,
    ) -> Result<Reconfigured, Vec<ConfigError>> {
        let mut inner = self.lock();
        let mut members = inner.members.clone();
        members[index(Source::Static)] = statics;
        let merged = merge(&members);
        config.backends = merged.iter().map(|(m, _)| config_of(m)).collect();
        let done = self.engine.reconfigure(config.clone())?;
        let rules_changed = inner.saturation != config.saturation;
        inner.members = members;
        inner.saturation = config.saturation;
        self.after_change(&mut inner, &merged, &done.backends, rules_changed);
        Ok(done)
    }

    /// Where the backend at `address` came from (`static` for one not in the set).
    pub fn source_of(&self, address: &str) -> &'static str {
        self.lock().origin.get(address).map_or("static", |s| s.name())
    }

    /// Stop every scraper and wait for them.
    pub async fn shutdown(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut inner = self.lock();
            inner.closed = true;
            inner
                .scrapers
                .drain()
                .map(|(_, s)| {
                    s.stop.cancel();
                    s.task
                })
                .collect()
        };
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Scrapers running now.
    pub fn scrapers(&self) -> usize {
        self.lock().scrapers.len()
    }

    fn after_change(
        &self,
        inner: &mut Inner,
        merged: &[(Member, Source)],
        changes: &BackendChanges,
        restart_scrapers: bool,
    ) {
        // The table as it is now: one read serves the sources, the log and the scrapers.
        let states = self.engine.backend_states();
        // A backend that left the sources keeps its source while it drains (it is still listed).
        let mut origin: HashMap<String, Source> =
            merged.iter().map(|(m, s)| (m.address.clone(), *s)).collect();
        for (address, source) in inner.origin.drain() {
            if states.iter().any(|s| s.address == address) {
                origin.entry(address).or_insert(source);
            }
        }
        inner.origin = origin;
        // Valid, but worth a line: nothing limits a backend without a cap under detector
        // `concurrency`. Said as it arrives, and for all of them when the scrape rules change (the
        // static backends at start are in the config's warnings).
        let unlimited = |s: &BackendState| !inner.saturation.detector.uses_metrics() && s.max_inflight == 0;
        for id in &changes.added {
            let state = states.iter().find(|s| s.id == *id);
            let address = state.map(|s| s.address.as_str());
            let source = address.and_then(|a| inner.origin.get(a)).map_or("?", |s| s.name());
            tracing::info!(backend = address.unwrap_or("?"), source, "backend added");
            if state.is_some_and(unlimited) && !restart_scrapers {
                tracing::warn!(backend = address.unwrap_or("?"), source, "max_inflight {UNCAPPED_WARNING}");
            }
        }
        if restart_scrapers {
            for s in states.iter().filter(|s| !s.draining && unlimited(s)) {
                let source = inner.origin.get(&s.address).map_or("?", |o| o.name());
                tracing::warn!(backend = %s.address, source, "max_inflight {UNCAPPED_WARNING}");
            }
        }
        for address in &changes.drained {
            tracing::info!(backend = %address, "backend removed: draining (no new requests; in-flight ones finish)");
        }
        for address in &changes.refused {
            tracing::warn!(
                backend = %address,
                "backend refused: the backend table is full (max_backends slots, draining ones included)"
            );
        }
        self.reconcile_scrapers(inner, merged, states, restart_scrapers);
    }

    /// One scraper per backend in the table that takes requests (none when the detector reads no
    /// metrics); `restart` replaces all of them (the scrape rules changed).
    fn reconcile_scrapers(
        &self,
        inner: &mut Inner,
        merged: &[(Member, Source)],
        states: Vec<BackendState>,
        restart: bool,
    ) {
        let targets: HashMap<&str, &ScrapeTarget> =
            merged.iter().map(|(m, _)| (m.address.as_str(), &m.scrape)).collect();
        let mut wanted: HashMap<BackendId, (String, ScrapeTarget)> = HashMap::new();
        if inner.saturation.detector.uses_metrics() && !inner.closed {
            for s in states {
                if let (false, Some(t)) = (s.draining, targets.get(s.address.as_str())) {
                    wanted.insert(s.id, (s.address, (*t).clone()));
                }
            }
        }
        inner.scrapers.retain(|id, scraper| {
            let keep = !restart && wanted.get(id).is_some_and(|(_, t)| *t == scraper.target);
            if !keep {
                scraper.stop.cancel();
            }
            keep
        });
        for (id, (address, target)) in wanted {
            if inner.scrapers.contains_key(&id) {
                continue;
            }
            let stop = CancellationToken::new();
            let task = crate::scrape::spawn_one(
                self.engine.clone(),
                id,
                &address,
                target.clone(),
                &inner.saturation,
                self.metrics.clone(),
                stop.clone(),
            );
            inner.scrapers.insert(id, Scraper { target, stop, task });
        }
    }
}

fn config_of(m: &Member) -> BackendConfig {
    BackendConfig { address: m.address.clone(), max_inflight: m.max_inflight }
}

/// Every source's members in merge order, the first entry of each address kept.
fn merge(members: &[Vec<Member>; 3]) -> Vec<(Member, Source)> {
    let mut seen = std::collections::HashSet::new();
    let mut merged = Vec::new();
    for source in SOURCES {
        for m in &members[index(source)] {
            if seen.insert(m.address.clone()) {
                merged.push((m.clone(), source));
            }
        }
    }
    merged
}
