//! Analysis of one run: per-criticality and per-workload figures, fairness between
//! equal-criticality workloads, inversion counts, and the scenario's checks.

use super::{count_inversions, Record, RunData, Scenario};
use crate::report::ms;
use crate::stats::{jain, maxmin_shares, Summary};
use flowgate_engine::Outcome;
use serde::Serialize;
use std::collections::BTreeMap;

/// Per-class (criticality or workload) results.
#[derive(Clone, Debug, Serialize)]
pub struct ClassStats {
    /// Class label.
    pub label: String,
    /// Criticality.
    pub criticality: u8,
    /// Requests submitted.
    pub submitted: u64,
    /// Requests dispatched.
    pub dispatched: u64,
    /// Requests shed, by outcome label.
    pub shed: BTreeMap<String, u64>,
    /// Shed / submitted.
    pub shed_fraction: f64,
    /// Dispatches per second over the arrival period.
    pub throughput_per_s: f64,
    /// Wait (submit → dispatched) of dispatched requests.
    pub wait: Summary,
    #[serde(skip)]
    pub(super) waits_ns: Vec<u64>,
}

/// Jain's index over equal-criticality workloads.
#[derive(Clone, Debug, Serialize)]
pub struct Fairness {
    /// The workloads compared.
    pub workloads: Vec<String>,
    /// Each workload's throughput divided by its max-min fair share of the group's throughput.
    pub normalized_throughput: Vec<f64>,
    /// Jain's index of `normalized_throughput`.
    pub jain: f64,
}

/// A scenario's target, checked for the report (never a failure).
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What.
    pub name: String,
    /// Measured (human-readable).
    pub value: String,
    /// Whether it holds in this run.
    pub pass: bool,
}

/// The analysed result of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Implementation.
    pub implementation: String,
    /// Per criticality.
    pub per_criticality: Vec<ClassStats>,
    /// Per workload.
    pub per_workload: Vec<ClassStats>,
    /// Dispatches judged.
    pub dispatches: u64,
    /// Priority inversions (gap > `INVERSION_EPS`).
    pub inversions: u64,
    /// Severe inversions (gap > one criticality level).
    pub severe_inversions: u64,
    /// Jain's index between equal-criticality workloads, when there are some.
    pub fairness: Vec<Fairness>,
    /// Largest sampled queue depth.
    pub max_queue_depth: u64,
    /// Mean sampled queue depth.
    pub mean_queue_depth: f64,
    /// Requests cancelled unresolved at the end of the drain.
    pub unfinished: usize,
    /// The scenario's targets.
    pub checks: Vec<Check>,
}

fn class_stats(label: String, criticality: u8, records: &[&Record], duration_s: f64) -> ClassStats {
    let end_ns = (duration_s * 1e9) as u64;
    let mut shed: BTreeMap<String, u64> = BTreeMap::new();
    let mut waits = Vec::new();
    let mut in_window = 0u64;
    for r in records {
        match r.outcome {
            Some(Outcome::Dispatched) => {
                waits.push(r.end_ns - r.submit_ns);
                in_window += u64::from(r.end_ns < end_ns);
            }
            Some(o) => *shed.entry(o.label().to_string()).or_default() += 1,
            None => *shed.entry("unfinished".into()).or_default() += 1,
        }
    }
    let submitted = records.len() as u64;
    let shed_total: u64 = shed.iter().filter(|(k, _)| *k != "unfinished").map(|(_, v)| v).sum();
    let wait = Summary::of_ns(&mut waits);
    ClassStats {
        label,
        criticality,
        submitted,
        dispatched: waits.len() as u64,
        shed,
        shed_fraction: if submitted == 0 { 0.0 } else { shed_total as f64 / submitted as f64 },
        throughput_per_s: in_window as f64 / duration_s,
        wait,
        waits_ns: waits,
    }
}

/// Analyse one run of `sc`.
pub fn analyse(sc: &Scenario, data: &RunData) -> RunResult {
    let mut crits: Vec<u8> = sc.workloads.iter().map(|w| w.criticality).collect();
    crits.sort_unstable();
    crits.dedup();
    let per_criticality: Vec<ClassStats> = crits
        .iter()
        .map(|&c| {
            let recs: Vec<&Record> = data.records.iter().filter(|r| r.criticality == c).collect();
            class_stats(format!("crit {c}"), c, &recs, sc.duration_s)
        })
        .collect();
    let per_workload: Vec<ClassStats> = sc
        .workloads
        .iter()
        .enumerate()
        .map(|(i, wl)| {
            let recs: Vec<&Record> = data.records.iter().filter(|r| r.workload == i).collect();
            class_stats(wl.name.clone(), wl.criticality, &recs, sc.duration_s)
        })
        .collect();
    let (dispatches, inversions, severe_inversions) =
        count_inversions(&data.records, sc.workloads.len(), &sc.scoring());
    let mut fairness = Vec::new();
    for &c in &crits {
        let group: Vec<usize> =
            (0..sc.workloads.len()).filter(|&i| sc.workloads[i].criticality == c).collect();
        if group.len() < 2 {
            continue;
        }
        let got: Vec<f64> = group.iter().map(|&i| per_workload[i].throughput_per_s).collect();
        let demands: Vec<f64> = group.iter().map(|&i| sc.demand(i)).collect();
        let shares = maxmin_shares(got.iter().sum(), &demands);
        let normalized: Vec<f64> =
            got.iter().zip(&shares).map(|(g, s)| if *s > 0.0 { g / s } else { 1.0 }).collect();
        fairness.push(Fairness {
            workloads: group.iter().map(|&i| sc.workloads[i].name.clone()).collect(),
            jain: jain(&normalized),
            normalized_throughput: normalized,
        });
    }
    let max_queue_depth = data.depth_samples.iter().copied().max().unwrap_or(0);
    let mean_queue_depth =
        data.depth_samples.iter().sum::<u64>() as f64 / data.depth_samples.len().max(1) as f64;
    let mut result = RunResult {
        implementation: data.implementation.clone(),
        per_criticality,
        per_workload,
        dispatches,
        inversions,
        severe_inversions,
        fairness,
        max_queue_depth,
        mean_queue_depth,
        unfinished: data.unfinished,
        checks: Vec::new(),
    };
    result.checks = checks(sc, &result);
    result
}

