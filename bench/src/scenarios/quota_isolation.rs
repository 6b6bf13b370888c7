//! The `quota_isolation` scenario (issue #12, item 7): a workload `pinned` floods the pool (many
//! closed-loop clients, always backlogged) and is held at its quota (`workloads.quotas`,
//! `on_exceed: queue`, `max_inflight` a quarter of the slots), beside three well-behaved
//! workloads with moderate open-loop (Poisson) load, all at the same criticality. It runs twice
//! on flowgate in the same invocation, one after the other: (a) with `pinned` present and at its
//! quota, (b) without `pinned` at all, with the same other workloads and the same seeds (so the
//! same arrival schedules). The figure of merit is how much the others' wait (submission to
//! dispatch) grows because of `pinned`: the target is their p99 within 10% of run (b).
//! A third run, (c) `reserved`, is a reference: no `pinned` and a pool short of the slots its
//! quota grants it, what perfect isolation behind a fixed reservation would give the others.
//!
//! **What the quota does.** Over its quota, a `queue` workload's requests wait in the heap under
//! a *parked* key that sorts below every other request, so they hold nobody up; one is unparked
//! when a permit of the workload is released. So `pinned` takes at most `max_inflight` slots and
//! the others queue only behind each other (and behind the slots `pinned` holds — isolation
//! cannot give them the capacity the quota grants `pinned`; the others' load is sized to leave
//! headroom in the rest).
//!
//! **Service time is the sim's**, as in `token_fairness`: every run gets a fresh in-process
//! `flowgate-sim` with `max_num_seqs` = the pool's slots, serving what flowgate dispatches with
//! continuous batching. Every request has the same size.
//!
//! **Bounded runs.** Arrivals stop at `duration`; the well-behaved requests still queued then may
//! drain for at most `drain`, `pinned` keeps flooding until they are all answered (or the drain
//! ends), then its queued requests are cancelled. Waits count the well-behaved requests
//! *submitted* in `[warmup, duration)`; throughput counts responses *ending* in that window.
//! `pinned`'s in-flight peak is counted from the permits its clients hold (raised when a
//! decision with a permit arrives, lowered before the permit is dropped: at most what the engine
//! counts).
//!
//! This file holds the scenario and [`run_report`]; `quota_driver.rs` runs one of the two runs,
//! `quota_report.rs` analyses and prints them.

use super::quota_driver::{run_one, QuotaRunData};
use super::quota_report::{analyse, render, QuotaIsolationReport};
use super::token_fairness::SimModel;
use super::Options;
use crate::report;
use flowgate_engine::config::ScoringConfig;
use flowgate_engine::quota_rule::{OnExceed, Quota};
use serde::Serialize;
use std::time::{Duration, Instant};

/// The scenario's name (what `--only` selects).
pub const NAME: &str = "quota_isolation";

/// Seconds of arrivals in quick mode (at most; the option's `duration_s` when shorter).
pub const QUICK_DURATION_S: f64 = 2.0;

/// Share of the pool's capacity each well-behaved workload offers.
pub const OTHER_LOAD_SHARE: f64 = 0.15;

/// How a workload's requests arrive.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrivals {
    /// This many clients, each resubmitting as soon as its previous request is answered.
    ClosedLoop {
        /// Clients.
        clients: usize,
    },
    /// Poisson arrivals at this rate, from this seed.
    Poisson {
        /// Requests/s.
        rate_per_s: f64,
        /// Seed of the schedule (the same in both runs).
        seed: u64,
    },
}

/// One workload of the scenario.
#[derive(Clone, Debug, Serialize)]
pub struct QuotaWorkload {
    /// Workload id.
    pub name: String,
    /// Criticality (all share it).
    pub criticality: u8,
    /// Its load.
    pub arrivals: Arrivals,
}

/// Which run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Run {
    /// `pinned` floods, held at its quota.
    WithPinned,
    /// `pinned` is absent.
    WithoutPinned,
    /// A reference beyond the two runs: `pinned` absent and the pool short of the
    /// `max_inflight` slots the quota grants it (perfect isolation behind a fixed reservation).
    Reserved,
    /// `pinned` uses its quota without a backlog: `max_inflight` closed-loop clients, so it
    /// holds the slots the quota grants it and never has a request over it. Against
    /// [`Run::WithPinned`] this isolates what the quota must hide: the flood's excess.
    WithinQuota,
}

/// Every run, in report order.
pub const RUNS: [Run; 4] = [Run::WithPinned, Run::WithoutPinned, Run::Reserved, Run::WithinQuota];

impl Run {
    /// Short name for tables.
    pub fn label(self) -> &'static str {
        match self {
            Run::WithPinned => "with pinned",
            Run::WithoutPinned => "without pinned",
            Run::Reserved => "reserved",
            Run::WithinQuota => "pinned within quota",
        }
    }
}

