//! Priority-inversion counting: its thresholds and [`count_inversions`].
//!
//! **Priority inversions** are judged after the run from exact timestamps: at each dispatch time
//! `t` (submission time + the implementation's queued time), every request submitted at least
//! `INVERSION_GRACE_NS` (1 ms) before `t` and not yet resolved by `t + SAME_PASS_NS` (0.2 ms) is
//! scored with the seed's formula (wait at `t`, its criticality, its
//! workload's exact sliding-window rate at `t`); the dispatch is an inversion when some pending
//! request scores more than `INVERSION_EPS` above it, and a severe one when more than
//! `SEVERE_EPS` (one criticality level) above it.

use super::Record;
use crate::baseline::SeedScore;
use flowgate_engine::config::ScoringConfig;
use flowgate_engine::Outcome;
use std::collections::BTreeSet;

/// Score gap above which a dispatch counts as a priority inversion (rate-window rounding and the
/// rescore lag stay below it).
pub const INVERSION_EPS: f64 = 0.01;
/// Score gap of one criticality level (`w_crit / 5`): a severe inversion.
pub const SEVERE_EPS: f64 = 0.08;
/// A request counts as pending at a dispatch only if it was submitted at least this long before
/// it: any implementation needs a moment to see a new request (a ring hop, a lock), and a request
/// that arrives while slots are free is dispatched at once anyway.
pub const INVERSION_GRACE_NS: u64 = 1_000_000;
/// Requests resolved within this long after a dispatch count as resolved with it (one dispatch
/// pass): dispatch times are reconstructed as the driver's submit time plus the implementation's
/// queued time, which are a few µs apart, so one pass's dispatches can appear slightly reordered.
pub const SAME_PASS_NS: u64 = 200_000;

