//! Discovery into the backend set: the file watcher's and the DNS resolver's sets, applied to the
//! [`BackendSet`] as each arrives.
//!
//! The discovery file is read before the server accepts connections: a file that cannot be read
//! at start is a startup error (`discovery.file: …`), since serving without the backends it names
//! would refuse everything. Later failures keep the last good set (`discovery_watch.rs`). DNS
//! starts with what its first lookup found (nothing, if it failed) and keeps re-resolving.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend_set::{BackendSet, Member, Source};
use crate::discovery::{DiscoveredBackend, Discovery};
use crate::discovery_dns::spawn_dns_resolver;
use crate::discovery_watch::{read_once, spawn_file_watcher};

type Sets = Arc<Vec<DiscoveredBackend>>;

/// Start `discovery`'s sources feeding `set`; the tasks stop with `stop`. The file's first set is
/// applied before this returns.
pub async fn start(
    discovery: &Discovery,
    set: Arc<BackendSet>,
    stop: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, String> {
    let mut tasks = Vec::new();
    if let Some(file) = &discovery.file {
        let first =
            read_once(file).await.map_err(|e| format!("discovery.file: {}: {e}", file.path.display()))?;
        let (tx, mut rx) = watch::channel(Sets::default());
        let watcher = spawn_file_watcher(file.clone(), Some(first), tx, stop.clone());
        // The watcher published the first read before returning: apply it now.
        apply(&set, Source::File, &rx.borrow_and_update());
        tasks.push(watcher.task);
        tasks.push(tokio::spawn(forward(rx, set.clone(), Source::File, stop.clone())));
    }
    if let Some(dns) = &discovery.dns {
        let (tx, rx) = watch::channel(Sets::default());
        let resolver = spawn_dns_resolver(dns.clone(), tx, stop.clone());
        tasks.push(resolver.task);
        tasks.push(tokio::spawn(forward(rx, set.clone(), Source::Dns, stop.clone())));
    }
    Ok(tasks)
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

/// Apply every new set of one source until `stop` (or the source ends).
async fn forward(
    mut rx: watch::Receiver<Sets>,
    set: Arc<BackendSet>,
    source: Source,
    stop: CancellationToken,
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
        apply(&set, source, &found);
    }
}
