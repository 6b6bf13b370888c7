//! Quotas in the running engine, multi-threaded: 4 submitter threads over 2 shards, workloads
//! under a `queue` quota (`max_inflight` 2, and one with a rate as well), a `reject` quota and
//! none. The quota wake-ups (a released permit ringing its shard, a bucket's refill timer) run for
//! real; short TTLs end the waits of threads that hold a permit of the same workload.

use flowgate_engine::config::{BackendConfig, EngineConfig};
use flowgate_engine::outcome::Outcome;
use flowgate_engine::quota::QuotaNote;
use flowgate_engine::quota_rule::{OnExceed, Quota};
use flowgate_engine::{Engine, Request, SubmitError, WorkloadContext};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const THREADS: usize = 4;
const PER_THREAD: usize = 2_000;
const WORKLOADS: [&str; 4] = ["q-a", "q-rate", "r", "u"];

fn quota(pattern: &str, max_inflight: u32, rpm: Option<u32>, on_exceed: OnExceed) -> Quota {
    Quota {
        pattern: pattern.into(),
        max_inflight: Some(max_inflight),
        requests_per_minute: rpm,
        tokens_per_minute: None,
        on_exceed,
    }
}

#[test]
fn quotas_hold_across_shards_and_every_request_has_one_outcome() {
    let mut c = EngineConfig {
        shards: 2,
        backends: vec![BackendConfig { address: "10.0.0.1:8000".into(), max_inflight: 16 }],
        ..Default::default()
    };
    c.queue.ttl = Duration::from_millis(40);
    c.workloads.quotas = vec![
        quota("q-rate", 2, Some(60_000), OnExceed::Queue),
        quota("q-*", 2, None, OnExceed::Queue),
        quota("r", 3, None, OnExceed::Reject),
    ];
    let limits: HashMap<&str, u64> = [("q-a", 2), ("q-rate", 2), ("r", 3), ("u", 16)].into();
    let engine = Arc::new(Engine::start(c).unwrap());
    // Requests each thread saw holding a permit, per workload: an under-approximation of what
    // the engine counts in flight (raised after the decision arrives, lowered before the drop).
    let holding: Arc<HashMap<&str, AtomicU64>> =
        Arc::new(WORKLOADS.iter().map(|w| (*w, AtomicU64::new(0))).collect());
    let peaks: Arc<HashMap<&str, AtomicU64>> =
        Arc::new(WORKLOADS.iter().map(|w| (*w, AtomicU64::new(0))).collect());
    let observed: Vec<HashMap<String, u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (engine, holding, peaks) = (engine.clone(), holding.clone(), peaks.clone());
                s.spawn(move || {
                    let mut seen: HashMap<String, u64> = HashMap::new();
                    let mut rng = (t as u64 + 7).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                    let mut next = move || {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        rng
                    };
                    let mut held: Vec<(&str, flowgate_engine::Permit)> = Vec::new();
                    for _ in 0..PER_THREAD {
                        let r = next();
                        let workload = WORKLOADS[(r % 4) as usize];
                        let context =
                            WorkloadContext { workload_id: Arc::from(workload), criticality: 3, ttl: None };
                        let ticket = match engine.submit(Request { context, bytes: 0 }) {
                            Ok(ticket) => ticket,
                            Err(SubmitError::Backpressure(_)) => {
                                *seen.entry("backpressure".into()).or_default() += 1;
                                continue;
                            }
                            Err(e) => panic!("{e:?}"),
                        };
                        let d = ticket.wait();
                        *seen.entry(d.outcome.label().into()).or_default() += 1;
                        if let Some(QuotaNote::Refused { retry_after_ns }) = d.quota {
                            assert_eq!((workload, d.outcome), ("r", Outcome::RejectedCapacity));
                            assert!(retry_after_ns > 0);
                            *seen.entry("quota".into()).or_default() += 1;
                        }
                        if let Some(p) = d.permit {
                            let now = holding[workload].fetch_add(1, Ordering::SeqCst) + 1;
                            peaks[workload].fetch_max(now, Ordering::SeqCst);
                            held.push((workload, p));
                        }
                        // Hold at most one while waiting; finish them out of order.
                        while held.len() > 1 || (r % 3 == 0 && !held.is_empty()) {
                            let (w, p) = held.swap_remove((next() as usize) % held.len());
                            holding[w].fetch_sub(1, Ordering::SeqCst);
                            drop(p);
                        }
                    }
                    for (w, p) in held {
                        holding[w].fetch_sub(1, Ordering::SeqCst);
                        drop(p);
                    }
                    seen
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let get = |k: &str| observed.iter().map(|m| m.get(k).copied().unwrap_or(0)).sum::<u64>();
    let submitted = (THREADS * PER_THREAD) as u64 - get("backpressure");
    eprintln!(
        "outcomes seen: {:?}",
        ["dispatched", "evicted_ttl", "rejected_capacity", "quota"].map(|k| (k, get(k)))
    );
    let total: u64 = engine.outcome_counts().iter().map(|(_, n)| n).sum();
    assert_eq!(total, submitted, "one outcome each: {:?}", engine.outcome_counts());
    let waited: u64 = Outcome::ALL.iter().map(|o| get(o.label())).sum();
    assert_eq!(waited, submitted);
    for (w, limit) in &limits {
        let peak = peaks[w].load(Ordering::SeqCst);
        assert!(peak <= *limit, "{w}: {peak} held at once, limit {limit}");
    }
    assert!(get("quota") > 0, "the reject quota refused some");
    assert!(get(Outcome::Dispatched.label()) > submitted / 2, "{observed:?}");
    assert_eq!(engine.stats().inflight, 0, "every permit came back");
    assert_eq!(engine.stats().queued, 0);
    for w in engine.registry().workloads() {
        assert_eq!(w.active, 0, "workload {} still active", w.workload_id);
    }
}
