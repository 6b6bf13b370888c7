//! Shard-level rules and the seed's scenarios, with a fake clock (explicit `now`).

use flowgate_engine::budget::QueueBudget;
use flowgate_engine::config::EngineConfig;
use flowgate_engine::context::WorkloadContext;
use flowgate_engine::outcome::{OtherReason, Outcome};
use flowgate_engine::registry::{hash_workload_id, OVERFLOW_WORKLOAD_ID};
use flowgate_engine::shard::{Admission, Arrival, Done, Shard};
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

struct Harness {
    shard: Shard<u64>,
    budget: Arc<QueueBudget>,
    done: Vec<Done<u64>>,
    next_id: u64,
}

impl Harness {
    fn new(config: &EngineConfig) -> Self {
        let budget = Arc::new(QueueBudget::new(config.queue.max_requests, config.queue.max_bytes));
        let shard = Shard::new(config, 0, 1, budget.clone(), Arc::new(AtomicUsize::new(0)));
        Self { shard, budget, done: Vec::new(), next_id: 0 }
    }

    fn with_limits(max_requests: u64, max_bytes: u64) -> Self {
        let mut c = EngineConfig::default();
        c.queue.max_requests = max_requests;
        c.queue.max_bytes = max_bytes;
        Self::new(&c)
    }

    /// Submit a request (arriving now) and return its id and admission.
    fn submit(&mut self, workload: &str, crit: u8, now_ns: u64) -> (u64, Admission) {
        self.submit_full(workload, crit, None, 0, now_ns)
    }

    fn submit_full(
        &mut self,
        workload: &str,
        crit: u8,
        ttl: Option<Duration>,
        bytes: u64,
        now_ns: u64,
    ) -> (u64, Admission) {
        let id = self.next_id;
        self.next_id += 1;
        let arrival = Arrival {
            workload_id: Arc::from(workload),
            hash: hash_workload_id(workload),
            criticality: crit,
            ttl,
            bytes,
            arrived_ns: now_ns,
            completion: id,
        };
        let done = &mut self.done;
        let admission = self.shard.enqueue(arrival, now_ns, &mut |d| done.push(d));
        (id, admission)
    }

    /// Dispatch everything queued, in order, returning ids.
    fn dispatch_all(&mut self, now_ns: u64) -> Vec<u64> {
        let mut order = Vec::new();
        while let Some(d) = self.shard.dispatch_next(now_ns) {
            assert_eq!(d.outcome, Outcome::Dispatched);
            d.workload.release(now_ns);
            order.push(d.completion);
        }
        order
    }

    fn outcome_of(&self, id: u64) -> Option<Outcome> {
        self.done.iter().find(|d| d.completion == id).map(|d| d.outcome)
    }
}

#[test]
fn criticality_order_five_before_three_before_one() {
    let mut h = Harness::with_limits(100, 0);
    let (low, _) = h.submit("a", 1, 0);
    let (mid, _) = h.submit("b", 3, 0);
    let (high, _) = h.submit("c", 5, 0);
    assert_eq!(h.dispatch_all(MS), vec![high, mid, low]);
}

#[test]
fn equal_scores_dispatch_in_arrival_order() {
    let mut h = Harness::with_limits(100, 0);
    let mut c = EngineConfig::default();
    c.scoring.wait_weight = 0.0;
    c.scoring.rate_weight = 0.0;
    h.shard = Shard::new(&c, 0, 1, h.budget.clone(), Arc::new(AtomicUsize::new(0)));
    let ids: Vec<u64> = (0..10).map(|i| h.submit("w", 3, i * MS).0).collect();
    assert_eq!(h.dispatch_all(20 * MS), ids);
}

#[test]
fn wait_time_boost_old_crit_one_beats_fresh_crit_five() {
    let mut h = Harness::with_limits(100, 0);
    let (old, _) = h.submit("batch", 1, 0);
    let (fresh, _) = h.submit("chat", 5, 60 * S);
    assert_eq!(h.dispatch_all(60 * S), vec![old, fresh]);
}

#[test]
fn wait_time_boost_is_not_enough_early() {
    let mut h = Harness::with_limits(100, 0);
    let (old, _) = h.submit("batch", 1, 0);
    // After 30 s the crit-1 request scores 0.2 + 0.08 = 0.28 < 0.4 of a fresh crit-5.
    let (fresh, _) = h.submit("chat", 5, 30 * S);
    assert_eq!(h.dispatch_all(30 * S), vec![fresh, old]);
}

