//! The sync task: every `sync_interval`, one round trip to Redis (the script of [`super::script`])
//! that publishes what this replica observed and reads the cluster view back; then the view goes
//! into the engine (leases on the backend table, remote rates on workload entries) as
//! [`super::mode`] says.
//!
//! Off the request path: nothing here is awaited by a request. Every wait is bounded: a round trip
//! that takes longer than `sync_interval` is a failed sync (`timeout`). A second task checks
//! [`LAPSE_CHECKS_PER_INTERVAL`] times per interval whether the leases have lapsed, whatever the
//! first is waiting for, so a hung connection cannot keep a replica on stale leases.
//!
//! Timing (`I` = `sync_interval`): a grant is valid for [`LEASE_INTERVALS`]`·I` from when its sync
//! was *sent*; the replica's keys expire [`TTL_INTERVALS`]`·I` after the script *ran* (later), so a
//! replica's lease always lapses locally before Redis hands it to others. Redis unreachable: local
//! mode within `2·I + I/4` of the last good sync; a dead replica's slots are free for the others
//! `3·I` after its last sync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowgate_engine::backends::Grants;
use flowgate_engine::runtime::Engine;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::config::ClusterConfig;
use super::metrics::{ClusterMetrics, SyncResult};
use super::mode::{Machine, Mode, Step};
use super::script::{
    parse_reply, BackendReport, Budget, Keys, Report, View, WorkloadReport, MAX_PUBLISHED_BACKENDS,
    MAX_PUBLISHED_WORKLOADS, MAX_WORKLOAD_ID_BYTES, SYNC_LUA,
};

/// A lease is valid for this many sync intervals from when its sync was sent.
pub const LEASE_INTERVALS: u32 = 2;
/// A replica's keys live this many sync intervals after its last sync.
pub const TTL_INTERVALS: u32 = 3;
/// Lapse checks per sync interval.
pub const LAPSE_CHECKS_PER_INTERVAL: u32 = 4;
/// Longest wait for the goodbye (this replica's keys deleted) at shutdown.
pub const GOODBYE_TIMEOUT: Duration = Duration::from_millis(500);

/// What both tasks share.
struct Sync {
    engine: Arc<Engine>,
    metrics: Arc<ClusterMetrics>,
    machine: Mutex<Machine>,
    config: ClusterConfig,
}

impl Sync {
    fn machine(&self) -> std::sync::MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lease_ns(&self) -> u64 {
        (self.config.sync_interval * LEASE_INTERVALS).as_nanos() as u64
    }

    /// A good sync sent at `sent_ns` (engine clock) returned `view`.
    fn apply(&self, view: &View, sent_ns: u64) {
        let mut m = self.machine();
        let (step, changed) = m.good(view.replicas);
        self.metrics.set_replicas(m.replicas());
        match step {
            Step::Apply => {
                let grants = Grants { slots: &view.leases, queue: &view.queue_shares };
                self.engine.grant_leases(grants, sent_ns + self.lease_ns());
                let remote: HashMap<&str, (f64, f64)> =
                    view.remote.iter().map(|(id, r, t)| (&**id, (*r, *t))).collect();
                self.engine.registry().set_remote_rates(|id| remote.get(id).copied());
                if changed {
                    self.metrics.set_connected(true);
                    tracing::info!(
                        pool = %self.config.pool,
                        replica = %self.config.replica_id,
                        replicas = m.replicas(),
                        "cluster: connected, backend slots and workload rates shared through Redis"
                    );
                }
            }
            Step::StayLocal => self.engine.local_caps(m.replicas()),
        }
    }

    /// A failed sync.
    fn failed(&self, result: SyncResult, error: &dyn std::fmt::Display) {
        self.machine().failed();
        tracing::debug!(result = result.label(), %error, "cluster sync failed");
    }

    /// Lapse check: local mode if the leases ran out.
    fn check_lapse(&self) {
        let mut m = self.machine();
        if self.engine.lapse_leases(m.replicas()) && m.lapsed() {
            self.metrics.set_connected(false);
            self.engine.registry().set_remote_rates(|_| None);
            tracing::warn!(
                pool = %self.config.pool,
                redis = %self.config.redis_redacted(),
                replicas_last_seen = m.replicas(),
                "cluster: no good sync for {} sync intervals, local mode (each backend's max_inflight / {} replicas, local rates)",
                LEASE_INTERVALS,
                m.replicas()
            );
        }
    }
}

