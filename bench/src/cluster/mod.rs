//! `cluster`: cluster mode as figures (issue #13), every baseline measured in the same run.
//!
//! The bench starts its own `redis-server` (from `PATH`; loopback, persistence off), one
//! `flowgate-sim` backend and `flowgate serve` replicas (the release binaries beside this one),
//! and kills them all at its end, errors included. Clients play Envoy over ext_proc
//! ([`load`]). Parts, in order:
//!
//! 1. **rates** ([`rates`]): a workload flooding replica A only; its cluster rate read on B and A;
//! 2. **throughput** ([`tput`]): closed-loop dispatch + release through one cluster replica (the
//!    others alive, the lease never binding) vs the same config standalone, alternating rounds;
//! 3. **capacity** ([`capacity`]): N replicas on one backend of `max_inflight` M, the simulator's
//!    peak concurrency connected (and the sync cost meanwhile), with Redis killed, and on
//!    standalone replicas (the uncoordinated contrast).
//!
//! Targets are reported (PASS/MISS), never enforced; a failed request is a broken harness and
//! fails the run (after the report is written).

mod capacity;
mod http;
mod load;
pub(crate) mod procs;
mod rates;
mod tput;

use flowgate_bench::report::{self, RunInfo, Table};
use procs::{cluster_lines, replica_yaml, Bins, Redis, Replica, SimProc};
use serde::Serialize;
use std::io;
use std::path::Path;

/// Target: per-replica throughput in cluster mode at least this share of standalone's.
pub const TARGET_THROUGHPUT_RATIO: f64 = 0.95;
/// The simulator's batch (and waiting) size: room for every replica's loops at once.
const SIM_SEQS: usize = 256;
/// The simulator's decode step, ms.
const DECODE_STEP_MS: f64 = 5.0;
/// `max_inflight` of the rates and throughput replicas: so large the lease never binds.
const UNBOUND_MAX_INFLIGHT: u32 = 100_000;

/// The subcommand's own arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterLoad {
    /// Replicas of the pool (N).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// The shared backend's `max_inflight` (M) in the capacity part.
    #[arg(long, default_value_t = 6)]
    max_inflight: u32,
    /// `cluster.sync_interval`, ms.
    #[arg(long, default_value_t = 50)]
    sync_interval_ms: u64,
    /// Closed-loop clients per replica in the capacity part.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Closed-loop clients flooding replica A.
    #[arg(long, default_value_t = 16)]
    flood_workers: usize,
    /// Closed-loop ext_proc streams of the throughput part.
    #[arg(long, default_value_t = 32)]
    tput_workers: usize,
    /// HTTP/2 connections the throughput streams share.
    #[arg(long, default_value_t = 2)]
    connections: usize,
}

/// Everything a run uses.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// Quick mode (CI).
    pub quick: bool,
    /// N.
    pub replicas: usize,
    /// M.
    pub max_inflight: u32,
    /// `cluster.sync_interval`, ms.
    pub sync_interval_ms: u64,
    /// Capacity loops per replica.
    pub workers_per_replica: usize,
    /// Completion tokens per backend request.
    pub max_tokens: u32,
    /// Seconds per capacity phase.
    pub load_s: f64,
    /// Flood loops on A.
    pub flood_workers: usize,
    /// Seconds of flood.
    pub flood_s: f64,
    /// Throughput streams.
    pub tput_workers: usize,
    /// Their HTTP/2 connections.
    pub connections: usize,
    /// Throughput rounds (each: both replicas once).
    pub rounds: usize,
    /// Seconds per throughput round and replica.
    pub round_s: f64,
}

impl ClusterLoad {
    /// The settings: quick or full defaults, `seconds` (per capacity phase) and `rounds` if given.
    pub fn settings(&self, quick: bool, seconds: Option<f64>, rounds: Option<usize>) -> io::Result<Settings> {
        let s = Settings {
            quick,
            replicas: self.replicas,
            max_inflight: self.max_inflight,
            sync_interval_ms: self.sync_interval_ms,
            workers_per_replica: self.workers,
            max_tokens: 4,
            load_s: seconds.unwrap_or(if quick { 2.0 } else { 8.0 }),
            flood_workers: self.flood_workers,
            flood_s: if quick { 1.0 } else { 3.0 },
            tput_workers: self.tput_workers,
            connections: self.connections,
            rounds: rounds.unwrap_or(if quick { 10 } else { 40 }),
            round_s: if quick { 0.3 } else { 0.5 },
        };
        let positive = s.replicas >= 2
            && s.max_inflight >= 1
            && s.sync_interval_ms >= 10
            && s.workers_per_replica >= 1
            && s.flood_workers >= 1
            && s.tput_workers >= 1
            && s.connections >= 1
            && s.rounds >= 1
            && s.load_s.is_finite()
            && s.load_s > 0.0;
        if !positive || s.workers_per_replica * s.replicas > SIM_SEQS {
            return Err(io::Error::other(format!(
                "cluster: needs --replicas ≥ 2, --sync-interval-ms ≥ 10, positive counts and seconds, and \
                 replicas × workers ≤ {SIM_SEQS}"
            )));
        }
        Ok(s)
    }
}

