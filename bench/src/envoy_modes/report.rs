//! The `envoy-modes` result: rounds, per-workload phases, the checks that the phases did what
//! they claim, and the table printed on stdout.

use super::client::RoundLoad;
use super::observe::Counters;
use super::stack::{METERED, PLAIN};
use super::PLAIN_MAX_MSGS_PER_REQUEST;
use flowgate::http::WorkloadJson;
use flowgate_bench::report::{RunInfo, Table};
use flowgate_bench::stats::Summary;
use flowgate_sim::SimStats;
use serde::Serialize;

/// One measured round of one workload.
#[derive(Debug, Serialize)]
pub struct Round {
    /// Its index (0-based; each index has one round of each workload).
    pub round: usize,
    /// `metered` or `plain`.
    pub workload: String,
    /// Requests completed.
    pub requests: u64,
    /// Its length, s.
    pub elapsed_s: f64,
    /// Requests / elapsed.
    pub req_per_s: f64,
    /// How the counters moved during it.
    pub counters: Counters,
}

impl Round {
    /// The readings of round `round` of `workload`.
    pub fn new(round: usize, workload: &str, load: &RoundLoad, counters: Counters) -> Self {
        Round {
            round,
            workload: workload.to_string(),
            requests: load.requests,
            elapsed_s: load.elapsed_s,
            req_per_s: load.requests as f64 / load.elapsed_s.max(f64::MIN_POSITIVE),
            counters,
        }
    }
}

/// One workload over all its measured rounds.
#[derive(Debug, Serialize)]
pub struct Phase {
    /// `metered` or `plain`.
    pub workload: String,
    /// Each round's requests/s, in order.
    pub round_req_per_s: Vec<f64>,
    /// Their median.
    pub median_req_per_s: f64,
    /// Requests completed.
    pub requests: u64,
    /// Request latency (sent → last byte of the stream), all its rounds.
    pub latency: Summary,
    /// Envoy's ext_proc messages sent per request.
    pub ext_proc_msgs_per_request: f64,
    /// flowgate's `flowgate_usage_reported_total` growth over its rounds.
    pub usage_reported: f64,
    /// flowgate's CPU per request, µs (10 ms ticks over its rounds).
    pub flowgate_cpu_us_per_request: f64,
    /// Envoy's CPU per request, µs.
    pub envoy_cpu_us_per_request: f64,
    /// The sim's CPU per request, µs.
    pub sim_cpu_us_per_request: f64,
    /// flowgate's write system calls per request (its answers are gathered per scheduler pass:
    /// well under one per request under load).
    pub flowgate_writes_per_request: f64,
}

impl Phase {
    /// CPU per request of flowgate, Envoy and the sim together, µs.
    pub fn stack_cpu_us_per_request(&self) -> f64 {
        self.flowgate_cpu_us_per_request + self.envoy_cpu_us_per_request + self.sim_cpu_us_per_request
    }
}

/// Whether each phase did what it claims (each `false` one breaks the run).
#[derive(Debug, Serialize)]
pub struct Checks {
    /// flowgate charged `metered` exactly the sim's prompt and completion tokens (> 0).
    pub metered_tokens_match_sim: bool,
    /// flowgate charged `plain` nothing, while the sim served it tokens.
    pub plain_not_charged: bool,
    /// `flowgate_usage_reported_total` grew by the metered requests, not at all in plain rounds;
    /// no estimates.
    pub usage_counted_for_metered_only: bool,
    /// Envoy sent plain requests at most [`PLAIN_MAX_MSGS_PER_REQUEST`] ext_proc messages (the
    /// override honoured) and metered ones more (their response bodies).
    pub override_honoured: bool,
    /// flowgate's (prompt, completion) tokens of `metered`, then the sim's.
    pub metered_tokens: [(u64, u64); 2],
    /// flowgate's (prompt, completion) tokens of `plain`, then the sim's.
    pub plain_tokens: [(u64, u64); 2],
    /// Metered requests sent (warm-up included), and the usage reported and estimated over the
    /// whole run.
    pub metered_sent: u64,
    /// `flowgate_usage_reported_total` growth over the run.
    pub usage_reported: f64,
    /// `flowgate_usage_estimated_total` growth over the run.
    pub usage_estimated: f64,
}

fn tokens_of_flowgate(ws: &[WorkloadJson], id: &str) -> (u64, u64) {
    ws.iter().find(|w| w.workload_id == id).map_or((0, 0), |w| (w.prompt_tokens, w.completion_tokens))
}

fn tokens_of_sim(sim: &SimStats, id: &str) -> (u64, u64) {
    sim.per_workload.get(id).map_or((0, 0), |w| (w.prompt_tokens, w.completion_tokens))
}