#[test]
fn rate_penalty_busy_workload_yields_to_quiet_one() {
    let mut h = Harness::with_limits(0, 0);
    // 'busy' sends 100 req/s for 60 s; each is dispatched at once.
    for i in 0..6000u64 {
        h.submit("busy", 4, i * 10 * MS);
        h.dispatch_all(i * 10 * MS);
    }
    let now = 60 * S;
    let (busy, _) = h.submit("busy", 4, now);
    let (quiet, _) = h.submit("quiet", 4, now);
    assert_eq!(h.dispatch_all(now), vec![quiet, busy]);
    let rate = h.shard.table().get("busy").unwrap().rate_per_s(now);
    // The window holds between 55 s and 60 s of history (one 5 s bucket of slack).
    assert!((91.0..=101.0).contains(&rate), "busy rate {rate}");
}

#[test]
fn missing_context_is_the_default_workload() {
    let mut h = Harness::with_limits(10, 0);
    let (ctx, defaults) = WorkloadContext::parse(None, 3);
    assert!(!defaults.is_empty());
    let (id, _) = h.submit(&ctx.workload_id, ctx.criticality, 0);
    let entry = h.shard.table().get("default").expect("default workload tracked");
    assert_eq!((entry.total(), entry.active()), (1, 1));
    assert_eq!(h.dispatch_all(MS), vec![id]);
}

#[test]
fn full_queue_displaces_the_worst_for_a_better_newcomer() {
    let mut h = Harness::with_limits(2, 0);
    let (first, a1) = h.submit("low", 1, 0);
    let (second, a2) = h.submit("low", 1, MS);
    assert!(matches!((a1, a2), (Admission::Queued(_), Admission::Queued(_))), "exact at limit admitted");
    let (vip, a3) = h.submit("vip", 5, 2 * MS);
    assert!(matches!(a3, Admission::Queued(_)));
    // The worst (latest crit-1) is displaced, not the older one.
    assert_eq!(h.outcome_of(second), Some(Outcome::EvictedDisplaced));
    assert_eq!(h.outcome_of(first), None);
    // One over the limit and not better than the tail: refused.
    let (late, a4) = h.submit("low", 1, 3 * MS);
    assert_eq!(a4, Admission::Rejected);
    assert_eq!(h.outcome_of(late), Some(Outcome::RejectedCapacity));
    assert_eq!(h.budget.requests(), 2);
    assert_eq!(h.dispatch_all(4 * MS), vec![vip, first]);
    assert_eq!(h.shard.table().get("low").unwrap().active(), 0);
}

#[test]
fn byte_limit_exact_admitted_one_over_refused_and_oversize_never_displaces() {
    let mut h = Harness::with_limits(0, 100);
    let (a, _) = h.submit_full("w", 3, None, 60, 0);
    let (b, _) = h.submit_full("w", 3, None, 40, 0);
    assert_eq!(h.shard.bytes(), 100);
    let (c, adm) = h.submit_full("w", 3, None, 1, MS);
    assert_eq!((adm, h.outcome_of(c)), (Admission::Rejected, Some(Outcome::RejectedCapacity)));
    // A bigger body that scores higher displaces as many as needed.
    let (d, adm) = h.submit_full("vip", 5, None, 70, MS);
    assert!(matches!(adm, Admission::Queued(_)));
    assert_eq!(h.outcome_of(b), Some(Outcome::EvictedDisplaced));
    assert_eq!(h.outcome_of(a), Some(Outcome::EvictedDisplaced));
    // Larger than the whole byte budget: refused outright, nothing displaced.
    let (e, _) = h.submit_full("vip", 5, None, 101, MS);
    assert_eq!(h.outcome_of(e), Some(Outcome::RejectedCapacity));
    assert_eq!(h.dispatch_all(2 * MS), vec![d]);
    assert_eq!(h.budget.bytes(), 0);
}

