//! Per-replica engine throughput: closed-loop ext_proc dispatch + release through one replica in
//! cluster mode (the other replicas alive, a `max_inflight` so large the lease never binds)
//! against the same config without `cluster:`, in alternating short slices in one run; the
//! figure is the median of the per-round ratios. A cross-check loads both at once.

use super::load::Load;
use super::procs::Replica;
use super::Settings;
use flowgate_bench::stats::median;
use serde::Serialize;
use std::io;
use std::time::Duration;

/// The throughput part of the report.
#[derive(Debug, Serialize)]
pub struct Throughput {
    /// Closed-loop client streams.
    pub workers: usize,
    /// HTTP/2 connections they share.
    pub connections: usize,
    /// Seconds per round and replica.
    pub round_s: f64,
    /// Completed requests/s of the cluster replica, per round.
    pub cluster_rate_per_s: Vec<f64>,
    /// Of the standalone replica, per round.
    pub standalone_rate_per_s: Vec<f64>,
    /// Medians.
    pub cluster_median_per_s: f64,
    /// ...
    pub standalone_median_per_s: f64,
    /// Median over rounds of cluster / standalone within the round (adjacent slices share the
    /// machine's load of the moment).
    pub ratio: f64,
    /// Cluster / standalone per round.
    pub round_ratios: Vec<f64>,
    /// Cross-check: both replicas loaded at once (each its own streams), cluster / standalone
    /// per round; both see the same machine noise.
    pub side_by_side_ratios: Vec<f64>,
    /// Their median.
    pub side_by_side_ratio: f64,
    /// Requests that failed or were refused (0 in a sound run).
    pub failed: u64,
}

/// Load every replica of `rs` at once for a round; each one's completed/s, and the failures.
async fn round_of(rs: &[&Replica], s: &Settings) -> io::Result<(Vec<f64>, u64)> {
    let mut loads = Vec::with_capacity(rs.len());
    for r in rs {
        loads.push(Load::start(r.grpc, s.connections, s.tput_workers, "tput", None).await?);
    }
    tokio::time::sleep(Duration::from_secs_f64(s.round_s)).await; // the round's length
    let (mut rates, mut failed) = (Vec::with_capacity(rs.len()), 0);
    for l in loads {
        let (t, dur) = l.stop().await;
        rates.push(t.completed as f64 / dur.as_secs_f64().max(1e-9));
        failed += t.failed + t.refused;
    }
    Ok((rates, failed))
}

async fn round(r: &Replica, s: &Settings) -> io::Result<(f64, u64)> {
    let (rates, failed) = round_of(&[r], s).await?;
    Ok((rates[0], failed))
}

fn ratio(c: f64, a: f64) -> f64 {
    if a > 0.0 {
        c / a
    } else {
        0.0
    }
}

/// Alternate rounds on `cluster` and `alone` (the order flips every round).
pub async fn run(cluster: &Replica, alone: &Replica, s: &Settings) -> io::Result<Throughput> {
    let (mut c, mut a, mut failed) = (Vec::new(), Vec::new(), 0);
    // One unrecorded slice each first: connections, first allocations.
    for r in [cluster, alone] {
        failed += round(r, s).await?.1;
    }
    for i in 0..s.rounds {
        let order = if i % 2 == 0 { [true, false] } else { [false, true] };
        for is_cluster in order {
            let (rate, f) = round(if is_cluster { cluster } else { alone }, s).await?;
            failed += f;
            if is_cluster {
                c.push(rate)
            } else {
                a.push(rate)
            }
        }
    }
    let mut side = Vec::new();
    for _ in 0..s.rounds.div_ceil(2) {
        let (rates, f) = round_of(&[cluster, alone], s).await?;
        failed += f;
        side.push(ratio(rates[0], rates[1]));
    }
    let (cm, am) = (median(&c), median(&a));
    let round_ratios: Vec<f64> = c.iter().zip(&a).map(|(x, y)| ratio(*x, *y)).collect();
    Ok(Throughput {
        workers: s.tput_workers,
        connections: s.connections,
        round_s: s.round_s,
        cluster_rate_per_s: c,
        standalone_rate_per_s: a,
        cluster_median_per_s: cm,
        standalone_median_per_s: am,
        ratio: median(&round_ratios),
        round_ratios,
        side_by_side_ratio: median(&side),
        side_by_side_ratios: side,
        failed,
    })
}
