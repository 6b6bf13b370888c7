//! `layouts`: the ext_proc path under each core layout (shards × I/O threads), side by side in one
//! run, so that `auto` can be checked against the others on this machine.
//!
//! Each layout is a full `flowgate serve` in this process, its runtime built as the binary builds
//! it ([`flowgate::io_runtime::build`]: `io_threads` workers pinned to the CPUs its shards leave),
//! with free capacity. The open-loop client of `extproc` drives each in turn at every rate, the
//! order rotating per round; the histograms of a layout's rounds are merged. The bare tonic server
//! runs in the same rounds as the reference. The client and the bare server are not pinned.
//!
//! Every round measures each layout twice: on an otherwise idle machine, and beside a **busy
//! neighbour** (a child process, unpinned, spinning for the whole measurement, as a busy Envoy, a
//! sidecar or a noisy tenant would). A layout that pins its I/O thread to one CPU cannot leave that
//! CPU when the neighbour lands there; one that shares every CPU can, which is why `auto` shares on
//! small machines (README, "Core layout").

use super::client::Client;
use super::load::{connect, phase, Measured};
use super::server::start_baseline;
use flowgate::config::ServeConfig;
use flowgate::serve::{self, Running};
use flowgate_bench::report::{self, RunInfo, Table};
use flowgate_bench::stats::Summary;
use flowgate_engine::layout::Layout;
use serde::Serialize;
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::runtime::Runtime;

/// The loads for the layout comparison, requests/s.
pub const RATES: [f64; 2] = [2_000.0, 5_000.0];

/// Where a measured layout's I/O threads may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoCpus {
    /// Every allowed CPU (sharing the shards').
    Every,
    /// The CPUs the shards leave (if any are left).
    Free,
    /// The shards' own CPUs (leaving the others to the rest of the machine).
    Shards,
}

/// A layout measured besides `auto`: shards, I/O threads, and where the I/O threads run.
pub const LAYOUTS: [(usize, usize, IoCpus); 6] = [
    (1, 1, IoCpus::Free),
    (1, 1, IoCpus::Every),
    (1, 1, IoCpus::Shards),
    (1, 2, IoCpus::Every),
    (2, 2, IoCpus::Every),
    (2, 1, IoCpus::Every),
];

/// The two machine conditions each layout is measured under: idle, and beside a busy neighbour.
pub const CONDITIONS: [Condition; 2] = [Condition::Idle, Condition::BusyNeighbour];

/// What else runs on the machine while a layout is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Nothing but the client (and the idle other servers).
    Idle,
    /// One more process, unpinned, spinning for the whole measurement.
    BusyNeighbour,
}

impl Condition {
    fn label(self) -> &'static str {
        match self {
            Condition::Idle => "idle machine",
            Condition::BusyNeighbour => "busy neighbour",
        }
    }
}

/// A process that spins until dropped (the busy neighbour): `sh -c 'while :; do :; done'`,
/// killed with the bench if it dies first.
struct Neighbour(Child);

impl Neighbour {
    fn start() -> io::Result<Self> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "while :; do :; done"]).stdin(Stdio::null()).stdout(Stdio::null());
        flowgate_bench::child::die_with_parent(&mut cmd);
        cmd.spawn().map(Neighbour)
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Quick mode (CI).
    pub quick: bool,
    /// Offered loads, requests/s.
    pub rates: Vec<f64>,
    /// Concurrent client streams.
    pub streams: usize,
    /// HTTP/2 connections per server.
    pub connections: usize,
    /// Measured seconds per (layout, rate), over all rounds.
    pub seconds: f64,
    /// Interleaved rounds.
    pub rounds: usize,
}

/// One (server, rate) cell.
#[derive(Debug, Serialize)]
pub struct Cell {
    /// `baseline` or the layout's config, e.g. `shards 0 (auto), io_threads 0 (auto)`.
    pub server: String,
    /// What it resolved to here, e.g. `2 CPUs: 1 shard on CPU 0; 1 I/O thread on CPU 1`.
    pub layout: String,
    /// Whether this is the default (`auto`) layout.
    pub default: bool,
    /// What else ran on the machine.
    pub condition: Condition,
    /// Offered load, requests/s.
    pub offered_rps: f64,
    /// Completed / window.
    pub achieved_rps: f64,
    /// Failed streams and non-dispatch answers (must be 0: capacity is free).
    pub failed: u64,
    /// Send → headers answer.
    pub latency: Summary,
}

/// The `layouts` report.
#[derive(Debug, Serialize)]
pub struct LayoutsReport {
    /// Run facts.
    pub run: RunInfo,
    /// Concurrent client streams.
    pub streams: usize,
    /// Every (server, condition, rate) cell.
    pub cells: Vec<Cell>,
    /// Per condition and rate: the default layout's p50 and p99 against the best other layout's
    /// (ratio ≤ 1 = the default is no worse).
    pub default_vs_best: Vec<DefaultVsBest>,
}

