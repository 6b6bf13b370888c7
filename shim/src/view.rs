//! What the metrics listener reads from a running engine, as a trait so that the HTTP side and the
//! metrics rendering can be tested without starting one.

use flowgate_engine::backends::{BackendId, BackendState};
use flowgate_engine::layout::Layout;
use flowgate_engine::registry_view::RegistryView;
use flowgate_engine::runtime::{Engine, EngineStats};
use flowgate_engine::Outcome;

/// Read-only access to the engine's gauges and workload registry.
pub trait EngineView: Send + Sync + 'static {
    /// The workload registry.
    fn registry(&self) -> RegistryView;
    /// Queue and capacity totals.
    fn stats(&self) -> EngineStats;
    /// Every backend's state (slots, last scrape, saturation, draining), in slot order.
    fn backend_states(&self) -> Vec<BackendState>;
    /// Where the backend at `address` came from: `static` | `file` | `dns`.
    fn backend_source(&self, _address: &str) -> &'static str {
        "static"
    }
    /// Times each shard has parked its thread, by shard (none without an engine).
    fn shard_parks(&self) -> Vec<u64> {
        Vec::new()
    }
    /// Shards the engine runs. The default counts [`EngineView::shard_parks`]' entries.
    fn shards(&self) -> usize {
        self.shard_parks().len()
    }
    /// Where the shards and the I/O threads run (none without a server).
    fn layout(&self) -> Option<Layout> {
        None
    }
    /// Requests that ended with each outcome so far, one entry per [`Outcome::ALL`] in that
    /// order. The default: none yet.
    fn outcome_counts(&self) -> Vec<(Outcome, u64)> {
        Outcome::ALL.iter().map(|o| (*o, 0)).collect()
    }
}

impl EngineView for Engine {
    fn shards(&self) -> usize {
        Engine::shards(self)
    }

    fn outcome_counts(&self) -> Vec<(Outcome, u64)> {
        Engine::outcome_counts(self)
    }

    fn backend_states(&self) -> Vec<BackendState> {
        Engine::backend_states(self)
    }

    fn shard_parks(&self) -> Vec<u64> {
        self.shard_states().iter().map(|s| s.parks).collect()
    }

    fn registry(&self) -> RegistryView {
        Engine::registry(self)
    }

    fn stats(&self) -> EngineStats {
        Engine::stats(self)
    }
}

/// A fixed view: a registry (possibly over empty directories), fixed stats and in-flight counts.
/// For tests, and for anything that wants to serve the metrics listener without an engine.
#[derive(Clone, Debug)]
pub struct StaticView {
    /// The registry served.
    pub registry: RegistryView,
    /// The stats served.
    pub stats: EngineStats,
    /// `(address, in-flight)` per backend.
    pub backends: Vec<(String, u32)>,
    /// Parks per shard.
    pub shard_parks: Vec<u64>,
}

impl EngineView for StaticView {
    fn registry(&self) -> RegistryView {
        self.registry.clone()
    }

    fn stats(&self) -> EngineStats {
        self.stats
    }

    fn backend_states(&self) -> Vec<BackendState> {
        self.backends
            .iter()
            .enumerate()
            .map(|(i, (address, inflight))| BackendState {
                id: BackendId { index: i as u32, generation: 1 },
                address: address.clone(),
                max_inflight: 0,
                lease: None,
                queue_share: None,
                inflight: *inflight,
                waiting: None,
                running: None,
                kv_cache_usage: None,
                sent_since_scrape: 0,
                saturation: 0.0,
                metrics_age_ns: None,
                stale: false,
                draining: false,
            })
            .collect()
    }

    fn shard_parks(&self) -> Vec<u64> {
        self.shard_parks.clone()
    }
}
