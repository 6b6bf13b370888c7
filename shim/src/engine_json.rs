//! `GET /api/v1/engine`: the engine's totals as one JSON object ([`EngineJson`]).
//!
//! ```json
//! {"shards": 2, "queued": 3, "queued_by_criticality": [0, 1, 0, 0, 2], "inflight": 1,
//!  "capacity": 1, "outcomes": {"dispatched": 7, "rejected_capacity": 0, ...},
//!  "layout": {"cpus": [0, 1], "shard_cpus": [0], "io_threads": 1, "io_cpus": [1]}}
//! ```
//!
//! `queued` is the engine's own count (all shards); `queued_by_criticality` counts, from 1 to 5,
//! the requests the ext_proc server holds queued (the GIE queue gauge summed over workloads), so
//! the two can differ for the instant between a decision and its answer. `outcomes` has one key
//! per [`Outcome::label`], from the engine's counters since start.

use std::collections::BTreeMap;

use flowgate_engine::layout::Layout;
use flowgate_engine::Outcome;
use serde::{Deserialize, Serialize};

use crate::metrics::{Metrics, CRITICALITIES};
use crate::view::EngineView;

/// The engine's totals, as `GET /api/v1/engine` shows them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineJson {
    /// Shards the engine runs.
    pub shards: usize,
    /// Requests queued in the engine, all shards together.
    pub queued: u64,
    /// Requests queued through the ext_proc server, by criticality 1..=5.
    pub queued_by_criticality: [u64; CRITICALITIES],
    /// Requests holding a backend slot.
    pub inflight: u64,
    /// Backend slots in all (Σ `max_inflight` of the capped backends).
    pub capacity: u64,
    /// Requests ended with each outcome so far, keyed by [`Outcome::label`].
    pub outcomes: BTreeMap<String, u64>,
    /// Where the shards and the I/O threads run (absent without a server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<LayoutJson>,
}

/// The core layout, as `GET /api/v1/engine` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutJson {
    /// The CPUs the process may run on.
    pub cpus: Vec<usize>,
    /// The CPU each shard is pinned to, by shard.
    pub shard_cpus: Vec<usize>,
    /// Threads of the server's async runtime.
    pub io_threads: usize,
    /// The CPUs they run on.
    pub io_cpus: Vec<usize>,
}

impl From<Layout> for LayoutJson {
    fn from(l: Layout) -> Self {
        Self { cpus: l.cpus, shard_cpus: l.shard_cpus, io_threads: l.io_threads, io_cpus: l.io_cpus }
    }
}

impl EngineJson {
    /// Read the totals from `view` and the queue bookkeeping of `metrics`.
    pub fn read(view: &dyn EngineView, metrics: &Metrics) -> EngineJson {
        let stats = view.stats();
        EngineJson {
            shards: view.shards(),
            queued: stats.queued,
            queued_by_criticality: metrics.queued_by_priority(),
            inflight: stats.inflight,
            capacity: stats.capacity,
            outcomes: view
                .outcome_counts()
                .into_iter()
                .map(|(o, n): (Outcome, u64)| (o.label().to_string(), n))
                .collect(),
            layout: view.layout().map(LayoutJson::from),
        }
    }
}
