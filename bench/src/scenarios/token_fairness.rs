//! The `token_fairness` scenario (issue #12, item 7): two backlogged workloads of equal
//! criticality, `heavy` with ten times the prompt and the output of `light`, served by real
//! `flowgate-sim` model servers, on four implementations: flowgate with the request-rate penalty
//! (`fairness: rate`, `rate_unit: requests`, the seed's rule), with the token-rate penalty
//! (`rate_unit: tokens`), with VTC (`fairness: vtc`), and the FIFO.
//!
//! **Service time is the sim's.** Every implementation gets its own in-process `flowgate-sim`
//! (`flowgate_sim::Sim::start`) with `max_num_seqs` = the pool's slots, so flowgate (or the FIFO)
//! holds the queue and the sim runs what it dispatches with continuous batching: a step lasts
//! `prefill_us_per_token` × the prompt tokens admitted in it plus one `decode_step_ms`, and
//! yields one token per running sequence. A request's usage is the `usage` of the sim's answer;
//! flowgate's permit is charged with it (`Permit::charge`) before it is dropped, which is what
//! moves the token rate and the VTC counter. Weighted tokens are `input_token_weight` (1) ×
//! prompt + `output_token_weight` (2) × completion.
//!
//! **Backlogged** means closed loop: each workload has twice the pool's slots in clients, each
//! resubmitting as soon as its previous request is answered, so both always have requests
//! queued. Arrivals stop at `duration`; what is still queued then is cancelled, what is running
//! finishes. Figures count the responses that ended between `warmup` and `duration`.
//!
//! Time is compressed as in the other scenarios (`wait_cap` = `rate_window` = the scenario's
//! wait cap), but never below [`MIN_WAIT_CAP_S`]: aging lets any request outrank the full
//! fairness penalty once it has waited `w_rate / w_wait · wait_cap` (half the cap), and with the
//! quick mode's 1.5 s that is barely two heavy service times, so aging, not the fairness rule,
//! would decide who is served (the real 60 s cap is many requests long too). The token
//! `rate_cap` is the pool's estimated weighted-token throughput (so one workload taking the whole
//! pool pays the full penalty); `vtc_cap` is the engine's default compressed by the same factor
//! as the wait cap (`wait_cap / 60 s`): the wait term grows that much faster, so the same lag
//! must weigh that much more to balance the same wait.
//!
//! This file holds the scenario and the implementations compared; `token_driver.rs` runs one
//! implementation, `token_report.rs` analyses and prints the runs, `sim_client.rs` talks to the
//! sim.

use super::token_driver::{run_one, TokenRunData};
use super::token_report::{analyse, render, TokenFairnessReport};
use super::Options;
use crate::baseline::Kind;
use crate::report;
use flowgate_engine::config::{Fairness, RateUnit, ScoringConfig, DEFAULT_VTC_CAP_TOKENS};
use serde::Serialize;
use std::time::{Duration, Instant};

/// The scenario's name (what `--only` selects).
pub const NAME: &str = "token_fairness";

/// Shortest compressed `wait_cap` (= `rate_window`) the scenario runs with, seconds: about twelve
/// heavy service times (see the module docs).
pub const MIN_WAIT_CAP_S: f64 = 4.0;

/// One backlogged workload: its clients and the size of every request it sends.
#[derive(Clone, Debug, Serialize)]
pub struct TokenWorkload {
    /// Workload id.
    pub name: String,
    /// Criticality (both workloads share it).
    pub criticality: u8,
    /// Closed-loop clients.
    pub clients: usize,
    /// Prompt length in bytes (the sim counts `ceil(bytes / 4)` tokens).
    pub prompt_bytes: usize,
    /// `max_tokens` (the sim generates exactly this many).
    pub max_tokens: u32,
}

impl TokenWorkload {
    /// Prompt tokens per request, as the sim counts them.
    pub fn prompt_tokens(&self) -> u64 {
        (self.prompt_bytes as u64).div_ceil(4).max(1)
    }

    /// Weighted tokens per request at the default prices (1 per prompt, 2 per output token).
    pub fn weighted_cost(&self) -> u64 {
        let s = ScoringConfig::default();
        (self.prompt_tokens() as f64 * s.input_token_weight
            + f64::from(self.max_tokens) * s.output_token_weight)
            .round() as u64
    }
}

/// The sim's cost model for this scenario (every implementation's sim is the same).
#[derive(Clone, Debug, Serialize)]
pub struct SimModel {
    /// `--speed` (time divisor).
    pub speed: f64,
    /// `--prefill-us-per-token`.
    pub prefill_us_per_token: f64,
    /// `--decode-step-ms`.
    pub decode_step_ms: f64,
    /// `--max-num-seqs` (= the pool's slots).
    pub max_num_seqs: usize,
}

impl SimModel {
    /// Seconds one request of `w` holds a seat: its prefill plus one decode step per output token
    /// (ignoring the prefills of others sharing its steps).
    pub fn service_s(&self, w: &TokenWorkload) -> f64 {
        (w.prompt_tokens() as f64 * self.prefill_us_per_token / 1e6
            + f64::from(w.max_tokens) * self.decode_step_ms / 1e3)
            / self.speed
    }
}

