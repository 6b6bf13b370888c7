//! `extproc`: open-loop load through the ext_proc gRPC protocol, flowgate against a bare tonic
//! ext_proc server that answers CONTINUE at once (the baseline), so the difference is what flow
//! control adds.
//!
//! With free capacity every request must be dispatched: any failed stream, timeout or
//! non-dispatched answer is a broken harness (or server), and the run fails. Slowness never does.
//!
//! This file holds the subcommand (options, [`run`], the report); `server.rs` the two servers,
//! `client.rs` one request over the ext_proc protocol, `load.rs` the open-loop load generator,
//! `figures.rs` the figures every phase reports.

pub(crate) mod client;
pub mod figures;
pub mod layouts;
pub(crate) mod load;
pub(crate) mod server;

use client::Client;
use figures::LoadFigures;
use flowgate_bench::report::{self, RunInfo, Table};
use flowgate_bench::stats::Summary;
use load::{connect, phase, url, Measured};
use serde::Serialize;
use server::{start_baseline, start_flowgate};
use std::io;
use std::path::Path;
use std::time::Duration;

/// The target: flowgate adds at most this much p99 latency over the bare server.
pub const TARGET_ADDED_P99_US: f64 = 300.0;
/// ... at this offered load ...
pub const TARGET_RATE: f64 = 10_000.0;
/// ... over this many concurrent streams.
pub const TARGET_STREAMS: usize = 256;
/// A server sustains the offered load when it completes at least this share of it ...
pub const SUSTAINED_SHARE: f64 = 0.95;
/// ... and the client sends on schedule: p99 send lag at most this (ms). Past it the client or
/// the machine is saturated and latencies measure its backlog, not the server.
pub const SUSTAINED_LAG_P99_MS: f64 = 1.0;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Quick mode (CI).
    pub quick: bool,
    /// Offered load, requests/s.
    pub rate: f64,
    /// Concurrent client streams (workers).
    pub streams: usize,
    /// HTTP/2 connections per server the workers share.
    pub connections: usize,
    /// Worker threads of the client runtime.
    pub client_threads: usize,
    /// Measured seconds per server (split over the rounds).
    pub seconds: f64,
    /// Interleaved rounds (baseline and flowgate alternate; histograms merged).
    pub rounds: usize,
    /// Engine shards of the in-process flowgate.
    pub shards: usize,
    /// An external `flowgate serve` to drive instead of an in-process one.
    pub addr: Option<String>,
}

/// One server's figures.
#[derive(Debug, Serialize)]
pub struct TargetResult {
    /// `baseline` (bare tonic ext_proc, CONTINUE at once) or `flowgate`.
    pub target: String,
    /// Rates, requests by fate, latency (send → headers answer), the client's lag.
    #[serde(flatten)]
    pub load: LoadFigures,
    /// Scheduled time → headers answer (includes the client's lag).
    pub from_schedule: Summary,
}

/// Flowgate minus baseline.
#[derive(Debug, Serialize)]
pub struct Added {
    /// p50 difference, µs.
    pub p50_us: f64,
    /// p99 difference, µs.
    pub p99_us: f64,
    /// p999 difference, µs.
    pub p999_us: f64,
    /// flowgate p99 / baseline p99.
    pub p99_ratio: f64,
}

/// The `extproc` report.
#[derive(Debug, Serialize)]
pub struct ExtprocReport {
    /// Run facts.
    pub run: RunInfo,
    /// `in-process` or the external address driven.
    pub flowgate_server: String,
    /// Offered load, requests/s.
    pub rate: f64,
    /// Concurrent client streams.
    pub streams: usize,
    /// HTTP/2 connections per server.
    pub connections: usize,
    /// Client runtime threads.
    pub client_threads: usize,
    /// Measured seconds per server.
    pub seconds: f64,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Engine shards of the in-process flowgate (0 when external).
    pub shards: usize,
    /// Baseline first, then flowgate.
    pub results: Vec<TargetResult>,
    /// What flowgate adds.
    pub added: Added,
    /// The target on added p99, µs.
    pub target_added_p99_us: f64,
    /// Whether both servers sustained the offered load (achieved ≥ 95 % of offered, p99 send lag
    /// ≤ 1 ms); when not,
    /// the client (or the machine) is the bottleneck and latencies include its backlog.
    pub sustained: bool,
    /// Whether this run met the target (reported, never enforced); `null` when the run is not at
    /// the target's load (≥ 10k rps over ≥ 256 streams) or did not sustain it.
    pub target_met: Option<bool>,
}

