//! The view the metrics listener serves: the engine's, with each backend's source from the
//! [`BackendSet`].

use std::sync::Arc;

use flowgate_engine::backends::BackendState;
use flowgate_engine::layout::Layout;
use flowgate_engine::registry_view::RegistryView;
use flowgate_engine::runtime::{Engine, EngineStats};
use flowgate_engine::Outcome;

use crate::backend_set::BackendSet;
use crate::view::EngineView;

/// [`EngineView`] of a running server.
#[derive(Clone, Debug)]
pub struct ServedView {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Its backend set.
    pub backends: Arc<BackendSet>,
    /// The core layout it was started with.
    pub layout: Layout,
}

impl EngineView for ServedView {
    fn registry(&self) -> RegistryView {
        self.engine.registry()
    }

    fn stats(&self) -> EngineStats {
        self.engine.stats()
    }

    fn backend_states(&self) -> Vec<BackendState> {
        self.engine.backend_states()
    }

    fn backend_source(&self, address: &str) -> &'static str {
        self.backends.source_of(address)
    }

    fn shard_parks(&self) -> Vec<u64> {
        EngineView::shard_parks(self.engine.as_ref())
    }

    fn shards(&self) -> usize {
        self.engine.shards()
    }

    fn layout(&self) -> Option<Layout> {
        Some(self.layout.clone())
    }

    fn outcome_counts(&self) -> Vec<(Outcome, u64)> {
        self.engine.outcome_counts()
    }
}
