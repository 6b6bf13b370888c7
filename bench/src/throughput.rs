//! Throughput: requests/s through submit → dispatch → release, for every implementation.
//!
//! - **free capacity**: slots never run out; `producers` threads each submit a batch of `batch`
//!   requests, wait on every ticket and drop its permit. `low load` is one producer with batches
//!   of one (one request at a time: a round trip per request); `saturation` is several producers
//!   with large batches (the most load they can offer).
//! - **deep queue** (`deep_queue.rs`): `slots` permits are held and `depth` requests kept
//!   queued; each round submits `slots` more and drops the held permits, so `slots` heads dispatch
//!   out of a queue ~`depth` deep.
//! - **saturation, no idle polling** (`saturation_no_polling`): saturation again, 1 and N shards,
//!   with `spin_before_park` 0, so the shards park as soon as they are idle and the queue's CPU is
//!   their work and wake-ups, not the polling that soaks up what the producers leave.

use crate::baseline::{Kind, Spec, CHURN_INTERVAL};
use crate::churn::{churn_rows, set_changes_since, ChurnRow};
use crate::cpu;
pub use crate::deep_queue::deep_queue;
use crate::measurement::{req_per_s_of, Measurement, ScalingPoint, SetChanges};
use crate::report::{self, ratio, si, sleep_with, timed_bar, RunInfo, Table};
use crate::request_mix::request_mix;
pub use crate::request_mix::WORKLOADS;
use crate::scaling_efficiency::{self, ScalingEfficiency};
use flowgate_engine::Outcome;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// The mode name of the saturation run with `spin_before_park` 0 (shards park once idle).
pub const NO_POLLING: &str = "saturation_no_polling";

/// Measure every kind `rounds` times, interleaved (round `r` starts at kind `r mod n`, so no
/// implementation always runs first or last while the machine's background load drifts); each
/// result is the median over its rounds.
pub fn interleaved(
    kinds: &[Kind],
    rounds: usize,
    mut f: impl FnMut(Kind) -> Measurement,
) -> Vec<Measurement> {
    let n = kinds.len();
    let mut per: Vec<Vec<Measurement>> = (0..n).map(|_| Vec::new()).collect();
    for r in 0..rounds.max(1) {
        for k in 0..n {
            let i = (r + k) % n;
            per[i].push(f(kinds[i]));
        }
    }
    per.into_iter().map(combine).collect()
}

fn combine(ms: Vec<Measurement>) -> Measurement {
    let mut rates: Vec<f64> = ms.iter().map(|m| m.req_per_s).collect();
    let mut sorted = rates.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    let depths: Vec<f64> = ms.iter().filter_map(|m| m.mean_depth).collect();
    let median_of = |f: fn(&Measurement) -> Option<f64>| {
        let mut v: Vec<f64> = ms.iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| v[v.len() / 2])
    };
    let (producer_cpu_ns, queue_cpu_ns) = (median_of(|m| m.producer_cpu_ns), median_of(|m| m.queue_cpu_ns));
    let first = &ms[0];
    let out = Measurement {
        implementation: first.implementation.clone(),
        mode: first.mode.clone(),
        producers: first.producers,
        batch: first.batch,
        mean_depth: (!depths.is_empty()).then(|| depths.iter().sum::<f64>() / depths.len() as f64),
        requests: ms.iter().map(|m| m.requests).sum(),
        seconds: ms.iter().map(|m| m.seconds).sum(),
        req_per_s: median,
        rounds_req_per_s: std::mem::take(&mut rates),
        producer_cpu_ns,
        queue_cpu_ns,
        set_changes: ms.iter().filter_map(|m| m.set_changes).reduce(SetChanges::plus),
    };
    out
}

/// Free-capacity throughput of `kind` with `producers` threads and batches of `batch`.
pub fn free_capacity(kind: Kind, mode: &str, producers: usize, batch: usize, dur: Duration) -> Measurement {
    free_capacity_with(None, kind, mode, producers, batch, dur)
}

