//! Backend metrics: what the saturation detector sees of each model server.
//!
//! | name | type | labels |
//! |------|------|--------|
//! | `flowgate_backend_saturation` | gauge | `backend`: the detector's score, ≥ 1 = saturated |
//! | `flowgate_backend_waiting` | gauge | `backend`: last scraped waiting count |
//! | `flowgate_backend_kv_cache_usage` | gauge | `backend`: last scraped KV-cache use (fraction) |
//! | `flowgate_backend_metrics_age_seconds` | gauge | `backend`: time since the last good scrape |
//! | `flowgate_scrapes_total` | counter | `backend`, `result` (`ok`, `error`, `timeout`, `too_large`, `bad_page`) |
//! | `flowgate_stale_backends` | gauge | — |
//! | `inference_extension_flow_control_pool_saturation` | gauge | — (GIE's: the mean of the backends' scores) |
//!
//! Waiting, KV use and age exist once a backend has had a good scrape. Gauges are refreshed from
//! the engine at each `/metrics` request; the scrape counter is bumped by the scrapers.

use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use flowgate_engine::backends::BackendState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::scrape::ScrapeResult;

/// GIE's pool saturation gauge.
pub const POOL_SATURATION: &str = "inference_extension_flow_control_pool_saturation";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScrapeLabels {
    backend: String,
    result: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The backend metric families, registered in the server's registry.
#[derive(Debug)]
pub struct BackendMetrics {
    saturation: Family<BackendLabels, FloatGauge>,
    waiting: Family<BackendLabels, FloatGauge>,
    kv_cache_usage: Family<BackendLabels, FloatGauge>,
    metrics_age: Family<BackendLabels, FloatGauge>,
    scrapes: Family<ScrapeLabels, Counter>,
    stale: Gauge,
    pool_saturation: FloatGauge,
    /// Backends with series now: a backend's series go when it leaves the table.
    known: Mutex<HashSet<String>>,
}

impl BackendMetrics {
    /// Register every family in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = BackendMetrics {
            saturation: Family::default(),
            waiting: Family::default(),
            kv_cache_usage: Family::default(),
            metrics_age: Family::default(),
            scrapes: Family::default(),
            stale: Gauge::default(),
            pool_saturation: FloatGauge::default(),
            known: Mutex::new(HashSet::new()),
        };
        registry.register(
            "flowgate_backend_saturation",
            "The saturation detector's score per backend (>= 1: saturated, takes nothing new)",
            m.saturation.clone(),
        );
        registry.register(
            "flowgate_backend_waiting",
            "Requests waiting per backend, last scrape",
            m.waiting.clone(),
        );
        registry.register(
            "flowgate_backend_kv_cache_usage",
            "KV-cache use per backend (fraction), last scrape",
            m.kv_cache_usage.clone(),
        );
        registry.register(
            "flowgate_backend_metrics_age_seconds",
            "Time since the last good scrape of a backend's metrics",
            m.metrics_age.clone(),
        );
        registry.register(
            "flowgate_scrapes",
            "Scrapes of backend metrics pages, by result",
            m.scrapes.clone(),
        );
        registry.register(
            "flowgate_stale_backends",
            "Backends whose metrics are older than saturation.staleness (they take nothing new)",
            m.stale.clone(),
        );
        registry.register(
            POOL_SATURATION,
            "Mean saturation score over the pool's backends",
            m.pool_saturation.clone(),
        );
        m
    }

    /// Create `backend`'s scrape counters at zero, so rates start from the first scrape.
    pub fn register_scrape_target(&self, backend: &str) {
        for result in ScrapeResult::ALL {
            let _ = self
                .scrapes
                .get_or_create(&ScrapeLabels { backend: backend.to_string(), result: result.label() });
        }
    }

    /// Count one scrape of `backend`.
    pub fn count_scrape(&self, backend: &str, result: ScrapeResult) {
        self.scrapes
            .get_or_create(&ScrapeLabels { backend: backend.to_string(), result: result.label() })
            .inc();
    }

    /// Set the gauges from the engine's backend states; drop the series of backends that left
    /// the table since the last refresh, and return their addresses.
    pub fn refresh(&self, states: &[BackendState]) -> Vec<String> {
        let now: HashSet<String> = states.iter().map(|s| s.address.clone()).collect();
        let gone: Vec<String> = {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            let gone = known.difference(&now).cloned().collect();
            *known = now;
            gone
        };
        for backend in &gone {
            let labels = BackendLabels { backend: backend.clone() };
            self.saturation.remove(&labels);
            self.waiting.remove(&labels);
            self.kv_cache_usage.remove(&labels);
            self.metrics_age.remove(&labels);
            for result in ScrapeResult::ALL {
                self.scrapes.remove(&ScrapeLabels { backend: backend.clone(), result: result.label() });
            }
        }
        let mut stale = 0;
        for s in states {
            let labels = BackendLabels { backend: s.address.clone() };
            self.saturation.get_or_create(&labels).set(s.saturation);
            if let Some(w) = s.waiting {
                self.waiting.get_or_create(&labels).set(w);
            }
            if let Some(kv) = s.kv_cache_usage {
                self.kv_cache_usage.get_or_create(&labels).set(kv);
            }
            if let Some(age_ns) = s.metrics_age_ns {
                self.metrics_age.get_or_create(&labels).set(age_ns as f64 / 1e9);
            }
            stale += i64::from(s.stale);
        }
        self.stale.set(stale);
        let mean = if states.is_empty() {
            0.0
        } else {
            states.iter().map(|s| s.saturation).sum::<f64>() / states.len() as f64
        };
        self.pool_saturation.set(mean);
        gone
    }
}
