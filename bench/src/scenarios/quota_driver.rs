//! Running one of the `quota_isolation` runs: a fresh `flowgate-sim`, a fresh engine with
//! `pinned`'s quota, `pinned`'s closed-loop clients (when present) and the well-behaved
//! workloads' Poisson arrivals (one tokio task per request), each request recorded once.

use super::quota_isolation::{Arrivals, QuotaScenario, Run};
use super::sim_client;
use super::token_driver::{TokenOutcome, TokenRecord, BACKOFF, HTTP_TIMEOUT};
use crate::baseline::{EngineQueue, Permit, Queue, Req, Spec};
use crate::driver::Rng;
use flowgate_sim::{Sim, SimConfig, SimStats};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The raw outcome of one run.
#[derive(Debug)]
pub struct QuotaRunData {
    /// Which run.
    pub run: Run,
    /// Every request, one record each (`workload` indexes the scenario's workloads).
    pub records: Vec<TokenRecord>,
    /// Submissions made (must equal `records.len()`).
    pub submitted: u64,
    /// Most permits of `pinned` its clients held at once.
    pub pinned_peak_inflight: u64,
    /// The sim's counters at the end of the run.
    pub sim: SimStats,
}

struct Ctx {
    q: Arc<dyn Queue>,
    sim: SocketAddr,
    start: Instant,
    /// The well-behaved requests still queued are cancelled.
    drain_end: Instant,
    reqs: Vec<Req>,
    body: String,
    submitted: AtomicU64,
    /// `pinned`'s permits held now, and the most held at once.
    holding: AtomicU64,
    peak: AtomicU64,
}

impl Ctx {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Serve a dispatched request at the sim, then drop its permit (charged first). With
    /// `pinned`, lower the held-permit count first, so it never exceeds what the engine counts.
    async fn serve(&self, w: usize, permit: Permit, pinned: bool) -> TokenOutcome {
        let name: &str = &self.reqs[w].workload;
        let answer =
            tokio::time::timeout(HTTP_TIMEOUT, sim_client::complete(self.sim, name, &self.body)).await;
        let outcome = match answer {
            Ok(Ok(usage)) => {
                let weighted = match &permit {
                    Permit::Engine(p) => p.charge(usage.prompt_tokens, usage.completion_tokens),
                    Permit::Locked(_) => 0,
                };
                TokenOutcome::Served { usage, weighted }
            }
            Ok(Err(e)) => TokenOutcome::Failed(e.to_string()),
            Err(_) => TokenOutcome::Failed(format!("no answer within {HTTP_TIMEOUT:?}")),
        };
        if pinned {
            self.holding.fetch_sub(1, Ordering::AcqRel);
        }
        drop(permit);
        outcome
    }
}

/// One closed-loop client of `pinned` (workload 0): submit, wait, serve, repeat until `stop`
/// turns true (or the drain ends); the request queued then is cancelled.
async fn pinned_client(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) -> Vec<TokenRecord> {
    let mut out = Vec::new();
    let drain_end = tokio::time::Instant::from_std(ctx.drain_end);
    while !*stop.borrow() && Instant::now() < ctx.drain_end {
        let submit_ns = ctx.now_ns();
        ctx.submitted.fetch_add(1, Ordering::Relaxed);
        let record = |dispatch_ns, outcome| TokenRecord {
            workload: 0,
            submit_ns,
            dispatch_ns,
            end_ns: ctx.now_ns(),
            outcome,
        };
        let ticket = match ctx.q.submit(&ctx.reqs[0]) {
            Ok(t) => t,
            Err(refused) => {
                out.push(record(None, TokenOutcome::NotQueued(format!("{refused:?}"))));
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let decision = tokio::select! {
            d = ticket => d,
            _ = stop.wait_for(|s| *s) => {
                out.push(record(None, TokenOutcome::Cancelled));
                break;
            }
            _ = tokio::time::sleep_until(drain_end) => {
                out.push(record(None, TokenOutcome::Cancelled));
                break;
            }
        };
        let dispatch_ns = ctx.now_ns();
        let Some(permit) = decision.permit else {
            out.push(record(None, TokenOutcome::Refused(decision.outcome.label().to_string())));
            tokio::time::sleep(BACKOFF).await;
            continue;
        };
        let held = ctx.holding.fetch_add(1, Ordering::AcqRel) + 1;
        ctx.peak.fetch_max(held, Ordering::AcqRel);
        let outcome = ctx.serve(0, permit, true).await;
        out.push(record(Some(dispatch_ns), outcome));
    }
    out
}

/// One open-loop request of workload `w`, submitted now: wait (until the drain ends), serve,
/// record.
async fn one_request(ctx: Arc<Ctx>, w: usize) -> TokenRecord {
    let submit_ns = ctx.now_ns();
    ctx.submitted.fetch_add(1, Ordering::Relaxed);
    let record = |dispatch_ns, outcome| TokenRecord {
        workload: w,
        submit_ns,
        dispatch_ns,
        end_ns: ctx.now_ns(),
        outcome,
    };
    let ticket = match ctx.q.submit(&ctx.reqs[w]) {
        Ok(t) => t,
        Err(refused) => return record(None, TokenOutcome::NotQueued(format!("{refused:?}"))),
    };
    let decision = tokio::select! {
        d = ticket => d,
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(ctx.drain_end)) => {
            return record(None, TokenOutcome::Cancelled);
        }
    };
    let dispatch_ns = ctx.now_ns();
    let Some(permit) = decision.permit else {
        return record(None, TokenOutcome::Refused(decision.outcome.label().to_string()));
    };
    let outcome = ctx.serve(w, permit, false).await;
    record(Some(dispatch_ns), outcome)
}

/// Arrival times of a Poisson workload over `duration_s`, ns from the start (the same for a
/// given seed in both runs).
pub fn schedule(rate_per_s: f64, seed: u64, duration_s: f64) -> Vec<u64> {
    let mut rng = Rng(seed);
    let horizon = duration_s * 1e9;
    let mut out = Vec::new();
    let mut t = rng.exp(1e9 / rate_per_s.max(1e-9));
    while t < horizon {
        out.push(t as u64);
        t += rng.exp(1e9 / rate_per_s.max(1e-9));
    }
    out
}

/// Workload `w`'s Poisson arrivals: one task per request, spawned on schedule.
async fn poisson(ctx: Arc<Ctx>, w: usize, times: Vec<u64>) -> io::Result<Vec<TokenRecord>> {
    let start = tokio::time::Instant::from_std(ctx.start);
    let mut tasks = Vec::with_capacity(times.len());
    for t in times {
        tokio::time::sleep_until(start + Duration::from_nanos(t)).await;
        tasks.push(tokio::spawn(one_request(ctx.clone(), w)));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.map_err(|e| io::Error::other(format!("quota_isolation request: {e}")))?);
    }
    Ok(out)
}

