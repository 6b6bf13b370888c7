//! `envoy-modes`: what the mode override saves through a real Envoy (issue #12, deliverable 4).
//!
//! flowgate answers a request's headers with a mode override that turns the response body phase
//! off when no token rule needs the request's usage; otherwise Envoy (response body `STREAMED`)
//! makes a gRPC round trip to flowgate per chunk. Here one stack runs for the whole measurement
//! ([`stack`]: a fast `flowgate-sim`, `flowgate serve` with a token quota on workload `metered`
//! only, Envoy from the e2e template with `allow_mode_override: true`), and a closed-loop HTTP/1.1
//! client ([`client`]) sends streamed 64-chunk completions through Envoy over keep-alive
//! connections, in rounds alternating between `metered` (every chunk read) and `plain` (the
//! override), after one warm-up round of each. Reported per workload: requests/s (median over
//! its rounds), latency, Envoy's ext_proc messages per request, and the CPU per request of
//! flowgate, Envoy and the sim (`/proc/PID/stat`); the target is plain / metered ≥
//! [`TARGET_RATIO`] in the same run.
//!
//! Checks that each phase did what it claims ([`observe`]), any failing one a broken harness:
//! every response 200 and complete (`data: [DONE]`); flowgate's tokens charged to `metered` equal
//! the sim's count, none charged to `plain`; `flowgate_usage_reported_total` grew by exactly the
//! metered requests (no estimates); Envoy sent plain requests at most
//! [`PLAIN_MAX_MSGS_PER_REQUEST`] ext_proc messages each (the override honoured) and metered ones
//! more (their bodies went to flowgate). Uses `PR_SET_PDEATHSIG`: Linux only.
//!
//! **Chunks coalesce.** The sim writes one SSE event per token, but Envoy sends flowgate one body
//! message per read from the upstream socket: once the machine is busy, several events arrive
//! per read, so a metered request costs fewer than 64 round trips (the table shows how many).
//! The sim's decode step defaults to 1 ms (tokio's timer tick: a shorter step only makes bursts
//! of several tokens per tick, which coalesce all the more).
//!
//! **The gateway's CPU, not the sim's latency.** A closed loop of C connections through a 64-token
//! answer (~100 ms) cannot exceed C / 0.1 s requests/s; at C = 64 both phases sat at that bound
//! (1.03×). So C defaults to 256, and with two or more CPUs Envoy and flowgate run on the first
//! and the sim and the client on the others (`--no-split-cpus` to share them), as a gateway and a
//! model server would on machines of their own: requests/s then measures what the gateway pays.

pub mod client;
pub mod observe;
pub mod report;
pub mod stack;
pub mod template;

use flowgate_bench::report::RunInfo;
use flowgate_bench::stats::median;
use flowgate_bench::stats::{Hist, Summary};
use observe::Counters;
use report::{Checks, EnvoyModesReport, Phase, Round};
use stack::{Stack, METERED, PLAIN};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The target: plain requests/s at least this multiple of metered ones.
pub const TARGET_RATIO: f64 = 1.3;
/// Most ext_proc messages Envoy may send for a plain request, on average: its request headers
/// (one) and nothing of the response, whose end only closes the stream. More means the mode
/// override was not honoured. A metered request must cost more (its response and body).
pub const PLAIN_MAX_MSGS_PER_REQUEST: f64 = 1.5;
/// Longest the counters may lag the last answer before the run counts as broken.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the counters are re-read while they settle (a bounded poll, not synchronisation).
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// The subcommand's own arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct EnvoyModesLoad {
    /// The Envoy binary (default: $ENVOY_BIN; `source scripts/envoy-venv.sh` sets it).
    #[arg(long, value_name = "PATH")]
    envoy: Option<PathBuf>,
    /// The `flowgate` binary (default: the one beside flowgate-bench).
    #[arg(long, value_name = "PATH")]
    flowgate_bin: Option<PathBuf>,
    /// The `flowgate-sim` binary (default: the one beside flowgate-bench).
    #[arg(long, value_name = "PATH")]
    sim_bin: Option<PathBuf>,
    /// Concurrent client connections (one request in flight each): enough that the gateway's CPU,
    /// not the sim's 64-token latency, bounds requests/s (64 leave both phases latency-bound).
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Tokens per response, one SSE chunk each.
    #[arg(long, default_value_t = 64)]
    max_tokens: u32,
    /// The sim's decode step, ms (one token per running sequence per step).
    #[arg(long, default_value_t = 1.0)]
    decode_step_ms: f64,
    /// The sim's batch size (--max-num-seqs).
    #[arg(long, default_value_t = 256)]
    max_num_seqs: usize,
    /// Envoy worker threads (--concurrency).
    #[arg(long, default_value_t = 2)]
    envoy_concurrency: usize,
    /// Do not split the CPUs (by default, with 2 or more allowed CPUs, Envoy and flowgate get the
    /// first one and the sim and this client the others, as a gateway and a model server on
    /// machines of their own: requests/s then measures the gateway's cost, not the sim's).
    #[arg(long)]
    no_split_cpus: bool,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Quick mode (CI).
    pub quick: bool,
    /// Seconds per measured round.
    pub seconds: f64,
    /// Measured rounds per workload.
    pub rounds: usize,
    /// Seconds of the warm-up round of each workload.
    pub warmup_s: f64,
    /// The Envoy binary.
    pub envoy_bin: PathBuf,
    /// The `flowgate` binary.
    pub flowgate_bin: PathBuf,
    /// The `flowgate-sim` binary.
    pub sim_bin: PathBuf,
    /// Concurrent client connections.
    pub connections: usize,
    /// Tokens (chunks) per response.
    pub max_tokens: u32,
    /// The sim's decode step, ms.
    pub decode_step_ms: f64,
    /// The sim's batch size.
    pub max_num_seqs: usize,
    /// Envoy's worker threads.
    pub envoy_concurrency: usize,
    /// CPUs of Envoy and flowgate, and of the sim and the client (`None`: not split).
    pub cpus: Option<(Vec<usize>, Vec<usize>)>,
}

