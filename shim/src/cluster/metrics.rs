//! `flowgate_cluster_*` metrics (registered only with a `cluster:` section):
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `flowgate_cluster_connected` | gauge | — | 1 while leases and rates are shared, 0 in local mode |
//! | `flowgate_cluster_replicas` | gauge | — | live replicas of the pool at the last good sync (self included) |
//! | `flowgate_cluster_sync_age_seconds` | gauge | — | time since the last good sync (since start before the first) |
//! | `flowgate_cluster_syncs_total` | counter | `result` (`ok`, `error`, `timeout`, `bad_reply`) | sync round trips |

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// How one sync ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncResult {
    /// The reply was read and applied (or counted towards reconnecting).
    Ok,
    /// No connection, or Redis answered an error.
    Error,
    /// No answer within `sync_interval`.
    Timeout,
    /// The answer did not parse (`script::parse_reply`).
    BadReply,
}

impl SyncResult {
    /// Every result, for pre-registration.
    pub const ALL: [SyncResult; 4] =
        [SyncResult::Ok, SyncResult::Error, SyncResult::Timeout, SyncResult::BadReply];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            SyncResult::Ok => "ok",
            SyncResult::Error => "error",
            SyncResult::Timeout => "timeout",
            SyncResult::BadReply => "bad_reply",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The cluster metrics' handles.
#[derive(Debug)]
pub struct ClusterMetrics {
    connected: Gauge,
    replicas: Gauge,
    sync_age: Gauge<f64, AtomicU64>,
    syncs: Family<ResultLabels, Counter>,
    /// The last good sync (the start before the first).
    last_ok: Mutex<Instant>,
}

impl ClusterMetrics {
    /// Register every family in `registry`; every result's series exists from the start.
    pub fn register(registry: &mut Registry) -> Self {
        let m = ClusterMetrics {
            connected: Gauge::default(),
            replicas: Gauge::default(),
            sync_age: Gauge::default(),
            syncs: Family::default(),
            last_ok: Mutex::new(Instant::now()),
        };
        registry.register(
            "flowgate_cluster_connected",
            "1 while this replica shares leases and rates through Redis, 0 in local mode",
            m.connected.clone(),
        );
        registry.register(
            "flowgate_cluster_replicas",
            "Live replicas of the pool at the last good sync, this one included",
            m.replicas.clone(),
        );
        registry.register(
            "flowgate_cluster_sync_age_seconds",
            "Time since the last good cluster sync",
            m.sync_age.clone(),
        );
        registry.register("flowgate_cluster_syncs", "Cluster sync round trips by result", m.syncs.clone());
        for r in SyncResult::ALL {
            let _ = m.syncs.get_or_create(&ResultLabels { result: r.label() });
        }
        m
    }

    /// Count a sync; a good one resets the age.
    pub fn count(&self, result: SyncResult) {
        self.syncs.get_or_create(&ResultLabels { result: result.label() }).inc();
        if result == SyncResult::Ok {
            *self.last_ok.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }

    /// Connected (1) or local (0).
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// Live replicas seen.
    pub fn set_replicas(&self, replicas: u32) {
        self.replicas.set(i64::from(replicas));
    }

    /// Scrape time: the age gauge.
    pub fn refresh(&self) {
        let last = *self.last_ok.lock().unwrap_or_else(|p| p.into_inner());
        self.sync_age.set(last.elapsed().as_secs_f64());
    }
}