/// PASS/MISS per target (reported, never enforced).
#[derive(Debug, Serialize)]
pub struct Targets {
    /// Connected: peak concurrency ≤ M.
    pub no_oversubscription: bool,
    /// Redis down: peak ≤ N·⌊M/N⌋ and every replica's in flight ≤ ⌊M/N⌋.
    pub local_share: bool,
    /// B's cluster rate within 10 % of A's two sync intervals after the flood.
    pub rate_on_b: bool,
    /// Cluster throughput ≥ 0.95 × standalone.
    pub throughput: bool,
}

/// The `cluster` report.
#[derive(Debug, Serialize)]
pub struct ClusterReport {
    /// Run facts.
    pub run: RunInfo,
    /// What ran.
    pub settings: Settings,
    /// Part 1.
    pub rates: rates::Rates,
    /// Part 2.
    pub throughput: tput::Throughput,
    /// Part 3.
    pub capacity: capacity::Capacity,
    /// Verdicts.
    pub targets: Targets,
}

/// Parts 1 and 2 on their own replicas (N in a pool, one standalone), stopped afterwards.
async fn shared_parts(
    bins: &Bins,
    dir: &Path,
    sim: &SimProc,
    redis: &Redis,
    s: &Settings,
) -> io::Result<(rates::Rates, tput::Throughput)> {
    let mut rs = Vec::with_capacity(s.replicas);
    for i in 0..s.replicas {
        let name = format!("shared{i}");
        let lines = cluster_lines(redis, "shared", &name, s.sync_interval_ms);
        rs.push(Replica::start(
            &bins.flowgate,
            dir,
            &name,
            &replica_yaml(sim.addr, UNBOUND_MAX_INFLIGHT, Some(&lines)),
        )?);
    }
    let alone = Replica::start(
        &bins.flowgate,
        dir,
        "standalone",
        &replica_yaml(sim.addr, UNBOUND_MAX_INFLIGHT, None),
    )?;
    for r in &rs {
        r.wait_connected(s.replicas as u32).await?;
    }
    alone.backend().await?;
    let rates = rates::run(&rs[0], &rs[1], s).await?;
    let tput = tput::run(&rs[0], &alone, s).await?;
    Ok((rates, tput))
}

fn targets(s: &Settings, rates: &rates::Rates, tput: &tput::Throughput, cap: &capacity::Capacity) -> Targets {
    let share = u64::from((s.max_inflight / s.replicas as u32).max(1));
    let phase = |mode: &str| cap.phases.iter().find(|p| p.mode == mode);
    Targets {
        no_oversubscription: phase("cluster")
            .is_some_and(|p| p.peak_concurrency <= u64::from(s.max_inflight)),
        local_share: phase("redis_down").is_some_and(|p| {
            p.peak_concurrency <= p.bound && p.per_replica_peak_inflight.iter().all(|&n| n <= share)
        }),
        rate_on_b: (rates.b_over_a - 1.0).abs() <= rates::TOLERANCE,
        throughput: tput.ratio >= TARGET_THROUGHPUT_RATIO,
    }
}

/// A sound run: no request failed, every replica served in every capacity phase.
fn check(r: &ClusterReport) -> io::Result<()> {
    for p in &r.capacity.phases {
        for (i, t) in p.tallies.iter().enumerate() {
            if t.failed > 0 || t.completed == 0 {
                return Err(io::Error::other(format!(
                    "cluster: {} replica {i}: {} completed, {} failed (first: {:?})",
                    p.mode, t.completed, t.failed, t.first_error
                )));
            }
        }
    }
    if r.throughput.failed > 0 || r.rates.flood_rate_per_s <= 0.0 {
        return Err(io::Error::other("cluster: throughput or flood requests failed"));
    }
    Ok(())
}