/// [`free_capacity`] with flowgate's `spin_before_park` set to `spin` (`None`: as configured).
pub fn free_capacity_with(
    spin: Option<Duration>,
    kind: Kind,
    mode: &str,
    producers: usize,
    batch: usize,
    dur: Duration,
) -> Measurement {
    let spec =
        Spec { slots: (producers * batch * 2).max(1024) as u32, spin_before_park: spin, ..Spec::default() };
    let q = spec.build(kind);
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(producers + 1));
    let threads: Vec<_> = (0..producers)
        .map(|p| {
            let (q, stop, barrier) = (q.clone(), stop.clone(), barrier.clone());
            let reqs = request_mix(kind, "tput", p as u64 + 1);
            std::thread::spawn(move || {
                let mut tickets = Vec::with_capacity(batch);
                let (mut done, mut undispatched, mut i) = (0u64, 0u64, p * 97);
                barrier.wait();
                let cpu0 = cpu::thread_s();
                // At least one batch, however late this thread gets to run.
                loop {
                    for _ in 0..batch {
                        i += 1;
                        match q.submit(&reqs[i % reqs.len()]) {
                            Ok(t) => tickets.push(t),
                            Err(_) => break,
                        }
                    }
                    if tickets.is_empty() {
                        std::thread::yield_now();
                    }
                    for t in tickets.drain(..) {
                        let dispatched = t.wait().outcome == Outcome::Dispatched;
                        done += u64::from(dispatched);
                        undispatched += u64::from(!dispatched);
                    }
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                (done, undispatched, cpu0.zip(cpu::thread_s()).map(|(a, b)| b - a))
            })
        })
        .collect();
    let bar = timed_bar(&format!("throughput {mode} {}", kind.label()), dur);
    barrier.wait();
    let t0 = Instant::now();
    let (process0, me0) = (cpu::process_s(), cpu::thread_s());
    let changes0 = q.set_changes();
    sleep_with(&bar, dur);
    stop.store(true, Ordering::Relaxed);
    let (mut requests, mut undispatched, mut producer_s) = (0u64, 0u64, Some(0.0));
    for t in threads {
        let (done, refused, s) = t.join().expect("producer");
        requests += done;
        undispatched += refused;
        producer_s = producer_s.zip(s).map(|(a, b)| a + b);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let set_changes = set_changes_since(&*q, changes0);
    // With free capacity and a 30 s TTL everything dispatches, whatever the backend set does.
    assert!(
        set_changes.is_none() || undispatched == 0,
        "{}: {undispatched} requests not dispatched while the backend set changed",
        kind.label()
    );
    // The queue's share: the process's CPU minus the producers' and this (mostly asleep) thread's.
    let queue_s = (|| Some(cpu::process_s()? - process0? - producer_s? - (cpu::thread_s()? - me0?)))();
    let per_request_ns = |s: Option<f64>| s.map(|s| s.max(0.0) * 1e9 / requests.max(1) as f64);
    bar.finish_and_clear();
    q.shutdown();
    Measurement {
        implementation: kind.label(),
        mode: mode.into(),
        producers,
        batch,
        mean_depth: None,
        requests,
        seconds,
        req_per_s: requests as f64 / seconds,
        rounds_req_per_s: Vec::new(),
        producer_cpu_ns: per_request_ns(producer_s),
        queue_cpu_ns: per_request_ns(queue_s),
        set_changes,
    }
}

/// Options shared by `throughput` and `scaling`.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Quick mode.
    pub quick: bool,
    /// Shards of the multi-shard flowgate (N).
    pub shards: usize,
    /// Producer threads at saturation.
    pub producers: usize,
    /// Batch per producer at saturation.
    pub batch: usize,
    /// Seconds per measurement (split over `rounds`).
    pub seconds: f64,
    /// Interleaved rounds per measurement.
    pub rounds: usize,
    /// Queue depth of the deep-queue variant.
    pub depth: usize,
    /// Slots cycling in the deep-queue variant.
    pub deep_slots: u32,
}

/// A target from the issues, checked for the report (never a failure).
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    /// What.
    pub name: String,
    /// The bar.
    pub target: String,
    /// Measured.
    pub value: String,
    /// Whether this run met it.
    pub met: bool,
}

/// The `throughput` report.
#[derive(Debug, Serialize)]
pub struct ThroughputReport {
    /// Run facts.
    pub run: RunInfo,
    /// Options.
    pub options: Options,
    /// Every measurement.
    pub results: Vec<Measurement>,
    /// Ratios of flowgate against each baseline, per mode.
    pub ratios: Vec<RatioRow>,
    /// flowgate with a changing backend set against a fixed one, per mode (same run).
    pub churn: Vec<ChurnRow>,
    /// Queue CPU per request of each shard count against 1 shard, per mode (same run).
    pub scaling: Vec<ScalingEfficiency>,
    /// Targets from the issues.
    pub targets: Vec<Target>,
}

