//! `pool`: flowgate's saturation detectors on a heterogeneous pool of `flowgate-sim` servers at
//! 1.5× the pool's capacity, driven through ext_proc as Envoy would (see `load.rs`).
//!
//! Configurations, each on fresh sims and a fresh flowgate, interleaved over the rounds:
//! `concurrency` (every backend's `max_inflight` = [`DEFAULT_MAX_INFLIGHT`]: one number for the
//! pool, as an operator sets it for a Deployment whose replicas come through DNS discovery, while
//! the replicas run on different hardware — batch sizes 16, 16 and 4 by default, the small one
//! also three times slower; `--max-inflight` overrides it), `utilization` (`max_inflight: 0`, live
//! metrics only), `both`, and `fifo` (flowgate itself as a FIFO: the concurrency detector with
//! the same caps, scoring weights wait 1, criticality 0, rate 0). Plus an unloaded run (crit 5
//! only, at 15 % of capacity) for the "crit-5 p99 TTFT ≤ 2× unloaded" target.
//!
//! Targets are reported, never enforced. The run fails only when the harness is broken: flowgate
//! did not start, or a request got no answer, broke the protocol or failed on I/O.

/// The `max_inflight` of every backend for `concurrency`, `both` and `fifo`: the pool's mean
/// batch size, what one number for a mixed pool comes to.
pub const DEFAULT_MAX_INFLIGHT: u32 = 12;

mod http;
mod load;
mod plot;
mod setup;

use flowgate_bench::report::{self, RunInfo, Table};
use flowgate_bench::stats::{Hist, Summary};
use load::{Fate, LoadSpec, Record, CLASSES};
use serde::Serialize;
pub use setup::Kind;
use setup::{PoolSpec, Setup};
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Target: utilization or both completes at least this many times the requests of concurrency.
pub const TARGET_THROUGHPUT_RATIO: f64 = 1.25;
/// Target: crit-5 p99 TTFT at 1.5× overload at most this many times its unloaded value.
pub const TARGET_TTFT_VS_UNLOADED: f64 = 2.0;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Quick mode (≤ 25 s in all).
    pub quick: bool,
    /// Load seconds per configuration and round.
    pub seconds: f64,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Offered load / derived capacity.
    pub load_factor: f64,
    /// Each backend's `max_inflight` for concurrency, both and fifo (default: `--max-num-seqs`).
    pub max_inflight: Option<u32>,
    /// Server speeds.
    pub speeds: Vec<f64>,
    /// Server batch sizes (`--max-num-seqs`), in the order of `speeds`.
    pub max_num_seqs: Vec<usize>,
    /// The configurations to run.
    pub configs: Vec<Kind>,
}

/// One class's figures.
#[derive(Debug, Serialize)]
pub struct ClassResult {
    pub workload: String,
    pub criticality: u8,
    /// Arrivals in the measured window.
    pub offered: u64,
    pub completed: u64,
    /// Immediate responses from flowgate (429/503: TTL, queue full).
    pub shed: u64,
    /// Non-200 answers from a sim (its waiting queue full).
    pub backend_errors: u64,
    /// Arrivals beyond the client's bound on open requests.
    pub client_dropped: u64,
    /// (shed + backend errors + client dropped) / offered.
    pub shed_fraction: f64,
    /// Arrival → first SSE data event.
    pub ttft: Summary,
    /// Arrival → end of the stream.
    pub e2e: Summary,
}

/// One configuration's figures (rounds merged).
#[derive(Debug, Serialize)]
pub struct ConfigResult {
    pub config: String,
    /// flowgate's YAML (of the last round; the sims' ports change every round).
    pub yaml: String,
    /// Arrivals within the measured windows / their length (Poisson: near `offered_rps`).
    pub arrivals_rps: f64,
    /// Completions within the measured windows / their length.
    pub completed_rps: f64,
    pub completion_tokens_per_s: f64,
    /// Completed requests per sim (all of each run), in pool order.
    pub per_server_completed: Vec<u64>,
    /// Most requests a sim held at once (running + waiting), per sim.
    pub per_server_peak_in_system: Vec<u64>,
    pub classes: Vec<ClassResult>,
    /// completed_rps / concurrency's.
    pub throughput_vs_concurrency: Option<f64>,
    /// crit-5 p99 TTFT / concurrency's.
    pub crit5_p99_ttft_vs_concurrency: Option<f64>,
    /// crit-5 p99 TTFT / unloaded crit-5 p99 TTFT.
    pub crit5_p99_ttft_vs_unloaded: f64,
    /// Broken-harness failures (must be 0).
    pub failed: u64,
    pub first_error: Option<String>,
}

