//! `streams`: memory per open ext_proc stream, flowgate beside a bare tonic ext_proc server in the
//! same run.
//!
//! An LLM gateway holds one ext_proc stream per request for the whole generation, so tens of
//! thousands stay open at once. Each server runs as its own process (the real `flowgate serve`
//! binary on a config whose backend has room for every stream; `flowgate-bench serve-bare`, a
//! tonic server that only names a destination). For each, one after the other:
//!
//! 1. **idle**: its RSS once it says it serves;
//! 2. **warm**: after connecting and opening and closing [`WARMUP_STREAMS`] streams (one-time
//!    costs: connections, per-thread submitters, first allocations);
//! 3. **held**: with N streams open in their steady state ([`hold`]: dispatched, response
//!    headers answered, waiting for the body), every answer received;
//! 4. **closed**: after all N closed cleanly;
//! 5. **settled**: RSS read every [`SETTLE_POLL`] after the closes for [`SETTLE_MAX`] (less once
//!    it is back within [`SETTLED_SHARE`] of the burst's growth over warm): how much of the
//!    burst's memory a server gives back once the burst is over, and how soon (the time of the
//!    last fall of at least [`SETTLE_STEP_KIB`]; flowgate's allocator housekeeping,
//!    `shim/src/allocator.rs`).
//!
//! Per stream = (held − warm) / N. Steps 1–4 wait on their answers, never on a timer; step 5
//! watches the quantity it measures, within a bound. Targets are reported, never enforced; a
//! stream that fails to open or close is a broken harness and fails the run. Reads `/proc`, so
//! Linux only.

mod hold;
pub mod procs;

use flowgate_bench::report::{self, RunInfo, Table};
use procs::{Memory, Server};
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The targets: at most this many KiB of RSS per open stream ...
pub const TARGET_KIB_PER_STREAM: f64 = 20.0;
/// ... at most this multiple of the bare server's, in the same run ...
pub const TARGET_RATIO: f64 = 1.25;
/// ... and at most this idle RSS (MiB).
pub const TARGET_IDLE_MIB: f64 = 16.0;
/// Streams opened and closed before the warm reading.
pub const WARMUP_STREAMS: usize = 32;
/// How often RSS is read while it settles after the closes.
pub const SETTLE_POLL: Duration = Duration::from_millis(100);
/// Longest the settled reading waits (flowgate's housekeeping gave the burst back 0.7–4.0 s after
/// the closes: its allocator's 1 s purge delay, then its next collection, each second).
pub const SETTLE_MAX: Duration = Duration::from_secs(5);
/// RSS counts as settled once at most this share of the burst's growth (held − warm) is left.
pub const SETTLED_SHARE: f64 = 0.10;
/// A fall of RSS between two readings of step 5 at least this large counts as memory given back.
pub const SETTLE_STEP_KIB: u64 = 256;

/// The subcommand's own arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct StreamsLoad {
    /// Streams held open at once (default: 1000; 300 with --quick).
    #[arg(long)]
    streams: Option<usize>,
    /// HTTP/2 connections per server the streams share.
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// The `flowgate` binary to measure (default: the one beside flowgate-bench).
    #[arg(long, value_name = "PATH")]
    flowgate_bin: Option<PathBuf>,
    /// Extra environment for the flowgate process, KEY=VALUE (repeatable), e.g. allocator options.
    #[arg(long, value_name = "KEY=VALUE")]
    flowgate_env: Vec<String>,
    /// flowgate's `io_threads` (default: its `auto`; more workers free a stream's memory on more
    /// threads, which the settled reading shows).
    #[arg(long)]
    io_threads: Option<usize>,
}

impl StreamsLoad {
    /// The options these arguments give, in quick mode or not.
    pub fn options(&self, quick: bool) -> io::Result<Options> {
        let flowgate_env = self
            .flowgate_env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
                _ => Err(io::Error::other(format!("streams: --flowgate-env {kv:?} is not KEY=VALUE"))),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Options {
            quick,
            streams: self.streams.unwrap_or(if quick { 300 } else { 1000 }),
            connections: self.connections,
            flowgate_bin: self.flowgate_bin.clone(),
            flowgate_env,
            io_threads: self.io_threads,
        })
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Quick mode (CI).
    pub quick: bool,
    /// Streams held open at once.
    pub streams: usize,
    /// HTTP/2 connections per server the streams share (Envoy multiplexes over few).
    pub connections: usize,
    /// The `flowgate` binary (default: beside this one).
    pub flowgate_bin: Option<PathBuf>,
    /// Extra environment of the flowgate process (`KEY=VALUE`), for trying allocator knobs.
    pub flowgate_env: Vec<(String, String)>,
    /// flowgate's `io_threads` (`None`: its `auto`).
    pub io_threads: Option<usize>,
}