/// One ratio row.
#[derive(Debug, Serialize)]
pub struct RatioRow {
    /// Mode.
    pub mode: String,
    /// Numerator (a flowgate configuration).
    pub implementation: String,
    /// flowgate / seed baseline.
    pub vs_seed: f64,
    /// flowgate / FIFO baseline.
    pub vs_fifo: f64,
}

/// The most `shards` shards can gain over one at saturation on this machine, from the CPU per
/// request the one-shard run measured on each side ([`cpu::shard_scaling_ceiling`]).
fn saturation_ceiling(results: &[Measurement], one: &str, shards: usize) -> Option<f64> {
    let m = results.iter().find(|m| m.mode == "saturation" && m.implementation == one)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (q, p) = (m.queue_cpu_ns?, m.producer_cpu_ns?);
    (q > 0.0).then(|| cpu::shard_scaling_ceiling(shards, cores, q * 1e-9, p * 1e-9))
}

/// Run the `throughput` subcommand; writes `throughput.json`, prints a table.
pub fn run(opts: &Options, out_dir: &Path) -> std::io::Result<ThroughputReport> {
    let dur = Duration::from_secs_f64(opts.seconds / opts.rounds.max(1) as f64);
    let kinds = [
        Kind::Flowgate(1),
        Kind::FlowgateScraped(1),
        Kind::Flowgate(opts.shards),
        Kind::FlowgateSteady(opts.shards),
        Kind::FlowgateChurn(opts.shards),
        Kind::Seed,
        Kind::Fifo,
    ];
    let mut results = interleaved(&kinds, opts.rounds, |k| free_capacity(k, "low_load", 1, 1, dur));
    results.extend(interleaved(&kinds, opts.rounds, |k| {
        free_capacity(k, "saturation", opts.producers, opts.batch, dur)
    }));
    // Not the changing set (nor its control) at a deep queue: there the slots bind, and a
    // draining backend's held slots are not capacity, so each change would hand the queue a
    // fresh backend's worth of extra slots (a different workload, not a dearer dispatch).
    let deep_kinds: Vec<Kind> = kinds
        .iter()
        .copied()
        .filter(|k| !matches!(k, Kind::FlowgateChurn(_) | Kind::FlowgateSteady(_)))
        .collect();
    results
        .extend(interleaved(&deep_kinds, opts.rounds, |k| deep_queue(k, opts.depth, opts.deep_slots, dur)));
    // Saturation again with the shards parking as soon as they are idle: the queue CPU is then
    // their work (and the parks' wake-ups), without the idle polling that soaks up whatever CPU
    // the producers leave, twice as much of it with two shards on this 2-core machine.
    let no_polling = [Kind::Flowgate(1), Kind::Flowgate(opts.shards)];
    results.extend(interleaved(&no_polling, opts.rounds, |k| {
        free_capacity_with(Some(Duration::ZERO), k, NO_POLLING, opts.producers, opts.batch, dur)
    }));
    let (one, many) = (Kind::Flowgate(1).label(), Kind::Flowgate(opts.shards).label());
    let mut ratios = Vec::new();
    for mode in ["low_load", "saturation", "deep_queue"] {
        for fg in [&one, &many] {
            let v = req_per_s_of(&results, mode, fg);
            ratios.push(RatioRow {
                mode: mode.into(),
                implementation: fg.clone(),
                vs_seed: v / req_per_s_of(&results, mode, "seed-heap").max(f64::MIN_POSITIVE),
                vs_fifo: v / req_per_s_of(&results, mode, "fifo").max(f64::MIN_POSITIVE),
            });
        }
    }
    let n = opts.shards;
    let sat_many = req_per_s_of(&results, "saturation", &many);
    let sat_one = req_per_s_of(&results, "saturation", &one);
    let low_many = req_per_s_of(&results, "low_load", &many);
    let low_one = req_per_s_of(&results, "low_load", &one);
    let (deep_one, deep_many) =
        (req_per_s_of(&results, "deep_queue", &one), req_per_s_of(&results, "deep_queue", &many));
    let deep_best = deep_one.max(deep_many);
    let deep_seed = req_per_s_of(&results, "deep_queue", "seed-heap");
    let scraped = Kind::FlowgateScraped(1).label();
    let scraped_worst = ["low_load", "saturation", "deep_queue"]
        .iter()
        .map(|mode| {
            req_per_s_of(&results, mode, &scraped) / req_per_s_of(&results, mode, &one).max(f64::MIN_POSITIVE)
        })
        .fold(f64::INFINITY, f64::min);
    let churn = churn_rows(&results, n);
    let churn_worst = churn.iter().map(|c| c.ratio).fold(f64::INFINITY, f64::min);
    let scaling: Vec<ScalingEfficiency> = ["low_load", "saturation", NO_POLLING, "deep_queue"]
        .iter()
        .filter_map(|mode| scaling_efficiency::of(&results, mode, n))
        .collect();
    let sat_efficiency = scaling.iter().find(|e| e.mode == "saturation").map(|e| e.efficiency);
    let work_efficiency = scaling.iter().find(|e| e.mode == NO_POLLING).map(|e| e.efficiency);
    let targets = vec![
        Target {
            name: format!("saturation: queue CPU per request, {n} shards vs 1 (scaling efficiency)"),
            target: "≤ 1.1x (≥ 0.9)".into(),
            value: sat_efficiency.map_or("-".into(), |e| format!("{:.2}x ({e:.2})", 1.0 / e)),
            met: sat_efficiency.is_some_and(|e| e >= 1.0 / 1.1),
        },
        Target {
            name: format!("saturation, shards park when idle (no idle polling): the same, {n} shards vs 1"),
            target: "≤ 1.1x (≥ 0.9)".into(),
            value: work_efficiency.map_or("-".into(), |e| format!("{:.2}x ({e:.2})", 1.0 / e)),
            met: work_efficiency.is_some_and(|e| e >= 1.0 / 1.1),
        },
        Target {
            name: format!(
                "changing backend set (every {} ms) vs fixed, {n} shards, worst free-capacity mode",
                CHURN_INTERVAL.as_secs_f64() * 1e3
            ),
            target: "≥ 0.95x".into(),
            value: format!("{churn_worst:.2}x"),
            met: churn_worst >= 0.95,
        },
        Target {
            name: "detector both (scraped) vs concurrency, 1 shard, worst mode".into(),
            target: "≥ 0.95x".into(),
            value: format!("{scraped_worst:.2}x"),
            met: scraped_worst >= 0.95,
        },
        Target {
            name: format!("saturation throughput, {n} shards"),
            target: "≥ 3M req/s".into(),
            value: si(sat_many),
            met: sat_many >= 3e6,
        },
        Target {
            name: format!("low load: {n} shards vs 1 shard"),
            target: "≥ 1.00x (never slower)".into(),
            value: ratio(low_many, low_one),
            met: low_many >= low_one,
        },
        Target {
            name: format!("saturation: {n} shards vs 1 shard"),
            target: "≥ 1.6x".into(),
            value: match saturation_ceiling(&results, &one, n) {
                Some(c) => format!("{} (ceiling here {c:.2}x)", ratio(sat_many, sat_one)),
                None => ratio(sat_many, sat_one),
            },
            met: sat_many >= 1.6 * sat_one,
        },
        Target {
            name: format!("{} queued: {n} shards vs 1 shard", opts.depth),
            target: "≥ 0.9x".into(),
            value: ratio(deep_many, deep_one),
            met: deep_many >= 0.9 * deep_one,
        },
        Target {
            name: format!("{} queued: flowgate vs seed baseline", opts.depth),
            target: "≥ 5x".into(),
            value: ratio(deep_best, deep_seed),
            met: deep_best >= 5.0 * deep_seed,
        },
    ];
    let report = ThroughputReport {
        run: RunInfo::now(opts.quick),
        options: opts.clone(),
        results,
        ratios,
        churn,
        scaling,
        targets,
    };
    report::write_json(out_dir, "throughput", &report)?;
    print!("{}", render(&report));
    Ok(report)
}