/// The `quota_isolation` scenario.
#[derive(Clone, Debug, Serialize)]
pub struct QuotaScenario {
    /// [`NAME`].
    pub name: String,
    /// What it shows.
    pub description: String,
    /// `pinned` first, then the well-behaved workloads.
    pub workloads: Vec<QuotaWorkload>,
    /// `pinned`'s `max_inflight`.
    pub pinned_max_inflight: u32,
    /// `pinned`'s `requests_per_minute` (`None`: not limited; a minute's bucket would not bind
    /// within a compressed run).
    pub pinned_requests_per_minute: Option<u32>,
    /// Prompt length of every request, bytes (the sim counts `ceil(bytes / 4)` tokens).
    pub prompt_bytes: usize,
    /// `max_tokens` of every request.
    pub max_tokens: u32,
    /// Pool slots (flowgate's `max_inflight`, the sim's `max_num_seqs`).
    pub slots: u32,
    /// Shards of the engine.
    pub shards: usize,
    /// Seconds of arrivals.
    pub duration_s: f64,
    /// Requests submitted (waits) or ending (throughput) before this are not counted, seconds.
    pub warmup_s: f64,
    /// Longest the well-behaved requests may drain after `duration`, seconds.
    pub drain_s: f64,
    /// Scoring `wait_cap` (= `rate_window`), seconds.
    pub wait_cap_s: f64,
    /// The sims.
    pub sim: SimModel,
    /// Seconds one request holds a seat at the sim (its prefill plus its decode steps).
    pub service_s: f64,
    /// Pool capacity, requests/s (`slots / service_s`).
    pub capacity_per_s: f64,
}

/// The name of the flooding workload.
pub const PINNED: &str = "pinned";

impl QuotaScenario {
    /// The scenario for `opts`: `opts.slots`, `opts.shards`, `opts.wait_cap_s` and
    /// `opts.duration_s` (at most [`QUICK_DURATION_S`] in quick mode) apply.
    pub fn new(opts: &Options) -> Self {
        let slots = opts.slots.max(1);
        let sim = SimModel {
            speed: 2.5,
            prefill_us_per_token: 50.0,
            decode_step_ms: 10.0,
            max_num_seqs: slots as usize,
        };
        let (prompt_bytes, max_tokens) = (160, 8);
        let service_s = ((prompt_bytes as f64 / 4.0).ceil() * sim.prefill_us_per_token / 1e6
            + f64::from(max_tokens) * sim.decode_step_ms / 1e3)
            / sim.speed;
        let capacity_per_s = f64::from(slots) / service_s;
        let clients = 4 * slots as usize;
        let rate_per_s = (OTHER_LOAD_SHARE * capacity_per_s).round().max(1.0);
        let mut workloads = vec![QuotaWorkload {
            name: PINNED.into(),
            criticality: 3,
            arrivals: Arrivals::ClosedLoop { clients },
        }];
        for (i, name) in ["steady-a", "steady-b", "steady-c"].into_iter().enumerate() {
            workloads.push(QuotaWorkload {
                name: name.into(),
                criticality: 3,
                arrivals: Arrivals::Poisson { rate_per_s, seed: 71 + i as u64 },
            });
        }
        let pinned_max_inflight = (slots / 4).max(1);
        let duration_s = if opts.quick { opts.duration_s.min(QUICK_DURATION_S) } else { opts.duration_s };
        QuotaScenario {
            name: NAME.into(),
            description: format!(
                "pinned floods ({clients} closed-loop clients) under a queue quota of max_inflight {pinned_max_inflight} of {slots} slots, beside 3 workloads of {rate_per_s:.0} req/s each (Poisson), all criticality 3; run with and without pinned, with pinned using its quota without a backlog, and a reserved-slots reference: the others' waits"
            ),
            workloads,
            pinned_max_inflight,
            pinned_requests_per_minute: None,
            prompt_bytes,
            max_tokens,
            slots,
            shards: opts.shards,
            duration_s,
            warmup_s: (duration_s / 4.0).min(2.0),
            drain_s: 1.0,
            wait_cap_s: opts.wait_cap_s,
            sim,
            service_s,
            capacity_per_s,
        }
    }

    /// The quota rules the engine runs with (`pinned`'s, in `queue` mode).
    pub fn quotas(&self) -> Vec<Quota> {
        vec![Quota {
            pattern: PINNED.into(),
            max_inflight: Some(self.pinned_max_inflight),
            requests_per_minute: self.pinned_requests_per_minute,
            tokens_per_minute: None,
            on_exceed: OnExceed::Queue,
        }]
    }

    /// The scoring configuration (compressed time, the default fairness rule).
    pub fn scoring(&self) -> ScoringConfig {
        let cap = Duration::from_secs_f64(self.wait_cap_s.max(0.01));
        ScoringConfig {
            wait_cap: cap,
            rate_window: cap,
            rescore_interval: (cap / 600).max(Duration::from_millis(1)),
            ..ScoringConfig::default()
        }
    }

