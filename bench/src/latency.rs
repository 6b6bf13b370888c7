//! Latency: submit → dispatched with free capacity, per request, into an HDR histogram.

use crate::baseline::{Kind, Req, Spec};
use crate::driver::{balanced_ids, submit, Rng};
use crate::report::{self, ratio, sleep_with, timed_bar, RunInfo, Table};
use crate::stats::{Hist, Summary};
use flowgate_engine::Outcome;
use serde::Serialize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// One implementation under one load.
#[derive(Debug, Serialize)]
pub struct LatencyResult {
    /// Implementation.
    pub implementation: String,
    /// Closed-loop producers, each with one request outstanding.
    pub producers: usize,
    /// Submit → dispatched (ticket resolved), in ms.
    pub latency: Summary,
}

/// Measure `kind` with `producers` closed-loop producers for `dur`.
pub fn measure(kind: Kind, producers: usize, dur: Duration) -> Hist {
    let q = Spec { slots: 1024, ..Spec::default() }.build(kind);
    let shards = if let Kind::Flowgate(n) = kind { n } else { 1 };
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(producers + 1));
    let threads: Vec<_> = (0..producers)
        .map(|p| {
            let (q, stop, barrier) = (q.clone(), stop.clone(), barrier.clone());
            let ids = balanced_ids(&format!("lat{p}"), 16, shards);
            let mut rng = Rng(p as u64 + 11);
            let reqs: Vec<Req> =
                (0..256).map(|i| Req::new(&ids[i % ids.len()], 1 + rng.below(5) as u8)).collect();
            std::thread::spawn(move || {
                let mut h = Hist::default();
                let mut i = 0;
                barrier.wait();
                // At least one sample, however late this thread gets to run.
                loop {
                    i += 1;
                    let t = Instant::now();
                    let d = submit(&*q, &reqs[i % reqs.len()]).expect("submitted").wait();
                    let ns = t.elapsed().as_nanos() as u64;
                    assert_eq!(d.outcome, Outcome::Dispatched, "free capacity: everything dispatches");
                    h.record(ns);
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
                h
            })
        })
        .collect();
    let bar = timed_bar(&format!("latency {} ×{producers}", kind.label()), dur);
    barrier.wait();
    sleep_with(&bar, dur);
    stop.store(true, Ordering::Relaxed);
    let mut all = Hist::default();
    for t in threads {
        all.add(&t.join().expect("producer"));
    }
    bar.finish_and_clear();
    q.shutdown();
    all
}

/// The `latency` report.
#[derive(Debug, Serialize)]
pub struct LatencyReport {
    /// Run facts.
    pub run: RunInfo,
    /// Seconds per measurement.
    pub seconds: f64,
    /// Interleaved rounds (histograms merged).
    pub rounds: usize,
    /// Results.
    pub results: Vec<LatencyResult>,
}

/// Run the `latency` subcommand: `seconds` per implementation and load, split over `rounds`
/// interleaved rounds whose histograms are merged.
pub fn run(
    quick: bool,
    shards: usize,
    seconds: f64,
    rounds: usize,
    out_dir: &Path,
) -> std::io::Result<LatencyReport> {
    let rounds = rounds.max(1);
    let dur = Duration::from_secs_f64(seconds / rounds as f64);
    let kinds = [Kind::Flowgate(1), Kind::Flowgate(shards), Kind::Seed, Kind::Fifo];
    let mut results = Vec::new();
    for producers in [1usize, 2] {
        let mut hists: Vec<Hist> = kinds.iter().map(|_| Hist::default()).collect();
        for r in 0..rounds {
            for k in 0..kinds.len() {
                let i = (r + k) % kinds.len();
                hists[i].add(&measure(kinds[i], producers, dur));
            }
        }
        for (kind, h) in kinds.iter().zip(hists) {
            results.push(LatencyResult { implementation: kind.label(), producers, latency: h.summary() });
        }
    }
    let report = LatencyReport { run: RunInfo::now(quick), seconds, rounds, results };
    report::write_json(out_dir, "latency", &report)?;
    let mut t =
        Table::new(&["implementation", "producers", "samples", "p50 µs", "p99 µs", "p999 µs", "p50 vs seed"]);
    for r in &report.results {
        let seed = report
            .results
            .iter()
            .find(|s| s.producers == r.producers && s.implementation == "seed-heap")
            .map_or(0.0, |s| s.latency.p50_ms);
        let us = |v: f64| format!("{:.1}", v * 1e3);
        t.row(vec![
            r.implementation.clone(),
            r.producers.to_string(),
            r.latency.count.to_string(),
            us(r.latency.p50_ms),
            us(r.latency.p99_ms),
            us(r.latency.p999_ms),
            ratio(r.latency.p50_ms, seed),
        ]);
    }
    println!("\n== latency (submit → dispatched, free capacity, closed loop) ==\n{}", t.render());
    Ok(report)
}
