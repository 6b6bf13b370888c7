//! `usage-cost`: the CPU usage accounting adds to the ext_proc path with streamed responses,
//! metered against unmetered requests in the same flowgate process, same run.
//!
//! flowgate reads a dispatched response for its usage when its workload's cost matters (here: a
//! token quota, [`script::METERED_WORKLOAD`]); every other dispatch answer carries a mode override
//! that skips the response body ([`script::UNMETERED_WORKLOAD`]). Our client is not Envoy and
//! ignores the override, so **both workloads send the same message stream** ([`script`]):
//! request headers, response headers and 64 SSE chunks (a token delta each, the last the usage
//! event), one message at a time, each answered; flowgate reads the metered chunks and
//! CONTINUEs the unmetered ones unread. So the difference is the metering alone (the usage
//! reader, the charge, the quota's bookkeeping and its `x-ratelimit-remaining-*` answer).
//!
//! flowgate runs as its own process (the release `flowgate serve` binary), so its CPU is its own:
//! the sum of its threads' time on a CPU (`/proc/PID/task/*/schedstat`) over each phase, per
//! completed request. Phases alternate (metered, unmetered, unmetered, metered, ...) at the same
//! offered rate, open loop ([`crate::extproc::load`]); the added CPU is the ratio of the two
//! phases' totals − 1. The harness checks, through the workload API, that every metered request
//! was charged its reported usage and no unmetered one anything, and fails if not (or if any
//! request fails); a missed target is only reported. Reads `/proc`, so Linux only.

mod probe;
mod reader;
pub mod script;

use crate::extproc::client::{classify, open, Client};
use crate::extproc::figures::LoadFigures;
use crate::extproc::load::{connect, exchange_phase, url, Exchange, Measured};
use crate::streams::procs;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use flowgate_bench::report::{self, RunInfo, Table};
use flowgate_bench::stats::median;
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The target: usage accounting adds at most this much CPU (%) to the ext_proc path.
pub const TARGET_ADDED_CPU_PCT: f64 = 5.0;
/// A phase sustains the offered load when no request is skipped and the client sends about on
/// schedule: p99 send lag at most this (ms), a small part of a stream's period (64 streams at
/// 200 requests/s: 320 ms). What is compared is CPU per request, not latency: a few late sends
/// leave the two phases' loads alike; a backlog (skips) does not.
pub const SUSTAINED_LAG_P99_MS: f64 = 50.0;
/// Idle time measured before the rounds (flowgate's background CPU, for context).
const IDLE: Duration = Duration::from_millis(500);

/// The subcommand's own arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct UsageCostLoad {
    /// Offered load, requests/s (each request is 2 + --chunks messages).
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Concurrent client streams (one request in flight each).
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// HTTP/2 connections the streams share.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Worker threads of the client runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// SSE body chunks per response (the last one carries the usage).
    #[arg(long, default_value_t = 64)]
    chunks: usize,
    /// The `flowgate` binary to measure (default: the one beside flowgate-bench).
    #[arg(long, value_name = "PATH")]
    flowgate_bin: Option<PathBuf>,
}