#[test]
fn ttl_default_and_per_request_shortens_but_never_lengthens() {
    let mut h = Harness::with_limits(100, 0); // default ttl 30 s
    let (dflt, _) = h.submit("w", 3, 0);
    let (short, _) = h.submit_full("w", 3, Some(Duration::from_secs(1)), 0, 0);
    let (long, _) = h.submit_full("w", 3, Some(Duration::from_secs(100)), 0, 0);
    let done = &mut h.done;
    h.shard.expire(999 * MS, &mut |d| done.push(d));
    assert!(h.done.is_empty());
    let done = &mut h.done;
    h.shard.expire(S, &mut |d| done.push(d));
    assert_eq!(h.outcome_of(short), Some(Outcome::EvictedTtl));
    let done = &mut h.done;
    h.shard.expire(30 * S, &mut |d| done.push(d));
    assert_eq!(h.outcome_of(dflt), Some(Outcome::EvictedTtl));
    assert_eq!(h.outcome_of(long), Some(Outcome::EvictedTtl), "per-request ttl cannot exceed the default");
    assert!(h.shard.is_empty());
    assert_eq!(h.shard.table().get("w").unwrap().active(), 0);
}

#[test]
fn expired_before_reaching_the_shard_is_rejected() {
    let mut h = Harness::with_limits(100, 0);
    let id = h.next_id;
    let arrival = Arrival {
        workload_id: Arc::from("w"),
        hash: hash_workload_id("w"),
        criticality: 3,
        ttl: Some(Duration::from_millis(5)),
        bytes: 0,
        arrived_ns: 0,
        completion: id,
    };
    let done = &mut h.done;
    assert_eq!(h.shard.enqueue(arrival, 10 * MS, &mut |d| done.push(d)), Admission::Rejected);
    assert_eq!(h.outcome_of(id), Some(Outcome::RejectedOther(OtherReason::ExpiredOnArrival)));
    assert_eq!(h.budget.requests(), 0);
}

#[test]
fn cancel_once_then_stale() {
    let mut h = Harness::with_limits(100, 0);
    let (id, adm) = h.submit("w", 3, 0);
    let Admission::Queued(handle) = adm else { panic!("not queued") };
    let done = h.shard.cancel(handle, MS).expect("queued request cancels");
    assert_eq!((done.completion, done.outcome), (id, Outcome::EvictedCancelled));
    assert!(h.shard.cancel(handle, MS).is_none(), "second cancel is refused");
    // Cancel after dispatch finds nothing.
    let (_, adm) = h.submit("w", 3, 2 * MS);
    let Admission::Queued(handle) = adm else { panic!("not queued") };
    assert_eq!(h.dispatch_all(3 * MS).len(), 1);
    assert!(h.shard.cancel(handle, 4 * MS).is_none());
    assert_eq!(h.budget.requests(), 0);
}

#[test]
fn shutdown_drains_everything_with_its_outcome() {
    let mut h = Harness::with_limits(0, 0);
    for i in 0..50 {
        h.submit_full(&format!("w{}", i % 7), (i % 5 + 1) as u8, None, 10, i * MS);
    }
    let done = &mut h.done;
    h.shard.drain_on_shutdown(S, &mut |d| done.push(d));
    assert_eq!(h.done.len(), 50);
    assert!(h.done.iter().all(|d| d.outcome == Outcome::EvictedShutdown));
    assert_eq!((h.budget.requests(), h.budget.bytes()), (0, 0));
    let done = &mut h.done;
    h.shard.drain_on_shutdown(S, &mut |d| done.push(d));
    assert_eq!(h.done.len(), 50, "draining twice finds nothing");
}

#[test]
fn rescore_caps_the_wait_term_then_arrival_order_decides() {
    let mut c = EngineConfig::default();
    c.queue.ttl = Duration::from_secs(3600);
    let mut h = Harness::new(&c);
    let (a, _) = h.submit("x", 1, 0);
    let (b, _) = h.submit("y", 1, 10 * S);
    let (c, _) = h.submit("z", 2, 20 * S);
    // At 200 s all three have waited past the cap: scores 0.48, 0.48, 0.56.
    let done = &mut h.done;
    h.shard.rescore(200 * S, &mut |d| done.push(d));
    assert!(h.done.is_empty(), "nothing expires within the 1 h ttl");
    assert_eq!(h.dispatch_all(200 * S), vec![c, a, b]);
}

