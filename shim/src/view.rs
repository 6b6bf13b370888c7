//! What the metrics listener reads from a running engine, as a trait so that the HTTP side and the
//! metrics rendering can be tested without starting one.

use flowgate_engine::backends::BackendState;
use flowgate_engine::registry::RegistryView;
use flowgate_engine::runtime::{Engine, EngineStats};
use flowgate_engine::Outcome;

/// Read-only access to the engine's gauges and workload registry.
pub trait EngineView: Send + Sync + 'static {
    /// The workload registry.
    fn registry(&self) -> RegistryView;
    /// Queue and capacity totals.
    fn stats(&self) -> EngineStats;
    /// Backend addresses, in configuration order.
    fn backend_addresses(&self) -> Vec<String>;
    /// In-flight requests per backend, same order as [`EngineView::backend_addresses`].
    fn inflight_per_backend(&self) -> Vec<u32>;
    /// Every backend's state (slots, last scrape, saturation). The default knows only addresses
    /// and in-flight counts.
    fn backend_states(&self) -> Vec<BackendState> {
        self.backend_addresses()
            .into_iter()
            .zip(self.inflight_per_backend())
            .map(|(address, inflight)| BackendState {
                address,
                max_inflight: 0,
                inflight,
                waiting: None,
                running: None,
                kv_cache_usage: None,
                sent_since_scrape: 0,
                saturation: 0.0,
                metrics_age_ns: None,
                stale: false,
            })
            .collect()
    }
    /// Times each shard has parked its thread, by shard (none without an engine).
    fn shard_parks(&self) -> Vec<u64> {
        Vec::new()
    }
    /// Shards the engine runs. The default counts [`EngineView::shard_parks`]' entries.
    fn shards(&self) -> usize {
        self.shard_parks().len()
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

    fn backend_addresses(&self) -> Vec<String> {
        Engine::backend_addresses(self)
    }

    fn inflight_per_backend(&self) -> Vec<u32> {
        Engine::inflight_per_backend(self)
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

    fn backend_addresses(&self) -> Vec<String> {
        self.backends.iter().map(|(a, _)| a.clone()).collect()
    }

    fn inflight_per_backend(&self) -> Vec<u32> {
        self.backends.iter().map(|(_, n)| *n).collect()
    }

    fn shard_parks(&self) -> Vec<u64> {
        self.shard_parks.clone()
    }
}
