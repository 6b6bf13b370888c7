//! Capacity: N replicas loading one backend of `max_inflight` M, the simulator counting its peak
//! concurrency. Connected (M shared through Redis, with the sync cost read meanwhile), then with
//! Redis killed (each replica on its local share ⌊M/N⌋), then the same load on standalone
//! replicas (no `cluster:`), the uncoordinated contrast, all in one run on one simulator.

use super::load::{Load, Tally, Upstream};
use super::procs::{cluster_lines, replica_yaml, Bins, CommandStats, Redis, Replica, SimProc};
use super::Settings;
use serde::Serialize;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// Pool name of the capacity replicas.
const POOL: &str = "capacity";
/// Pause between two per-replica in-flight samples while Redis is down.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
/// The sync counter read per replica.
const SYNCS_OK: &str = "flowgate_cluster_syncs_total{result=\"ok\"}";
/// PINGs timed for the loopback round trip to Redis.
const PINGS: usize = 20;

/// One load phase on the shared backend.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// `cluster`, `redis_down` or `standalone`.
    pub mode: String,
    /// The simulator's highest `running + waiting` over the phase.
    pub peak_concurrency: u64,
    /// What the phase allows at once: M connected, N·⌊M/N⌋ with Redis down, N·M standalone.
    pub bound: u64,
    /// Completed requests/s per replica, replica order.
    pub per_replica_rate_per_s: Vec<f64>,
    /// With Redis down: the highest in flight sampled on each replica's `/api/v1/backends`.
    pub per_replica_peak_inflight: Vec<u64>,
    /// Each replica's tally.
    pub tallies: Vec<Tally>,
    /// Seconds of load.
    pub seconds: f64,
}

/// What syncing costs, over the connected phase.
#[derive(Debug, Serialize)]
pub struct SyncCost {
    /// Redis time per sync: Δusec / Δcalls of `EVALSHA` (`INFO commandstats`), µs.
    pub redis_usec_per_sync: f64,
    /// `EVALSHA` calls per second at Redis (all replicas).
    pub syncs_per_s: f64,
    /// Good syncs per second per replica (`flowgate_cluster_syncs_total{result="ok"}`).
    pub per_replica_syncs_per_s: Vec<f64>,
    /// Redis' share of one core for the pool's syncs, percent.
    pub redis_core_pct: f64,
    /// Median PING round trip bench → Redis over loopback, µs: the transport under a sync.
    pub ping_rtt_us: f64,
    /// A replica's sync round trip ≈ PING + Redis time per sync, µs (the replica exposes no
    /// round-trip metric; an estimate).
    pub est_sync_rtt_us: f64,
}

/// The capacity part of the report.
#[derive(Debug, Serialize)]
pub struct Capacity {
    /// Replicas.
    pub replicas: usize,
    /// The backend's `max_inflight` (M).
    pub max_inflight: u32,
    /// Client loops per replica.
    pub workers_per_replica: usize,
    /// Connected, Redis down, standalone.
    pub phases: Vec<Phase>,
    /// Over the connected phase.
    pub sync_cost: SyncCost,
}

/// Run `workers` loops on every replica for `seconds`; per replica its tally and rate, and with
/// `sample` the highest in flight seen on each.
async fn load_all(
    rs: &[Replica],
    s: &Settings,
    up: Upstream,
    seconds: f64,
    sample: bool,
) -> io::Result<(Vec<Tally>, Vec<f64>, Vec<u64>)> {
    let mut loads = Vec::with_capacity(rs.len());
    for r in rs {
        loads.push(Load::start(r.grpc, 1, s.workers_per_replica, "chat", Some(up)).await?);
    }
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut peaks = vec![0u64; rs.len()];
    if sample {
        while Instant::now() < end {
            for (r, p) in rs.iter().zip(&mut peaks) {
                *p = (*p).max(r.backend().await?["inflight"].as_u64().unwrap_or(0));
            }
            tokio::time::sleep(SAMPLE_EVERY).await;
        }
    } else {
        tokio::time::sleep_until(end.into()).await; // the load's length, not a synchronisation
    }
    let (mut tallies, mut rates) = (Vec::new(), Vec::new());
    for l in loads {
        let (t, dur) = l.stop().await;
        rates.push(t.completed as f64 / dur.as_secs_f64().max(1e-9));
        tallies.push(t);
    }
    Ok((tallies, rates, peaks))
}

/// Reset the simulator's peak, load `rs`, read the peak.
async fn phase(
    mode: &str,
    rs: &[Replica],
    sim: &SimProc,
    s: &Settings,
    bound: u64,
    sample: bool,
) -> io::Result<Phase> {
    sim.reset().await?;
    let up = Upstream { sim: sim.addr, max_tokens: s.max_tokens };
    let (tallies, rates, peaks) = load_all(rs, s, up, s.load_s, sample).await?;
    Ok(Phase {
        mode: mode.to_string(),
        peak_concurrency: sim.stats().await?.max_in_system_seen,
        bound,
        per_replica_rate_per_s: rates,
        per_replica_peak_inflight: if sample { peaks } else { Vec::new() },
        tallies,
        seconds: s.load_s,
    })
}