/// The `token_fairness` scenario.
#[derive(Clone, Debug, Serialize)]
pub struct TokenScenario {
    /// [`NAME`].
    pub name: String,
    /// What it shows.
    pub description: String,
    /// `heavy` then `light`.
    pub workloads: Vec<TokenWorkload>,
    /// Pool slots (flowgate's `max_inflight`, the FIFO's slots, the sim's `max_num_seqs`).
    pub slots: u32,
    /// Shards of the flowgate runs.
    pub shards: usize,
    /// Seconds of arrivals.
    pub duration_s: f64,
    /// Responses ending before this are not counted, seconds.
    pub warmup_s: f64,
    /// Scoring `wait_cap` (= `rate_window`), seconds: the option's, at least [`MIN_WAIT_CAP_S`].
    pub wait_cap_s: f64,
    /// The sims.
    pub sim: SimModel,
    /// `rate_cap_per_s` of the `rate_unit: tokens` run, weighted tokens/s.
    pub token_rate_cap_per_s: f64,
    /// `vtc_cap_tokens` of the VTC run (the default, compressed like the wait cap).
    pub vtc_cap_tokens: f64,
    /// Run the implementations one after another instead of side by side.
    pub sequential: bool,
}

/// The implementations compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// flowgate, `fairness: rate`, `rate_unit: requests` (the seed's rule).
    RateRequests,
    /// flowgate, `fairness: rate`, `rate_unit: tokens`.
    RateTokens,
    /// flowgate, `fairness: vtc`.
    Vtc,
    /// The FIFO baseline.
    Fifo,
}

/// Every variant, in report order.
pub const VARIANTS: [Variant; 4] = [Variant::RateRequests, Variant::RateTokens, Variant::Vtc, Variant::Fifo];

impl Variant {
    /// Short name for tables.
    pub fn label(self) -> &'static str {
        match self {
            Variant::RateRequests => "flowgate rate/requests",
            Variant::RateTokens => "flowgate rate/tokens",
            Variant::Vtc => "flowgate vtc",
            Variant::Fifo => "fifo",
        }
    }

    /// Which queue implements it.
    pub fn kind(self, shards: usize) -> Kind {
        match self {
            Variant::Fifo => Kind::Fifo,
            _ => Kind::Flowgate(shards),
        }
    }

    /// Its scoring configuration in `sc` (compressed time; the FIFO ignores it).
    pub fn scoring(self, sc: &TokenScenario) -> ScoringConfig {
        let cap = Duration::from_secs_f64(sc.wait_cap_s);
        let mut s = ScoringConfig {
            wait_cap: cap,
            rate_window: cap,
            rescore_interval: (cap / 600).max(Duration::from_millis(1)),
            vtc_cap_tokens: sc.vtc_cap_tokens,
            ..ScoringConfig::default()
        };
        match self {
            Variant::RateTokens => {
                s.rate_unit = RateUnit::Tokens;
                s.rate_cap_per_s = sc.token_rate_cap_per_s;
            }
            Variant::Vtc => s.fairness = Fairness::Vtc,
            Variant::RateRequests | Variant::Fifo => {}
        }
        s
    }
}

impl TokenScenario {
    /// The scenario for `opts`: `opts.slots`, `opts.shards`, `opts.duration_s` and
    /// `opts.wait_cap_s` (at least [`MIN_WAIT_CAP_S`]) apply; `service_ms` does not (the sim's
    /// cost model sets service times).
    pub fn new(opts: &Options) -> Self {
        let clients = 2 * opts.slots.max(1) as usize;
        let workloads = vec![
            TokenWorkload {
                name: "heavy".into(),
                criticality: 3,
                clients,
                prompt_bytes: 1600,
                max_tokens: 80,
            },
            TokenWorkload { name: "light".into(), criticality: 3, clients, prompt_bytes: 160, max_tokens: 8 },
        ];
        let sim = SimModel {
            speed: 2.5,
            prefill_us_per_token: 50.0,
            decode_step_ms: 10.0,
            max_num_seqs: opts.slots.max(1) as usize,
        };
        let heavy = &workloads[0];
        let wait_cap_s = opts.wait_cap_s.max(MIN_WAIT_CAP_S);
        let token_rate_cap_per_s =
            (sim.max_num_seqs as f64 * heavy.weighted_cost() as f64 / sim.service_s(heavy)).round();
        TokenScenario {
            name: NAME.into(),
            description: format!(
                "two backlogged workloads of equal criticality ({clients} closed-loop clients each) on flowgate-sim; heavy sends 10x the prompt and output of light: weighted tokens served per workload"
            ),
            workloads,
            slots: opts.slots.max(1),
            shards: opts.shards,
            duration_s: opts.duration_s,
            warmup_s: (opts.duration_s / 4.0).min(2.0),
            wait_cap_s,
            sim,
            token_rate_cap_per_s,
            vtc_cap_tokens: (DEFAULT_VTC_CAP_TOKENS * wait_cap_s
                / ScoringConfig::default().wait_cap.as_secs_f64())
            .round()
            .max(1.0),
            sequential: opts.sequential,
        }
    }
}