/// What this replica publishes now: its capped backends' slots (in flight, cap, demand = in
/// flight + queued, at most `max_inflight`), with a metrics detector their queue shares too (sent
/// since the scrape, share, demand = sent + queued, at most the threshold), and its busiest
/// workloads' local rates.
pub fn report(engine: &Engine) -> Report {
    let queued = engine.stats().queued;
    let threshold = engine.queue_depth_threshold();
    let mut backends = Vec::new();
    for b in engine
        .backend_states()
        .into_iter()
        .filter(|b| b.max_inflight > 0 || b.queue_share.is_some())
        .take(MAX_PUBLISHED_BACKENDS)
    {
        // A draining backend wants nothing new, but its places still count.
        let wanted = if b.draining { 0 } else { queued };
        let budget = |budget, max: u32, used: u32, cap: u32| BackendReport {
            id: b.id,
            budget,
            address: b.address.clone(),
            max,
            inflight: used,
            cap,
            demand: (u64::from(used) + wanted).min(u64::from(max)) as u32,
        };
        if b.max_inflight > 0 {
            backends.push(budget(
                Budget::Slots,
                b.max_inflight,
                b.inflight,
                b.lease.unwrap_or(b.max_inflight),
            ));
        }
        if let (Some(share), Some(threshold)) = (b.queue_share, threshold) {
            backends.push(budget(Budget::Queue, threshold, b.sent_since_scrape.min(threshold), share));
        }
    }
    let mut workloads: Vec<WorkloadReport> = engine
        .registry()
        .workloads()
        .into_iter()
        .filter(|w| w.workload_id.len() <= MAX_WORKLOAD_ID_BYTES)
        .map(|w| WorkloadReport {
            id: w.workload_id,
            requests_per_s: w.rate_per_s,
            tokens_per_s: w.token_rate_per_s,
        })
        .collect();
    workloads.sort_by(|a, b| b.requests_per_s.total_cmp(&a.requests_per_s).then_with(|| a.id.cmp(&b.id)));
    workloads.truncate(MAX_PUBLISHED_WORKLOADS);
    Report { backends, workloads, local: false, expected: 0 }
}

/// Start the sync and lapse tasks for `config`. Until the first good sync every capped backend
/// has a lease of 0 (requests queue), lapsing to local mode after two intervals.
pub fn start(
    config: &ClusterConfig,
    engine: Arc<Engine>,
    metrics: Arc<ClusterMetrics>,
    stop: CancellationToken,
) -> Vec<JoinHandle<()>> {
    let sync =
        Arc::new(Sync { engine, metrics, machine: Mutex::new(Machine::default()), config: config.clone() });
    sync.engine.grant_leases(Grants::default(), sync.engine.now_ns() + sync.lease_ns());
    sync.metrics.set_connected(false);
    sync.metrics.set_replicas(1);
    vec![tokio::spawn(sync_loop(sync.clone(), stop.clone())), tokio::spawn(lapse_loop(sync, stop))]
}

async fn lapse_loop(sync: Arc<Sync>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(sync.config.sync_interval / LAPSE_CHECKS_PER_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => sync.check_lapse(),
        }
    }
}

async fn sync_loop(sync: Arc<Sync>, stop: CancellationToken) {
    let interval = sync.config.sync_interval;
    let client = match redis::Client::open(sync.config.redis.as_str()) {
        Ok(c) => c,
        Err(e) => {
            // Validation opened it already; should it fail now, the lapse task keeps us local.
            tracing::error!(error = %e, "cluster: bad redis URL, staying in local mode");
            return;
        }
    };
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(interval))
        .set_response_timeout(Some(interval))
        .set_number_of_retries(1)
        .set_max_delay(interval);
    let mut conn = match ConnectionManager::new_lazy_with_config(client, manager_config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cluster: cannot create the Redis connection manager, staying in local mode");
            return;
        }
    };
    let script = redis::Script::new(SYNC_LUA);
    let keys = Keys::new(&sync.config.pool, &sync.config.replica_id);
    let ttl_ms = (interval * TTL_INTERVALS).as_millis() as u64;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let mut report = report(&sync.engine);
        {
            let m = sync.machine();
            report.local = m.mode() == Mode::Local;
            report.expected = m.expected();
        }
        let sent_ns = sync.engine.now_ns();
        let started = Instant::now();
        let invocation = report.invocation(&script, &keys, &sync.config.replica_id, ttl_ms);
        let answer = tokio::select! {
            _ = stop.cancelled() => break,
            a = tokio::time::timeout(interval, invocation.invoke_async::<Value>(&mut conn)) => a,
        };
        let result = match answer {
            Err(_) => {
                sync.failed(SyncResult::Timeout, &format_args!("no answer within {interval:?}"));
                SyncResult::Timeout
            }
            Ok(Err(e)) => {
                sync.failed(SyncResult::Error, &e);
                SyncResult::Error
            }
            Ok(Ok(value)) => match parse_reply(&value, &report) {
                Ok(view) => {
                    sync.apply(&view, sent_ns);
                    tracing::trace!(rtt_us = started.elapsed().as_micros() as u64, "cluster sync");
                    SyncResult::Ok
                }
                Err(e) => {
                    sync.failed(SyncResult::BadReply, &e);
                    SyncResult::BadReply
                }
            },
        };
        sync.metrics.count(result);
    }
    // Goodbye: free this replica's slots for the others now rather than after its keys expire.
    let goodbye = redis::pipe().del(&keys.own).zrem(&keys.replicas, &sync.config.replica_id).to_owned();
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbye.query_async::<()>(&mut conn)).await;
}
