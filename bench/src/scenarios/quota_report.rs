//! The `quota_isolation` report: per-workload waits and throughput in both runs, the
//! well-behaved workloads' p99 wait with `pinned` against without it, and `pinned`'s in-flight
//! peak against its quota, with the target checked (reported, never enforced); and, as a
//! reference, their p99 against a pool short of the slots the quota grants `pinned`.

use super::quota_driver::QuotaRunData;
use super::quota_isolation::{QuotaScenario, Run};
use super::token_driver::TokenOutcome;
use super::Check;
use crate::report::{ms, Table};
use crate::stats::Summary;
use serde::Serialize;

/// The target: the other workloads' p99 wait with `pinned` at most this many times
/// their p99 wait without it.
pub const TARGET_P99_RATIO: f64 = 1.10;

/// One workload's figures in one run.
#[derive(Clone, Debug, Serialize)]
pub struct QuotaWorkloadStats {
    /// Workload id.
    pub workload: String,
    /// Requests submitted (whole run).
    pub submitted: u64,
    /// Requests served (whole run).
    pub served: u64,
    /// Answered without dispatch (whole run).
    pub refused: u64,
    /// Submits refused before queueing (whole run).
    pub not_queued: u64,
    /// Still queued when the run ended (cancelled; `pinned`'s backlog, or a well-behaved
    /// request the drain did not reach).
    pub cancelled: u64,
    /// Dispatched but not answered properly by the sim (must be 0).
    pub failed: u64,
    /// Requests submitted in the window.
    pub submitted_in_window: u64,
    /// Of those, the ones not served (cancelled, refused, not queued, failed).
    pub unserved_in_window: u64,
    /// Submit → dispatch of the served requests submitted in the window.
    pub wait: Summary,
    /// Responses that ended in the window.
    pub served_in_window: u64,
    /// `served_in_window` / the window's length.
    pub throughput_per_s: f64,
}

/// One run's result.
#[derive(Clone, Debug, Serialize)]
pub struct QuotaRunResult {
    /// Which run.
    pub run: Run,
    /// Whether `pinned` took part.
    pub pinned_present: bool,
    /// The workloads that took part, in scenario order.
    pub per_workload: Vec<QuotaWorkloadStats>,
    /// Most permits of `pinned` held at once (counted from the permits its clients held).
    pub pinned_peak_inflight: u64,
    /// Records (one per request).
    pub records: u64,
    /// Submissions counted by the clients (equals `records`).
    pub submitted: u64,
    /// Requests the sim completed.
    pub sim_completed: u64,
    /// Most requests the sim held at once (≤ the slots).
    pub sim_max_in_system: u64,
    /// Failed requests (a broken harness; must be 0).
    pub failed: u64,
    /// The first failure.
    pub first_error: Option<String>,
}

/// One well-behaved workload, with `pinned` against without it.
#[derive(Clone, Debug, Serialize)]
pub struct WaitComparison {
    /// Workload id.
    pub workload: String,
    /// p50 wait with `pinned`, ms.
    pub p50_with_ms: f64,
    /// p50 wait without `pinned`, ms.
    pub p50_without_ms: f64,
    /// p99 wait with `pinned`, ms.
    pub p99_with_ms: f64,
    /// p99 wait without `pinned`, ms.
    pub p99_without_ms: f64,
    /// `p99_with_ms / p99_without_ms` (`None` when the latter is 0).
    pub p99_ratio: Option<f64>,
    /// `p99_with_ms − p99_without_ms`, ms.
    pub p99_delta_ms: f64,
    /// p99 wait in the [`Run::Reserved`] reference, ms.
    pub p99_reserved_ms: f64,
    /// `p99_with_ms / p99_reserved_ms` (`None` when the latter is 0).
    pub p99_ratio_vs_reserved: Option<f64>,
    /// p99 wait with `pinned` using its quota without a backlog ([`Run::WithinQuota`]), ms.
    pub p99_within_quota_ms: f64,
    /// `p99_with_ms / p99_within_quota_ms`: what `pinned`'s excess costs the others (`None`
    /// when the latter is 0).
    pub p99_ratio_vs_within_quota: Option<f64>,
}

