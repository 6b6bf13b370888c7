//! Reloading the config file while serving: on `SIGHUP`, and with `--watch-config` when the file
//! changes.
//!
//! A reload reads the file (at most [`MAX_CONFIG_BYTES`]), validates it whole with the same
//! `path: reason` errors as `check-config`, and refuses it whole when anything is wrong: the
//! running config keeps serving. A good file is applied live ([`BackendSet::reload`], which calls
//! `Engine::reconfigure`, then the discovery sources that changed ([`LiveDiscovery`]: a new
//! discovery file is read while the reload is validated, so an unreadable one refuses it), then
//! the ext_proc service's per-request rules); fields that need a restart (`listen`,
//! `metrics_listen`, `tls`, `io_threads`, `cluster`, and the engine's own: `shards`, ring and
//! table sizes, the spin window) are logged as such and keep their running values. Queued
//! requests are never dropped: each shard rescores them by the new rules at its next pass.
//! `flowgate_config_reloads_total{result}` counts reloads.
//!
//! Watching polls the file's metadata (modification time, length, inode) every
//! [`WATCH_INTERVAL`]: that also sees a Kubernetes ConfigMap's symlink swap, which inotify
//! watches on the file itself miss, and costs one `stat` per interval.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowgate_engine::config::ConfigError;
use tokio_util::sync::CancellationToken;

use crate::backend_set::{BackendSet, Member};
use crate::config::ServeConfig;
use crate::discovery_feed::LiveDiscovery;
use crate::metrics::Metrics;
use crate::server::FlowControl;

/// Largest config file a reload reads; a larger one is refused.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// How often `--watch-config` looks at the file.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Applied; these changed fields need a restart and kept their running values.
    Applied {
        /// The restart-only fields that changed.
        restart_only: Vec<String>,
    },
    /// Refused whole; the running config keeps serving.
    Refused(Vec<ConfigError>),
}

/// Reloads one server's config file.
pub struct Reloader {
    path: PathBuf,
    /// The config as running: the shim's restart-only fields stay as started.
    running: Mutex<ServeConfig>,
    backends: Arc<BackendSet>,
    service: FlowControl,
    metrics: Arc<Metrics>,
    /// The discovery sources a reload replaces (`None`: a reload leaves discovery alone).
    discovery: Option<Arc<LiveDiscovery>>,
    /// Command-line `--listen` / `--metrics-listen`, applied over every file read.
    overrides: (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>),
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").field("path", &self.path).finish_non_exhaustive()
    }
}

/// The static backends of `config` as the backend set takes them.
pub fn static_members(config: &ServeConfig) -> Vec<Member> {
    config
        .engine
        .backends
        .iter()
        .zip(&config.scrape)
        .map(|(b, t)| Member { address: b.address.clone(), max_inflight: b.max_inflight, scrape: t.clone() })
        .collect()
}

/// Read `path`, at most [`MAX_CONFIG_BYTES`], and parse it.
pub fn read_config(path: &Path) -> Result<ServeConfig, Vec<ConfigError>> {
    let error = |reason: String| vec![ConfigError { path: path.display().to_string(), reason }];
    let file = std::fs::File::open(path).map_err(|e| error(format!("cannot read: {e}")))?;
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| error(format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(error(format!("larger than {MAX_CONFIG_BYTES} bytes")));
    }
    ServeConfig::from_yaml(&text)
}