impl UsageCostLoad {
    /// The options these arguments give, with the common `--quick`, `--seconds` (per phase and
    /// round) and `--rounds`.
    pub fn options(&self, quick: bool, seconds: Option<f64>, rounds: Option<usize>) -> Options {
        Options {
            quick,
            rate: self.rate,
            streams: self.streams,
            connections: self.connections,
            client_threads: self.client_threads,
            chunks: self.chunks,
            seconds: seconds.unwrap_or(if quick { 1.0 } else { 3.0 }),
            rounds: rounds.unwrap_or(if quick { 8 } else { 16 }),
            flowgate_bin: self.flowgate_bin.clone(),
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Quick mode (CI).
    pub quick: bool,
    /// Offered load, requests/s.
    pub rate: f64,
    /// Concurrent client streams.
    pub streams: usize,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Client runtime threads.
    pub client_threads: usize,
    /// SSE body chunks per response.
    pub chunks: usize,
    /// Seconds per phase per round.
    pub seconds: f64,
    /// Rounds (each one metered and one unmetered phase, in alternating order).
    pub rounds: usize,
    /// The `flowgate` binary (default: beside this one).
    pub flowgate_bin: Option<PathBuf>,
}

/// One phase of one round.
#[derive(Debug, Serialize)]
pub struct RoundCpu {
    /// Requests completed.
    pub completed: u64,
    /// flowgate's CPU over the phase, ms.
    pub cpu_ms: f64,
    /// flowgate's CPU per completed request, µs.
    pub cpu_us_per_request: f64,
}

/// One workload's figures over all its rounds.
#[derive(Debug, Serialize)]
pub struct PhaseResult {
    /// `metered` or `unmetered`.
    pub phase: String,
    /// Its workload id.
    pub workload_id: String,
    /// Rates, requests by fate, latency (send → dispatch answer), the client's lag.
    #[serde(flatten)]
    pub load: LoadFigures,
    /// flowgate's CPU over the phases (threads' schedstat), ms.
    pub cpu_ms: f64,
    /// The same from `/proc/PID/stat` (10 ms ticks, exited threads included): a cross-check.
    pub stat_cpu_ms: f64,
    /// flowgate's CPU per completed request, µs.
    pub cpu_us_per_request: f64,
    /// ... per ext_proc message (request headers, response headers, each chunk), ns.
    pub cpu_ns_per_message: f64,
    /// Per round, in order.
    pub rounds: Vec<RoundCpu>,
}

/// What the workload API said was charged over the measured rounds.
#[derive(Debug, Serialize)]
pub struct Charged {
    /// Metered workload: prompt tokens charged, and expected (completed × reported).
    pub metered_prompt_tokens: u64,
    /// Expected prompt tokens.
    pub metered_prompt_tokens_expected: u64,
    /// Metered workload: completion tokens charged.
    pub metered_completion_tokens: u64,
    /// Expected completion tokens.
    pub metered_completion_tokens_expected: u64,
    /// Unmetered workload: prompt + completion tokens charged (expected 0).
    pub unmetered_tokens: u64,
    /// Metered responses were read and their reported usage charged; unmetered ones were not;
    /// and the dispatch answers said so (no mode override, and a body-skipping one).
    pub ok: bool,
}

/// The `usage-cost` report.
#[derive(Debug, Serialize)]
pub struct UsageCostReport {
    /// Run facts.
    pub run: RunInfo,
    /// Offered load, requests/s.
    pub rate: f64,
    /// Concurrent client streams.
    pub streams: usize,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Client runtime threads.
    pub client_threads: usize,
    /// SSE body chunks per response.
    pub chunks: usize,
    /// Their mean size, bytes.
    pub chunk_bytes: f64,
    /// ext_proc messages per request.
    pub messages_per_request: usize,
    /// Seconds per phase per round.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
    /// flowgate's CPU while idle (before the rounds), ms per s.
    pub idle_cpu_ms_per_s: f64,
    /// Metered first, then unmetered.
    pub results: Vec<PhaseResult>,
    /// Metered CPU per request / unmetered − 1, %.
    pub added_cpu_pct: f64,
    /// The same per round (each round's two phases), %.
    pub added_cpu_pct_by_round: Vec<f64>,
    /// Their median, %.
    pub added_cpu_pct_median: f64,
    /// flowgate's usage meter alone on one response's messages, in the bench process: ns.
    pub reader_ns_per_response: f64,
    /// ... as a share of the unmetered CPU per request, %.
    pub reader_share_pct: f64,
    /// What was charged.
    pub charged: Charged,
    /// Whether both phases sustained the offered load (none skipped, p99 send lag ≤ 50 ms).
    pub sustained: bool,
    /// The target, %.
    pub target_added_cpu_pct: f64,
    /// Whether this run met it (reported, never enforced); `null` when the load was not
    /// sustained.
    pub target_met: Option<bool>,
}

/// The two phases: (name, workload id, whether flowgate reads its response).
const PHASES: [(&str, &str, bool); 2] =
    [("metered", script::METERED_WORKLOAD, true), ("unmetered", script::UNMETERED_WORKLOAD, false)];

/// Check the dispatch answer of one request of each workload: the metered one without a mode
/// override (its body is read), the unmetered one with a body-skipping override.
async fn check_modes(client: &Client) -> Result<bool, String> {
    let mut ok = true;
    for (name, workload, metered) in PHASES {
        let opened = open(&mut client.clone(), script::request_headers(workload))
            .await
            .map_err(|f| format!("{name} probe: {f:?}"))?;
        classify(&opened.answer, true).map_err(|f| format!("{name} probe: {f:?}"))?;
        let skips_body = opened
            .answer
            .mode_override
            .as_ref()
            .is_some_and(|m| m.response_body_mode == BodySendMode::None as i32);
        ok &= skips_body != metered;
    }
    Ok(ok)
}

/// Run the `usage-cost` subcommand.
pub fn run(o: &Options, out_dir: &Path) -> io::Result<UsageCostReport> {
    if !(o.rate.is_finite() && o.rate > 0.0)
        || o.streams == 0
        || o.connections == 0
        || o.chunks == 0
        || !(o.seconds.is_finite() && o.seconds > 0.0)
    {
        return Err(io::Error::other(
            "usage-cost: --rate, --streams, --connections, --chunks and --seconds must be positive",
        ));
    }
    let rounds = o.rounds.max(1);
    let bin = match &o.flowgate_bin {
        Some(b) => b.clone(),
        None => procs::default_flowgate_bin()?,
    };
    if !bin.is_file() {
        return Err(io::Error::other(format!(
            "usage-cost: no flowgate binary at {} (cargo build --release -p flowgate, or --flowgate-bin)",
            bin.display()
        )));
    }
    std::fs::create_dir_all(out_dir)?;
    let config = out_dir.join("usage-cost-flowgate.yaml");
    std::fs::write(&config, script::flowgate_config())?;
    let server = procs::start_flowgate(&bin, &config, &[]);
    let _ = std::fs::remove_file(&config);
    let server = server?;
    let metrics_addr = server
        .metrics_addr
        .clone()
        .ok_or_else(|| io::Error::other("usage-cost: flowgate logged no metrics_addr"))?;
    let pid = server.pid();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.client_threads.max(1))
        .enable_all()
        .thread_name("usage-cost-client")
        .build()?;
    let broken = |e: String| io::Error::other(format!("usage-cost: {e}"));
    let clients =
        client_rt.block_on(connect(url(&server.addr), o.connections)).map_err(|e| broken(e.to_string()))?;
    let modes_ok = client_rt.block_on(check_modes(&clients[0])).map_err(broken)?;
    let after: Arc<[_]> = script::response(o.chunks).into();
    let exchanges = PHASES.map(|(_, workload, _)| Exchange {
        headers: vec![vec![script::request_headers(workload)]],
        after: after.clone(),
        want_destination: true,
    });

    let warmup = Duration::from_secs_f64(if o.quick { 0.5 } else { 1.0 });
    for ((name, ..), exchange) in PHASES.iter().zip(&exchanges) {
        let label = format!("usage-cost warmup {name}");
        exchange_phase(&client_rt, &clients, exchange, o.rate, o.streams, warmup, &label);
    }
    let charged_before =
        client_rt.block_on(probe::workloads(&metrics_addr)).map_err(|e| broken(e.to_string()))?;
    let idle_from = probe::thread_cpu_ns(pid)?;
    std::thread::sleep(IDLE);
    let idle_cpu_ms_per_s =
        probe::cpu_between_ns(&idle_from, &probe::thread_cpu_ns(pid)?) as f64 / 1e6 / IDLE.as_secs_f64();

    let per_round = Duration::from_secs_f64(o.seconds);
    let mut measured = [Measured::default(), Measured::default()];
    let mut windows = [Duration::ZERO; 2];
    let mut cpu_ns = [0u64; 2];
    let mut stat_cpu_s = [0f64; 2];
    let mut by_round: [Vec<RoundCpu>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        for j in 0..2 {
            let i = (r + j) % 2;
            let label = format!(
                "usage-cost {} {} rps ×{} ({}/{rounds})",
                PHASES[i].0,
                report::si(o.rate),
                o.streams,
                r + 1
            );
            let stat_from = stat_s(pid);
            let from = probe::thread_cpu_ns(pid)?;
            let (m, w) =
                exchange_phase(&client_rt, &clients, &exchanges[i], o.rate, o.streams, per_round, &label);
            let used_ns = probe::cpu_between_ns(&from, &probe::thread_cpu_ns(pid)?);
            stat_cpu_s[i] += stat_s(pid) - stat_from;
            cpu_ns[i] += used_ns;
            by_round[i].push(RoundCpu {
                completed: m.tally.completed,
                cpu_ms: used_ns as f64 / 1e6,
                cpu_us_per_request: used_ns as f64 / 1e3 / m.tally.completed.max(1) as f64,
            });
            measured[i].merge(m);
            windows[i] += w;
        }
    }
    let charged_after =
        client_rt.block_on(probe::workloads(&metrics_addr)).map_err(|e| broken(e.to_string()))?;
    drop(clients);
    client_rt.shutdown_timeout(Duration::from_secs(1));
    server.stop();

    let messages_per_request = after.len() + 1;
    let results: Vec<PhaseResult> = PHASES
        .iter()
        .zip(measured)
        .zip(windows)
        .zip(cpu_ns.iter().zip(stat_cpu_s))
        .zip(by_round)
        .map(|(((((name, workload, _), m), w), (&ns, stat_s)), rounds)| {
            let completed = m.tally.completed.max(1) as f64;
            PhaseResult {
                phase: name.to_string(),
                workload_id: workload.to_string(),
                load: LoadFigures::new(&m, o.rate, w),
                cpu_ms: ns as f64 / 1e6,
                stat_cpu_ms: stat_s * 1e3,
                cpu_us_per_request: ns as f64 / 1e3 / completed,
                cpu_ns_per_message: ns as f64 / completed / messages_per_request as f64,
                rounds,
            }
        })
        .collect();
    let (metered, unmetered) = (&results[0], &results[1]);
    let added_pct = |m: f64, u: f64| if u > 0.0 { (m / u - 1.0) * 100.0 } else { 0.0 };
    let added_cpu_pct = added_pct(metered.cpu_us_per_request, unmetered.cpu_us_per_request);
    let added_cpu_pct_by_round: Vec<f64> = metered
        .rounds
        .iter()
        .zip(&unmetered.rounds)
        .map(|(m, u)| added_pct(m.cpu_us_per_request, u.cpu_us_per_request))
        .collect();
    let added_cpu_pct_median = median(&added_cpu_pct_by_round);
    let (reader_ns_per_response, reader_reported) = reader::ns_per_response(&after)?;
    // ns / (µs × 1000) × 100 %.
    let reader_share_pct =
        reader_ns_per_response / 10.0 / unmetered.cpu_us_per_request.max(f64::MIN_POSITIVE);
    let delta = |id: &str| {
        let (p0, c0) = probe::tokens_of(&charged_before, id);
        let (p1, c1) = probe::tokens_of(&charged_after, id);
        (p1.saturating_sub(p0), c1.saturating_sub(c0))
    };
    let (mp, mc) = delta(script::METERED_WORKLOAD);
    let (up, uc) = delta(script::UNMETERED_WORKLOAD);
    let mut charged = Charged {
        metered_prompt_tokens: mp,
        metered_prompt_tokens_expected: metered.load.completed * script::PROMPT_TOKENS,
        metered_completion_tokens: mc,
        metered_completion_tokens_expected: metered.load.completed * script::completion_tokens(o.chunks),
        unmetered_tokens: up + uc,
        ok: false,
    };
    charged.ok = modes_ok
        && reader_reported
        && metered.load.completed > 0
        && charged.metered_prompt_tokens == charged.metered_prompt_tokens_expected
        && charged.metered_completion_tokens == charged.metered_completion_tokens_expected
        && charged.unmetered_tokens == 0;
    let sustained =
        results.iter().all(|r| r.load.skipped == 0 && r.load.send_lag.p99_ms <= SUSTAINED_LAG_P99_MS);
    let report = UsageCostReport {
        run: RunInfo::now(o.quick),
        rate: o.rate,
        streams: o.streams,
        connections: o.connections,
        client_threads: o.client_threads.max(1),
        chunks: o.chunks,
        chunk_bytes: script::mean_chunk_bytes(o.chunks),
        messages_per_request,
        seconds: o.seconds,
        rounds,
        idle_cpu_ms_per_s,
        target_met: sustained.then_some(added_cpu_pct <= TARGET_ADDED_CPU_PCT),
        results,
        reader_share_pct,
        added_cpu_pct,
        added_cpu_pct_by_round,
        added_cpu_pct_median,
        reader_ns_per_response,
        charged,
        sustained,
        target_added_cpu_pct: TARGET_ADDED_CPU_PCT,
    };
    report::write_json(out_dir, "usage_cost", &report)?;
    print_table(&report);
    check(&report).map_err(broken)?;
    Ok(report)
}

/// flowgate's CPU seconds from `/proc/PID/stat` (0 when unreadable: only a cross-check).
fn stat_s(pid: u32) -> f64 {
    flowgate_bench::cpu::pid_s(pid).unwrap_or(0.0)
}

/// A broken harness (not a slow run): failed requests, or metering not as configured.
fn check(r: &UsageCostReport) -> Result<(), String> {
    let mut broken: Vec<String> = r.results.iter().filter_map(|x| x.load.broken(&x.phase)).collect();
    if !r.charged.ok {
        broken.push(format!("metering is not as configured: {:?}", r.charged));
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(broken.join("; "))
    }
}

fn print_table(r: &UsageCostReport) {
    let mut t = Table::new(&[
        "phase",
        "offered/s",
        "achieved/s",
        "completed",
        "failed",
        "skipped",
        "CPU ms",
        "CPU µs/req",
        "CPU ns/msg",
        "stat CPU ms",
        "p50 dispatch µs",
        "p99 send lag µs",
    ]);
    for x in &r.results {
        t.row(vec![
            x.phase.clone(),
            report::si(x.load.offered_rps),
            report::si(x.load.achieved_rps),
            x.load.completed.to_string(),
            (x.load.failed + x.load.not_dispatched).to_string(),
            x.load.skipped.to_string(),
            format!("{:.0}", x.cpu_ms),
            format!("{:.1}", x.cpu_us_per_request),
            format!("{:.0}", x.cpu_ns_per_message),
            format!("{:.0}", x.stat_cpu_ms),
            format!("{:.0}", x.load.latency.p50_ms * 1e3),
            format!("{:.0}", x.load.send_lag.p99_ms * 1e3),
        ]);
    }
    println!(
        "\n== usage-cost (flowgate process CPU, streamed responses: {} messages/request, {} SSE chunks of ~{:.0} B; {} rounds × {} s per phase, {} streams) ==\n{}",
        r.messages_per_request,
        r.chunks,
        r.chunk_bytes,
        r.rounds,
        r.seconds,
        r.streams,
        t.render()
    );
    let by_round: Vec<String> = r.added_cpu_pct_by_round.iter().map(|p| format!("{p:+.1}")).collect();
    let verdict = match r.target_met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "not assessed (load not sustained)",
    };
    println!(
        "usage accounting adds {:+.1} % CPU per request (median round {:+.1} %; by round: {} %; idle flowgate {:.1} ms/s); target ≤ {:.0} %: {verdict}",
        r.added_cpu_pct,
        r.added_cpu_pct_median,
        by_round.join(" "),
        r.idle_cpu_ms_per_s,
        r.target_added_cpu_pct,
    );
    println!(
        "the usage meter alone (in this process, same chunks): {:.1} µs per response = {:.2} % of the unmetered CPU per request",
        r.reader_ns_per_response / 1e3,
        r.reader_share_pct
    );
    println!(
        "charged over the rounds: metered {} prompt + {} completion tokens (expected {} + {}), unmetered {}",
        r.charged.metered_prompt_tokens,
        r.charged.metered_completion_tokens,
        r.charged.metered_prompt_tokens_expected,
        r.charged.metered_completion_tokens_expected,
        r.charged.unmetered_tokens,
    );
}