#[test]
fn idle_workloads_are_forgotten_active_ones_never() {
    let mut c = EngineConfig::default();
    c.workloads.idle_timeout = Duration::from_secs(10);
    let mut h = Harness::new(&c);
    h.submit("idle", 3, 0);
    h.dispatch_all(0);
    assert_eq!(h.shard.sweep_idle(9 * S), 0);
    h.submit("idle", 3, 9 * S); // activity resets the idle timer
    h.dispatch_all(9 * S);
    h.submit("busy", 3, 9 * S); // stays queued: active
    assert_eq!(h.shard.sweep_idle(18 * S), 0);
    assert_eq!(h.shard.sweep_idle(19 * S), 1);
    assert!(h.shard.table().get("idle").is_none());
    assert!(h.shard.table().get("busy").is_some());
}

#[test]
fn beyond_max_tracked_ids_share_the_overflow_entry() {
    let mut c = EngineConfig::default();
    c.workloads.max_tracked = 2;
    let mut h = Harness::new(&c);
    for w in ["a", "b", "c", "d"] {
        h.submit(w, 3, 0);
    }
    assert_eq!(h.shard.table().len(), 2);
    let dir = h.shard.table().directory();
    let ids: Vec<String> = dir.lock().unwrap().iter().map(|e| e.id().to_string()).collect();
    assert_eq!(ids, vec!["a", "b", OVERFLOW_WORKLOAD_ID]);
    let overflow = dir.lock().unwrap()[2].clone();
    assert_eq!(overflow.active(), 2);
}

/// `max_tracked` is live: lowered by a reload, new ids overflow while the tracked ones stay;
/// raised again, new ids are tracked.
#[test]
fn a_reloaded_max_tracked_applies_to_the_next_new_ids() {
    let mut c = EngineConfig::default();
    c.workloads.max_tracked = 10;
    let mut h = Harness::new(&c);
    for w in ["a", "b", "c"] {
        h.submit(w, 3, 0);
    }
    c.workloads.max_tracked = 2;
    h.shard.reconfigure(&c, 0);
    h.submit("d", 3, 0);
    assert_eq!(h.shard.table().len(), 3, "the tracked ones stay");
    assert!(h.shard.table().get("d").is_none(), "d went to the overflow entry");
    c.workloads.max_tracked = 5;
    h.shard.reconfigure(&c, 0);
    h.submit("e", 3, 0);
    assert!(h.shard.table().get("e").is_some());
    assert_eq!(h.shard.table().len(), 4);
}

/// One random step for the conservation property.
#[derive(Clone, Debug)]
enum Op {
    Submit { workload: u8, crit: u8, bytes: u8, ttl_ms: Option<u16> },
    Dispatch,
    Cancel(usize),
    Advance(u16),
    Rescore,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, 1u8..=5, 0u8..50, proptest::option::of(1u16..3000))
            .prop_map(|(workload, crit, bytes, ttl_ms)| Op::Submit { workload, crit, bytes, ttl_ms }),
        2 => Just(Op::Dispatch),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (0u16..2000).prop_map(Op::Advance),
        1 => Just(Op::Rescore),
    ]
}

