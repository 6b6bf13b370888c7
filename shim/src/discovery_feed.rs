//! Discovery into the backend set: the file watcher's and the DNS resolver's sets, applied to the
//! [`BackendSet`] as each arrives, and replaced by a config reload.
//!
//! The discovery file is read before the server accepts connections: a file that cannot be read
//! at start is a startup error (`discovery.file: …`), since serving without the backends it names
//! would refuse everything. Later failures keep the last good set (`discovery_watch.rs`). DNS
//! starts with what its first lookup found (nothing, if it failed) and keeps re-resolving.
//!
//! **Reloads** (DESIGN.md: backends are applied live; discovery is where they come from). A
//! reload changes each source on its own; an unchanged source keeps running untouched:
//! - **file** changed (path or `watch`): the new file is read while the reload is validated, so an
//!   unreadable one refuses the whole reload (`discovery.file: path: reason`) and nothing changes;
//!   otherwise its set replaces the old file's at once and the new file is watched.
//! - **dns** changed: the old name's backends stay until the new name first resolves (a lookup
//!   that fails keeps the last set, as always for DNS), then the new set replaces them.
//! - a source **removed**: its backends drain (no new requests; they leave when their last one
//!   ends), as any backend that disappears from discovery does.
//!
//! Each source runs under a cancellation token of its own. A set is applied only under the feed's
//! gate and only while its token is live, and a reload cancels the old token under that gate, so an
//! old source can never apply a set after its replacement has.

use std::sync::{Arc, Mutex};

use flowgate_engine::config::ConfigError;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend_set::{BackendSet, Member, Source};
use crate::discovery::{DiscoveredBackend, Discovery, DnsDiscovery, FileDiscovery};
use crate::discovery_dns::spawn_dns_resolver;
use crate::discovery_watch::{read_once, read_once_blocking, spawn_file_watcher, FileRead};

type Sets = Arc<Vec<DiscoveredBackend>>;

/// The running discovery sources of one server (see the module docs).
pub struct LiveDiscovery {
    set: Arc<BackendSet>,
    /// The server's task token: every source's token is a child of it.
    parent: CancellationToken,
    /// The runtime the sources' tasks run on (a reload runs off it, on the blocking pool).
    runtime: Handle,
    /// Held while a set is applied and while a reload swaps sources.
    gate: Arc<Mutex<()>>,
    /// The sources now running.
    sources: Mutex<Sources>,
}

#[derive(Default)]
struct Sources {
    file: Option<Feed<FileDiscovery>>,
    dns: Option<Feed<DnsDiscovery>>,
}

/// One running source: its config, its token, its tasks.
struct Feed<C> {
    config: C,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// A reload's discovery, read while the reload is validated (see [`LiveDiscovery::prepare`]).
#[derive(Debug)]
pub struct Prepared {
    next: Discovery,
    /// The new file's first read, when the file source changed.
    first_file: Option<FileRead>,
}

impl std::fmt::Debug for LiveDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveDiscovery").field("running", &self.running()).finish_non_exhaustive()
    }
}

impl LiveDiscovery {
    /// Start `discovery`'s sources (none: `None`) feeding `set`; they stop with `parent`. The
    /// file's first set is applied before this returns; an unreadable file is an error.
    pub async fn start(
        discovery: Option<&Discovery>,
        set: Arc<BackendSet>,
        parent: CancellationToken,
    ) -> Result<LiveDiscovery, String> {
        let live = LiveDiscovery {
            set,
            parent,
            runtime: Handle::current(),
            gate: Arc::new(Mutex::new(())),
            sources: Mutex::new(Sources::default()),
        };
        let next = discovery.cloned().unwrap_or_default();
        let first_file = match &next.file {
            Some(file) => Some(read_once(file).await.map_err(|e| file_error(file, e).to_string())?),
            None => None,
        };
        live.apply(Prepared { next, first_file });
        Ok(live)
    }

    /// The discovery now running.
    pub fn running(&self) -> Discovery {
        let sources = self.lock_sources();
        Discovery {
            file: sources.file.as_ref().map(|f| f.config.clone()),
            dns: sources.dns.as_ref().map(|d| d.config.clone()),
        }
    }

    /// Reload, step 1 (blocking I/O: call it off the async workers): read what `next` needs before
    /// anything is applied. `Err` (`discovery.file`: the file and why) refuses the reload.
    pub fn prepare(&self, next: Option<&Discovery>) -> Result<Prepared, ConfigError> {
        let next = next.cloned().unwrap_or_default();
        let file_changed = self.lock_sources().file.as_ref().map(|f| &f.config) != next.file.as_ref();
        let first_file = match &next.file {
            Some(file) if file_changed => {
                Some(read_once_blocking(&file.path).map_err(|e| file_error(file, e))?)
            }
            _ => None,
        };
        Ok(Prepared { next, first_file })
    }

