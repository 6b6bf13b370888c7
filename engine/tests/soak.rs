//! Soak: many requests through the running engine with random cancels, TTLs, displacement,
//! per-criticality ceilings and a shutdown near the end. Checks conservation (accepted = Σ
//! outcomes, each caller sees one), counters back to zero, and resident memory flat once the
//! steady state is reached.
//!
//! `cargo test -p flowgate-engine --test soak` runs 1M requests (what CI runs);
//! `SOAK_REQUESTS=10000000 cargo test --release -p flowgate-engine --test soak -- --nocapture`
//! the full 10M.

use flowgate_engine::config::{BackendConfig, EngineConfig};
use flowgate_engine::{Decision, Engine, Outcome, Request, SubmitError, Ticket, WorkloadContext};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

const PRODUCERS: usize = 4;
/// Tickets a producer keeps outstanding at once.
const WINDOW: usize = 64;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Poll a ticket once, registering `waker` for its decision.
fn poll_with(ticket: &mut Ticket, waker: &Waker) -> Option<Decision> {
    match Pin::new(ticket).poll(&mut Context::from_waker(waker)) {
        Poll::Ready(d) => Some(d),
        Poll::Pending => None,
    }
}

/// Wakes a parked producer thread.
struct Unpark(std::thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn soak_conserves_outcomes_counters_and_memory() {
    let total: u64 = std::env::var("SOAK_REQUESTS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let per_producer = total / PRODUCERS as u64;
    let config = EngineConfig {
        shards: 2,
        backends: vec![
            BackendConfig { address: "10.0.0.1:8000".into(), max_inflight: 16 },
            BackendConfig { address: "10.0.0.2:8000".into(), max_inflight: 16 },
        ],
        ceilings: [0.5, 0.75, 0.9, 1.0, 1.0],
        queue: flowgate_engine::config::QueueConfig {
            max_requests: 128,
            max_bytes: 0,
            ttl: Duration::from_secs(5),
        },
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::start(config).unwrap());
    let submitted = Arc::new(AtomicU64::new(0));
    let rss_early = Arc::new(AtomicU64::new(0));
    let rss_late = Arc::new(AtomicU64::new(0));

    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen: Vec<HashMap<&'static str, u64>> = std::thread::scope(|s| {
        // Watchdog: a stall (no submission for 30 s) is a failure with a diagnosis, not a hang.
        {
            let (engine, submitted, finished) = (engine.clone(), submitted.clone(), finished.clone());
            s.spawn(move || {
                let mut last = u64::MAX;
                let mut still = 0;
                while !finished.load(Ordering::Relaxed) {
                    std::thread::park_timeout(Duration::from_secs(1));
                    let now = submitted.load(Ordering::Relaxed);
                    still = if now == last { still + 1 } else { 0 };
                    last = now;
                    if still >= 30 {
                        eprintln!(
                            "soak stalled at {now}: {:?} {:?}",
                            engine.stats(),
                            engine.outcome_counts()
                        );
                        eprintln!("shards: {:?}", engine.shard_states());
                        // SOAK_HOLD_ON_STALL=1 keeps the stalled process alive 10 min for a debugger.
                        if std::env::var_os("SOAK_HOLD_ON_STALL").is_some() {
                            std::thread::park_timeout(Duration::from_secs(600));
                        }
                        std::process::abort();
                    }
                }
            });
        }
        let handles: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (engine, submitted) = (engine.clone(), submitted.clone());
                let (rss_early, rss_late) = (rss_early.clone(), rss_late.clone());
                s.spawn(move || {
                    let mut rng = Rng(0x2545_F491_4F6C_DD1D ^ (p as u64 + 1).wrapping_mul(0x9E37_79B9));
                    let mut seen: HashMap<&'static str, u64> = HashMap::new();
                    let mut tickets: VecDeque<Ticket> = VecDeque::with_capacity(WINDOW);
                    let mut permits = VecDeque::new();
                    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
                    for i in 0..per_producer {
                        if p == 0 && i == per_producer * 3 / 10 {
                            rss_early.store(rss_bytes(), Ordering::Relaxed);
                        }
                        if p == 0 && i == per_producer * 9 / 10 {
                            rss_late.store(rss_bytes(), Ordering::Relaxed);
                            engine.shutdown(); // mid-load: the others are still submitting
                        }
                        let r = rng.next();
                        let ttl = r.is_multiple_of(10).then(|| Duration::from_micros(50 + r % 500));
                        let context = WorkloadContext {
                            workload_id: Arc::from(format!("w{}", r % 50)),
                            criticality: (r >> 8) as u8 % 5 + 1,
                            ttl,
                        };
                        match engine.submit(Request { context, bytes: r % 1024 }) {
                            Ok(t) if r % 10 == 1 => {
                                drop(t);
                                *seen.entry("dropped").or_default() += 1;
                            }
                            Ok(t) => tickets.push_back(t),
                            Err(SubmitError::ShuttingDown(_)) => {
                                *seen.entry("refused_shutdown").or_default() += 1
                            }
                            Err(SubmitError::Backpressure(_)) => {
                                *seen.entry("refused_backpressure").or_default() += 1
                            }
                        }
                        submitted.fetch_add(1, Ordering::Relaxed);
                        // Harvest every decided ticket (a dispatched one holds a slot until its
                        // permit is taken and dropped). With the window full, finish our
                        // model-server work and park until one of our tickets is woken.
                        loop {
                            tickets.retain_mut(|t| match poll_with(t, &waker) {
                                Some(d) => {
                                    record(&mut seen, &mut permits, d);
                                    false
                                }
                                None => true,
                            });
                            if tickets.len() < WINDOW {
                                break;
                            }
                            permits.clear();
                            std::thread::park();
                        }
                        // Model-server work finishes a few requests later.
                        if permits.len() > 4 {
                            permits.pop_front();
                        }
                    }
                    permits.clear();
                    for t in tickets {
                        let d = t.wait();
                        record(&mut seen, &mut permits, d);
                        permits.clear();
                    }
                    seen
                })
            })
            .collect();
        let seen = handles.into_iter().map(|h| h.join().unwrap()).collect();
        finished.store(true, Ordering::Relaxed);
        seen
    });

    let get = |k: &str| seen.iter().map(|m| m.get(k).copied().unwrap_or(0)).sum::<u64>();
    let attempted = submitted.load(Ordering::Relaxed);
    let accepted = attempted - get("refused_shutdown") - get("refused_backpressure");
    let books: u64 = engine.outcome_counts().iter().map(|(_, n)| n).sum();
    let waited: u64 = Outcome::ALL.iter().map(|o| get(o.label())).sum();
    println!("soak: {attempted} attempted, {accepted} accepted, outcomes {:?}", engine.outcome_counts());
    println!(
        "soak: rss at 30% {} MiB, at 90% {} MiB",
        rss_early.load(Ordering::Relaxed) >> 20,
        rss_late.load(Ordering::Relaxed) >> 20
    );
    assert_eq!(attempted, per_producer * PRODUCERS as u64);
    assert_eq!(books, accepted, "every accepted request has exactly one outcome in the books");
    assert_eq!(waited + get("dropped"), accepted, "every caller saw one outcome or gave up");
    for o in [Outcome::Dispatched, Outcome::EvictedTtl, Outcome::EvictedShutdown] {
        assert!(get(o.label()) > 0, "the soak exercised {o:?}");
    }
    assert!(
        get(Outcome::EvictedDisplaced.label()) + get(Outcome::RejectedCapacity.label()) > 0,
        "the queue limit was reached"
    );
    assert!(get("refused_shutdown") > 0, "the shutdown landed mid-load");
    let stats = engine.stats();
    assert_eq!((stats.queued, stats.inflight), (0, 0), "queue and slots are empty at the end");
    for w in engine.registry().workloads() {
        assert_eq!(w.active, 0, "workload {} still counts active requests", w.workload_id);
    }
    let (early, late) = (rss_early.load(Ordering::Relaxed), rss_late.load(Ordering::Relaxed));
    assert!(
        late <= early + (32 << 20),
        "resident memory grew from {early} to {late} bytes in the steady state"
    );
}

fn record(
    seen: &mut HashMap<&'static str, u64>,
    permits: &mut VecDeque<flowgate_engine::Permit>,
    d: Decision,
) {
    *seen.entry(d.outcome.label()).or_default() += 1;
    assert_eq!(d.permit.is_some(), d.outcome == Outcome::Dispatched);
    if let Some(p) = d.permit {
        permits.push_back(p);
    }
}