fn crit(r: &RunResult, c: u8) -> Option<&ClassStats> {
    r.per_criticality.iter().find(|s| s.criticality == c)
}

/// The scenario's targets for one run.
fn checks(sc: &Scenario, r: &RunResult) -> Vec<Check> {
    let mut out = Vec::new();
    let mut check = |name: String, value: String, pass: bool| out.push(Check { name, value, pass });
    let max_ms = |c: u8| crit(r, c).map_or(0.0, |s| s.wait.max_ms);
    let all_served = |c: u8| crit(r, c).is_some_and(|s| s.dispatched == s.submitted);
    match sc.name.as_str() {
        "basic_priority" => {
            let p50 = |c: u8| crit(r, c).map_or(0.0, |s| s.wait.p50_ms);
            check(
                "p50 wait: crit 5 < crit 3 < crit 1, each by ≥ 20%".into(),
                format!("{} < {} < {} ms", ms(p50(5)), ms(p50(3)), ms(p50(1))),
                p50(5) <= 0.8 * p50(3) && p50(3) <= 0.8 * p50(1),
            );
        }
        "wait_boost" | "starvation" => {
            for c in [1u8, 2] {
                if crit(r, c).is_none() {
                    continue;
                }
                // Aging threshold against a fresh crit-5, plus the wait of the crit-5 it must beat
                // and one service time; a quarter of wait_cap of slack for the rescore lag and rates.
                let high = crit(r, 5).map_or(0.0, |s| s.wait.p99_ms);
                let bound = sc.aging_threshold_s(c) * 1e3 + high + sc.service_ms + 0.25 * sc.wait_cap_s * 1e3;
                check(
                    format!("crit {c}: all served, max wait ≤ aging bound"),
                    format!("max {} ms, bound {} ms, served {}", ms(max_ms(c)), ms(bound), all_served(c)),
                    all_served(c) && max_ms(c) <= bound,
                );
            }
        }
        "rate_fairness" => {
            for f in &r.fairness {
                check(
                    format!("Jain's index {} ≥ 0.95", f.workloads.join("/")),
                    format!("{:.3}", f.jain),
                    f.jain >= 0.95,
                );
            }
        }
        "mixed_30_50_20" => {
            let (p5, p1) =
                (crit(r, 5).map_or(0.0, |s| s.wait.p99_ms), crit(r, 1).map_or(0.0, |s| s.wait.p99_ms));
            check(
                "p99 wait crit 5 ≤ p99 crit 1 / 5".into(),
                format!("{} vs {} ms ({:.1}x)", ms(p5), ms(p1), p1 / p5.max(1e-9)),
                p5 * 5.0 <= p1,
            );
        }
        "overload" => {
            // The engine documents a cross-shard displacement overshoot of at most
            // `TAILS_OFFERED` per shard (victims evict at their next pass).
            let shards = match r.implementation.strip_prefix("flowgate-").and_then(|s| s.strip_suffix("sh")) {
                Some(n) => n.parse::<u64>().unwrap_or(0),
                None => 0,
            };
            let slack = shards * flowgate_engine::tails::TAILS_OFFERED as u64;
            check(
                format!(
                    "queue bounded at {} (+{slack}: {} per shard)",
                    sc.max_requests,
                    flowgate_engine::tails::TAILS_OFFERED
                ),
                format!("max sampled depth {}", r.max_queue_depth),
                r.max_queue_depth <= sc.max_requests + slack,
            );
            let fr: Vec<f64> = (1..=5).map(|c| crit(r, c).map_or(0.0, |s| s.shed_fraction)).collect();
            let monotone = fr.windows(2).all(|w| w[1] <= w[0] + 0.02);
            check(
                "lowest criticality shed first (shed fraction falls with criticality)".into(),
                fr.iter().map(|f| format!("{:.0}%", f * 100.0)).collect::<Vec<_>>().join(" / "),
                monotone && fr[4] < fr[0],
            );
        }
        _ => {}
    }
    out
}