/// The default layout against the best other one at one rate and condition.
#[derive(Debug, Serialize)]
pub struct DefaultVsBest {
    /// What else ran on the machine.
    pub condition: Condition,
    /// Offered load, requests/s.
    pub offered_rps: f64,
    /// Default p50 / the lowest other p50.
    pub p50_ratio: f64,
    /// Default p99 / the lowest other p99.
    pub p99_ratio: f64,
}

struct Target {
    name: String,
    layout: String,
    default: bool,
    clients: Vec<Client>,
    want_destination: bool,
}

/// Run the `layouts` subcommand.
pub fn run(o: &Options, out_dir: &Path) -> io::Result<LayoutsReport> {
    let rounds = o.rounds.max(1);
    let per_round = Duration::from_secs_f64(o.seconds / rounds as f64);
    let (baseline, baseline_addr) = start_baseline()?;
    let mut servers: Vec<(Runtime, Running)> = Vec::new();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("layouts-client")
        .build()?;
    let mut targets = vec![Target {
        name: "baseline".into(),
        layout: "bare tonic server, unpinned".into(),
        default: false,
        clients: client_rt
            .block_on(connect(format!("http://{baseline_addr}"), o.connections))
            .map_err(|e| io::Error::other(format!("layouts: baseline: {e}")))?,
        want_destination: false,
    }];
    let cpus = flowgate_engine::layout::allowed_cpus();
    let auto = ServeConfig::from_yaml("{}").map_err(|e| io::Error::other(format!("{e:?}")))?.layout();
    let explicit = LAYOUTS.iter().map(|&(shards, io_threads, place)| {
        let plan = Layout::plan(&cpus, shards, io_threads);
        // Where the I/O threads go is the layout's own choice, whatever `auto` would do here.
        let free: Vec<usize> = cpus.iter().copied().skip(shards).collect();
        let io_cpus = match place {
            IoCpus::Free if !free.is_empty() => free,
            IoCpus::Shards => {
                let mut own = plan.shard_cpus.clone();
                own.sort_unstable();
                own.dedup();
                own
            }
            IoCpus::Free | IoCpus::Every => cpus.clone(),
        };
        Layout { io_cpus, ..plan }
    });
    // `auto` first, then the others (one equal to `auto` is skipped).
    let layouts: Vec<(Layout, bool)> = std::iter::once((auto.clone(), true))
        .chain(explicit.filter(|l| *l != auto).map(|l| (l, false)))
        .collect();
    for (layout, default) in layouts {
        let (rt, running) = start_layout(&layout)?;
        let addr = running.grpc_addr();
        let clients = client_rt
            .block_on(connect(format!("http://{addr}"), o.connections))
            .map_err(|e| io::Error::other(format!("layouts: {addr}: {e}")))?;
        targets.push(Target {
            name: format!(
                "{} shard(s), {} I/O thread(s){}",
                layout.shard_cpus.len(),
                layout.io_threads,
                if default { " (auto)" } else { "" }
            ),
            layout: layout.describe(),
            default,
            clients,
            want_destination: true,
        });
        servers.push((rt, running));
    }
    let warmup = Duration::from_secs_f64(if o.quick { 0.2 } else { 0.5 });
    for t in &targets {
        phase(&client_rt, &t.clients, t.want_destination, o.rates[0], o.streams, warmup, "layouts warmup");
    }
    // measured[target][condition][rate]
    let mut measured: Vec<Vec<Vec<(Measured, Duration)>>> = targets
        .iter()
        .map(|_| {
            CONDITIONS
                .iter()
                .map(|_| o.rates.iter().map(|_| (Measured::default(), Duration::ZERO)).collect())
                .collect()
        })
        .collect();
    for r in 0..rounds {
        for (c, condition) in CONDITIONS.iter().enumerate() {
            let _neighbour = match condition {
                Condition::Idle => None,
                Condition::BusyNeighbour => Some(Neighbour::start()?),
            };
            for (k, rate) in o.rates.iter().enumerate() {
                for j in 0..targets.len() {
                    let i = (r + j) % targets.len();
                    let t = &targets[i];
                    let label = format!("layouts {} {} {} rps", t.name, condition.label(), report::si(*rate));
                    let (m, w) = phase(
                        &client_rt,
                        &t.clients,
                        t.want_destination,
                        *rate,
                        o.streams,
                        per_round,
                        &label,
                    );
                    measured[i][c][k].0.merge(m);
                    measured[i][c][k].1 += w;
                }
            }
        }
    }
    let mut cells = Vec::new();
    for (t, per_condition) in targets.iter().zip(measured) {
        for (condition, per_rate) in CONDITIONS.iter().zip(per_condition) {
            for (rate, (m, w)) in o.rates.iter().zip(per_rate) {
                cells.push(Cell {
                    server: t.name.clone(),
                    layout: t.layout.clone(),
                    default: t.default,
                    condition: *condition,
                    offered_rps: *rate,
                    achieved_rps: if w.is_zero() { 0.0 } else { m.tally.completed as f64 / w.as_secs_f64() },
                    failed: m.tally.failed + m.tally.not_dispatched,
                    latency: m.latency.summary(),
                });
            }
        }
    }
    drop(targets);
    client_rt.shutdown_timeout(Duration::from_secs(1));
    baseline.stop();
    for (rt, running) in servers {
        rt.block_on(running.shutdown());
        rt.shutdown_timeout(Duration::from_secs(1));
    }
    let default_vs_best = CONDITIONS
        .iter()
        .flat_map(|condition| o.rates.iter().map(move |rate| (*condition, *rate)))
        .map(|(condition, rate)| {
            let at = |c: &&Cell| c.offered_rps == rate && c.condition == condition && c.server != "baseline";
            let default = cells.iter().filter(at).find(|c| c.default).expect("the default layout ran");
            let best = |f: fn(&Summary) -> f64| {
                cells
                    .iter()
                    .filter(at)
                    .filter(|c| !c.default)
                    .map(|c| f(&c.latency))
                    .fold(f64::INFINITY, f64::min)
            };
            DefaultVsBest {
                condition,
                offered_rps: rate,
                p50_ratio: default.latency.p50_ms / best(|s| s.p50_ms),
                p99_ratio: default.latency.p99_ms / best(|s| s.p99_ms),
            }
        })
        .collect();
    let report = LayoutsReport { run: RunInfo::now(o.quick), streams: o.streams, cells, default_vs_best };
    report::write_json(out_dir, "layouts", &report)?;
    print_table(&report);
    let broken: Vec<String> = report
        .cells
        .iter()
        .filter(|c| c.failed > 0)
        .map(|c| format!("{} ({}) at {}/s", c.server, c.condition.label(), c.offered_rps))
        .collect();
    if !broken.is_empty() {
        return Err(io::Error::other(format!(
            "layouts: failed requests with free capacity: {}",
            broken.join(", ")
        )));
    }
    Ok(report)
}