impl Reloader {
    /// A reloader of `path` for a server running `running`.
    pub fn new(
        path: PathBuf,
        running: ServeConfig,
        backends: Arc<BackendSet>,
        service: FlowControl,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            path,
            running: Mutex::new(running),
            backends,
            service,
            metrics,
            discovery: None,
            overrides: (None, None),
        }
    }

    /// Let reloads replace `discovery`'s sources (`discovery:` is applied live).
    pub fn with_discovery(mut self, discovery: Arc<LiveDiscovery>) -> Self {
        self.discovery = Some(discovery);
        self
    }

    /// Apply the command line's listen addresses over every file read.
    pub fn with_overrides(
        mut self,
        listen: Option<std::net::SocketAddr>,
        metrics_listen: Option<std::net::SocketAddr>,
    ) -> Self {
        self.overrides = (listen, metrics_listen);
        self
    }

    /// The file reloaded.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read, validate and apply the file now (see the module docs).
    pub fn reload(&self) -> ReloadOutcome {
        let outcome = self.try_reload();
        match &outcome {
            ReloadOutcome::Applied { restart_only } => {
                self.metrics.count_reload(true);
                for field in restart_only {
                    tracing::warn!(field = %field, "config reload: this field needs a restart; the running value is kept");
                }
                tracing::info!(path = %self.path.display(), "config reloaded");
            }
            ReloadOutcome::Refused(errors) => {
                self.metrics.count_reload(false);
                for e in errors {
                    tracing::error!("config reload refused: {e}");
                }
                tracing::error!(path = %self.path.display(), "config reload refused; the running config keeps serving");
            }
        }
        outcome
    }

    fn try_reload(&self) -> ReloadOutcome {
        let mut next = match read_config(&self.path) {
            Ok(next) => next,
            Err(errors) => return ReloadOutcome::Refused(errors),
        };
        next.listen = self.overrides.0.unwrap_or(next.listen);
        next.metrics_listen = self.overrides.1.unwrap_or(next.metrics_listen);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut restart_only: Vec<String> =
            running.restart_only_changes(&next).into_iter().map(str::to_string).collect();
        // Read before anything is applied: a new discovery file that cannot be read refuses all.
        let discovery = match &self.discovery {
            Some(live) => match live.prepare(next.discovery.as_ref()) {
                Ok(prepared) => Some((live, prepared)),
                Err(error) => return ReloadOutcome::Refused(vec![error]),
            },
            None => None,
        };
        let statics = static_members(&next);
        let done = match self.backends.reload(next.engine.clone(), statics) {
            Ok(done) => done,
            Err(errors) => return ReloadOutcome::Refused(errors),
        };
        restart_only.extend(done.restart_only.iter().map(|f| f.to_string()));
        if let Some((live, prepared)) = discovery {
            if live.apply(prepared) {
                tracing::info!(discovery = ?live.running(), "config reload: discovery sources replaced");
            }
            running.discovery = next.discovery.clone();
        }
        self.service.apply(&next.engine);
        running.engine = next.engine.keeping_restart_only(&running.engine);
        running.scrape = next.scrape;
        ReloadOutcome::Applied { restart_only }
    }
}

/// Reload on every `SIGHUP` until `stop` (without a config file, log that there is none: the
/// signal must not end the process).
pub async fn on_sighup(hangups: Option<Hangups>, reloader: Option<Arc<Reloader>>, stop: CancellationToken) {
    let Some(mut hangups) = hangups else { return };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hangups.recv() => {
                if got.is_none() {
                    return;
                }
                let Some(r) = reloader.clone() else {
                    tracing::warn!("SIGHUP: no config file to reload (serving the embedded default)");
                    continue;
                };
                tracing::info!("SIGHUP: reloading the config file");
                // Reading the file is blocking I/O: off the async workers.
                let _ = tokio::task::spawn_blocking(move || r.reload()).await;
            }
        }
    }
}

/// SIGHUP, listened for from creation on.
pub type Hangups = tokio::signal::unix::Signal;

/// Start listening for SIGHUP now (inside the runtime, before the server says it is serving), so
/// a SIGHUP sent right after can never kill the process by the default action. `None` (logged)
/// when the signal cannot be watched.
pub fn hangups() -> Option<Hangups> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP: reloads need a restart");
            None
        }
    }
}

/// What identifies one version of a file: modification time, length, inode.
fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

/// Reload whenever the file changes (polled every [`WATCH_INTERVAL`]) until `stop`.
pub async fn watch(reloader: Arc<Reloader>, stop: CancellationToken) {
    let mut last = stamp(reloader.path());
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = stamp(reloader.path());
        if now == last {
            continue;
        }
        last = now;
        if now.is_none() {
            tracing::warn!(path = %reloader.path().display(), "watched config file is gone; the running config keeps serving");
            continue;
        }
        tracing::info!(path = %reloader.path().display(), "config file changed: reloading");
        let r = reloader.clone();
        let _ = tokio::task::spawn_blocking(move || r.reload()).await;
    }
}