/// Run the `cluster` subcommand.
pub fn run(s: &Settings, out_dir: &Path) -> io::Result<ClusterReport> {
    let bins = Bins::beside_me()?;
    std::fs::create_dir_all(out_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (rates, throughput, capacity) = rt.block_on(async {
        let mut redis = Redis::start().await?;
        let sim = SimProc::start(&bins.sim, SIM_SEQS, DECODE_STEP_MS)?;
        let (rates, tput) = shared_parts(&bins, out_dir, &sim, &redis, s).await?;
        let cap = capacity::run(&bins, out_dir, &sim, &mut redis, s).await?;
        Ok::<_, io::Error>((rates, tput, cap))
    })?;
    let targets = targets(s, &rates, &throughput, &capacity);
    let report = ClusterReport {
        run: RunInfo::now(s.quick),
        settings: s.clone(),
        rates,
        throughput,
        capacity,
        targets,
    };
    report::write_json(out_dir, "cluster", &report)?;
    print_table(&report);
    check(&report)?;
    Ok(report)
}

fn verdict(met: bool) -> String {
    if met { "PASS" } else { "MISS" }.to_string()
}

fn print_table(r: &ClusterReport) {
    let s = &r.settings;
    let c = &r.capacity;
    let phase = |mode: &str| c.phases.iter().find(|p| p.mode == mode);
    let peak = |mode: &str| {
        phase(mode).map_or("-".to_string(), |p| format!("{} (bound {})", p.peak_concurrency, p.bound))
    };
    let rates = |mode: &str| {
        phase(mode).map_or(String::new(), |p| {
            p.per_replica_rate_per_s.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join("/")
        })
    };
    let local = phase("redis_down").map_or(String::new(), |p| {
        let each = p.per_replica_peak_inflight.iter().map(u64::to_string).collect::<Vec<_>>().join("/");
        format!("{}; per replica {each}", peak("redis_down"))
    });
    let mut t = Table::new(&["target", "measured", "same-run baseline", "verdict"]);
    t.row(vec![
        format!("peak ≤ max_inflight {} (connected)", s.max_inflight),
        format!("{}; req/s {}", peak("cluster"), rates("cluster")),
        format!("standalone {}; req/s {}", peak("standalone"), rates("standalone")),
        verdict(r.targets.no_oversubscription),
    ]);
    t.row(vec![
        format!("≤ ⌊M/N⌋ = {} per replica (Redis down)", (s.max_inflight / s.replicas as u32).max(1)),
        local,
        format!("req/s {}", rates("redis_down")),
        verdict(r.targets.local_share),
    ]);
    t.row(vec![
        format!("B within 10% of A at 2·I = {} ms", 2 * s.sync_interval_ms),
        format!(
            "B/A {:.3} ({:.0} vs {:.0} /s, {:.0}% remote); converged {}",
            r.rates.b_over_a,
            r.rates.b_rate_per_s,
            r.rates.a_rate_per_s,
            100.0 * r.rates.b_remote_share,
            r.rates.converged_ms.map_or("never".into(), |m| format!("{m:.0} ms"))
        ),
        format!(
            "flood {:.0} req/s on A; B/A during it: median {:.3}, min {:.3}",
            r.rates.flood_rate_per_s,
            flowgate_bench::stats::median(&r.rates.during_flood_b_over_a),
            r.rates.during_flood_b_over_a.iter().copied().fold(f64::NAN, f64::min)
        ),
        verdict(r.targets.rate_on_b),
    ]);
    t.row(vec![
        format!("throughput ≥ {TARGET_THROUGHPUT_RATIO}× standalone"),
        format!("{:.0} req/s ({:.3}×)", r.throughput.cluster_median_per_s, r.throughput.ratio),
        format!(
            "standalone {:.0} req/s; side by side {:.3}×",
            r.throughput.standalone_median_per_s, r.throughput.side_by_side_ratio
        ),
        verdict(r.targets.throughput),
    ]);
    let sc = &c.sync_cost;
    t.row(vec![
        "sync cost (reported)".into(),
        format!(
            "Redis {:.0} µs/sync, {:.1} syncs/s ({:.2}% of a core), est. RTT {:.0} µs",
            sc.redis_usec_per_sync, sc.syncs_per_s, sc.redis_core_pct, sc.est_sync_rtt_us
        ),
        format!("PING {:.0} µs", sc.ping_rtt_us),
        "-".into(),
    ]);
    println!(
        "\n== cluster ({} replicas, I = {} ms, M = {}, {} loops each; {} throughput rounds of {} s) ==\n{}",
        s.replicas,
        s.sync_interval_ms,
        s.max_inflight,
        s.workers_per_replica,
        s.rounds,
        s.round_s,
        t.render()
    );
}
