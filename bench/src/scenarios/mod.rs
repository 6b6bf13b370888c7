//! The seed's scenarios on a simulated model-server pool, run side by side on every implementation.
//!
//! The pool has `slots` slots; a dispatched request holds its permit for `service` (real time:
//! the driver drops the permit when the service time has passed), then frees it. Load comes from
//! workloads that are open-loop (Poisson or bursts), closed-loop (clients that resubmit as soon as
//! their previous request finishes) or one-shot batches. Every run is bounded: arrivals stop at
//! `duration`, then the queue drains for at most `wait_cap + 1 s`, then what is left is cancelled.
//!
//! This file holds the subcommand (its options, [`run`] and the report); `scenario.rs` the
//! scenarios and their compressed time, `runner.rs` the driver of one run, `analysis.rs` its
//! per-class figures and checks, `inversions.rs` how priority inversions are judged.
//! `token_fairness.rs` (with `token_driver.rs`, `token_report.rs`, `sim_client.rs`) is the
//! seventh scenario, [`token_fairness::NAME`]: token-sized requests served by real `flowgate-sim`
//! servers on four implementations, reported in [`ScenariosReport::token_fairness`].
//! `quota_isolation.rs` (with `quota_driver.rs`, `quota_report.rs`) is the eighth,
//! [`quota_isolation::NAME`]: a flooding workload held at its quota beside well-behaved ones, run
//! with and without it on flowgate, reported in [`ScenariosReport::quota_isolation`].

mod analysis;
mod inversions;
mod quota_driver;
pub mod quota_isolation;
mod quota_report;
mod runner;
mod scenario;
mod sim_client;
mod token_driver;
pub mod token_fairness;
mod token_report;

pub use analysis::{analyse, Check, ClassStats, Fairness, RunResult};
pub use inversions::{count_inversions, INVERSION_EPS, INVERSION_GRACE_NS, SAME_PASS_NS, SEVERE_EPS};
pub use quota_driver::QuotaRunData;
pub use quota_report::{QuotaIsolationReport, QuotaRunResult, QuotaWorkloadStats, WaitComparison};
pub use runner::{run_one, Record, RunData};
pub use scenario::{all, Load, Scenario, Workload};
pub use sim_client::Usage;
pub use token_driver::{TokenOutcome, TokenRecord, TokenRunData};
pub use token_report::{TokenFairnessReport, TokenResult, WorkloadTokens};

use crate::baseline::Kind;
use crate::plot::{self, CdfLine};
use crate::report::{self, ms, RunInfo, Table};
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// Options of the `scenarios` subcommand.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Quick mode.
    pub quick: bool,
    /// Pool slots.
    pub slots: u32,
    /// Service time, ms.
    pub service_ms: f64,
    /// Shards of the flowgate run.
    pub shards: usize,
    /// Seconds of arrivals per scenario.
    pub duration_s: f64,
    /// Compressed `wait_cap`, seconds.
    pub wait_cap_s: f64,
    /// Only the scenario with this name (all when `None`).
    pub only: Option<String>,
    /// Run the implementations one after another instead of side by side.
    pub sequential: bool,
}

/// One scenario's report.
#[derive(Debug, Serialize)]
pub struct ScenarioReport {
    /// The scenario.
    pub scenario: Scenario,
    /// Pool capacity, requests/s.
    pub capacity_per_s: f64,
    /// One per implementation.
    pub results: Vec<RunResult>,
    /// The CDF plot.
    pub svg: String,
}

/// The `scenarios` report.
#[derive(Debug, Serialize)]
pub struct ScenariosReport {
    /// Run facts.
    pub run: RunInfo,
    /// Options.
    pub options: Options,
    /// How inversions are judged.
    pub inversion_rule: String,
    /// Per scenario.
    pub scenarios: Vec<ScenarioReport>,
    /// The `token_fairness` scenario (its own shape: four implementations on flowgate-sim), when
    /// it ran.
    pub token_fairness: Option<TokenFairnessReport>,
    /// The `quota_isolation` scenario (its own shape: flowgate with and without the flooding
    /// workload, on flowgate-sim), when it ran.
    pub quota_isolation: Option<QuotaIsolationReport>,
}