/// One server's readings.
#[derive(Debug, Serialize)]
pub struct ServerResult {
    /// `bare` or `flowgate`.
    pub server: String,
    /// Once serving.
    pub idle: Memory,
    /// After connecting and the warm-up streams.
    pub warm: Memory,
    /// With every stream held open.
    pub held: Memory,
    /// After closing them all.
    pub closed: Memory,
    /// The last reading of step 5 (settled, or at [`SETTLE_MAX`]).
    pub settled: Memory,
    /// When, after the closes, RSS last fell by [`SETTLE_STEP_KIB`] or more, ms (`None`: never).
    pub settled_after_ms: Option<u64>,
    /// Share of the burst's growth (held − warm) given back at the settled reading.
    pub returned_share: f64,
    /// (held − warm) RSS / streams, KiB.
    pub kib_per_stream: f64,
    /// (held − warm) anonymous RSS / streams, KiB.
    pub anon_kib_per_stream: f64,
    /// Idle RSS, MiB.
    pub idle_mib: f64,
}

/// Verdicts (reported, never enforced).
#[derive(Debug, Serialize)]
pub struct Targets {
    /// KiB per stream at most.
    pub kib_per_stream: f64,
    /// flowgate / bare per stream at most.
    pub ratio: f64,
    /// Idle MiB at most.
    pub idle_mib: f64,
    /// flowgate's per-stream RSS within both per-stream targets.
    pub per_stream_met: bool,
    /// flowgate's idle RSS within its target.
    pub idle_met: bool,
}

/// The `streams` report.
#[derive(Debug, Serialize)]
pub struct StreamsReport {
    /// Run facts.
    pub run: RunInfo,
    /// Streams held open at once.
    pub streams: usize,
    /// HTTP/2 connections per server.
    pub connections: usize,
    /// Extra environment given to flowgate.
    pub flowgate_env: Vec<String>,
    /// Bare first, then flowgate.
    pub results: Vec<ServerResult>,
    /// flowgate KiB per stream / bare KiB per stream.
    pub ratio: f64,
    /// The targets and whether this run met them.
    pub targets: Targets,
}

/// The flowgate config: the embedded default's everything, but a backend with room for every
/// stream (it is only named, never contacted), so each request is dispatched and stays in flight.
const FLOWGATE_CONFIG: &str = "backends:\n  - address: 127.0.0.1:8000\n    max_inflight: 100000\n";

fn kib_per(from: &Memory, to: &Memory, n: usize, anon: bool) -> f64 {
    let (a, b) = if anon { (from.anon_kib, to.anon_kib) } else { (from.rss_kib, to.rss_kib) };
    (b as f64 - a as f64) / n.max(1) as f64
}

/// Measure one server through the four steps.
fn measure(
    name: &str,
    server: Server,
    o: &Options,
    rt: &tokio::runtime::Runtime,
) -> io::Result<ServerResult> {
    let idle = server.memory()?;
    let steps = rt.block_on(async {
        let clients = hold::connect(&server.addr, o.connections).await?;
        hold::close_all(hold::open_all(&clients, WARMUP_STREAMS).await?).await?;
        let warm = server.memory().map_err(|e| e.to_string())?;
        let held_streams = hold::open_all(&clients, o.streams).await?;
        let held = server.memory().map_err(|e| e.to_string())?;
        hold::close_all(held_streams).await?;
        let closed_at = Instant::now();
        let closed = server.memory().map_err(|e| e.to_string())?;
        let (settled, settled_after) =
            settle(&server, &warm, &held, closed, closed_at).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((warm, held, closed, settled, settled_after))
    });
    server.stop();
    let (warm, held, closed, settled, settled_after) =
        steps.map_err(|e| io::Error::other(format!("streams: {name}: {e}")))?;
    Ok(ServerResult {
        server: name.to_string(),
        kib_per_stream: kib_per(&warm, &held, o.streams, false),
        anon_kib_per_stream: kib_per(&warm, &held, o.streams, true),
        idle_mib: idle.rss_kib as f64 / 1024.0,
        idle,
        warm,
        returned_share: returned_share(&warm, &held, &settled),
        held,
        closed,
        settled,
        settled_after_ms: settled_after.map(|d| d.as_millis() as u64),
    })
}

/// Share of the burst's RSS growth (`warm` to `held`) that `now` has given back (0 when the burst
/// grew nothing; above 1 when RSS fell below `warm`).
fn returned_share(warm: &Memory, held: &Memory, now: &Memory) -> f64 {
    let growth = held.rss_kib.saturating_sub(warm.rss_kib) as f64;
    if growth > 0.0 {
        (held.rss_kib as f64 - now.rss_kib as f64) / growth
    } else {
        0.0
    }
}