impl EnvoyModesLoad {
    /// The options these arguments give with the common `--quick`, `--seconds`, `--rounds`.
    pub fn options(&self, quick: bool, seconds: Option<f64>, rounds: Option<usize>) -> io::Result<Options> {
        let beside = |name: &str| Ok::<_, io::Error>(std::env::current_exe()?.with_file_name(name));
        let envoy_bin = match &self.envoy {
            Some(p) => p.clone(),
            None => std::env::var_os("ENVOY_BIN").map(PathBuf::from).ok_or_else(|| {
                io::Error::other("envoy-modes: no Envoy: pass --envoy PATH or set ENVOY_BIN (source scripts/envoy-venv.sh)")
            })?,
        };
        let o = Options {
            quick,
            seconds: seconds.unwrap_or(if quick { 2.5 } else { 8.0 }),
            rounds: rounds.unwrap_or(if quick { 3 } else { 5 }),
            warmup_s: if quick { 1.0 } else { 3.0 },
            envoy_bin,
            flowgate_bin: match &self.flowgate_bin {
                Some(p) => p.clone(),
                None => crate::streams::procs::default_flowgate_bin()?,
            },
            sim_bin: match &self.sim_bin {
                Some(p) => p.clone(),
                None => beside("flowgate-sim")?,
            },
            connections: self.connections,
            max_tokens: self.max_tokens,
            decode_step_ms: self.decode_step_ms,
            max_num_seqs: self.max_num_seqs,
            envoy_concurrency: self.envoy_concurrency,
            cpus: {
                let allowed = flowgate_engine::layout::allowed_cpus();
                (!self.no_split_cpus && allowed.len() >= 2)
                    .then(|| (allowed[..1].to_vec(), allowed[1..].to_vec()))
            },
        };
        if o.connections == 0
            || o.max_tokens == 0
            || o.rounds == 0
            || o.max_num_seqs == 0
            || o.envoy_concurrency == 0
        {
            return Err(io::Error::other(
                "envoy-modes: --connections, --max-tokens, --rounds, --max-num-seqs, --envoy-concurrency must be positive",
            ));
        }
        if !(o.seconds.is_finite()
            && o.seconds > 0.0
            && o.decode_step_ms.is_finite()
            && o.decode_step_ms > 0.0)
        {
            return Err(io::Error::other("envoy-modes: --seconds and --decode-step-ms must be positive"));
        }
        Ok(o)
    }
}

/// The workloads of measured round `i`, in order: alternating which goes first.
pub fn round_order(i: usize) -> [&'static str; 2] {
    if i.is_multiple_of(2) {
        [METERED, PLAIN]
    } else {
        [PLAIN, METERED]
    }
}