impl Checks {
    /// Judge a run.
    pub fn evaluate(
        phases: &[Phase],
        rounds: &[Round],
        totals: Counters,
        metered_sent: u64,
        workloads: &[WorkloadJson],
        sim: &SimStats,
    ) -> Checks {
        let metered_tokens = [tokens_of_flowgate(workloads, METERED), tokens_of_sim(sim, METERED)];
        let plain_tokens = [tokens_of_flowgate(workloads, PLAIN), tokens_of_sim(sim, PLAIN)];
        let msgs =
            |w: &str| phases.iter().find(|p| p.workload == w).map_or(0.0, |p| p.ext_proc_msgs_per_request);
        Checks {
            metered_tokens_match_sim: metered_tokens[0] == metered_tokens[1] && metered_tokens[0].1 > 0,
            plain_not_charged: plain_tokens[0] == (0, 0) && plain_tokens[1].1 > 0,
            usage_counted_for_metered_only: totals.usage_reported == metered_sent as f64
                && totals.usage_estimated == 0.0
                && rounds.iter().filter(|r| r.workload == PLAIN).all(|r| r.counters.usage_reported == 0.0),
            override_honoured: msgs(PLAIN) <= PLAIN_MAX_MSGS_PER_REQUEST
                && msgs(METERED) > PLAIN_MAX_MSGS_PER_REQUEST,
            metered_tokens,
            plain_tokens,
            metered_sent,
            usage_reported: totals.usage_reported,
            usage_estimated: totals.usage_estimated,
        }
    }

    /// The first failed check, described; `None` when all passed.
    pub fn problem(&self) -> Option<String> {
        if !self.metered_tokens_match_sim {
            return Some(format!(
                "metered tokens (prompt, completion): flowgate {:?}, sim {:?}",
                self.metered_tokens[0], self.metered_tokens[1]
            ));
        }
        if !self.plain_not_charged {
            return Some(format!(
                "plain tokens (prompt, completion): flowgate {:?} (want none), sim {:?}",
                self.plain_tokens[0], self.plain_tokens[1]
            ));
        }
        if !self.usage_counted_for_metered_only {
            return Some(format!(
                "usage reported +{} (want +{} metered, none in plain rounds), estimated +{}",
                self.usage_reported, self.metered_sent, self.usage_estimated
            ));
        }
        if !self.override_honoured {
            return Some(format!(
                "ext_proc messages per request: plain must be ≤ {PLAIN_MAX_MSGS_PER_REQUEST}, metered more (see the table)"
            ));
        }
        None
    }
}

/// The `envoy_modes` report.
#[derive(Debug, Serialize)]
pub struct EnvoyModesReport {
    /// Run facts.
    pub run: RunInfo,
    /// Client connections (requests in flight).
    pub connections: usize,
    /// Tokens (SSE chunks) per response.
    pub max_tokens: u32,
    /// Seconds per measured round.
    pub seconds_per_round: f64,
    /// Measured rounds per workload.
    pub rounds_per_workload: usize,
    /// Envoy's worker threads.
    pub envoy_concurrency: usize,
    /// CPUs Envoy and flowgate ran on, and those of the sim and the client (`null`: not split).
    pub cpus: Option<(Vec<usize>, Vec<usize>)>,
    /// The sim's decode step, ms.
    pub decode_step_ms: f64,
    /// Wall time from the stack being up to the last reading, s.
    pub measured_s: f64,
    /// Every measured round, in order.
    pub rounds: Vec<Round>,
    /// `metered` then `plain`.
    pub phases: Vec<Phase>,
    /// plain / metered median requests/s.
    pub ratio: f64,
    /// metered / plain CPU per request of flowgate, Envoy and the sim together: the requests/s
    /// ratio to expect when those three alone fill the cores (a steadier figure than the
    /// requests/s ratio on a shared machine).
    pub cpu_ratio: f64,
    /// The target ratio.
    pub target_ratio: f64,
    /// Whether this run met it.
    pub target_met: bool,
    /// The phases did what they claim.
    pub checks: Checks,
}