/// Step 5: read RSS every [`SETTLE_POLL`] from `closed` on until at most [`SETTLED_SHARE`] of
/// the growth from `warm` to `held` is left, or [`SETTLE_MAX`] has passed since `closed_at`: the
/// last reading, and when RSS last fell by [`SETTLE_STEP_KIB`] or more.
async fn settle(
    server: &Server,
    warm: &Memory,
    held: &Memory,
    closed: Memory,
    closed_at: Instant,
) -> io::Result<(Memory, Option<Duration>)> {
    let grew = held.rss_kib > warm.rss_kib;
    let settled = |m: &Memory| !grew || returned_share(warm, held, m) >= 1.0 - SETTLED_SHARE;
    let mut last = closed;
    let mut fell_at = None;
    while !settled(&last) && closed_at.elapsed() < SETTLE_MAX {
        tokio::time::sleep(SETTLE_POLL).await;
        let now = server.memory()?;
        if now.rss_kib + SETTLE_STEP_KIB <= last.rss_kib {
            fell_at = Some(closed_at.elapsed());
        }
        last = now;
    }
    Ok((last, fell_at))
}

/// Run the `streams` subcommand.
pub fn run(o: &Options, out_dir: &Path) -> io::Result<StreamsReport> {
    if o.streams == 0 || o.connections == 0 {
        return Err(io::Error::other("streams: --streams and --connections must be positive"));
    }
    let bin = match &o.flowgate_bin {
        Some(b) => b.clone(),
        None => procs::default_flowgate_bin()?,
    };
    if !bin.is_file() {
        return Err(io::Error::other(format!(
            "streams: no flowgate binary at {} (cargo build --release -p flowgate, or --flowgate-bin)",
            bin.display()
        )));
    }
    std::fs::create_dir_all(out_dir)?;
    let config = out_dir.join("streams-flowgate.yaml");
    let io_threads = o.io_threads.map(|n| format!("io_threads: {n}\n")).unwrap_or_default();
    std::fs::write(&config, format!("{io_threads}{FLOWGATE_CONFIG}"))?;
    // One client thread: the client is not measured, and it leaves the servers the cores.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let bare = measure("bare", procs::start_bare(&[])?, o, &rt)?;
    let flowgate = measure("flowgate", procs::start_flowgate(&bin, &config, &o.flowgate_env)?, o, &rt)?;
    let _ = std::fs::remove_file(&config);
    let ratio = if bare.kib_per_stream > 0.0 { flowgate.kib_per_stream / bare.kib_per_stream } else { 0.0 };
    let targets = Targets {
        kib_per_stream: TARGET_KIB_PER_STREAM,
        ratio: TARGET_RATIO,
        idle_mib: TARGET_IDLE_MIB,
        per_stream_met: flowgate.kib_per_stream <= TARGET_KIB_PER_STREAM
            && flowgate.kib_per_stream <= TARGET_RATIO * bare.kib_per_stream,
        idle_met: flowgate.idle_mib <= TARGET_IDLE_MIB,
    };
    let report = StreamsReport {
        run: RunInfo::now(o.quick),
        streams: o.streams,
        connections: o.connections,
        flowgate_env: o.flowgate_env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        results: vec![bare, flowgate],
        ratio,
        targets,
    };
    report::write_json(out_dir, "streams", &report)?;
    print_table(&report);
    Ok(report)
}

fn print_table(r: &StreamsReport) {
    let mib = |m: &Memory| format!("{:.1}", m.rss_kib as f64 / 1024.0);
    let mut t = Table::new(&[
        "server",
        "idle MiB",
        "warm MiB",
        "held MiB",
        "closed MiB",
        "settled MiB",
        "given back",
        "KiB/stream",
        "anon KiB/stream",
        "threads",
    ]);
    for x in &r.results {
        t.row(vec![
            x.server.clone(),
            mib(&x.idle),
            mib(&x.warm),
            mib(&x.held),
            mib(&x.closed),
            mib(&x.settled),
            match x.settled_after_ms {
                Some(ms) => format!("{:.0} % by {ms} ms", 100.0 * x.returned_share),
                None => format!("{:.0} %", 100.0 * x.returned_share),
            },
            format!("{:.1}", x.kib_per_stream),
            format!("{:.1}", x.anon_kib_per_stream),
            x.held.threads.to_string(),
        ]);
    }
    println!(
        "\n== streams (RSS per open ext_proc stream: {} held over {} connection(s), dispatched and streaming{}) ==\n{}",
        r.streams,
        r.connections,
        if r.flowgate_env.is_empty() { String::new() } else { format!(", flowgate env {}", r.flowgate_env.join(" ")) },
        t.render()
    );
    let verdict = |met: bool| if met { "met" } else { "missed" };
    println!(
        "flowgate / bare per stream: {:.2}x; targets: ≤ {:.0} KiB and ≤ {:.2}x per stream: {}; idle ≤ {:.0} MiB: {}",
        r.ratio,
        r.targets.kib_per_stream,
        r.targets.ratio,
        verdict(r.targets.per_stream_met),
        r.targets.idle_mib,
        verdict(r.targets.idle_met),
    );
}
