//! Per-replica engine throughput: closed-loop ext_proc dispatch + release through one replica in
//! cluster mode (the other replicas alive, a `max_inflight` so large the lease never binds)
//! against the same config without `cluster:`, in alternating short slices in one run; the
//! figure is the median of the per-round ratios.

use super::load::Load;
use super::procs::Replica;
use super::Settings;
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
    /// Requests that failed or were refused (0 in a sound run).
    pub failed: u64,
}

/// The median of `xs` (0 when empty).
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

async fn round(r: &Replica, s: &Settings) -> io::Result<(f64, u64)> {
    let load = Load::start(r.grpc, s.connections, s.tput_workers, "tput", None).await?;
    tokio::time::sleep(Duration::from_secs_f64(s.round_s)).await; // the round's length
    let (t, dur) = load.stop().await;
    Ok((t.completed as f64 / dur.as_secs_f64().max(1e-9), t.failed + t.refused))
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
    let (cm, am) = (median(&c), median(&a));
    let round_ratios: Vec<f64> = c.iter().zip(&a).map(|(x, y)| if *y > 0.0 { x / y } else { 0.0 }).collect();
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
        failed,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn medians() {
        assert_eq!(super::median(&[]), 0.0);
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0]), 2.5);
    }
}