/// The stdout summary.
pub fn render(r: &ThroughputReport) -> String {
    let mut t = Table::new(&[
        "mode",
        "implementation",
        "producers×batch",
        "depth",
        "req/s",
        "vs seed",
        "vs fifo",
        "CPU/req producers",
        "CPU/req queue",
    ]);
    let ns = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0} ns"));
    for m in &r.results {
        let seed = req_per_s_of(&r.results, &m.mode, "seed-heap");
        let fifo = req_per_s_of(&r.results, &m.mode, "fifo");
        t.row(vec![
            m.mode.clone(),
            m.implementation.clone(),
            format!("{}×{}", m.producers, m.batch),
            m.mean_depth.map_or("-".into(), |d| format!("{d:.0}")),
            si(m.req_per_s),
            ratio(m.req_per_s, seed),
            ratio(m.req_per_s, fifo),
            ns(m.producer_cpu_ns),
            ns(m.queue_cpu_ns),
        ]);
    }
    let mut s = format!("\n== throughput (submit → dispatch → release) ==\n{}", t.render());
    s.push_str(&scaling_efficiency::render(&r.scaling));
    if !r.churn.is_empty() {
        let mut c = Table::new(&[
            "mode",
            "fixed set",
            "req/s",
            "changing set",
            "req/s",
            "vs fixed",
            "steady control",
            "vs control",
            "set changes/s",
            "left one draining",
        ]);
        for row in &r.churn {
            c.row(vec![
                row.mode.clone(),
                row.fixed.clone(),
                si(row.fixed_req_per_s),
                row.churn.clone(),
                si(row.churn_req_per_s),
                ratio(row.churn_req_per_s, row.fixed_req_per_s),
                si(row.steady_req_per_s),
                ratio(row.churn_req_per_s, row.steady_req_per_s),
                format!("{:.0} ({} in all)", row.set_changes_per_s, row.set_changes.calls),
                format!("{}", row.set_changes.draining),
            ]);
        }
        s.push_str(&format!(
            "\n== backend set changing every {} ms (set_backends: one added, one draining; control: \
             the same calls with the set unchanged) ==\n{}",
            CHURN_INTERVAL.as_secs_f64() * 1e3,
            c.render()
        ));
    }
    s.push_str(&render_targets(&r.targets));
    s
}