/// Print the summary table and verdict.
pub fn print(r: &EnvoyModesReport) {
    let mut t = Table::new(&[
        "workload",
        "response body",
        "req/s (median)",
        "rounds",
        "p50",
        "p99",
        "ext_proc msgs/req",
        "CPU µs/req: flowgate",
        "envoy",
        "sim",
        "flowgate writes/req",
    ]);
    for p in &r.phases {
        t.row(vec![
            p.workload.clone(),
            if p.workload == PLAIN { "skipped (override)".into() } else { "streamed, read".into() },
            format!("{:.0}", p.median_req_per_s),
            p.round_req_per_s.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" "),
            flowgate_bench::report::ms(p.latency.p50_ms),
            flowgate_bench::report::ms(p.latency.p99_ms),
            format!("{:.1}", p.ext_proc_msgs_per_request),
            format!("{:.0}", p.flowgate_cpu_us_per_request),
            format!("{:.0}", p.envoy_cpu_us_per_request),
            format!("{:.0}", p.sim_cpu_us_per_request),
            format!("{:.2}", p.flowgate_writes_per_request),
        ]);
    }
    println!(
        "\n== envoy-modes (through Envoy, {} connections, {}-chunk SSE responses from flowgate-sim, {} x {:.1} s rounds each, alternating; {}) ==\n{}",
        r.connections,
        r.max_tokens,
        r.rounds_per_workload,
        r.seconds_per_round,
        match &r.cpus {
            Some((gateway, backend)) => format!("Envoy + flowgate on CPUs {gateway:?}, sim + client on {backend:?}"),
            None => "CPUs shared".to_string(),
        },
        t.render()
    );
    let c = &r.checks;
    println!(
        "checks: metered tokens flowgate {:?} = sim {:?}: {}; plain charged {:?}: {}; usage reported +{} for {} metered: {}; override honoured: {}",
        c.metered_tokens[0],
        c.metered_tokens[1],
        c.metered_tokens_match_sim,
        c.plain_tokens[0],
        c.plain_not_charged,
        c.usage_reported,
        c.metered_sent,
        c.usage_counted_for_metered_only,
        c.override_honoured,
    );
    println!(
        "stack CPU per request metered / plain: {:.2}x (the requests/s ratio if flowgate, Envoy and the sim alone fill the cores)",
        r.cpu_ratio
    );
    println!(
        "plain / metered requests/s: {:.2}x (target ≥ {:.1}x): {}",
        r.ratio,
        r.target_ratio,
        if r.target_met { "PASS" } else { "MISS" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_sim::WorkloadStats;

    fn phase(workload: &str, msgs: f64) -> Phase {
        Phase {
            workload: workload.into(),
            round_req_per_s: vec![1.0],
            median_req_per_s: 1.0,
            requests: 10,
            latency: Summary::default(),
            ext_proc_msgs_per_request: msgs,
            usage_reported: 0.0,
            flowgate_cpu_us_per_request: 0.0,
            envoy_cpu_us_per_request: 0.0,
            sim_cpu_us_per_request: 0.0,
            flowgate_writes_per_request: 0.0,
        }
    }

    fn workload(id: &str, prompt_tokens: u64, completion_tokens: u64) -> WorkloadJson {
        WorkloadJson {
            workload_id: id.into(),
            criticality: 3,
            active: 0,
            total: 10,
            rate_per_s: 0.0,
            prompt_tokens,
            completion_tokens,
            token_rate_per_s: 0.0,
            remote_rate_per_s: 0.0,
            remote_token_rate_per_s: 0.0,
        }
    }

    #[test]
    fn checks_pass_only_when_each_phase_did_what_it_claims() {
        let mut sim = SimStats::default();
        for id in [METERED, PLAIN] {
            sim.per_workload
                .insert(id.into(), WorkloadStats { requests: 10, prompt_tokens: 30, completion_tokens: 640 });
        }
        let phases = [phase(METERED, 20.0), phase(PLAIN, 1.0)];
        let totals = Counters { usage_reported: 10.0, ext_proc_msgs_sent: 210.0, ..Counters::default() };
        let good = [workload(METERED, 30, 640)];
        let c = Checks::evaluate(&phases, &[], totals, 10, &good, &sim);
        assert_eq!(c.problem(), None);
        // plain charged: the override was not used
        let charged = [workload(METERED, 30, 640), workload(PLAIN, 30, 640)];
        assert!(!Checks::evaluate(&phases, &[], totals, 10, &charged, &sim).plain_not_charged);
        // metered charged an estimate, not the sim's count
        let off = [workload(METERED, 31, 640)];
        assert!(Checks::evaluate(&phases, &[], totals, 10, &off, &sim).problem().is_some());
        // usage counted for more requests than were metered
        assert!(!Checks::evaluate(&phases, &[], totals, 9, &good, &sim).usage_counted_for_metered_only);
        // plain bodies sent to flowgate: the override was not honoured
        let streamed = [phase(METERED, 20.0), phase(PLAIN, 20.0)];
        assert!(!Checks::evaluate(&streamed, &[], totals, 10, &good, &sim).override_honoured);
    }
}