    /// Reload, step 2: replace every source that differs from `prepared`'s (see the module docs).
    /// Returns whether anything changed.
    pub fn apply(&self, prepared: Prepared) -> bool {
        let Prepared { next, first_file } = prepared;
        let _guard = self.runtime.enter();
        let _gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let mut sources = self.lock_sources();
        let mut changed = false;
        if sources.file.as_ref().map(|f| &f.config) != next.file.as_ref() {
            changed = true;
            if let Some(old) = sources.file.take() {
                old.stop.cancel();
            }
            match (next.file, first_file) {
                (Some(config), Some(first)) => sources.file = Some(self.start_file(config, first)),
                // Removed: its backends drain.
                _ => self.apply_set(Source::File, &[]),
            }
        }
        if sources.dns.as_ref().map(|d| &d.config) != next.dns.as_ref() {
            changed = true;
            if let Some(old) = sources.dns.take() {
                old.stop.cancel();
            }
            match next.dns {
                // The old name's set stays until the new one resolves.
                Some(config) => sources.dns = Some(self.start_dns(config)),
                None => self.apply_set(Source::Dns, &[]),
            }
        }
        changed
    }

    /// Wait for the running sources' tasks to end (after the parent token is cancelled).
    pub async fn join(&self) {
        let tasks: Vec<JoinHandle<()>> = {
            let mut sources = self.lock_sources();
            let file = sources.file.as_mut().map(|f| std::mem::take(&mut f.tasks));
            let dns = sources.dns.as_mut().map(|d| std::mem::take(&mut d.tasks));
            file.into_iter().chain(dns).flatten().collect()
        };
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Caller holds the gate and is inside the runtime: the file's first set applied now, then
    /// watched.
    fn start_file(&self, config: FileDiscovery, first: FileRead) -> Feed<FileDiscovery> {
        let stop = self.parent.child_token();
        let (tx, mut rx) = watch::channel(Sets::default());
        let watcher = spawn_file_watcher(config.clone(), Some(first), tx, stop.clone());
        // The watcher published the first read before returning.
        self.apply_set(Source::File, &rx.borrow_and_update());
        let forward =
            tokio::spawn(forward(rx, self.set.clone(), Source::File, stop.clone(), self.gate.clone()));
        Feed { config, stop, tasks: vec![watcher.task, forward] }
    }

    /// Caller holds the gate and is inside the runtime.
    fn start_dns(&self, config: DnsDiscovery) -> Feed<DnsDiscovery> {
        let stop = self.parent.child_token();
        let (tx, rx) = watch::channel(Sets::default());
        let resolver = spawn_dns_resolver(config.clone(), tx, stop.clone());
        let forward =
            tokio::spawn(forward(rx, self.set.clone(), Source::Dns, stop.clone(), self.gate.clone()));
        Feed { config, stop, tasks: vec![resolver.task, forward] }
    }

    fn apply_set(&self, source: Source, found: &[DiscoveredBackend]) {
        apply(&self.set, source, found);
    }

    fn lock_sources(&self) -> std::sync::MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why the file source cannot start: `discovery.file: path: reason` once displayed.
fn file_error(file: &FileDiscovery, e: impl std::fmt::Display) -> ConfigError {
    ConfigError { path: "discovery.file".into(), reason: format!("{}: {e}", file.path.display()) }
}

fn apply(set: &BackendSet, source: Source, found: &[DiscoveredBackend]) {
    let changes = set.set_source(source, found.iter().map(Member::from).collect());
    if !changes.is_empty() {
        tracing::info!(
            source = source.name(),
            backends = found.len(),
            added = changes.added.len(),
            updated = changes.updated.len(),
            drained = changes.drained.len(),
            refused = changes.refused.len(),
            "discovery: backend set changed"
        );
    }
}

/// Apply every new set of one source until `stop` (or the source ends); a set is applied under
/// `gate` and only while `stop` is live, so a replaced source never overwrites its successor.
async fn forward(
    mut rx: watch::Receiver<Sets>,
    set: Arc<BackendSet>,
    source: Source,
    stop: CancellationToken,
    gate: Arc<Mutex<()>>,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let found = rx.borrow_and_update().clone();
        let _gate = gate.lock().unwrap_or_else(|p| p.into_inner());
        if stop.is_cancelled() {
            return;
        }
        apply(&set, source, &found);
    }
}
