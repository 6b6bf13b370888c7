//! Running the `token_fairness` scenario on one implementation: a fresh `flowgate-sim`, the queue,
//! and the closed-loop clients (tokio tasks) that submit, wait for the decision, send the
//! dispatched request to the sim, charge its usage to the permit and record the request.

use super::sim_client::{self, Usage};
use super::token_fairness::{TokenScenario, Variant};
use crate::baseline::{Permit, Queue, Req, Spec};
use flowgate_engine::tokens::TokenPrices;
use flowgate_sim::{Sim, SimConfig, SimStats};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a dispatched request may take at the sim before it counts as failed.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client whose request was refused (or not queued) waits before it resubmits.
pub const BACKOFF: Duration = Duration::from_millis(5);

/// The one outcome of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenOutcome {
    /// Dispatched and answered by the sim.
    Served {
        /// The usage the sim reported.
        usage: Usage,
        /// Its weighted cost: what `Permit::charge` returned (flowgate), or the same prices
        /// applied by the bench (FIFO).
        weighted: u64,
    },
    /// Answered without dispatch (the outcome's label).
    Refused(String),
    /// The submit was refused: nothing was queued.
    NotQueued(String),
    /// Still queued when arrivals stopped: cancelled.
    Cancelled,
    /// Dispatched, but the sim's answer was missing or bad (a broken harness).
    Failed(String),
}

/// What the driver records per request.
#[derive(Clone, Debug)]
pub struct TokenRecord {
    /// Workload index.
    pub workload: usize,
    /// Submission, ns from the run's start.
    pub submit_ns: u64,
    /// Dispatch, ns from the start, when dispatched.
    pub dispatch_ns: Option<u64>,
    /// The response's end (or the decision, when not dispatched), ns from the start.
    pub end_ns: u64,
    /// What happened.
    pub outcome: TokenOutcome,
}

/// The raw outcome of one run.
#[derive(Debug)]
pub struct TokenRunData {
    /// The implementation.
    pub variant: Variant,
    /// Every request, one record each.
    pub records: Vec<TokenRecord>,
    /// Submissions the clients made (must equal `records.len()`).
    pub submitted: u64,
    /// The sim's counters at the end of the run.
    pub sim: SimStats,
}

struct Ctx {
    q: Arc<dyn Queue>,
    sim: SocketAddr,
    start: Instant,
    end: Instant,
    reqs: Vec<Req>,
    bodies: Vec<String>,
    prices: TokenPrices,
    submitted: AtomicU64,
}

impl Ctx {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

/// One closed-loop client of workload `w`: submit, wait, serve, repeat until arrivals stop.
async fn client(ctx: Arc<Ctx>, w: usize) -> Vec<TokenRecord> {
    let mut out = Vec::new();
    let end = tokio::time::Instant::from_std(ctx.end);
    let name: &str = &ctx.reqs[w].workload;
    while Instant::now() < ctx.end {
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
            Err(refused) => {
                out.push(record(None, TokenOutcome::NotQueued(format!("{refused:?}"))));
                tokio::time::sleep(BACKOFF).await;
                continue;
            }
        };
        let decision = tokio::select! {
            d = ticket => d,
            _ = tokio::time::sleep_until(end) => {
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
        let answer =
            tokio::time::timeout(HTTP_TIMEOUT, sim_client::complete(ctx.sim, name, &ctx.bodies[w])).await;
        let outcome = match answer {
            Ok(Ok(usage)) => {
                let weighted = match &permit {
                    Permit::Engine(p) => p.charge(usage.prompt_tokens, usage.completion_tokens),
                    Permit::Locked(_) => ctx.prices.weigh(usage.prompt_tokens, usage.completion_tokens),
                };
                TokenOutcome::Served { usage, weighted }
            }
            Ok(Err(e)) => TokenOutcome::Failed(e.to_string()),
            Err(_) => TokenOutcome::Failed(format!("no answer within {HTTP_TIMEOUT:?}")),
        };
        // Charged first, then the slot is freed.
        drop(permit);
        out.push(record(Some(dispatch_ns), outcome));
    }
    out
}

/// Run `sc` on `variant`: a fresh sim and queue, the clients until `duration`, the sim's counters.
pub fn run_one(sc: &TokenScenario, variant: Variant) -> io::Result<TokenRunData> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("token-fairness")
        .build()?;
    let scoring = variant.scoring(sc);
    let spec = Spec { slots: sc.slots, scoring: scoring.clone(), ..Spec::default() };
    let clients: usize = sc.workloads.iter().map(|w| w.clients).sum();
    let sim_config = SimConfig {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        max_num_seqs: sc.sim.max_num_seqs,
        max_waiting: clients.max(1),
        prefill_us_per_token: sc.sim.prefill_us_per_token,
        decode_step_ms: sc.sim.decode_step_ms,
        kv_tokens: 1 << 20,
        speed: sc.sim.speed,
        ..SimConfig::default()
    };
    let q = spec.build(variant.kind(sc.shards));
    let result = rt.block_on(async {
        let sim = Sim::start(sim_config).await?;
        let start = Instant::now();
        let ctx = Arc::new(Ctx {
            q: q.clone(),
            sim: sim.addr(),
            start,
            end: start + Duration::from_secs_f64(sc.duration_s),
            reqs: sc.workloads.iter().map(|w| Req::new(&Arc::from(w.name.as_str()), w.criticality)).collect(),
            bodies: sc.workloads.iter().map(|w| sim_client::body(w.prompt_bytes, w.max_tokens)).collect(),
            prices: TokenPrices::new(&scoring),
            submitted: AtomicU64::new(0),
        });
        let tasks: Vec<_> = sc
            .workloads
            .iter()
            .enumerate()
            .flat_map(|(i, w)| (0..w.clients).map(move |_| i))
            .map(|i| tokio::spawn(client(ctx.clone(), i)))
            .collect();
        let mut records = Vec::new();
        for t in tasks {
            records.extend(t.await.map_err(|e| io::Error::other(format!("token_fairness client: {e}")))?);
        }
        records.sort_by_key(|r| (r.submit_ns, r.workload));
        let stats = sim.stats();
        sim.shutdown().await;
        Ok::<_, io::Error>((records, ctx.submitted.load(Ordering::Relaxed), stats))
    });
    q.shutdown();
    rt.shutdown_timeout(Duration::from_secs(1));
    let (records, submitted, sim) = result?;
    Ok(TokenRunData { variant, records, submitted, sim })
}
