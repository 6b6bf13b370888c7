//! What every open-loop ext_proc phase reports ([`LoadFigures`]): offered and achieved rates,
//! requests by fate, latency and the client's own lag. `extproc` (per server) and `usage-cost`
//! (per phase) each add their own fields beside it.

use super::load::Measured;
use flowgate_bench::stats::Summary;
use serde::Serialize;
use std::time::Duration;

/// One phase's (or one server's) load figures, flattened into the report's JSON object.
#[derive(Debug, Serialize)]
pub struct LoadFigures {
    /// Offered load, requests/s.
    pub offered_rps: f64,
    /// Completed requests / load window (extended to the last completion).
    pub achieved_rps: f64,
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests completed (dispatched, every message answered, stream closed cleanly).
    pub completed: u64,
    /// Streams that failed (gRPC or protocol error, timeout).
    pub failed: u64,
    /// Answers that were not a dispatch (immediate responses).
    pub not_dispatched: u64,
    /// Requests never sent: their worker was still busy past the drain grace.
    pub skipped: u64,
    /// Send → headers answer.
    pub latency: Summary,
    /// Scheduled time → send: the client's own lag behind the schedule.
    pub send_lag: Summary,
    /// The first failure seen, if any.
    pub first_error: Option<String>,
}

impl LoadFigures {
    /// The figures of `m`, measured at `offered_rps` over load windows totalling `window`.
    pub(crate) fn new(m: &Measured, offered_rps: f64, window: Duration) -> Self {
        let t = &m.tally;
        LoadFigures {
            offered_rps,
            achieved_rps: if window.is_zero() { 0.0 } else { t.completed as f64 / window.as_secs_f64() },
            scheduled: t.scheduled,
            completed: t.completed,
            failed: t.failed,
            not_dispatched: t.not_dispatched,
            skipped: t.skipped,
            latency: m.latency.summary(),
            send_lag: m.send_lag.summary(),
            first_error: t.first_error.clone(),
        }
    }

    /// With free capacity every request must complete as a dispatch: `None` when they did, else
    /// what went wrong, naming `who` (a broken harness or server, not a slow run).
    pub fn broken(&self, who: &str) -> Option<String> {
        (self.failed + self.not_dispatched > 0 || self.completed == 0).then(|| {
            format!(
                "{who}: {} failed, {} not dispatched, {} completed (first error: {})",
                self.failed,
                self.not_dispatched,
                self.completed,
                self.first_error.as_deref().unwrap_or("none")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_phase_with_a_failure_or_nothing_completed_is_broken() {
        let mut m = Measured::default();
        let ok = |m: &Measured| LoadFigures::new(m, 100.0, Duration::from_secs(1));
        assert!(ok(&m).broken("x").is_some_and(|s| s.contains("0 completed")));
        m.tally.completed = 50;
        m.tally.scheduled = 50;
        let f = ok(&m);
        assert_eq!((f.achieved_rps, f.broken("x")), (50.0, None));
        m.tally.not_dispatched = 1;
        assert!(ok(&m).broken("flowgate").is_some_and(|s| s.starts_with("flowgate: 0 failed, 1 not")));
        assert_eq!(LoadFigures::new(&m, 1.0, Duration::ZERO).achieved_rps, 0.0);
    }
}