/// Run `run` of `sc`: a fresh sim and engine, the load until `duration` (and the drain), the
/// sim's counters.
pub fn run_one(sc: &QuotaScenario, run: Run) -> io::Result<QuotaRunData> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("quota-isolation")
        .build()?;
    let spec = Spec {
        slots: sc.slots_in(run),
        max_requests: 0,
        ttl: Duration::from_secs(30),
        scoring: sc.scoring(),
        spin_before_park: None,
    };
    let mut config = spec.engine_config(sc.shards);
    config.workloads.quotas = sc.quotas();
    let q: Arc<dyn Queue> = Arc::new(
        EngineQueue::start(config).map_err(|e| io::Error::other(format!("quota_isolation engine: {e:?}")))?,
    );
    let sim_config = SimConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        max_num_seqs: sc.slots_in(run) as usize,
        max_waiting: 4096,
        prefill_us_per_token: sc.sim.prefill_us_per_token,
        decode_step_ms: sc.sim.decode_step_ms,
        kv_tokens: 1 << 20,
        speed: sc.sim.speed,
        ..SimConfig::default()
    };
    let result = rt.block_on(async {
        let sim = Sim::start(sim_config).await?;
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(sc.duration_s);
        let ctx = Arc::new(Ctx {
            q: q.clone(),
            sim: sim.addr(),
            start,
            drain_end: end + Duration::from_secs_f64(sc.drain_s),
            reqs: sc.workloads.iter().map(|w| Req::new(&Arc::from(w.name.as_str()), w.criticality)).collect(),
            body: sim_client::body(sc.prompt_bytes, sc.max_tokens),
            submitted: AtomicU64::new(0),
            holding: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut pinned = Vec::new();
        let mut others = Vec::new();
        for (i, w) in sc.workloads.iter().enumerate().filter(|(i, _)| sc.present(run, *i)) {
            match w.arrivals {
                Arrivals::ClosedLoop { clients } => {
                    debug_assert_eq!(i, 0, "only pinned is closed-loop");
                    pinned.extend(
                        (0..sc.pinned_clients(run, clients))
                            .map(|_| tokio::spawn(pinned_client(ctx.clone(), stop_rx.clone()))),
                    );
                }
                Arrivals::Poisson { rate_per_s, seed } => {
                    let times = schedule(rate_per_s, seed, sc.duration_s);
                    others.push(tokio::spawn(poisson(ctx.clone(), i, times)));
                }
            }
        }
        let join = |e: tokio::task::JoinError| io::Error::other(format!("quota_isolation client: {e}"));
        let mut records = Vec::new();
        for t in others {
            records.extend(t.await.map_err(join)??);
        }
        // The well-behaved requests are all answered: pinned stops.
        let _ = stop_tx.send(true);
        for t in pinned {
            records.extend(t.await.map_err(join)?);
        }
        records.sort_by_key(|r| (r.submit_ns, r.workload));
        let stats = sim.stats();
        sim.shutdown().await;
        Ok::<_, io::Error>((
            records,
            ctx.submitted.load(Ordering::Relaxed),
            ctx.peak.load(Ordering::Relaxed),
            stats,
        ))
    });
    q.shutdown();
    rt.shutdown_timeout(Duration::from_secs(1));
    let (records, submitted, pinned_peak_inflight, sim) = result?;
    Ok(QuotaRunData { run, records, submitted, pinned_peak_inflight, sim })
}