/// The `quota_isolation` report.
#[derive(Clone, Debug, Serialize)]
pub struct QuotaIsolationReport {
    /// The scenario.
    pub scenario: QuotaScenario,
    /// How it is measured.
    pub method: String,
    /// With `pinned`, then without.
    pub runs: Vec<QuotaRunResult>,
    /// Per well-behaved workload.
    pub comparison: Vec<WaitComparison>,
    /// p99 wait of all the well-behaved requests together, with `pinned`, ms.
    pub others_p99_with_ms: f64,
    /// The same without `pinned`, ms.
    pub others_p99_without_ms: f64,
    /// Their ratio (`None` when the latter is 0).
    pub others_p99_ratio: Option<f64>,
    /// The same in the [`Run::Reserved`] reference, ms.
    pub others_p99_reserved_ms: f64,
    /// `others_p99_with_ms / others_p99_reserved_ms` (`None` when the latter is 0).
    pub others_p99_ratio_vs_reserved: Option<f64>,
    /// The same with `pinned` within its quota ([`Run::WithinQuota`]), ms.
    pub others_p99_within_quota_ms: f64,
    /// `others_p99_with_ms / others_p99_within_quota_ms` (`None` when the latter is 0).
    pub others_p99_ratio_vs_within_quota: Option<f64>,
    /// The targets.
    pub checks: Vec<Check>,
}

fn window_ns(sc: &QuotaScenario) -> (u64, u64) {
    ((sc.warmup_s * 1e9) as u64, (sc.duration_s * 1e9) as u64)
}

fn workload_stats(sc: &QuotaScenario, d: &QuotaRunData, i: usize) -> QuotaWorkloadStats {
    let (from, to) = window_ns(sc);
    let in_window = |t: u64| t >= from && t < to;
    let mut w = QuotaWorkloadStats {
        workload: sc.workloads[i].name.clone(),
        submitted: 0,
        served: 0,
        refused: 0,
        not_queued: 0,
        cancelled: 0,
        failed: 0,
        submitted_in_window: 0,
        unserved_in_window: 0,
        wait: Summary::default(),
        served_in_window: 0,
        throughput_per_s: 0.0,
    };
    let mut waits = Vec::new();
    for r in d.records.iter().filter(|r| r.workload == i) {
        w.submitted += 1;
        let served = matches!(r.outcome, TokenOutcome::Served { .. });
        match &r.outcome {
            TokenOutcome::Served { .. } => w.served += 1,
            TokenOutcome::Refused(_) => w.refused += 1,
            TokenOutcome::NotQueued(_) => w.not_queued += 1,
            TokenOutcome::Cancelled => w.cancelled += 1,
            TokenOutcome::Failed(_) => w.failed += 1,
        }
        if in_window(r.submit_ns) {
            w.submitted_in_window += 1;
            match (served, r.dispatch_ns) {
                (true, Some(at)) => waits.push(at.saturating_sub(r.submit_ns)),
                _ => w.unserved_in_window += 1,
            }
        }
        if served && in_window(r.end_ns) {
            w.served_in_window += 1;
        }
    }
    w.throughput_per_s = w.served_in_window as f64 / (sc.duration_s - sc.warmup_s).max(1e-9);
    w.wait = Summary::of_ns(&mut waits);
    w
}