/// Read the counters until the usage counters account for `metered` requests (or the settle
/// deadline passes); the last reading.
async fn settled(stack: &Stack, start: Counters, metered: u64) -> io::Result<Counters> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let now = observe::counters(stack).await?;
        let d = now.since(start);
        if d.usage_reported + d.usage_estimated >= metered as f64 || Instant::now() >= deadline {
            return Ok(now);
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// Warm up, then the measured rounds; every round's readings.
async fn measure(stack: &Stack, o: &Options) -> io::Result<(Vec<Round>, Vec<(String, Hist)>, Counters, u64)> {
    let mut conns = Vec::with_capacity(o.connections);
    for _ in 0..o.connections {
        conns.push(client::connect(stack.listen).await?);
    }
    let start = observe::counters(stack).await?;
    let mut metered_sent = 0;
    for w in [METERED, PLAIN] {
        let (c, load) = client::round(conns, w, o.max_tokens, o.warmup_s).await?;
        conns = c;
        if w == METERED {
            metered_sent += load.requests;
        }
    }
    let mut rounds = Vec::with_capacity(2 * o.rounds);
    let mut hists = vec![(METERED.to_string(), Hist::default()), (PLAIN.to_string(), Hist::default())];
    for i in 0..o.rounds {
        for w in round_order(i) {
            let before = observe::counters(stack).await?;
            let (c, load) = client::round(conns, w, o.max_tokens, o.seconds).await?;
            conns = c;
            let d = observe::counters(stack).await?.since(before);
            if w == METERED {
                metered_sent += load.requests;
            }
            if let Some((_, h)) = hists.iter_mut().find(|(n, _)| n == w) {
                h.add(&load.latency);
            }
            rounds.push(Round::new(i, w, &load, d));
        }
    }
    let end = settled(stack, start, metered_sent).await?;
    Ok((rounds, hists, end.since(start), metered_sent))
}

/// Run the `envoy-modes` subcommand.
pub fn run(o: &Options, out_dir: &Path) -> io::Result<EnvoyModesReport> {
    std::fs::create_dir_all(out_dir)?;
    // One client thread: the client is not measured, and it leaves the stack the cores. With the
    // CPUs split it runs beside the sim, off the gateway's CPU (threads inherit the affinity).
    if let Some((_, backend)) = &o.cpus {
        flowgate_engine::layout::pin_current_thread(backend)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let stack = Stack::start(o, out_dir, &rt)?;
    let started = Instant::now();
    let (rounds, hists, totals, metered_sent, workloads, sim) = rt.block_on(async {
        let (rounds, hists, totals, metered_sent) = measure(&stack, o).await?;
        let workloads = observe::workloads(&stack).await?;
        let sim = observe::sim_stats(&stack).await?;
        Ok::<_, io::Error>((rounds, hists, totals, metered_sent, workloads, sim))
    })?;
    let measured_s = started.elapsed().as_secs_f64();
    drop(stack);
    let phases: Vec<Phase> = hists
        .iter()
        .map(|(w, h)| {
            let mine: Vec<&Round> = rounds.iter().filter(|r| &r.workload == w).collect();
            let rates: Vec<f64> = mine.iter().map(|r| r.req_per_s).collect();
            let requests: u64 = mine.iter().map(|r| r.requests).sum();
            let sum = |f: fn(&Counters) -> f64| mine.iter().map(|r| f(&r.counters)).sum::<f64>();
            let per_request = |total: f64| total / requests.max(1) as f64;
            Phase {
                workload: w.clone(),
                median_req_per_s: median(&rates),
                round_req_per_s: rates,
                requests,
                latency: if h.is_empty() { Summary::default() } else { h.summary() },
                ext_proc_msgs_per_request: per_request(sum(|c| c.ext_proc_msgs_sent)),
                usage_reported: sum(|c| c.usage_reported),
                flowgate_cpu_us_per_request: per_request(sum(|c| c.flowgate_cpu_s) * 1e6),
                envoy_cpu_us_per_request: per_request(sum(|c| c.envoy_cpu_s) * 1e6),
                sim_cpu_us_per_request: per_request(sum(|c| c.sim_cpu_s) * 1e6),
                flowgate_writes_per_request: per_request(sum(|c| c.flowgate_writes)),
            }
        })
        .collect();
    let rate = |w: &str| phases.iter().find(|p| p.workload == w).map_or(0.0, |p| p.median_req_per_s);
    let ratio = if rate(METERED) > 0.0 { rate(PLAIN) / rate(METERED) } else { 0.0 };
    let cpu = |w: &str| phases.iter().find(|p| p.workload == w).map_or(0.0, Phase::stack_cpu_us_per_request);
    let cpu_ratio = if cpu(PLAIN) > 0.0 { cpu(METERED) / cpu(PLAIN) } else { 0.0 };
    let checks = Checks::evaluate(&phases, &rounds, totals, metered_sent, &workloads, &sim);
    let report = EnvoyModesReport {
        run: RunInfo::now(o.quick),
        connections: o.connections,
        max_tokens: o.max_tokens,
        seconds_per_round: o.seconds,
        rounds_per_workload: o.rounds,
        envoy_concurrency: o.envoy_concurrency,
        cpus: o.cpus.clone(),
        decode_step_ms: o.decode_step_ms,
        measured_s,
        rounds,
        phases,
        ratio,
        cpu_ratio,
        target_ratio: TARGET_RATIO,
        target_met: ratio >= TARGET_RATIO,
        checks,
    };
    flowgate_bench::report::write_json(out_dir, "envoy_modes", &report)?;
    report::print(&report);
    if let Some(problem) = report.checks.problem() {
        return Err(io::Error::other(format!(
            "envoy-modes: the phases did not do what they claim: {problem}"
        )));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_alternate_which_workload_goes_first() {
        assert_eq!(round_order(0), [METERED, PLAIN]);
        assert_eq!(round_order(1), [PLAIN, METERED]);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
