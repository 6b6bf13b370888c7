//! The `token_fairness` report: weighted tokens served per workload, the heavy/light ratio and
//! Jain's index on weighted tokens for every implementation, with the targets checked
//! (reported, never enforced).

use super::token_driver::{TokenOutcome, TokenRunData};
use super::token_fairness::{TokenScenario, Variant};
use super::Check;
use crate::report::{ms, Table};
use crate::stats::{jain, Summary};
use flowgate_engine::config::ScoringConfig;
use serde::Serialize;

/// VTC's target: neither workload is served more than this many times the other's weighted tokens.
pub const TARGET_VTC_RATIO: f64 = 2.0;
/// VTC's target Jain's index on weighted tokens.
pub const TARGET_VTC_JAIN: f64 = 0.95;
/// Request-rate fairness: "about 10x" read as heavy/light within this range.
pub const EXPECTED_REQUEST_RATE_RATIO: (f64, f64) = (5.0, 20.0);

/// One workload's figures in one run.
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadTokens {
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
    /// Still queued when arrivals stopped (cancelled).
    pub cancelled: u64,
    /// Dispatched but not answered properly by the sim (must be 0).
    pub failed: u64,
    /// Responses that ended in the measured window.
    pub served_in_window: u64,
    /// Their prompt tokens (the sim's usage).
    pub prompt_tokens: u64,
    /// Their completion tokens (the sim's usage).
    pub completion_tokens: u64,
    /// Their weighted tokens (input weight 1, output weight 2).
    pub weighted_tokens: u64,
    /// `weighted_tokens` / the window's length.
    pub weighted_tokens_per_s: f64,
    /// Submit → dispatch of the requests served in the window.
    pub wait: Summary,
    /// Prompt tokens the sim counted for this workload (whole run; a cross-check).
    pub sim_prompt_tokens: u64,
    /// Completion tokens the sim counted for this workload (whole run).
    pub sim_completion_tokens: u64,
}

/// One implementation's result.
#[derive(Clone, Debug, Serialize)]
pub struct TokenResult {
    /// Table name.
    pub implementation: String,
    /// Which variant.
    pub variant: Variant,
    /// `scoring.fairness` (`-` for the FIFO).
    pub fairness: String,
    /// `scoring.rate_unit` (`-` for the FIFO).
    pub rate_unit: String,
    /// `heavy`, then `light`.
    pub per_workload: Vec<WorkloadTokens>,
    /// Weighted tokens of heavy / of light, in the window.
    pub heavy_to_light: f64,
    /// Jain's index of the workloads' weighted tokens in the window (both backlogged at equal
    /// criticality: the fair share is an equal split).
    pub jain: f64,
    /// Records (one per request).
    pub records: u64,
    /// Submissions counted by the clients (equals `records`).
    pub submitted: u64,
    /// Requests the sim received.
    pub sim_requests: u64,
    /// Requests the sim completed.
    pub sim_completed: u64,
    /// Most requests the sim held at once (≤ the slots: the queue stays in front of it).
    pub sim_max_in_system: u64,
    /// Failed requests (a broken harness; must be 0).
    pub failed: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// The targets for this implementation.
    pub checks: Vec<Check>,
}

/// The `token_fairness` report.
#[derive(Clone, Debug, Serialize)]
pub struct TokenFairnessReport {
    /// The scenario.
    pub scenario: TokenScenario,
    /// How it is measured.
    pub method: String,
    /// One per implementation.
    pub results: Vec<TokenResult>,
}

fn workload_tokens(sc: &TokenScenario, d: &TokenRunData, i: usize) -> WorkloadTokens {
    let name = sc.workloads[i].name.clone();
    let (from, to) = ((sc.warmup_s * 1e9) as u64, (sc.duration_s * 1e9) as u64);
    let window_s = (sc.duration_s - sc.warmup_s).max(1e-9);
    let sim = d.sim.per_workload.get(&name).cloned().unwrap_or_default();
    let mut w = WorkloadTokens {
        workload: name,
        submitted: 0,
        served: 0,
        refused: 0,
        not_queued: 0,
        cancelled: 0,
        failed: 0,
        served_in_window: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        weighted_tokens: 0,
        weighted_tokens_per_s: 0.0,
        wait: Summary::default(),
        sim_prompt_tokens: sim.prompt_tokens,
        sim_completion_tokens: sim.completion_tokens,
    };
    let mut waits = Vec::new();
    for r in d.records.iter().filter(|r| r.workload == i) {
        w.submitted += 1;
        match &r.outcome {
            TokenOutcome::Served { usage, weighted } => {
                w.served += 1;
                if r.end_ns >= from && r.end_ns < to {
                    w.served_in_window += 1;
                    w.prompt_tokens += usage.prompt_tokens;
                    w.completion_tokens += usage.completion_tokens;
                    w.weighted_tokens += weighted;
                    waits.push(r.dispatch_ns.unwrap_or(r.submit_ns) - r.submit_ns);
                }
            }
            TokenOutcome::Refused(_) => w.refused += 1,
            TokenOutcome::NotQueued(_) => w.not_queued += 1,
            TokenOutcome::Cancelled => w.cancelled += 1,
            TokenOutcome::Failed(_) => w.failed += 1,
        }
    }
    w.weighted_tokens_per_s = w.weighted_tokens as f64 / window_s;
    w.wait = Summary::of_ns(&mut waits);
    w
}