/// Count priority inversions (see the module docs); returns (dispatches, inversions, severe).
pub fn count_inversions(records: &[Record], workloads: usize, scoring: &ScoringConfig) -> (u64, u64, u64) {
    let score = SeedScore::new(scoring);
    let window_ns = scoring.rate_window.as_nanos() as u64;
    let window_s = scoring.rate_window.as_secs_f64();
    let mut arrivals: Vec<Vec<u64>> = vec![Vec::new(); workloads];
    for r in records {
        arrivals[r.workload].push(r.submit_ns);
    }
    for a in &mut arrivals {
        a.sort_unstable();
    }
    let rate = |w: usize, t: u64| {
        let a = &arrivals[w];
        let hi = a.partition_point(|&x| x <= t);
        let lo = a.partition_point(|&x| x + window_ns <= t);
        (hi - lo) as f64 / window_s
    };
    let mut by_submit: Vec<usize> = (0..records.len()).collect();
    by_submit.sort_by_key(|&i| records[i].submit_ns);
    let mut by_end: Vec<usize> = (0..records.len()).filter(|&i| records[i].end_ns != u64::MAX).collect();
    by_end.sort_by_key(|&i| records[i].end_ns);
    let dispatches: Vec<usize> =
        by_end.iter().copied().filter(|&i| records[i].outcome == Some(Outcome::Dispatched)).collect();
    let mut pending: Vec<BTreeSet<(u64, usize)>> = vec![BTreeSet::new(); workloads];
    let (mut ai, mut ri) = (0, 0);
    let (mut inversions, mut severe) = (0, 0);
    for &d in &dispatches {
        let t = records[d].end_ns;
        while ai < by_submit.len() && records[by_submit[ai]].submit_ns + INVERSION_GRACE_NS <= t {
            let r = &records[by_submit[ai]];
            if r.end_ns > t + SAME_PASS_NS {
                pending[r.workload].insert((r.submit_ns, by_submit[ai]));
            }
            ai += 1;
        }
        while ri < by_end.len() && records[by_end[ri]].end_ns <= t + SAME_PASS_NS {
            let r = &records[by_end[ri]];
            pending[r.workload].remove(&(r.submit_ns, by_end[ri]));
            ri += 1;
        }
        let rd = &records[d];
        let mine = score.score((t - rd.submit_ns) as f64 / 1e9, rd.criticality, rate(rd.workload, t));
        // Within a workload (one criticality, one rate) the oldest pending request scores best.
        let best = pending
            .iter()
            .enumerate()
            .filter_map(|(wl, set)| set.first().map(|&(s, i)| (wl, s, records[i].criticality)))
            .map(|(wl, s, c)| score.score((t - s) as f64 / 1e9, c, rate(wl, t)))
            .fold(f64::NEG_INFINITY, f64::max);
        if best > mine + INVERSION_EPS {
            inversions += 1;
        }
        if best > mine + SEVERE_EPS {
            severe += 1;
        }
    }
    (dispatches.len() as u64, inversions, severe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(workload: usize, criticality: u8, submit_ms: u64, end_ms: u64) -> Record {
        Record {
            workload,
            criticality,
            submit_ns: submit_ms * 1_000_000,
            end_ns: end_ms * 1_000_000,
            outcome: Some(Outcome::Dispatched),
        }
    }

    #[test]
    fn inversions_are_judged_at_dispatch_time() {
        let scoring = ScoringConfig::default();
        // Workload 0 is crit 1, workload 1 crit 5. Both arrive at 0.
        // In order (crit 5 first): no inversion.
        let good = vec![rec(1, 5, 0, 10), rec(0, 1, 0, 20)];
        assert_eq!(count_inversions(&good, 2, &scoring), (2, 0, 0));
        // Crit 1 dispatched while crit 5 waits: a severe inversion.
        let bad = vec![rec(0, 1, 0, 10), rec(1, 5, 0, 20)];
        assert_eq!(count_inversions(&bad, 2, &scoring), (2, 1, 1));
        // A crit-5 request submitted after the crit-1 dispatch does not count against it, nor one
        // submitted within the grace period before it.
        let later = vec![rec(0, 1, 0, 10), rec(1, 5, 11, 20)];
        assert_eq!(count_inversions(&later, 2, &scoring), (2, 0, 0));
        let racing = vec![Record { submit_ns: 9_500_000, ..rec(1, 5, 0, 20) }, rec(0, 1, 0, 10)];
        assert_eq!(count_inversions(&racing, 2, &scoring), (2, 0, 0));
        // Dispatched in the same instant (or the same pass): not an inversion.
        let same = vec![rec(0, 1, 0, 10), rec(1, 5, 0, 10)];
        assert_eq!(count_inversions(&same, 2, &scoring), (2, 0, 0));
        let pass = vec![rec(0, 1, 0, 10), Record { end_ns: 10_100_000, ..rec(1, 5, 0, 0) }];
        assert_eq!(count_inversions(&pass, 2, &scoring), (2, 0, 0));
        // An unresolved (or shed later) crit-5 request counts as pending.
        let mut shed = rec(1, 5, 0, 0);
        shed.end_ns = u64::MAX;
        shed.outcome = None;
        assert_eq!(count_inversions(&[rec(0, 1, 0, 10), shed], 2, &scoring), (1, 1, 1));
    }

    #[test]
    fn aging_lets_an_old_request_through_without_an_inversion() {
        let scoring = ScoringConfig::default();
        // A crit-1 request that waited 50 s beats a fresh crit-5 (0.08 + 0.333 > 0.4).
        let recs = vec![rec(0, 1, 0, 50_000), rec(1, 5, 49_990, 50_010)];
        assert_eq!(count_inversions(&recs, 2, &scoring).1, 0);
        // ...but not after 40 s (0.08 + 0.267 < 0.4).
        let recs = vec![rec(0, 1, 0, 40_000), rec(1, 5, 39_990, 40_010)];
        assert_eq!(count_inversions(&recs, 2, &scoring).1, 1);
    }
}