/// A `flowgate serve` with this layout (its shards as the engine places them, its runtime as
/// `layout` says), with free capacity.
fn start_layout(layout: &Layout) -> io::Result<(Runtime, Running)> {
    let yaml = format!(
        "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: {}\nio_threads: {}\nbackends:\n  - address: 10.0.0.1:8000\n    max_inflight: 100000\nqueue:\n  max_requests: 100000\n",
        layout.shard_cpus.len(),
        layout.io_threads
    );
    let mut config =
        ServeConfig::from_yaml(&yaml).map_err(|e| io::Error::other(format!("layouts: config: {e:?}")))?;
    if let Some(spin) = flowgate_bench::baseline::spin_before_park() {
        config.engine.spin_before_park = spin;
    }
    let rt = flowgate::io_runtime::build(layout, "layouts-io")?;
    let running =
        rt.block_on(serve::start(config)).map_err(|e| io::Error::other(format!("layouts: serve: {e}")))?;
    Ok((rt, running))
}

fn print_table(r: &LayoutsReport) {
    let us = |v: f64| format!("{:.0}", v * 1e3);
    let mut t = Table::new(&[
        "server",
        "layout here",
        "machine",
        "offered/s",
        "achieved/s",
        "failed",
        "p50 µs",
        "p99 µs",
        "p999 µs",
    ]);
    for c in &r.cells {
        t.row(vec![
            format!("{}{}", c.server, if c.default { " [default]" } else { "" }),
            c.layout.clone(),
            c.condition.label().into(),
            report::si(c.offered_rps),
            report::si(c.achieved_rps),
            c.failed.to_string(),
            us(c.latency.p50_ms),
            us(c.latency.p99_ms),
            us(c.latency.p999_ms),
        ]);
    }
    println!(
        "\n== layouts (ext_proc send → headers answer, {} streams, open loop) ==\n{}",
        r.streams,
        t.render()
    );
    for d in &r.default_vs_best {
        println!(
            "{}, {} rps: default layout p50 {:.2}x, p99 {:.2}x of the best other layout (target: ≤ 1.00x)",
            d.condition.label(),
            report::si(d.offered_rps),
            d.p50_ratio,
            d.p99_ratio
        );
    }
}