proptest! {
    /// Exactly one outcome per request through any mix of paths, limits that hold after every step,
    /// dispatch order that never inverts a better queued request, and counters back to zero.
    #[test]
    fn every_request_gets_exactly_one_outcome(ops in proptest::collection::vec(op(), 1..300), max_req in 0u64..8, max_bytes in 0u64..120) {
        let mut c = EngineConfig::default();
        c.queue.max_requests = max_req;
        c.queue.max_bytes = max_bytes;
        c.queue.ttl = Duration::from_secs(2);
        let mut h = Harness::new(&c);
        let mut now = 0u64;
        let mut handles = Vec::new();
        for op in ops {
            match op {
                Op::Submit { workload, crit, bytes, ttl_ms } => {
                    let (_, adm) = h.submit_full(&format!("w{workload}"), crit, ttl_ms.map(|t| Duration::from_millis(t.into())), bytes.into(), now);
                    if let Admission::Queued(hd) = adm { handles.push(hd); }
                }
                Op::Dispatch => {
                    let head = h.shard.head_key();
                    if let Some(d) = h.shard.dispatch_next(now) {
                        d.workload.release(now);
                        h.done.push(d);
                        if let (Some(k), Some(next)) = (head, h.shard.head_key()) { prop_assert!(k > next); }
                    }
                }
                Op::Cancel(i) if !handles.is_empty() => {
                    if let Some(d) = h.shard.cancel(handles[i % handles.len()], now) { h.done.push(d); }
                }
                Op::Cancel(_) => {}
                Op::Advance(ms) => {
                    now += u64::from(ms) * MS;
                    let done = &mut h.done;
                    h.shard.expire(now, &mut |d| done.push(d));
                }
                Op::Rescore => {
                    let done = &mut h.done;
                    h.shard.rescore(now, &mut |d| done.push(d));
                }
            }
            prop_assert_eq!(h.budget.requests(), h.shard.len() as u64);
            prop_assert_eq!(h.budget.bytes(), h.shard.bytes());
            if max_req > 0 { prop_assert!(h.shard.len() as u64 <= max_req); }
            if max_bytes > 0 { prop_assert!(h.shard.bytes() <= max_bytes); }
        }
        let done = &mut h.done;
        h.shard.drain_on_shutdown(now, &mut |d| done.push(d));
        let mut seen: HashMap<u64, Outcome> = HashMap::new();
        for d in &h.done {
            prop_assert!(seen.insert(d.completion, d.outcome).is_none(), "two outcomes for {}", d.completion);
        }
        prop_assert_eq!(seen.len() as u64, h.next_id, "every request has an outcome");
        for w in 0..6 {
            if let Some(e) = h.shard.table().get(&format!("w{w}")) { prop_assert_eq!(e.active(), 0); }
        }
    }
}

/// `scoring.rate_window` is live: a reload re-bases each workload's windows so its rate reads the
/// same at once, then follows the new window (5 s here: 6 s without arrivals empty it, where the
/// old 60 s window would still count them). Token rates move the same way.
#[test]
fn a_reloaded_rate_window_keeps_the_rate_then_follows_the_new_window() {
    let mut c = EngineConfig::default();
    let mut h = Harness::new(&c);
    // 10 req/s for 60 s, and 120 weighted tokens charged per second.
    for i in 0..600u64 {
        h.submit("busy", 3, i * 100 * MS);
        h.dispatch_all(i * 100 * MS);
        if i % 10 == 0 {
            h.shard.table().get("busy").unwrap().charge(i * 100 * MS, 100, 10);
        }
    }
    let now = 60 * S;
    let busy = h.shard.table().get("busy").unwrap().clone();
    let (before, tokens_before) = (busy.rate_per_s(now), busy.token_rate_per_s(now));
    assert!((9.0..=10.1).contains(&before), "rate before {before}");
    assert!((108.0..=121.0).contains(&tokens_before), "token rate before {tokens_before}");
    c.scoring.rate_window = Duration::from_secs(5);
    h.shard.reconfigure(&c, now);
    let (after, tokens_after) = (busy.rate_per_s(now), busy.token_rate_per_s(now));
    assert!((after - before).abs() <= 0.2 + before * 0.02, "rate {before} → {after}");
    assert!(
        (tokens_after - tokens_before).abs() <= 1.0 + tokens_before * 0.02,
        "{tokens_before} → {tokens_after}"
    );
    // Arrivals go on at 10/s for 2 s: measured over the 5 s window now.
    for i in 0..20u64 {
        h.submit("busy", 3, now + i * 100 * MS);
        h.dispatch_all(now + i * 100 * MS);
    }
    let later = now + 2 * S;
    assert!((8.0..=10.5).contains(&busy.rate_per_s(later)), "rate {}", busy.rate_per_s(later));
    // 6 s of silence: the 5 s window is empty; the 60 s one would still read about 10/s.
    assert_eq!(busy.rate_per_s(later + 6 * S), 0.0);
    assert_eq!(busy.token_rate_per_s(later + 6 * S), 0.0);
    // A new workload starts in the new window; reloading the same window changes nothing.
    h.submit("new", 3, later);
    let fresh = h.shard.table().get("new").unwrap().clone();
    assert!((fresh.rate_per_s(later) - 1.0 / 5.0).abs() < 1e-9, "one arrival over 5 s");
    h.shard.reconfigure(&c, later);
    assert!((fresh.rate_per_s(later) - 1.0 / 5.0).abs() < 1e-9);
}