/// Run the `extproc` subcommand.
pub fn run(o: &Options, out_dir: &Path) -> io::Result<ExtprocReport> {
    if !(o.rate.is_finite() && o.rate > 0.0) || o.streams == 0 || o.connections == 0 {
        return Err(io::Error::other("extproc: --rate, --streams and --connections must be positive"));
    }
    let rounds = o.rounds.max(1);
    let per_round = Duration::from_secs_f64(o.seconds / rounds as f64);
    let warmup = Duration::from_secs_f64(if o.quick { 0.2 } else { 1.0 });

    let (baseline, baseline_addr) = start_baseline()?;
    let (flowgate, flowgate_url) = match &o.addr {
        Some(a) => (None, url(a)),
        None => {
            let (s, addr) = start_flowgate(o.shards)?;
            (Some(s), format!("http://{addr}"))
        }
    };
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.client_threads.max(1))
        .enable_all()
        .thread_name("extproc-client")
        .build()?;
    let connected = client_rt.block_on(async {
        let b = connect(format!("http://{baseline_addr}"), o.connections).await?;
        let f = connect(flowgate_url.clone(), o.connections).await?;
        Ok::<_, tonic::transport::Error>((b, f))
    });
    let (baseline_clients, flowgate_clients) = match connected {
        Ok(c) => c,
        Err(e) => {
            baseline.stop();
            if let Some(f) = flowgate {
                f.stop();
            }
            return Err(io::Error::other(format!("extproc: cannot connect: {e} ({flowgate_url})")));
        }
    };
    let targets: [(&str, &[Client], bool); 2] =
        [("baseline", &baseline_clients, false), ("flowgate", &flowgate_clients, true)];

    // Warm up (connections, flowgate's per-thread submitters), then alternate the measurements.
    for (name, clients, want) in targets {
        phase(&client_rt, clients, want, o.rate, o.streams, warmup, &format!("extproc warmup {name}"));
    }
    let mut measured = [Measured::default(), Measured::default()];
    let mut windows = [Duration::ZERO; 2];
    for r in 0..rounds {
        for j in 0..2 {
            let i = (r + j) % 2;
            let (name, clients, want) = targets[i];
            let label = format!("extproc {name} {} rps ×{}", report::si(o.rate), o.streams);
            let (t, w) = phase(&client_rt, clients, want, o.rate, o.streams, per_round, &label);
            measured[i].merge(t);
            windows[i] += w;
        }
    }
    drop((baseline_clients, flowgate_clients));
    client_rt.shutdown_timeout(Duration::from_secs(1));
    baseline.stop();
    if let Some(f) = flowgate {
        f.stop();
    }

    let results: Vec<TargetResult> = ["baseline", "flowgate"]
        .iter()
        .zip(measured)
        .zip(windows)
        .map(|((name, m), w)| TargetResult {
            target: name.to_string(),
            load: LoadFigures::new(&m, o.rate, w),
            from_schedule: m.from_schedule.summary(),
        })
        .collect();
    let sustained = results.iter().all(|r| {
        r.load.achieved_rps >= SUSTAINED_SHARE * r.load.offered_rps
            && r.load.send_lag.p99_ms <= SUSTAINED_LAG_P99_MS
    });
    let (b, f) = (&results[0].load.latency, &results[1].load.latency);
    let added = Added {
        p50_us: (f.p50_ms - b.p50_ms) * 1e3,
        p99_us: (f.p99_ms - b.p99_ms) * 1e3,
        p999_us: (f.p999_ms - b.p999_ms) * 1e3,
        p99_ratio: if b.p99_ms > 0.0 { f.p99_ms / b.p99_ms } else { 0.0 },
    };
    let report = ExtprocReport {
        run: RunInfo::now(o.quick),
        flowgate_server: o.addr.clone().unwrap_or_else(|| "in-process".into()),
        rate: o.rate,
        streams: o.streams,
        connections: o.connections,
        client_threads: o.client_threads.max(1),
        seconds: o.seconds,
        rounds,
        shards: if o.addr.is_some() { 0 } else { o.shards },
        sustained,
        target_met: (sustained && o.rate >= TARGET_RATE && o.streams >= TARGET_STREAMS)
            .then_some(added.p99_us <= TARGET_ADDED_P99_US),
        results,
        added,
        target_added_p99_us: TARGET_ADDED_P99_US,
    };
    report::write_json(out_dir, "extproc", &report)?;
    print_table(&report);

    let broken: Vec<String> = report.results.iter().filter_map(|r| r.load.broken(&r.target)).collect();
    if !broken.is_empty() {
        return Err(io::Error::other(format!(
            "extproc: every request must complete with free capacity: {}",
            broken.join("; ")
        )));
    }
    Ok(report)
}