fn start_set(
    bins: &Bins,
    dir: &Path,
    sim: &SimProc,
    s: &Settings,
    redis: Option<&Redis>,
) -> io::Result<Vec<Replica>> {
    (0..s.replicas)
        .map(|i| {
            let name = format!("{}{i}", if redis.is_some() { "cap" } else { "alone" });
            let lines = redis.map(|r| cluster_lines(r, POOL, &name, s.sync_interval_ms));
            Replica::start(
                &bins.flowgate,
                dir,
                &name,
                &replica_yaml(sim.addr, s.max_inflight, lines.as_deref()),
            )
        })
        .collect()
}

async fn syncs_ok(rs: &[Replica]) -> io::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(rs.len());
    for r in rs {
        out.push(r.metric(SYNCS_OK).await?.unwrap_or(0.0));
    }
    Ok(out)
}

async fn ping_rtt_us(redis: &Redis) -> io::Result<f64> {
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        rtts.push(redis.ping().await?.as_secs_f64() * 1e6);
    }
    rtts.sort_by(f64::total_cmp);
    Ok(rtts[PINGS / 2])
}

/// The connected phase with the sync cost read around it.
async fn connected(
    rs: &[Replica],
    sim: &SimProc,
    redis: &Redis,
    s: &Settings,
) -> io::Result<(Phase, SyncCost)> {
    let ping_rtt_us = ping_rtt_us(redis).await?;
    let (stats0, syncs0, t0) = (redis.command_stats("evalsha").await?, syncs_ok(rs).await?, Instant::now());
    let p = phase("cluster", rs, sim, s, u64::from(s.max_inflight), false).await?;
    let (stats1, syncs1, dt) = (redis.command_stats("evalsha").await?, syncs_ok(rs).await?, t0.elapsed());
    let d = CommandStats {
        calls: stats1.calls.saturating_sub(stats0.calls),
        usec: stats1.usec.saturating_sub(stats0.usec),
    };
    let secs = dt.as_secs_f64().max(1e-9);
    let redis_usec_per_sync = if d.calls > 0 { d.usec as f64 / d.calls as f64 } else { 0.0 };
    let cost = SyncCost {
        redis_usec_per_sync,
        syncs_per_s: d.calls as f64 / secs,
        per_replica_syncs_per_s: syncs1.iter().zip(&syncs0).map(|(b, a)| (b - a) / secs).collect(),
        redis_core_pct: d.usec as f64 / 1e6 / secs * 100.0,
        ping_rtt_us,
        est_sync_rtt_us: ping_rtt_us + redis_usec_per_sync,
    };
    Ok((p, cost))
}

/// Kill Redis, wait until every replica is local on ⌊M/N⌋ with its in-flight drained to it.
async fn go_local(rs: &[Replica], redis: &mut Redis, share: u64) -> io::Result<()> {
    redis.kill();
    for r in rs {
        r.wait_metric("flowgate_cluster_connected", |v| v == 0.0).await?;
        r.wait_backend("local share", |b| b["lease"].as_u64() == Some(share)).await?;
    }
    for r in rs {
        r.wait_backend("drained", |b| b["inflight"].as_u64().is_some_and(|n| n <= share)).await?;
    }
    Ok(())
}

/// Run the capacity part. Kills `redis` (the last part to need it).
pub async fn run(
    bins: &Bins,
    dir: &Path,
    sim: &SimProc,
    redis: &mut Redis,
    s: &Settings,
) -> io::Result<Capacity> {
    let n = s.replicas as u32;
    let share = u64::from((s.max_inflight / n).max(1));
    let mut phases = Vec::new();
    let mut cluster = start_set(bins, dir, sim, s, Some(redis))?;
    for r in &cluster {
        r.wait_connected(n).await?;
    }
    let (p, sync_cost) = connected(&cluster, sim, redis, s).await?;
    phases.push(p);
    go_local(&cluster, redis, share).await?;
    phases.push(phase("redis_down", &cluster, sim, s, share * u64::from(n), true).await?);
    for r in &mut cluster {
        r.stop();
    }
    let alone = start_set(bins, dir, sim, s, None)?;
    for r in &alone {
        // Serving once its backend shows up on the API.
        r.backend().await?;
    }
    phases.push(phase("standalone", &alone, sim, s, u64::from(s.max_inflight) * u64::from(n), false).await?);
    Ok(Capacity {
        replicas: s.replicas,
        max_inflight: s.max_inflight,
        workers_per_replica: s.workers_per_replica,
        phases,
        sync_cost,
    })
}