/// Run every variant of the scenario (side by side, or one after another when `sequential`).
pub fn run(sc: &TokenScenario) -> std::io::Result<Vec<TokenRunData>> {
    let groups: Vec<Vec<Variant>> =
        if sc.sequential { VARIANTS.iter().map(|&v| vec![v]).collect() } else { vec![VARIANTS.to_vec()] };
    let per_run = sc.duration_s + 1.0;
    let bar = report::timed_bar(
        &format!("scenario {}", sc.name),
        Duration::from_secs_f64(per_run * groups.len() as f64),
    );
    let t0 = Instant::now();
    let mut datas = Vec::new();
    for group in groups {
        let runs = std::thread::scope(|s| {
            let handles: Vec<_> = group.iter().map(|&v| s.spawn(move || run_one(sc, v))).collect();
            while !handles.iter().all(|h| h.is_finished()) {
                std::thread::sleep(Duration::from_millis(50));
                bar.set_position(t0.elapsed().as_millis() as u64);
            }
            handles.into_iter().map(|h| h.join().expect("token_fairness run")).collect::<Vec<_>>()
        });
        for r in runs {
            datas.push(r?);
        }
    }
    bar.finish_and_clear();
    Ok(datas)
}

/// Run the scenario for `opts`, print its tables and return its report.
pub fn run_report(opts: &Options) -> std::io::Result<TokenFairnessReport> {
    let sc = TokenScenario::new(opts);
    let datas = run(&sc)?;
    let report = analyse(&sc, &datas);
    print!("{}", render(&report));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::{TokenOutcome, TokenRunData};

    fn short() -> TokenScenario {
        let opts = Options {
            quick: true,
            slots: 2,
            service_ms: 20.0,
            shards: 2,
            duration_s: 0.5,
            wait_cap_s: 0.5,
            only: Some(NAME.into()),
            sequential: false,
        };
        let mut sc = TokenScenario::new(&opts);
        sc.sim.speed = 10.0;
        sc
    }

    /// Prompt and completion tokens of the served requests of workload `w`, whole run.
    fn served_tokens(d: &TokenRunData, w: usize) -> (u64, u64) {
        d.records
            .iter()
            .filter(|r| r.workload == w)
            .filter_map(|r| match &r.outcome {
                TokenOutcome::Served { usage, .. } => Some((usage.prompt_tokens, usage.completion_tokens)),
                _ => None,
            })
            .fold((0, 0), |(p, c), (dp, dc)| (p + dp, c + dc))
    }

    #[test]
    fn a_short_run_resolves_every_request_once_on_all_four_implementations() {
        let sc = short();
        assert_eq!(sc.workloads[0].weighted_cost(), 10 * sc.workloads[1].weighted_cost());
        let datas = run(&sc).unwrap();
        assert_eq!(datas.iter().map(|d| d.variant).collect::<Vec<_>>(), VARIANTS);
        for d in &datas {
            // One record per submission, each with exactly one outcome (an enum value).
            assert_eq!(d.records.len() as u64, d.submitted, "{:?}", d.variant);
            let failed: Vec<_> =
                d.records.iter().filter(|r| matches!(r.outcome, TokenOutcome::Failed(_))).collect();
            assert!(failed.is_empty(), "{:?}: {failed:?}", d.variant);
            // Every dispatched request reached the sim and was completed there, with the usage
            // the sim counted.
            let served =
                d.records.iter().filter(|r| matches!(r.outcome, TokenOutcome::Served { .. })).count() as u64;
            assert!(served > 0, "{:?}", d.variant);
            assert_eq!(d.sim.completed_total, served, "{:?}", d.variant);
            assert_eq!(d.sim.requests_total, served, "{:?}", d.variant);
            assert!(d.sim.max_in_system_seen <= u64::from(sc.slots), "{:?}: the sim never queues", d.variant);
            for (i, w) in sc.workloads.iter().enumerate() {
                let sim = d.sim.per_workload.get(&w.name).cloned().unwrap_or_default();
                assert_eq!(
                    served_tokens(d, i),
                    (sim.prompt_tokens, sim.completion_tokens),
                    "{:?}",
                    d.variant
                );
            }
            // Weighted = 1·prompt + 2·completion, whether the permit or the bench priced it.
            for r in &d.records {
                if let TokenOutcome::Served { usage, weighted } = &r.outcome {
                    assert_eq!(*weighted, usage.prompt_tokens + 2 * usage.completion_tokens);
                }
            }
        }
        let report = super::super::token_report::analyse(&sc, &datas);
        let names: Vec<&str> = report.results.iter().map(|r| r.implementation.as_str()).collect();
        assert_eq!(names, ["flowgate rate/requests", "flowgate rate/tokens", "flowgate vtc", "fifo"]);
        assert!(report.results.iter().all(|r| r.per_workload.len() == 2 && r.failed == 0));
        assert!(super::super::token_report::render(&report).contains("heavy/light"));
    }
}
