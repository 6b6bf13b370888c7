//! Shedding by global priority: with several shards sharing one queue bound, a request is refused,
//! and a queued one displaced, only if nothing queued in any shard scores lower.
//!
//! The score here is criticality alone (no aging, no rate penalty), so "scores lower" is "has a
//! lower criticality" and the check is exact: once the queue is full, every shed request's
//! criticality is ≤ that of every request still queued at the end (the queue's lowest criticality
//! only rises while nothing is dispatched).

use flowgate_engine::config::{BackendConfig, EngineConfig};
use flowgate_engine::outcome::Outcome;
use flowgate_engine::registry::hash_workload_id;
use flowgate_engine::ring::shard_of;
use flowgate_engine::{Engine, Request, WorkloadContext};
use std::sync::Arc;

#[path = "common/engine_wait.rs"]
mod engine_wait;
use engine_wait::until;

const SHARDS: usize = 2;
const MAX_QUEUED: u64 = 24;

fn engine() -> Engine {
    let mut c = EngineConfig {
        shards: SHARDS,
        backends: vec![BackendConfig { address: "10.0.0.1:8000".into(), max_inflight: 1 }],
        ..Default::default()
    };
    c.queue.max_requests = MAX_QUEUED;
    c.scoring.wait_weight = 0.0;
    c.scoring.rate_weight = 0.0;
    c.scoring.criticality_weight = 1.0;
    Engine::start(c).unwrap()
}

/// A workload id of criticality `criticality` that hashes to `shard`.
fn id_on_shard(criticality: u8, shard: usize) -> Arc<str> {
    (0..)
        .map(|i| format!("c{criticality}-s{shard}-{i}"))
        .find(|id| shard_of(hash_workload_id(id), SHARDS) == shard)
        .unwrap()
        .into()
}

fn request(id: &Arc<str>, criticality: u8) -> Request {
    Request { context: WorkloadContext { workload_id: id.clone(), criticality, ttl: None }, bytes: 0 }
}

/// Which shard criticality `c`'s workload lives on in `round`: one workload per criticality, as an
/// operator's tiers usually are, so a shard may hold only high criticalities while the other holds
/// the low ones (the case where a shard's own tail is not the engine's lowest).
fn home(round: u64, c: u8) -> usize {
    match round % 4 {
        0 => usize::from(c % 2),
        1 => usize::from((c + 1) % 2),
        2 => usize::from(c >= 4),
        _ => usize::from(c <= 2),
    }
}

/// Submit `n` requests of pseudo-random criticality from one thread; returns each request's
/// criticality and outcome (queued ones end `EvictedShutdown` at the shutdown).
fn flood(
    engine: &Engine,
    round: u64,
    seed: u64,
    n: usize,
    ids: &[[Arc<str>; SHARDS]; 5],
) -> Vec<(u8, Outcome)> {
    let mut x = seed;
    let mut tickets = Vec::with_capacity(n);
    for _ in 0..n {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let criticality = ((x >> 33) % 5) as u8 + 1;
        let id = &ids[usize::from(criticality) - 1][home(round, criticality)];
        tickets.push((criticality, engine.submit(request(id, criticality)).unwrap()));
    }
    tickets.into_iter().map(|(c, t)| (c, t.wait().outcome)).collect()
}

#[test]
fn the_refused_and_displaced_are_always_the_globally_lowest() {
    for round in 0..8u64 {
        let engine = Arc::new(engine());
        let holder = engine.submit(request(&"holder".into(), 5)).unwrap().wait();
        assert_eq!(holder.outcome, Outcome::Dispatched);
        let ids: Arc<[[Arc<str>; SHARDS]; 5]> =
            Arc::new(std::array::from_fn(|c| std::array::from_fn(|s| id_on_shard(c as u8 + 1, s))));
        // Two submitters at once, so both shards admit, displace and steal concurrently.
        let threads: Vec<_> = (0..2u64)
            .map(|t| {
                let (engine, ids) = (engine.clone(), ids.clone());
                // The queued ones are answered by the shutdown below; flood() returns then.
                std::thread::spawn(move || flood(&engine, round, round * 10 + t + 1, 400, &ids))
            })
            .collect();
        // Every request that is not queued has its outcome: then shut down, which answers the rest.
        // The signal is each workload's `active` (queued here: nothing but the holder dispatches),
        // not the queue budget, which a shard briefly holds for a newcomer that is still deciding.
        // A request counts as active from the moment it is queued until it leaves the queue, and its
        // outcome is counted after that: the sum is below 801 while anything is still in motion.
        until("all 800 settled", || {
            let queued: u64 = engine
                .registry()
                .workloads()
                .iter()
                .filter(|w| &*w.workload_id != "holder")
                .map(|w| w.active)
                .sum();
            let total: u64 = engine.outcome_counts().iter().map(|(_, n)| n).sum();
            total + queued == 801
        });
        let queued_at_end = engine.stats().queued;
        assert!(queued_at_end <= MAX_QUEUED + SHARDS as u64, "queue bound: {queued_at_end}");
        engine.shutdown();
        let outcomes: Vec<(u8, Outcome)> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
        assert_eq!(outcomes.len(), 800);
        let shed_max = outcomes
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::RejectedCapacity | Outcome::EvictedDisplaced))
            .map(|(c, _)| *c)
            .max()
            .expect("800 into a queue of 24 sheds");
        let kept: Vec<u8> =
            outcomes.iter().filter(|(_, o)| *o == Outcome::EvictedShutdown).map(|(c, _)| *c).collect();
        let kept_min = *kept.iter().min().expect("a full queue at the shutdown");
        let others: Vec<Outcome> = outcomes
            .iter()
            .map(|(_, o)| *o)
            .filter(|o| {
                !matches!(o, Outcome::RejectedCapacity | Outcome::EvictedDisplaced | Outcome::EvictedShutdown)
            })
            .collect();
        assert!(
            others.is_empty(),
            "round {round}: none may be dispatched (the slot is held) or lost: {others:?}"
        );
        let hist = |f: &dyn Fn(&Outcome) -> bool| -> [usize; 5] {
            let mut h = [0; 5];
            outcomes.iter().filter(|(_, o)| f(o)).for_each(|(c, _)| h[usize::from(*c) - 1] += 1);
            h
        };
        let shed_hist = hist(&|o| matches!(o, Outcome::RejectedCapacity | Outcome::EvictedDisplaced));
        assert!(
            shed_max <= kept_min,
            "round {round}: a criticality-{shed_max} request was shed while a criticality-{kept_min} one stayed \
             queued (shed by criticality {shed_hist:?}, kept {:?})",
            hist(&|o| *o == Outcome::EvictedShutdown)
        );
        drop(holder);
    }
}