/// The `pool` report.
#[derive(Debug, Serialize)]
pub struct PoolReport {
    pub run: RunInfo,
    pub pool: PoolSpec,
    /// Derived capacity of the pool, requests/s.
    pub capacity_rps: f64,
    pub offered_rps: f64,
    pub load_factor: f64,
    pub seconds: f64,
    pub warmup_s: f64,
    pub rounds: usize,
    pub ttl_ms: u64,
    pub max_inflight: u32,
    /// How the configurations are set up.
    pub method: String,
    /// crit 5 alone at 15 % of capacity.
    pub unloaded: ClassResult,
    pub configs: Vec<ConfigResult>,
    pub svg: String,
}

#[derive(Default)]
struct Acc {
    offered: u64,
    completed: u64,
    shed: u64,
    backend: u64,
    dropped: u64,
    ttft: Hist,
    e2e: Hist,
}

#[derive(Default)]
struct Merged {
    classes: [Acc; 3],
    done_in_window: u64,
    tokens_in_window: u64,
    window_s: f64,
    per_server: Vec<u64>,
    peaks: Vec<u64>,
    failed: u64,
    first_error: Option<String>,
}

impl Merged {
    fn add(&mut self, records: &[Record], warmup: Duration, end: Duration) {
        self.window_s += (end - warmup).as_secs_f64();
        for r in records {
            let measured = r.arrival >= warmup;
            let a = &mut self.classes[r.class];
            a.offered += u64::from(measured);
            match &r.fate {
                Fate::Completed { ttft, e2e, tokens, done } => {
                    if *done >= warmup && *done < end {
                        self.done_in_window += 1;
                        self.tokens_in_window += tokens;
                    }
                    if measured {
                        a.completed += 1;
                        a.ttft.record(ttft.as_nanos() as u64);
                        a.e2e.record(e2e.as_nanos() as u64);
                    }
                }
                Fate::Shed => a.shed += u64::from(measured),
                Fate::BackendStatus => a.backend += u64::from(measured),
                Fate::ClientDropped => a.dropped += u64::from(measured),
                Fate::Failed(e) => {
                    self.failed += 1;
                    self.first_error.get_or_insert_with(|| e.clone());
                }
            }
        }
    }

    fn class(&self, i: usize) -> ClassResult {
        let a = &self.classes[i];
        let (workload, criticality, _) = CLASSES[i];
        let lost = a.shed + a.backend + a.dropped;
        ClassResult {
            workload: workload.into(),
            criticality,
            offered: a.offered,
            completed: a.completed,
            shed: a.shed,
            backend_errors: a.backend,
            client_dropped: a.dropped,
            shed_fraction: if a.offered > 0 { lost as f64 / a.offered as f64 } else { 0.0 },
            ttft: a.ttft.summary(),
            e2e: a.e2e.summary(),
        }
    }
}

/// The pool of this mode.
fn spec(o: &Options) -> PoolSpec {
    PoolSpec {
        speeds: o.speeds.clone(),
        max_num_seqs: o.max_num_seqs.clone(),
        decode_step_ms: 10.0,
        prefill_us_per_token: 50.0,
        max_tokens: if o.quick { 24 } else { 32 },
        prompt_bytes: 128,
    }
}

/// A measurement's records, flowgate's YAML, and per sim (completed, peak in system).
type Measurement = (Vec<Record>, String, Vec<(u64, u64)>);