/// Targets as a table.
pub fn render_targets(targets: &[Target]) -> String {
    let mut t = Table::new(&["target", "bar", "measured", "met"]);
    for g in targets {
        t.row(vec![
            g.name.clone(),
            g.target.clone(),
            g.value.clone(),
            if g.met { "yes" } else { "no" }.into(),
        ]);
    }
    format!("\n{}", t.render())
}

/// The `scaling` report.
#[derive(Debug, Serialize)]
pub struct ScalingReport {
    /// Run facts.
    pub run: RunInfo,
    /// Options.
    pub options: Options,
    /// flowgate at 1, 2, 4 shards.
    pub flowgate: Vec<ScalingPoint>,
    /// Baselines at saturation (same producers and batch).
    pub baselines: Vec<Measurement>,
    /// The plot.
    pub svg: String,
}

/// Run the `scaling` subcommand: saturation throughput vs shards; writes JSON and an SVG.
pub fn run_scaling(opts: &Options, out_dir: &Path) -> std::io::Result<ScalingReport> {
    let dur = Duration::from_secs_f64(opts.seconds / opts.rounds.max(1) as f64);
    let kinds = [Kind::Flowgate(1), Kind::Flowgate(2), Kind::Flowgate(4), Kind::Seed, Kind::Fifo];
    let sat =
        interleaved(&kinds, opts.rounds, |k| free_capacity(k, "saturation", opts.producers, opts.batch, dur));
    let low = interleaved(&kinds[..3], opts.rounds, |k| free_capacity(k, "low_load", 1, 1, dur));
    let flowgate: Vec<ScalingPoint> = [1usize, 2, 4]
        .iter()
        .zip(sat.iter().zip(&low))
        .map(|(&shards, (s, l))| ScalingPoint {
            shards,
            req_per_s: s.req_per_s,
            low_load_req_per_s: l.req_per_s,
        })
        .collect();
    let baselines: Vec<Measurement> = sat.into_iter().skip(3).collect();
    std::fs::create_dir_all(out_dir)?;
    let svg = out_dir.join("scaling.svg");
    crate::plot::scaling(&svg, &flowgate, &baselines).map_err(|e| std::io::Error::other(e.to_string()))?;
    let report = ScalingReport {
        run: RunInfo::now(opts.quick),
        options: opts.clone(),
        flowgate,
        baselines,
        svg: svg.display().to_string(),
    };
    report::write_json(out_dir, "scaling", &report)?;
    let mut t =
        Table::new(&["implementation", "saturation req/s", "vs 1 shard", "low-load req/s", "vs 1 shard"]);
    let (base_sat, base_low) = (report.flowgate[0].req_per_s, report.flowgate[0].low_load_req_per_s);
    for p in &report.flowgate {
        t.row(vec![
            Kind::Flowgate(p.shards).label(),
            si(p.req_per_s),
            ratio(p.req_per_s, base_sat),
            si(p.low_load_req_per_s),
            ratio(p.low_load_req_per_s, base_low),
        ]);
    }
    for m in &report.baselines {
        t.row(vec![m.implementation.clone(), si(m.req_per_s), "-".into(), "-".into(), "-".into()]);
    }
    println!("\n== scaling (throughput vs shards) ==\n{}plot: {}", t.render(), report.svg);
    Ok(report)
}