    /// The pool's slots in `run` ([`Run::Reserved`]: less `pinned`'s `max_inflight`).
    pub fn slots_in(&self, run: Run) -> u32 {
        match run {
            Run::Reserved => self.slots.saturating_sub(self.pinned_max_inflight).max(1),
            _ => self.slots,
        }
    }

    /// Whether workload `i` takes part in `run` (`pinned`, index 0, only in [`Run::WithPinned`]
    /// and [`Run::WithinQuota`]).
    pub fn present(&self, run: Run, i: usize) -> bool {
        i != 0 || matches!(run, Run::WithPinned | Run::WithinQuota)
    }

    /// `pinned`'s closed-loop clients in `run`, of `clients` configured: its `max_inflight` in
    /// [`Run::WithinQuota`].
    pub fn pinned_clients(&self, run: Run, clients: usize) -> usize {
        match run {
            Run::WithinQuota => self.pinned_max_inflight as usize,
            _ => clients,
        }
    }
}

/// Run every run of `sc`, one after the other (so none takes CPU from another).
pub fn run(sc: &QuotaScenario) -> std::io::Result<Vec<QuotaRunData>> {
    let per_run = sc.duration_s + 0.5;
    let bar = report::timed_bar(
        &format!("scenario {}", sc.name),
        Duration::from_secs_f64(per_run * RUNS.len() as f64),
    );
    let t0 = Instant::now();
    let mut datas = Vec::new();
    for run in RUNS {
        let data = std::thread::scope(|s| {
            let h = s.spawn(move || run_one(sc, run));
            while !h.is_finished() {
                std::thread::sleep(Duration::from_millis(50));
                bar.set_position(t0.elapsed().as_millis() as u64);
            }
            h.join().expect("quota_isolation run")
        });
        datas.push(data?);
    }
    bar.finish_and_clear();
    Ok(datas)
}

/// Run the scenario for `opts`, print its tables and return its report.
pub fn run_report(opts: &Options) -> std::io::Result<QuotaIsolationReport> {
    let sc = QuotaScenario::new(opts);
    let datas = run(&sc)?;
    let report = analyse(&sc, &datas);
    print!("{}", render(&report));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::TokenOutcome;

    fn short() -> QuotaScenario {
        let opts = Options {
            quick: true,
            slots: 4,
            service_ms: 20.0,
            shards: 2,
            duration_s: 0.6,
            wait_cap_s: 0.5,
            only: Some(NAME.into()),
            sequential: false,
        };
        let mut sc = QuotaScenario::new(&opts);
        sc.warmup_s = 0.1;
        sc
    }

    #[test]
    fn both_runs_resolve_every_request_once_and_pinned_stays_at_its_quota() {
        let sc = short();
        assert_eq!(sc.pinned_max_inflight, 1);
        let datas = run(&sc).unwrap();
        assert_eq!(datas.iter().map(|d| d.run).collect::<Vec<_>>(), RUNS);
        for d in &datas {
            // One record per submission, each with exactly one outcome (an enum value).
            assert_eq!(d.records.len() as u64, d.submitted, "{:?}", d.run);
            let failed: Vec<_> =
                d.records.iter().filter(|r| matches!(r.outcome, TokenOutcome::Failed(_))).collect();
            assert!(failed.is_empty(), "{:?}: {failed:?}", d.run);
            let served =
                d.records.iter().filter(|r| matches!(r.outcome, TokenOutcome::Served { .. })).count() as u64;
            assert_eq!(d.sim.completed_total, served, "{:?}", d.run);
            assert!(d.sim.max_in_system_seen <= u64::from(sc.slots), "{:?}", d.run);
            assert!(d.pinned_peak_inflight <= u64::from(sc.pinned_max_inflight), "{:?}", d.run);
            for i in 0..sc.workloads.len() {
                let n = d.records.iter().filter(|r| r.workload == i).count();
                assert_eq!(n > 0, sc.present(d.run, i), "{:?}: workload {i}", d.run);
            }
        }
        assert!(datas[0].pinned_peak_inflight >= 1, "pinned was served");
        assert_eq!(datas[1].pinned_peak_inflight, 0);
        assert!(datas[2].sim.max_in_system_seen <= u64::from(sc.slots - sc.pinned_max_inflight));
        assert!(datas[3].pinned_peak_inflight >= 1, "pinned was served within its quota");
        let report = analyse(&sc, &datas);
        let runs: Vec<&str> = report.runs.iter().map(|r| r.run.label()).collect();
        assert_eq!(runs, ["with pinned", "without pinned", "reserved", "pinned within quota"]);
        assert_eq!(report.comparison.len(), sc.workloads.len() - 1);
        assert!(render(&report).contains("without pinned"));
    }
}