/// One measurement: fresh sims and flowgate, the load, the records.
fn measure(spec: &PoolSpec, kind: Kind, cap: u32, ttl: Duration, load: &LoadSpec) -> io::Result<Measurement> {
    let setup = Setup::start(spec, kind, cap, ttl)?;
    let yaml = setup.yaml.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("pool-client")
        .build()?;
    let records = rt.block_on(async {
        let clients = load::connect(setup.grpc_addr(), 2)
            .await
            .map_err(|e| io::Error::other(format!("pool: cannot connect to flowgate: {e}")))?;
        Ok::<_, io::Error>(load::run(&clients, load).await)
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    let per_server = setup.sim_counts();
    setup.stop();
    Ok((records?, yaml, per_server))
}

/// Run the `pool` subcommand.
pub fn run(o: &Options, out_dir: &Path) -> io::Result<PoolReport> {
    let spec = spec(o);
    let capacity = spec.capacity();
    let offered = capacity * o.load_factor;
    let cap = o.max_inflight.unwrap_or(DEFAULT_MAX_INFLIGHT);
    let ttl = Duration::from_millis(if o.quick { 1500 } else { 2000 });
    let warmup = Duration::from_secs_f64(if o.quick { 0.5f64 } else { 1.0 }.min(o.seconds / 3.0));
    let duration = Duration::from_secs_f64(o.seconds);
    let body = Arc::new(format!(
        r#"{{"model":"sim-model","prompt":"{}","max_tokens":{},"stream":true,"stream_options":{{"include_usage":true}}}}"#,
        "x".repeat(spec.prompt_bytes),
        spec.max_tokens
    ));
    let slowest = spec.max_tokens as f64 * spec.decode_step_ms / o.speeds.iter().copied().fold(1.0, f64::min);
    let timeout = ttl + Duration::from_secs_f64(slowest * 4.0 / 1e3) + Duration::from_secs(10);
    let load = |rate: f64, seconds: f64, seed: u64| LoadSpec {
        rate,
        duration: Duration::from_secs_f64(seconds),
        max_outstanding: 1024,
        seed,
        body: body.clone(),
        timeout,
        only_class: None,
    };

    // Unloaded: crit 5 alone at 15 % of capacity, with the concurrency detector.
    let unloaded_s = if o.quick { 1.5 } else { 4.0 };
    let mut l = load(0.15 * capacity, unloaded_s, 1);
    l.only_class = Some(2);
    let (records, _, _) = measure(&spec, Kind::Concurrency, cap, ttl, &l)?;
    let mut m = Merged::default();
    m.add(&records, Duration::ZERO, l.duration);
    let unloaded_failed = (m.failed, m.first_error.clone());
    let unloaded = m.class(2);

    let mut merged: Vec<Merged> = o.configs.iter().map(|_| Merged::default()).collect();
    let mut yamls = vec![String::new(); o.configs.len()];
    for r in 0..o.rounds.max(1) {
        for j in 0..o.configs.len() {
            let i = (r + j) % o.configs.len();
            let kind = o.configs[i];
            eprintln!("pool: round {} {} at {:.0} req/s", r + 1, kind.name(), offered);
            let (records, yaml, per_server) =
                measure(&spec, kind, cap, ttl, &load(offered, o.seconds, 100 + r as u64))?;
            let m = &mut merged[i];
            m.add(&records, warmup, duration);
            m.per_server.resize(per_server.len(), 0);
            m.peaks.resize(per_server.len(), 0);
            for (k, (done, peak)) in per_server.into_iter().enumerate() {
                m.per_server[k] += done;
                m.peaks[k] = m.peaks[k].max(peak);
            }
            yamls[i] = yaml;
        }
    }

    let mut configs: Vec<ConfigResult> = o
        .configs
        .iter()
        .zip(merged)
        .zip(yamls)
        .map(|((kind, m), yaml)| {
            let per_s = |n: u64| if m.window_s > 0.0 { n as f64 / m.window_s } else { 0.0 };
            let classes: Vec<ClassResult> = (0..3).map(|i| m.class(i)).collect();
            ConfigResult {
                config: kind.name().into(),
                yaml,
                arrivals_rps: per_s(m.classes.iter().map(|a| a.offered).sum()),
                completed_rps: per_s(m.done_in_window),
                completion_tokens_per_s: per_s(m.tokens_in_window),
                per_server_completed: m.per_server,
                per_server_peak_in_system: m.peaks,
                crit5_p99_ttft_vs_unloaded: ratio(classes[2].ttft.p99_ms, unloaded.ttft.p99_ms),
                classes,
                throughput_vs_concurrency: None,
                crit5_p99_ttft_vs_concurrency: None,
                failed: m.failed,
                first_error: m.first_error,
            }
        })
        .collect();
    if let Some(base) = configs.iter().find(|c| c.config == "concurrency") {
        let (rps, p99) = (base.completed_rps, base.classes[2].ttft.p99_ms);
        for c in &mut configs {
            c.throughput_vs_concurrency = Some(ratio(c.completed_rps, rps));
            c.crit5_p99_ttft_vs_concurrency = Some(ratio(c.classes[2].ttft.p99_ms, p99));
        }
    }
    std::fs::create_dir_all(out_dir)?;
    let svg = out_dir.join("pool.svg");
    if let Err(e) = plot::draw(&svg, &configs, capacity, unloaded.ttft.p99_ms) {
        return Err(io::Error::other(format!("pool: plot: {e}")));
    }
    let report = PoolReport {
        run: RunInfo::now(o.quick),
        capacity_rps: capacity,
        offered_rps: offered,
        load_factor: o.load_factor,
        seconds: o.seconds,
        warmup_s: warmup.as_secs_f64(),
        rounds: o.rounds.max(1),
        ttl_ms: ttl.as_millis() as u64,
        max_inflight: cap,
        method: format!(
            "{} sims (speeds {:?}, max_num_seqs {:?}, decode_step_ms {}, {} completion tokens, {} prompt bytes, KV budget sized so a full batch reads 80% use), fresh for every measurement; \
             Poisson arrivals at {:.2}x the derived capacity, mix 30% low crit 1 / 50% medium crit 3 / 20% high crit 5; \
             concurrency and both: every backend's max_inflight = {cap}, one number for the whole pool as discovery.dns gives it (--max-inflight); utilization: max_inflight 0; \
             fifo: flowgate with scoring wait 1, criticality 0, rate 0 and the concurrency detector; queue.ttl {} ms; \
             unloaded: crit 5 alone at 15% of capacity; times are from the scheduled arrival",
            spec.speeds.len(),
            spec.speeds,
            spec.max_num_seqs,
            spec.decode_step_ms,
            spec.max_tokens,
            spec.prompt_bytes,
            o.load_factor,
            ttl.as_millis()
        ),
        pool: spec,
        unloaded,
        configs,
        svg: svg.display().to_string(),
    };
    report::write_json(out_dir, "pool", &report)?;
    print_table(&report);
    let mut broken: Vec<String> = report
        .configs
        .iter()
        .filter(|c| c.failed > 0)
        .map(|c| {
            format!("{}: {} failed (first: {})", c.config, c.failed, c.first_error.as_deref().unwrap_or("-"))
        })
        .collect();
    if unloaded_failed.0 > 0 {
        broken.push(format!("unloaded: {} failed (first: {:?})", unloaded_failed.0, unloaded_failed.1));
    }
    if !broken.is_empty() {
        return Err(io::Error::other(format!("pool: broken requests: {}", broken.join("; "))));
    }
    Ok(report)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn print_table(r: &PoolReport) {
    let mut t = Table::new(&[
        "config",
        "arrived/s",
        "req/s",
        "tok/s",
        "vs conc",
        "crit",
        "offered",
        "done",
        "shed %",
        "TTFT p50",
        "TTFT p99",
        "e2e p50",
        "e2e p99",
    ]);
    let x = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}x"));
    for c in &r.configs {
        for (i, k) in c.classes.iter().enumerate().rev() {
            let first = i == 2;
            let cell = |s: String| if first { s } else { String::new() };
            t.row(vec![
                cell(c.config.clone()),
                cell(format!("{:.1}", c.arrivals_rps)),
                cell(format!("{:.1}", c.completed_rps)),
                cell(format!("{:.0}", c.completion_tokens_per_s)),
                cell(x(c.throughput_vs_concurrency)),
                format!("{} ({})", k.criticality, k.workload),
                k.offered.to_string(),
                k.completed.to_string(),
                format!("{:.1}", k.shed_fraction * 100.0),
                report::ms(k.ttft.p50_ms),
                report::ms(k.ttft.p99_ms),
                report::ms(k.e2e.p50_ms),
                report::ms(k.e2e.p99_ms),
            ]);
        }
    }
    println!(
        "\n== pool ({} sims, speeds {:?}; derived capacity {:.1} req/s, offered {:.1} req/s = {:.2}x; ms from arrival) ==\n{}",
        r.pool.speeds.len(),
        r.pool.speeds,
        r.capacity_rps,
        r.offered_rps,
        r.load_factor,
        t.render()
    );
    let u = r.unloaded.ttft.p99_ms;
    println!(
        "unloaded crit-5 TTFT p50 {} ms, p99 {} ms (n={})",
        report::ms(r.unloaded.ttft.p50_ms),
        report::ms(u),
        r.unloaded.completed
    );
    let conc = r.configs.iter().find(|c| c.config == "concurrency");
    for c in &r.configs {
        let p99 = c.classes[2].ttft.p99_ms;
        let mut line = format!(
            "{}: crit-5 p99 TTFT {} ms = {:.2}x unloaded (target ≤ {TARGET_TTFT_VS_UNLOADED}x: {})",
            c.config,
            report::ms(p99),
            c.crit5_p99_ttft_vs_unloaded,
            if c.crit5_p99_ttft_vs_unloaded <= TARGET_TTFT_VS_UNLOADED { "met" } else { "missed" }
        );
        if let (Some(base), "utilization" | "both") = (conc, c.config.as_str()) {
            let tput = c.throughput_vs_concurrency.unwrap_or(0.0);
            let no_worse = p99 <= base.classes[2].ttft.p99_ms;
            line.push_str(&format!(
                "; vs concurrency {tput:.2}x requests, crit-5 p99 TTFT {:.2}x (target ≥ {TARGET_THROUGHPUT_RATIO}x with TTFT no worse: {})",
                c.crit5_p99_ttft_vs_concurrency.unwrap_or(0.0),
                if tput >= TARGET_THROUGHPUT_RATIO && no_worse { "met" } else { "missed" }
            ));
        }
        println!("{line}");
    }
    println!("method: {}", r.method);
}