fn checks(variant: Variant, ratio: f64, jain: f64) -> Vec<Check> {
    let spread = if ratio > 0.0 { ratio.max(1.0 / ratio) } else { f64::INFINITY };
    match variant {
        Variant::Vtc => vec![
            Check {
                name: format!("weighted tokens within {TARGET_VTC_RATIO}x between the workloads"),
                value: format!("heavy/light {ratio:.2}x"),
                pass: spread <= TARGET_VTC_RATIO,
            },
            Check {
                name: format!("Jain's index on weighted tokens ≥ {TARGET_VTC_JAIN}"),
                value: format!("{jain:.3}"),
                pass: jain >= TARGET_VTC_JAIN,
            },
        ],
        Variant::RateRequests => {
            let (lo, hi) = EXPECTED_REQUEST_RATE_RATIO;
            vec![Check {
                name: format!("request-rate fairness: heavy/light about 10x ({lo}-{hi}x)"),
                value: format!("{ratio:.2}x"),
                pass: (lo..=hi).contains(&ratio),
            }]
        }
        Variant::RateTokens | Variant::Fifo => Vec::new(),
    }
}

/// Analyse the runs of `sc`.
pub fn analyse(sc: &TokenScenario, datas: &[TokenRunData]) -> TokenFairnessReport {
    let results = datas
        .iter()
        .map(|d| {
            let per_workload: Vec<WorkloadTokens> =
                (0..sc.workloads.len()).map(|i| workload_tokens(sc, d, i)).collect();
            let tokens: Vec<f64> = per_workload.iter().map(|w| w.weighted_tokens as f64).collect();
            let heavy_to_light = if tokens[1] > 0.0 { tokens[0] / tokens[1] } else { 0.0 };
            let jain = jain(&tokens);
            let scoring = d.variant.scoring(sc);
            let fifo = d.variant == Variant::Fifo;
            let first_error = d.records.iter().find_map(|r| match &r.outcome {
                TokenOutcome::Failed(e) => Some(e.clone()),
                _ => None,
            });
            TokenResult {
                implementation: d.variant.label().into(),
                variant: d.variant,
                fairness: if fifo { "-".into() } else { scoring.fairness.name().into() },
                rate_unit: if fifo { "-".into() } else { scoring.rate_unit.name().into() },
                failed: per_workload.iter().map(|w| w.failed).sum(),
                per_workload,
                heavy_to_light,
                jain,
                records: d.records.len() as u64,
                submitted: d.submitted,
                sim_requests: d.sim.requests_total,
                sim_completed: d.sim.completed_total,
                sim_max_in_system: d.sim.max_in_system_seen,
                first_error,
                checks: checks(d.variant, heavy_to_light, jain),
            }
        })
        .collect();
    let s = ScoringConfig::default();
    let method = format!(
        "real flowgate-sim servers in process, one per implementation, fresh each run (speed {}, prefill {} us/token, decode step {} ms, max_num_seqs {} = slots); \
         closed-loop clients; service time is the sim's continuous batching; usage from the sim's response, charged to flowgate's permit before release; \
         weighted tokens = {}·prompt + {}·completion, counted for responses ending in [{:.2} s, {:.2} s); wait_cap = rate_window = {} s; \
         rate/tokens: rate_cap {} weighted tokens/s (the pool's estimated throughput); vtc: vtc_cap {} tokens; {} shards; {}",
        sc.sim.speed,
        sc.sim.prefill_us_per_token,
        sc.sim.decode_step_ms,
        sc.sim.max_num_seqs,
        s.input_token_weight,
        s.output_token_weight,
        sc.warmup_s,
        sc.duration_s,
        sc.wait_cap_s,
        sc.token_rate_cap_per_s,
        sc.vtc_cap_tokens,
        sc.shards,
        if sc.sequential { "implementations one after another" } else { "implementations side by side" }
    );
    TokenFairnessReport { scenario: sc.clone(), method, results }
}

/// The stdout summary.
pub fn render(rep: &TokenFairnessReport) -> String {
    let sc = &rep.scenario;
    let mut s = format!("\n== scenario {}: {} ==\n", sc.name, sc.description);
    for w in &sc.workloads {
        s.push_str(&format!(
            "   {}: {} prompt + {} output tokens = {} weighted per request, ~{} ms at the sim\n",
            w.name,
            w.prompt_tokens(),
            w.max_tokens,
            w.weighted_cost(),
            ms(sc.sim.service_s(w) * 1e3)
        ));
    }
    let mut t = Table::new(&[
        "implementation",
        "workload",
        "served",
        "prompt tok",
        "output tok",
        "weighted tok",
        "wtok/s",
        "wait p50 ms",
        "wait p99 ms",
    ]);
    for r in &rep.results {
        for w in &r.per_workload {
            t.row(vec![
                r.implementation.clone(),
                w.workload.clone(),
                w.served_in_window.to_string(),
                w.prompt_tokens.to_string(),
                w.completion_tokens.to_string(),
                w.weighted_tokens.to_string(),
                format!("{:.0}", w.weighted_tokens_per_s),
                ms(w.wait.p50_ms),
                ms(w.wait.p99_ms),
            ]);
        }
    }
    s.push_str(&t.render());
    let mut t = Table::new(&["implementation", "heavy/light", "jain", "failed", "checks"]);
    for r in &rep.results {
        let checks = r
            .checks
            .iter()
            .map(|c| format!("{} {}: {}", if c.pass { "PASS" } else { "MISS" }, c.name, c.value))
            .collect::<Vec<_>>()
            .join("; ");
        t.row(vec![
            r.implementation.clone(),
            format!("{:.2}x", r.heavy_to_light),
            format!("{:.3}", r.jain),
            r.failed.to_string(),
            if checks.is_empty() { "-".into() } else { checks },
        ]);
    }
    s.push_str(&t.render());
    s.push_str(&format!("   method: {}\n", rep.method));
    s
}
