//! The readers' side of the workload tables: a read-only, thread-safe view over every shard's
//! directory, for metrics, the workload API and cluster mode's rate exchange.

use crate::registry::{Directory, WorkloadEntry, WorkloadSnapshot, OVERFLOW_WORKLOAD_ID};
use crate::sync::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A read-only, thread-safe view over every shard's table, for metrics and the workload API.
#[derive(Clone, Debug)]
pub struct RegistryView {
    directories: Vec<Directory>,
    tracked: Arc<AtomicUsize>,
    clock: crate::clock::Clock,
}

impl RegistryView {
    /// A view over `directories`.
    pub fn new(directories: Vec<Directory>, tracked: Arc<AtomicUsize>, clock: crate::clock::Clock) -> Self {
        Self { directories, tracked, clock }
    }

    /// Workloads tracked across all shards (the overflow entries not counted).
    pub fn tracked(&self) -> usize {
        self.tracked.load(Ordering::Acquire)
    }

    /// Snapshots of every tracked workload (and of overflow entries in use), sorted by id.
    pub fn workloads(&self) -> Vec<WorkloadSnapshot> {
        let now_ns = self.clock.now_ns();
        let mut all: Vec<WorkloadSnapshot> = Vec::new();
        for dir in &self.directories {
            let entries: Vec<Arc<WorkloadEntry>> = dir.lock().unwrap_or_else(|p| p.into_inner()).clone();
            all.extend(entries.iter().map(|e| e.snapshot(now_ns)));
        }
        all.sort_by(|a, b| a.workload_id.cmp(&b.workload_id));
        merge_overflow(all)
    }

    /// Cluster mode: give every tracked workload the other replicas' rates `remote(id)` returns
    /// (`None` = 0, 0). Takes each shard's directory lock briefly, as [`workloads`](Self::workloads) does.
    pub fn set_remote_rates(&self, mut remote: impl FnMut(&str) -> Option<(f64, f64)>) {
        for dir in &self.directories {
            let entries: Vec<Arc<WorkloadEntry>> = dir.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for e in &entries {
                let (requests, tokens) = remote(e.id()).unwrap_or((0.0, 0.0));
                e.set_remote_rates(requests, tokens);
            }
        }
    }

    /// One workload's snapshot, or `None` if it is not tracked.
    pub fn workload(&self, id: &str) -> Option<WorkloadSnapshot> {
        if id == OVERFLOW_WORKLOAD_ID {
            return self.workloads().into_iter().find(|w| &*w.workload_id == id);
        }
        let now_ns = self.clock.now_ns();
        self.directories.iter().find_map(|dir| {
            let dir = dir.lock().unwrap_or_else(|p| p.into_inner());
            dir.iter().find(|e| &**e.id() == id).map(|e| e.snapshot(now_ns))
        })
    }
}

/// Overflow entries exist once per shard; readers see them as one.
fn merge_overflow(all: Vec<WorkloadSnapshot>) -> Vec<WorkloadSnapshot> {
    let mut out: Vec<WorkloadSnapshot> = Vec::with_capacity(all.len());
    for w in all {
        match out.last_mut() {
            Some(last) if *last.workload_id == *OVERFLOW_WORKLOAD_ID && last.workload_id == w.workload_id => {
                last.active += w.active;
                last.total += w.total;
                last.rate_per_s += w.rate_per_s;
                last.idle_ns = last.idle_ns.min(w.idle_ns);
                last.prompt_tokens += w.prompt_tokens;
                last.completion_tokens += w.completion_tokens;
                last.token_rate_per_s += w.token_rate_per_s;
                last.remote_rate_per_s += w.remote_rate_per_s;
                last.remote_token_rate_per_s += w.remote_token_rate_per_s;
            }
            _ => out.push(w),
        }
    }
    out
}
