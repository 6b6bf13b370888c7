//! `flowgate-bench`: flowgate side by side with the designs it replaces.
//!
//! Every subcommand writes `<subcommand>.json` (and SVGs where it plots) under `--out`
//! (default `bench/results/`) and prints a summary table. `--quick` keeps the whole suite under a
//! minute on two cores. Targets are reported, never enforced: a slow run is not a failure; a
//! crash or an invalid result file is.

use clap::{Args, Parser, Subcommand};
use flowgate_bench::{baseline, latency, report, scenarios, throughput};
use std::path::PathBuf;
use std::process::ExitCode;

mod cluster;
mod envoy_modes;
mod extproc;
mod pool;
mod scrape_cost;
mod streams;
mod usage_cost;
mod validate;

/// The allocator `flowgate serve` ships with, for every implementation measured here alike.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "flowgate-bench",
    version,
    about = "flowgate benchmarks: engine vs the seed's design vs a FIFO"
)]
struct Cli {
    /// Directory for JSON results and SVG plots.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone, Copy)]
struct Common {
    /// Short runs (the whole `all --quick` suite takes well under a minute).
    #[arg(long)]
    quick: bool,
    /// Shards of the multi-shard flowgate configuration (N).
    #[arg(long, default_value_t = 2)]
    shards: usize,
    /// Seconds per measurement (default: 0.6 quick, 3 full; scenarios: 3 quick, 12 full; extproc:
    /// 1.5 quick, 10 full per server).
    #[arg(long)]
    seconds: Option<f64>,
    /// Interleaved rounds per measurement (default: 2 quick, 5 full); the median is reported.
    #[arg(long)]
    rounds: Option<usize>,
    /// flowgate's `spin_before_park` in µs (default: the engine's, 50; 0 parks an idle shard and
    /// a waiting caller at once).
    #[arg(long)]
    spin_before_park_us: Option<u64>,
}

#[derive(Args, Debug, Clone, Copy)]
struct Load {
    /// Producer threads at saturation.
    #[arg(long, default_value_t = 2)]
    producers: usize,
    /// Requests each producer submits before waiting on them, at saturation.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Queue depth of the deep-queue variant.
    #[arg(long, default_value_t = 10_000)]
    depth: usize,
    /// Slots cycling in the deep-queue variant.
    #[arg(long, default_value_t = 128)]
    deep_slots: u32,
}

#[derive(Args, Debug, Clone)]
struct Pool {
    /// Model-server slots of the simulated pool.
    #[arg(long, default_value_t = 8)]
    slots: u32,
    /// Service time per request, ms.
    #[arg(long, default_value_t = 20.0)]
    service_ms: f64,
    /// Compressed scoring wait cap (and rate window), seconds (default 1.5 quick, 4 full).
    #[arg(long)]
    wait_cap: Option<f64>,
    /// Run only this scenario (basic_priority, wait_boost, rate_fairness, mixed_30_50_20,
    /// starvation, overload, token_fairness, quota_isolation).
    #[arg(long)]
    only: Option<String>,
    /// Run the implementations one after another (the default in full mode) instead of side by
    /// side (the default with --quick).
    #[arg(long)]
    sequential: bool,
}

#[derive(Args, Debug, Clone)]
struct ExtprocLoad {
    /// Offered ext_proc load, requests/s (open loop).
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Concurrent ext_proc client streams (one request in flight each).
    #[arg(long, default_value_t = 256)]
    streams: usize,
    /// HTTP/2 connections per server the streams share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Worker threads of the ext_proc client runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Drive an external `flowgate serve` at this address (host:port) instead of an in-process
    /// server; give it free capacity: every request must be dispatched.
    #[arg(long)]
    addr: Option<String>,
}

#[derive(Args, Debug, Clone, Copy)]
struct ScrapeLoad {
    /// Backends scraped.
    #[arg(long, default_value_t = 100)]
    backends: usize,
    /// Scrape interval, ms.
    #[arg(long, default_value_t = 50)]
    interval_ms: u64,
}

#[derive(Args, Debug, Clone)]
struct PoolLoad {
    /// Offered load as a multiple of the pool's derived capacity.
    #[arg(long, default_value_t = 1.5)]
    load_factor: f64,
    /// Each backend's max_inflight for the concurrency, both and fifo configurations (default:
    /// 12, the pool's mean batch size).
    #[arg(long)]
    max_inflight: Option<u32>,
    /// Speeds of the simulated servers, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1.0, 1.0, 0.33])]
    speeds: Vec<f64>,
    /// Batch sizes (--max-num-seqs) of the simulated servers, comma-separated, one per speed.
    #[arg(long, value_delimiter = ',', default_values_t = vec![16, 16, 4])]
    max_num_seqs: Vec<usize>,
    /// Configurations to compare, comma-separated (concurrency, utilization, both, fifo).
    #[arg(long, value_delimiter = ',', default_values_t = vec!["concurrency".to_string(), "utilization".into(), "both".into(), "fifo".into()])]
    configs: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// CPU of scraping many backends' metrics pages (40 KB vLLM page each), against no scrapers.
    ScrapeCost {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        scrape: ScrapeLoad,
    },
    /// (internal) serve the scrape-cost page; used by `scrape-cost` as its child process.
    #[command(hide = true)]
    ServePage,
    /// Requests/s through submit → dispatch → release: low load, saturation, 10k queued.
    Throughput {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
    },
    /// p50/p99/p999 submit → dispatched latency with free capacity.
    Latency {
        #[command(flatten)]
        common: Common,
    },
    /// Saturation throughput vs shards (1, 2, 4), with an SVG plot.
    Scaling {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
    },
    /// The seed's scenarios on a simulated model-server pool, and token_fairness and quota_isolation on
    /// flowgate-sim.
    Scenarios {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        pool: Pool,
    },
    /// ext_proc load generator: flowgate's added latency over a bare ext_proc server (open loop).
    Extproc {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        ext: ExtprocLoad,
    },
    /// The ext_proc path under each core layout (shards × io_threads, `auto` first) at 2k and 5k
    /// requests/s, side by side.
    Layouts {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        ext: ExtprocLoad,
    },
    /// Saturation detectors on a heterogeneous flowgate-sim pool at 1.5x capacity, via ext_proc.
    Pool {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        pool: PoolLoad,
    },
    /// RSS per open ext_proc stream: `flowgate serve` beside a bare tonic ext_proc server.
    Streams {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        streams: streams::StreamsLoad,
    },
    /// Cluster mode: peak concurrency vs max_inflight (connected, Redis down, standalone), a
    /// flood's rate on B vs A, per-replica throughput vs standalone, sync cost.
    Cluster {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        cluster: cluster::ClusterLoad,
    },
    /// CPU usage accounting adds to the ext_proc path: metered vs unmetered streamed responses.
    UsageCost {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: usage_cost::UsageCostLoad,
    },
    /// Requests/s through a real Envoy with and without the response-body mode override (64-chunk
    /// streams from flowgate-sim): workload `plain` (override) vs `metered` (every chunk read).
    EnvoyModes {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        envoy: envoy_modes::EnvoyModesLoad,
    },
    /// (internal) a bare tonic ext_proc server that only names a destination; used by `streams`.
    #[command(hide = true)]
    ServeBare {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Everything, in order.
    All {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        pool: Pool,
        #[command(flatten)]
        ext: ExtprocLoad,
        #[command(flatten)]
        sim_pool: PoolLoad,
    },
}

fn tput_options(c: &Common, l: &Load) -> throughput::Options {
    throughput::Options {
        quick: c.quick,
        shards: c.shards,
        producers: l.producers,
        batch: l.batch,
        seconds: c.seconds.unwrap_or(if c.quick { 0.6 } else { 3.0 }),
        rounds: rounds(c),
        depth: l.depth,
        deep_slots: l.deep_slots,
    }
}

fn scenario_options(c: &Common, p: &Pool) -> scenarios::Options {
    scenarios::Options {
        quick: c.quick,
        slots: p.slots,
        service_ms: p.service_ms,
        shards: c.shards,
        duration_s: c.seconds.unwrap_or(if c.quick { 3.0 } else { 12.0 }),
        wait_cap_s: p.wait_cap.unwrap_or(if c.quick { 1.5 } else { 4.0 }),
        only: p.only.clone(),
        sequential: p.sequential || !c.quick,
    }
}

fn latency_seconds(c: &Common) -> f64 {
    c.seconds.unwrap_or(if c.quick { 0.6 } else { 3.0 })
}

fn rounds(c: &Common) -> usize {
    c.rounds.unwrap_or(if c.quick { 2 } else { 5 })
}

fn layouts_options(c: &Common, e: &ExtprocLoad) -> extproc::layouts::Options {
    extproc::layouts::Options {
        quick: c.quick,
        rates: extproc::layouts::RATES.to_vec(),
        streams: e.streams,
        connections: e.connections,
        seconds: c.seconds.unwrap_or(if c.quick { 0.6 } else { 4.0 }),
        rounds: rounds(c),
    }
}

fn extproc_options(c: &Common, e: &ExtprocLoad) -> extproc::Options {
    extproc::Options {
        quick: c.quick,
        rate: e.rate,
        streams: e.streams,
        connections: e.connections,
        client_threads: e.client_threads,
        seconds: c.seconds.unwrap_or(if c.quick { 1.5 } else { 10.0 }),
        rounds: rounds(c),
        shards: c.shards,
        addr: e.addr.clone(),
    }
}

fn scrape_options(c: &Common, s: &ScrapeLoad) -> scrape_cost::Options {
    scrape_cost::Options {
        quick: c.quick,
        backends: s.backends,
        interval_ms: s.interval_ms,
        seconds: c.seconds.unwrap_or(if c.quick { 2.0 } else { 10.0 }),
    }
}

fn pool_options(c: &Common, p: &PoolLoad) -> Result<pool::Options, std::io::Error> {
    let configs = p
        .configs
        .iter()
        .map(|n| {
            pool::Kind::parse(n).ok_or_else(|| std::io::Error::other(format!("pool: unknown config {n:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if configs.is_empty() || p.speeds.is_empty() || !p.speeds.iter().all(|s| s.is_finite() && *s > 0.0) {
        return Err(std::io::Error::other("pool: --configs and --speeds (positive) must not be empty"));
    }
    if p.max_num_seqs.len() != p.speeds.len() || p.max_num_seqs.contains(&0) {
        return Err(std::io::Error::other("pool: --max-num-seqs needs one positive batch size per speed"));
    }
    if !(p.load_factor.is_finite() && p.load_factor > 0.0) {
        return Err(std::io::Error::other("pool: --load-factor must be positive"));
    }
    Ok(pool::Options {
        quick: c.quick,
        seconds: c.seconds.unwrap_or(if c.quick { 2.5 } else { 8.0 }),
        rounds: c.rounds.unwrap_or(if c.quick { 1 } else { 2 }),
        load_factor: p.load_factor,
        max_inflight: p.max_inflight,
        speeds: p.speeds.clone(),
        max_num_seqs: p.max_num_seqs.clone(),
        configs,
    })
}

/// A hung run is a broken harness (or engine), not a slow one: give up loudly long after any
/// plausible run time.
fn watchdog(quick: bool) {
    let limit = std::time::Duration::from_secs(if quick { 600 } else { 3600 });
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("flowgate-bench: watchdog: still running after {} s; something hangs", limit.as_secs());
        std::process::exit(2);
    });
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let common = match &cli.command {
        Command::Throughput { common, .. }
        | Command::Latency { common }
        | Command::Scaling { common, .. }
        | Command::Scenarios { common, .. }
        | Command::Extproc { common, .. }
        | Command::ScrapeCost { common, .. }
        | Command::Pool { common, .. }
        | Command::Streams { common, .. }
        | Command::EnvoyModes { common, .. }
        | Command::Layouts { common, .. }
        | Command::Cluster { common, .. }
        | Command::UsageCost { common, .. }
        | Command::All { common, .. } => *common,
        Command::ServeBare { listen } => {
            return match streams::procs::serve_bare(listen) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("serve-bare: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::ServePage => {
            return match scrape_cost::serve_page() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("serve-page: {e}");
                    ExitCode::FAILURE
                }
            };
        }
    };
    watchdog(common.quick);
    if let Some(us) = common.spin_before_park_us {
        baseline::set_spin_before_park(std::time::Duration::from_micros(us));
    }
    let out = cli.out.clone().unwrap_or_else(report::default_out_dir);
    let result: Result<Vec<&str>, std::io::Error> = match &cli.command {
        Command::Throughput { common, load } => {
            throughput::run(&tput_options(common, load), &out).map(|_| vec!["throughput"])
        }
        Command::Latency { common } => {
            latency::run(common.quick, common.shards, latency_seconds(common), rounds(common), &out)
                .map(|_| vec!["latency"])
        }
        Command::Scaling { common, load } => {
            throughput::run_scaling(&tput_options(common, load), &out).map(|_| vec!["scaling"])
        }
        Command::Scenarios { common, pool } => {
            scenarios::run(&scenario_options(common, pool), &out).map(|_| vec!["scenarios"])
        }
        Command::Extproc { common, ext } => {
            extproc::run(&extproc_options(common, ext), &out).map(|_| vec!["extproc"])
        }
        Command::Layouts { common, ext } => {
            extproc::layouts::run(&layouts_options(common, ext), &out).map(|_| vec!["layouts"])
        }
        Command::ScrapeCost { common, scrape } => {
            scrape_cost::run(&scrape_options(common, scrape), &out).map(|_| vec!["scrape_cost"])
        }
        Command::Streams { common, streams } => {
            streams.options(common.quick).and_then(|o| streams::run(&o, &out)).map(|_| vec!["streams"])
        }
        Command::Cluster { common, cluster } => cluster
            .settings(common.quick, common.seconds, common.rounds)
            .and_then(|s| cluster::run(&s, &out))
            .map(|_| vec!["cluster"]),
        Command::UsageCost { common, load } => {
            let o = load.options(common.quick, common.seconds, common.rounds);
            usage_cost::run(&o, &out).map(|_| vec!["usage_cost"])
        }
        Command::EnvoyModes { common, envoy } => envoy
            .options(common.quick, common.seconds, common.rounds)
            .and_then(|o| envoy_modes::run(&o, &out))
            .map(|_| vec!["envoy_modes"]),
        Command::ServePage | Command::ServeBare { .. } => unreachable!("handled above"),
        Command::Pool { common, pool } => {
            pool_options(common, pool).and_then(|o| pool::run(&o, &out)).map(|_| vec!["pool"])
        }
        Command::All { common, load, pool, ext, sim_pool } => (|| {
            let t = tput_options(common, load);
            throughput::run(&t, &out)?;
            latency::run(common.quick, common.shards, latency_seconds(common), rounds(common), &out)?;
            throughput::run_scaling(&t, &out)?;
            scenarios::run(&scenario_options(common, pool), &out)?;
            extproc::run(&extproc_options(common, ext), &out)?;
            extproc::layouts::run(&layouts_options(common, ext), &out)?;
            scrape_cost::run(&scrape_options(common, &ScrapeLoad { backends: 100, interval_ms: 50 }), &out)?;
            pool::run(&pool_options(common, sim_pool)?, &out)?;
            Ok(vec![
                "throughput",
                "latency",
                "scaling",
                "scenarios",
                "extproc",
                "layouts",
                "scrape_cost",
                "pool",
            ])
        })(),
    };
    let written = match result {
        Ok(w) => w,
        Err(e) => {
            eprintln!("flowgate-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for name in &written {
        if let Err(e) = validate::validate(&out, name) {
            eprintln!("flowgate-bench: invalid output: {e}");
            ok = false;
        }
    }
    if !written.is_empty() {
        println!("\nresults: {}", out.display());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