/// The p99 wait, ms, of the well-behaved requests of `d` submitted in the window, all together.
fn others_p99(sc: &QuotaScenario, d: &QuotaRunData) -> f64 {
    let (from, to) = window_ns(sc);
    let mut waits: Vec<u64> = d
        .records
        .iter()
        .filter(|r| r.workload != 0 && r.submit_ns >= from && r.submit_ns < to)
        .filter(|r| matches!(r.outcome, TokenOutcome::Served { .. }))
        .filter_map(|r| r.dispatch_ns.map(|at| at.saturating_sub(r.submit_ns)))
        .collect();
    Summary::of_ns(&mut waits).p99_ms
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn result(sc: &QuotaScenario, d: &QuotaRunData) -> QuotaRunResult {
    let per_workload: Vec<QuotaWorkloadStats> =
        (0..sc.workloads.len()).filter(|&i| sc.present(d.run, i)).map(|i| workload_stats(sc, d, i)).collect();
    QuotaRunResult {
        run: d.run,
        pinned_present: sc.present(d.run, 0),
        failed: per_workload.iter().map(|w| w.failed).sum(),
        per_workload,
        pinned_peak_inflight: d.pinned_peak_inflight,
        records: d.records.len() as u64,
        submitted: d.submitted,
        sim_completed: d.sim.completed_total,
        sim_max_in_system: d.sim.max_in_system_seen,
        first_error: d.records.iter().find_map(|r| match &r.outcome {
            TokenOutcome::Failed(e) => Some(e.clone()),
            _ => None,
        }),
    }
}

/// Analyse the runs of `sc` (`datas` holds the [`RUNS`](super::quota_isolation::RUNS)).
pub fn analyse(sc: &QuotaScenario, datas: &[QuotaRunData]) -> QuotaIsolationReport {
    let runs: Vec<QuotaRunResult> = datas.iter().map(|d| result(sc, d)).collect();
    let find = |run: Run| runs.iter().find(|r| r.run == run);
    let stats = |run: Run, name: &str| {
        find(run).and_then(|r| r.per_workload.iter().find(|w| w.workload == name)).map(|w| w.wait.clone())
    };
    let comparison: Vec<WaitComparison> = sc.workloads[1..]
        .iter()
        .map(|w| {
            let with = stats(Run::WithPinned, &w.name).unwrap_or_default();
            let without = stats(Run::WithoutPinned, &w.name).unwrap_or_default();
            let reserved = stats(Run::Reserved, &w.name).unwrap_or_default();
            let within = stats(Run::WithinQuota, &w.name).unwrap_or_default();
            WaitComparison {
                workload: w.name.clone(),
                p50_with_ms: with.p50_ms,
                p50_without_ms: without.p50_ms,
                p99_with_ms: with.p99_ms,
                p99_without_ms: without.p99_ms,
                p99_ratio: ratio(with.p99_ms, without.p99_ms),
                p99_delta_ms: with.p99_ms - without.p99_ms,
                p99_reserved_ms: reserved.p99_ms,
                p99_ratio_vs_reserved: ratio(with.p99_ms, reserved.p99_ms),
                p99_within_quota_ms: within.p99_ms,
                p99_ratio_vs_within_quota: ratio(with.p99_ms, within.p99_ms),
            }
        })
        .collect();
    let data = |run: Run| datas.iter().find(|d| d.run == run);
    let others_p99_with_ms = data(Run::WithPinned).map_or(0.0, |d| others_p99(sc, d));
    let others_p99_without_ms = data(Run::WithoutPinned).map_or(0.0, |d| others_p99(sc, d));
    let others_p99_reserved_ms = data(Run::Reserved).map_or(0.0, |d| others_p99(sc, d));
    let others_p99_within_quota_ms = data(Run::WithinQuota).map_or(0.0, |d| others_p99(sc, d));
    let worst = comparison.iter().map(|c| c.p99_ratio.unwrap_or(f64::INFINITY)).fold(0.0, f64::max);
    let others_vs_within = ratio(others_p99_with_ms, others_p99_within_quota_ms);
    let peak = find(Run::WithPinned).map_or(0, |r| r.pinned_peak_inflight);
    let checks = vec![
        Check {
            name: format!("other workloads' p99 wait within {TARGET_P99_RATIO}x of the run without pinned"),
            value: format!(
                "worst {:.2}x; {}",
                worst,
                comparison
                    .iter()
                    .map(|c| format!(
                        "{} {}",
                        c.workload,
                        c.p99_ratio.map_or("-".into(), |r| format!("{r:.2}x"))
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            pass: worst <= TARGET_P99_RATIO,
        },
        Check {
            name: format!(
                "isolation: other workloads' p99 wait with pinned flooding within {TARGET_P99_RATIO}x of pinned using its quota without a backlog"
            ),
            value: format!(
                "{} ({} vs {} ms)",
                others_vs_within.map_or("-".into(), |r| format!("{r:.2}x")),
                ms(others_p99_with_ms),
                ms(others_p99_within_quota_ms)
            ),
            pass: others_vs_within.is_some_and(|r| r <= TARGET_P99_RATIO),
        },
        Check {
            name: format!("pinned in-flight peak ≤ max_inflight {}", sc.pinned_max_inflight),
            value: peak.to_string(),
            pass: peak <= u64::from(sc.pinned_max_inflight),
        },
    ];
    let method = format!(
        "flowgate ({} shards, {} slots) with a queue quota on pinned (max_inflight {}{}), fresh in-process flowgate-sim per run (speed {}, prefill {} us/token, decode step {} ms, max_num_seqs = slots); \
         every request {} prompt bytes, {} output tokens (~{} ms at the sim, pool ~{:.0} req/s); the runs one after the other with the same Poisson schedules (reserved: no pinned, {} slots; within quota: pinned with max_inflight clients); \
         waits = submit → dispatch of the well-behaved requests submitted in [{:.2} s, {:.2} s), throughput = responses ending there; drain ≤ {} s; wait_cap = rate_window = {} s; \
         pinned's in-flight peak counted from the permits its clients hold",
        sc.shards,
        sc.slots,
        sc.pinned_max_inflight,
        sc.pinned_requests_per_minute.map_or(String::new(), |r| format!(", {r} requests/min")),
        sc.sim.speed,
        sc.sim.prefill_us_per_token,
        sc.sim.decode_step_ms,
        sc.prompt_bytes,
        sc.max_tokens,
        ms(sc.service_s * 1e3),
        sc.capacity_per_s,
        sc.slots_in(Run::Reserved),
        sc.warmup_s,
        sc.duration_s,
        sc.drain_s,
        sc.wait_cap_s,
    );
    QuotaIsolationReport {
        scenario: sc.clone(),
        method,
        runs,
        comparison,
        others_p99_with_ms,
        others_p99_without_ms,
        others_p99_ratio: ratio(others_p99_with_ms, others_p99_without_ms),
        others_p99_reserved_ms,
        others_p99_ratio_vs_reserved: ratio(others_p99_with_ms, others_p99_reserved_ms),
        others_p99_within_quota_ms,
        others_p99_ratio_vs_within_quota: others_vs_within,
        checks,
    }
}

/// The stdout summary.
pub fn render(rep: &QuotaIsolationReport) -> String {
    let sc = &rep.scenario;
    let mut s = format!("\n== scenario {}: {} ==\n", sc.name, sc.description);
    let mut t = Table::new(&[
        "run",
        "workload",
        "submitted",
        "served",
        "cancelled",
        "req/s",
        "wait p50 ms",
        "wait p99 ms",
        "unserved",
    ]);
    for r in &rep.runs {
        for w in &r.per_workload {
            t.row(vec![
                r.run.label().into(),
                w.workload.clone(),
                w.submitted.to_string(),
                w.served.to_string(),
                w.cancelled.to_string(),
                format!("{:.0}", w.throughput_per_s),
                ms(w.wait.p50_ms),
                ms(w.wait.p99_ms),
                w.unserved_in_window.to_string(),
            ]);
        }
    }
    s.push_str(&t.render());
    let mut t = Table::new(&[
        "workload",
        "p50 with",
        "p50 without",
        "p99 with",
        "p99 without",
        "p99 ratio",
        "p99 reserved",
        "ratio vs reserved",
        "p99 within quota",
        "ratio vs within",
    ]);
    let fmt = |r: Option<f64>| r.map_or("-".into(), |r| format!("{r:.2}x"));
    for c in &rep.comparison {
        t.row(vec![
            c.workload.clone(),
            ms(c.p50_with_ms),
            ms(c.p50_without_ms),
            ms(c.p99_with_ms),
            ms(c.p99_without_ms),
            fmt(c.p99_ratio),
            ms(c.p99_reserved_ms),
            fmt(c.p99_ratio_vs_reserved),
            ms(c.p99_within_quota_ms),
            fmt(c.p99_ratio_vs_within_quota),
        ]);
    }
    t.row(vec![
        "all others".into(),
        "-".into(),
        "-".into(),
        ms(rep.others_p99_with_ms),
        ms(rep.others_p99_without_ms),
        fmt(rep.others_p99_ratio),
        ms(rep.others_p99_reserved_ms),
        fmt(rep.others_p99_ratio_vs_reserved),
        ms(rep.others_p99_within_quota_ms),
        fmt(rep.others_p99_ratio_vs_within_quota),
    ]);
    s.push_str(&t.render());
    let peak = rep.runs.iter().map(|r| r.pinned_peak_inflight).max().unwrap_or(0);
    s.push_str(&format!("   pinned in-flight peak {peak} (max_inflight {})\n", sc.pinned_max_inflight));
    for c in &rep.checks {
        s.push_str(&format!("   {} {}: {}\n", if c.pass { "PASS" } else { "MISS" }, c.name, c.value));
    }
    s.push_str(&format!("   method: {}\n", rep.method));
    s
}