/// Run the `scenarios` subcommand.
pub fn run(opts: &Options, out_dir: &Path) -> std::io::Result<ScenariosReport> {
    let kinds = [Kind::Flowgate(opts.shards), Kind::Seed, Kind::Fifo];
    let mut reports = Vec::new();
    std::fs::create_dir_all(out_dir)?;
    for sc in all(opts) {
        if opts.only.as_deref().is_some_and(|o| o != sc.name) {
            continue;
        }
        let runs = if opts.sequential { kinds.len() } else { 1 } as f64;
        let bar = report::timed_bar(
            &format!("scenario {}", sc.name),
            Duration::from_secs_f64((sc.duration_s + 0.5) * runs),
        );
        let stop = AtomicBool::new(false);
        // Side by side (quick mode: the load is light, a few hundred requests/s, each run on its own
        // driver thread with the same arrival schedule) or one after another.
        let groups: Vec<Vec<Kind>> =
            if opts.sequential { kinds.iter().map(|&k| vec![k]).collect() } else { vec![kinds.to_vec()] };
        let t0 = Instant::now();
        let mut datas: Vec<RunData> = Vec::new();
        for group in groups {
            datas.extend(std::thread::scope(|s| {
                let (sc, stop) = (&sc, &stop);
                let handles: Vec<_> = group.iter().map(|&k| s.spawn(move || run_one(sc, k, stop))).collect();
                while !handles.iter().all(|h| h.is_finished()) {
                    std::thread::sleep(Duration::from_millis(50));
                    bar.set_position(t0.elapsed().as_millis() as u64);
                }
                handles.into_iter().map(|h| h.join().expect("scenario run")).collect::<Vec<_>>()
            }));
        }
        bar.finish_and_clear();
        let results: Vec<RunResult> = datas.iter().map(|d| analyse(&sc, d)).collect();
        let svg = out_dir.join(format!("scenario-{}.svg", sc.name));
        let panels: Vec<(String, Vec<CdfLine>)> = results
            .iter()
            .map(|r| {
                let lines = r
                    .per_criticality
                    .iter()
                    .map(|c| CdfLine {
                        label: c.label.clone(),
                        criticality: c.criticality,
                        waits_ns: c.waits_ns.clone(),
                    })
                    .collect();
                (r.implementation.clone(), lines)
            })
            .collect();
        plot::cdf_panels(&svg, &format!("{}: wait CDF per criticality", sc.name), &panels)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let rep = ScenarioReport {
            capacity_per_s: sc.capacity_per_s(),
            scenario: sc,
            results,
            svg: svg.display().to_string(),
        };
        print!("{}", render(&rep));
        reports.push(rep);
    }
    let token_fairness = match opts.only.as_deref() {
        None | Some(token_fairness::NAME) => Some(token_fairness::run_report(opts)?),
        Some(_) => None,
    };
    let quota_isolation = match opts.only.as_deref() {
        None | Some(quota_isolation::NAME) => Some(quota_isolation::run_report(opts)?),
        Some(_) => None,
    };
    let report = ScenariosReport {
        run: RunInfo::now(opts.quick),
        options: opts.clone(),
        inversion_rule: format!(
            "at each dispatch, some request submitted at least {} ms earlier and still pending 0.2 ms later scored more than {INVERSION_EPS} (severe: {SEVERE_EPS}) above the dispatched one by the seed formula with exact sliding-window rates",
            INVERSION_GRACE_NS as f64 / 1e6
        ),
        scenarios: reports,
        token_fairness,
        quota_isolation,
    };
    report::write_json(out_dir, "scenarios", &report)?;
    Ok(report)
}

/// The stdout summary of one scenario.
pub fn render(rep: &ScenarioReport) -> String {
    let sc = &rep.scenario;
    let mut s = format!(
        "\n== scenario {}: {} ==\n   pool {} slots × {} ms ({:.0} req/s), wait_cap {} s, {} s of arrivals\n",
        sc.name, sc.description, sc.slots, sc.service_ms, rep.capacity_per_s, sc.wait_cap_s, sc.duration_s
    );
    let mut t = Table::new(&[
        "implementation",
        "class",
        "submitted",
        "dispatched",
        "shed",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
    ]);
    for r in &rep.results {
        let classes =
            if sc.workloads.len() > r.per_criticality.len() { &r.per_workload } else { &r.per_criticality };
        for c in classes {
            let shed: u64 = c.shed.iter().filter(|(k, _)| *k != "unfinished").map(|(_, v)| v).sum();
            let label = if std::ptr::eq(classes, &r.per_workload) {
                format!("{} (crit {})", c.label, c.criticality)
            } else {
                c.label.clone()
            };
            t.row(vec![
                r.implementation.clone(),
                label,
                c.submitted.to_string(),
                c.dispatched.to_string(),
                shed.to_string(),
                ms(c.wait.p50_ms),
                ms(c.wait.p95_ms),
                ms(c.wait.p99_ms),
                ms(c.wait.max_ms),
            ]);
        }
    }
    s.push_str(&t.render());
    let mut t =
        Table::new(&["implementation", "inversions", "severe", "jain", "max depth", "unfinished", "checks"]);
    for r in &rep.results {
        let jain = r.fairness.iter().map(|f| format!("{:.3}", f.jain)).collect::<Vec<_>>().join(",");
        let checks = r
            .checks
            .iter()
            .map(|c| format!("{} {}: {}", if c.pass { "PASS" } else { "MISS" }, c.name, c.value))
            .collect::<Vec<_>>()
            .join("; ");
        t.row(vec![
            r.implementation.clone(),
            format!("{}/{}", r.inversions, r.dispatches),
            r.severe_inversions.to_string(),
            if jain.is_empty() { "-".into() } else { jain },
            r.max_queue_depth.to_string(),
            r.unfinished.to_string(),
            checks,
        ]);
    }
    s.push_str(&t.render());
    s.push_str(&format!("   plot: {}\n", rep.svg));
    s
}
