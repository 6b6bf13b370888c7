//! Rates: a workload flooding replica A only, its cluster rate (`rate_per_s +
//! remote_rate_per_s` of `/api/v1/workload/{id}/metrics`) read on A and on B, during the flood
//! and after it stopped: B should be within 10 % of A once two sync intervals have passed.

use super::load::Load;
use super::procs::{Replica, DEADLINE};
use super::Settings;
use serde::Serialize;
use std::io;
use std::time::{Duration, Instant};

/// The flooding workload.
const WORKLOAD: &str = "flood";
/// Pause between two reads after the flood.
const POLL: Duration = Duration::from_millis(5);
/// B within this share of A counts as converged (the target).
pub const TOLERANCE: f64 = 0.10;

/// The rates part of the report.
#[derive(Debug, Serialize)]
pub struct Rates {
    /// Closed-loop flood loops on A.
    pub flood_workers: usize,
    /// Seconds of flood.
    pub flood_s: f64,
    /// Requests/s A completed for the flood.
    pub flood_rate_per_s: f64,
    /// B / A cluster rate, read every sync interval during the flood (from its third on).
    pub during_flood_b_over_a: Vec<f64>,
    /// A's cluster rate 2 sync intervals after the flood stopped, requests/s.
    pub a_rate_per_s: f64,
    /// B's then.
    pub b_rate_per_s: f64,
    /// B / A then.
    pub b_over_a: f64,
    /// The part of B's rate that is remote (A's, through Redis) then.
    pub b_remote_share: f64,
    /// After the flood stopped, ms until B first read within [`TOLERANCE`] of A.
    pub converged_ms: Option<f64>,
}

/// A's and B's cluster rates of the flood, and B's remote part.
async fn read(a: &Replica, b: &Replica) -> io::Result<(f64, f64, f64)> {
    let (al, ar) = a.rates(WORKLOAD).await?;
    let (bl, br) = b.rates(WORKLOAD).await?;
    Ok((al + ar, bl + br, br))
}

fn within(ra: f64, rb: f64) -> bool {
    ra > 0.0 && (ra - rb).abs() <= TOLERANCE * ra
}

/// Flood A, read A and B.
pub async fn run(a: &Replica, b: &Replica, s: &Settings) -> io::Result<Rates> {
    let interval = Duration::from_millis(s.sync_interval_ms);
    // B must know the workload to apply its remote rate: one request of it there first.
    let once = Load::start(b.grpc, 1, 1, WORKLOAD, None).await?;
    let start = Instant::now();
    while b.rates(WORKLOAD).await.is_err() {
        if start.elapsed() > DEADLINE {
            return Err(io::Error::other("rates: B never tracked the flood workload"));
        }
        tokio::time::sleep(POLL).await;
    }
    once.stop().await;
    let flood = Load::start(a.grpc, 2, s.flood_workers, WORKLOAD, None).await?;
    let end = Instant::now() + Duration::from_secs_f64(s.flood_s);
    let mut during = Vec::new();
    tokio::time::sleep(2 * interval).await; // the flood's first sync intervals, not a synchronisation
    while Instant::now() < end {
        let (ra, rb, _) = read(a, b).await?;
        if ra > 0.0 {
            during.push(rb / ra);
        }
        tokio::time::sleep(interval).await;
    }
    let (tally, flood_dur) = flood.stop().await;
    let stopped = Instant::now();
    let mut converged_ms = None;
    let at_2i = loop {
        let (ra, rb, br) = read(a, b).await?;
        let elapsed = stopped.elapsed();
        if converged_ms.is_none() && within(ra, rb) {
            converged_ms = Some(elapsed.as_secs_f64() * 1e3);
        }
        if elapsed >= 2 * interval {
            break (ra, rb, br);
        }
        tokio::time::sleep(POLL).await;
    };
    // Past 2 intervals, keep reading until converged (bounded) for the convergence time.
    while converged_ms.is_none() && stopped.elapsed() < DEADLINE {
        let (ra, rb, _) = read(a, b).await?;
        if within(ra, rb) {
            converged_ms = Some(stopped.elapsed().as_secs_f64() * 1e3);
        }
        tokio::time::sleep(POLL).await;
    }
    let (ra, rb, br) = at_2i;
    Ok(Rates {
        flood_workers: s.flood_workers,
        flood_s: s.flood_s,
        flood_rate_per_s: tally.completed as f64 / flood_dur.as_secs_f64().max(1e-9),
        during_flood_b_over_a: during,
        a_rate_per_s: ra,
        b_rate_per_s: rb,
        b_over_a: if ra > 0.0 { rb / ra } else { 0.0 },
        b_remote_share: if rb > 0.0 { br / rb } else { 0.0 },
        converged_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_ten_percent() {
        assert!(within(100.0, 91.0) && within(100.0, 109.0));
        assert!(!within(100.0, 89.0) && !within(0.0, 0.0));
    }
}