fn print_table(r: &ExtprocReport) {
    let us = |v: f64| format!("{:.0}", v * 1e3);
    let mut t = Table::new(&[
        "server",
        "offered/s",
        "achieved/s",
        "completed",
        "failed",
        "skipped",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "max µs",
        "p99 sched→answer µs",
        "p99 send lag µs",
    ]);
    for x in &r.results {
        t.row(vec![
            x.target.clone(),
            report::si(x.load.offered_rps),
            report::si(x.load.achieved_rps),
            x.load.completed.to_string(),
            (x.load.failed + x.load.not_dispatched).to_string(),
            x.load.skipped.to_string(),
            us(x.load.latency.p50_ms),
            us(x.load.latency.p99_ms),
            us(x.load.latency.p999_ms),
            us(x.load.latency.max_ms),
            us(x.from_schedule.p99_ms),
            us(x.load.send_lag.p99_ms),
        ]);
    }
    let a = &r.added;
    t.row(vec![
        "added (flowgate − baseline)".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        format!("{:+.0}", a.p50_us),
        format!("{:+.0}", a.p99_us),
        format!("{:+.0}", a.p999_us),
        String::new(),
        String::new(),
    ]);
    println!(
        "\n== extproc (send → headers answer over loopback gRPC, open loop, {} streams on {} connection(s), flowgate {}) ==\n{}",
        r.streams,
        r.connections,
        r.flowgate_server,
        t.render()
    );
    let verdict = match r.target_met {
        Some(true) => "met".to_string(),
        Some(false) => "missed".to_string(),
        None if r.rate < TARGET_RATE || r.streams < TARGET_STREAMS => {
            format!("not assessed at {} rps over {} streams", report::si(r.rate), r.streams)
        }
        None => format!(
            "not assessed: the offered load was not sustained (achieved < {:.0} % or p99 send lag > {} ms: the client/machine is saturated)",
            SUSTAINED_SHARE * 100.0,
            SUSTAINED_LAG_P99_MS
        ),
    };
    println!(
        "p99 flowgate / baseline: {:.2}x (added {:+.0} µs); target: flowgate adds ≤ {:.0} µs at p99 at {} rps over {} streams: {verdict}",
        a.p99_ratio,
        a.p99_us,
        r.target_added_p99_us,
        report::si(TARGET_RATE),
        TARGET_STREAMS,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole harness at a trickle: both servers, every request completes.
    #[test]
    fn a_small_run_completes_every_request() {
        let dir = std::env::temp_dir().join(format!("flowgate-extproc-test-{}", std::process::id()));
        let o = Options {
            quick: true,
            rate: 400.0,
            streams: 8,
            connections: 2,
            client_threads: 1,
            seconds: 0.3,
            rounds: 1,
            shards: 1,
            addr: None,
        };
        let r = run(&o, &dir).expect("run");
        for x in &r.results {
            assert_eq!((x.load.failed, x.load.not_dispatched), (0, 0), "{x:?}");
            assert_eq!(x.load.completed + x.load.skipped, x.load.scheduled, "{x:?}");
            assert!(x.load.completed > 0);
        }
        assert!(dir.join("extproc.json").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
