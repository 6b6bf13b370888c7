//! Per-workload quotas at the shard, with a fake clock: `reject` refuses at arrival with the time
//! until the workload may send again; `queue` parks the over-quota workload's requests below
//! everyone else and unparks them when a slot of it is released or a bucket refills. Properties
//! by proptest: in flight never above `max_inflight`, dispatches within the bucket bound, every
//! request exactly one outcome.

use flowgate_engine::budget::QueueBudget;
use flowgate_engine::config::EngineConfig;
use flowgate_engine::outcome::Outcome;
use flowgate_engine::quota::QUOTA_WINDOW_NS;
use flowgate_engine::quota_rule::{OnExceed, Quota};
use flowgate_engine::registry::{hash_workload_id, WorkloadEntry};
use flowgate_engine::shard::{Admission, Arrival, Done, Shard, QUOTA_RELEASE_RETRY_NS};
use proptest::prelude::*;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;

fn quota(
    pattern: &str,
    max_inflight: Option<u32>,
    rpm: Option<u32>,
    tpm: Option<u64>,
    on: OnExceed,
) -> Quota {
    Quota {
        pattern: pattern.into(),
        max_inflight,
        requests_per_minute: rpm,
        tokens_per_minute: tpm,
        on_exceed: on,
    }
}

struct Harness {
    shard: Shard<u64>,
    next_id: u64,
    /// Outcomes of requests not dispatched, by id.
    refused: HashMap<u64, Done<u64>>,
    /// Dispatched and not released yet (the permits), by id.
    in_flight: HashMap<u64, Arc<WorkloadEntry>>,
    dispatched: Vec<(u64, String, u64)>,
    /// The token reservation each dispatch carried (what its permit would settle), by id.
    reserved: HashMap<u64, u64>,
}

impl Harness {
    fn new(quotas: Vec<Quota>) -> Self {
        let mut c = EngineConfig::default();
        c.workloads.quotas = quotas;
        c.queue.ttl = Duration::from_secs(600);
        let budget = Arc::new(QueueBudget::new(c.queue.max_requests, c.queue.max_bytes));
        let shard = Shard::new(&c, 0, 1, budget, Arc::new(AtomicUsize::new(0)));
        Self {
            shard,
            next_id: 0,
            refused: HashMap::new(),
            in_flight: HashMap::new(),
            dispatched: Vec::new(),
            reserved: HashMap::new(),
        }
    }

    fn submit(&mut self, workload: &str, criticality: u8, now: u64) -> (u64, Admission) {
        let id = self.next_id;
        self.next_id += 1;
        let arrival = Arrival {
            workload_id: Arc::from(workload),
            hash: hash_workload_id(workload),
            criticality,
            ttl: None,
            bytes: 0,
            arrived_ns: now,
            completion: id,
        };
        let mut out = Vec::new();
        let a = self.shard.enqueue(arrival, now, &mut |d| out.push(d));
        for d in out {
            assert!(self.refused.insert(d.completion, d).is_none(), "two outcomes");
        }
        (id, a)
    }

    /// Dispatch while `slots` allow (the worker's loop: settle, then pop); returns the ids.
    fn dispatch(&mut self, slots: usize, now: u64) -> Vec<u64> {
        let mut ids = Vec::new();
        while self.in_flight.len() < slots {
            self.shard.settle_head(now);
            if self.shard.dispatch_head().is_none() {
                break;
            }
            let d = self.shard.dispatch_next(now).unwrap();
            assert_eq!(d.outcome, Outcome::Dispatched);
            self.dispatched.push((d.completion, d.workload.id().to_string(), now));
            self.reserved.insert(d.completion, d.reserved_tokens);
            assert!(self.in_flight.insert(d.completion, d.workload).is_none());
            ids.push(d.completion);
        }
        ids
    }

    /// What a permit's drop does, then what the worker does when it hears of it.
    fn release(&mut self, id: u64, now: u64) {
        let w = self.in_flight.remove(&id).expect("in flight");
        w.release(now);
        if w.quota().parked() {
            self.shard.wake_quotas(now);
        }
    }

    fn in_flight_of(&self, workload: &str) -> usize {
        self.in_flight.values().filter(|w| &**w.id() == workload).count()
    }
}

#[test]
fn reject_refuses_past_max_inflight_with_a_one_second_retry() {
    let mut h = Harness::new(vec![quota("team-*", Some(2), None, None, OnExceed::Reject)]);
    h.submit("team-a", 3, 0);
    h.submit("team-a", 3, 0);
    let (id, a) = h.submit("team-a", 3, 0);
    assert_eq!(a, Admission::Rejected);
    let done = &h.refused[&id];
    assert_eq!(done.outcome, Outcome::RejectedCapacity);
    assert_eq!(done.quota_retry_ns, Some(QUOTA_RELEASE_RETRY_NS));
    // Another workload is not limited by it.
    assert!(matches!(h.submit("other", 3, 0).1, Admission::Queued(_)));
    // Once one finishes, one more may come.
    let ids = h.dispatch(8, MS);
    assert_eq!(ids.len(), 3);
    h.release(ids[0], 2 * MS);
    assert!(matches!(h.submit("team-a", 3, 3 * MS).1, Admission::Queued(_)));
}

#[test]
fn reject_by_rate_says_when_the_bucket_has_room_again() {
    let mut h = Harness::new(vec![quota("w", None, Some(2), None, OnExceed::Reject)]); // one per 30 s
    let t = 10 * S;
    assert!(matches!(h.submit("w", 3, t).1, Admission::Queued(_)));
    assert!(matches!(h.submit("w", 3, t).1, Admission::Queued(_)));
    let (id, _) = h.submit("w", 3, t + S);
    assert_eq!(h.refused[&id].quota_retry_ns, Some(29 * S), "30 s after the last, less the 1 s gone");
    assert!(matches!(h.submit("w", 3, t + 30 * S).1, Admission::Queued(_)));
}

#[test]
fn queue_parks_the_workload_at_its_limit_and_others_go_first() {
    let mut h = Harness::new(vec![quota("a", Some(1), None, None, OnExceed::Queue)]);
    // a's requests are the more critical, so without the quota both would go before b's.
    let (a1, _) = h.submit("a", 5, 0);
    let (a2, _) = h.submit("a", 5, 0);
    let (b1, _) = h.submit("b", 1, 0);
    assert_eq!(h.dispatch(3, MS), [a1, b1], "a2 waits on a's quota, b1 does not wait for it");
    assert!(h.shard.dispatch_head().is_none(), "only the parked a2 is left");
    assert_eq!(h.shard.len(), 1);
    h.release(a1, 2 * MS);
    assert_eq!(h.dispatch(3, 3 * MS), [a2], "a's release unparks a2");
}

#[test]
fn time_parked_on_its_own_quota_does_not_age_a_request() {
    let mut h = Harness::new(vec![quota("a", Some(1), None, None, OnExceed::Queue)]);
    // Equal criticality and no rate penalty: the order is the aging alone.
    let mut c = EngineConfig::default();
    c.workloads.quotas = vec![quota("a", Some(1), None, None, OnExceed::Queue)];
    c.queue.ttl = Duration::from_secs(600);
    c.scoring.rate_weight = 0.0;
    h.shard.reconfigure(&c, 0);
    let (a1, _) = h.submit("a", 3, 0);
    let (a2, _) = h.submit("a", 3, 0);
    let (b0, _) = h.submit("b", 3, 0);
    let (b00, _) = h.submit("b", 3, 0);
    assert_eq!(h.dispatch(2, 0), [a1, b0], "a2 parks on a's quota");
    // b1 waits 10 s for capacity; a2 has waited 20 s, all of it on its own quota.
    let (b1, _) = h.submit("b", 3, 10 * S);
    h.release(a1, 20 * S);
    h.shard.rescore(20 * S, &mut |d| panic!("{:?} left", d.outcome));
    // b00 (20 s for capacity) first, then b1 (10 s) ahead of a2 (0 s since its unpark).
    assert_eq!(h.dispatch(2, 20 * S), [b00]);
    h.release(b0, 20 * S);
    assert_eq!(h.dispatch(2, 20 * S), [b1], "a2's parked time did not age it past b1");
    h.release(b00, 21 * S);
    assert_eq!(h.dispatch(2, 21 * S), [a2]);
}

#[test]
fn queue_by_rate_unparks_when_the_bucket_refills() {
    let mut h = Harness::new(vec![quota("a", None, Some(1), None, OnExceed::Queue)]);
    let (a1, _) = h.submit("a", 3, 0);
    let (a2, _) = h.submit("a", 3, 0);
    assert_eq!(h.dispatch(8, 0), [a1]);
    assert_eq!(h.dispatch(8, S), Vec::<u64>::new());
    assert_eq!(h.shard.quota_recheck_ns(), QUOTA_WINDOW_NS, "refilled one minute after a1");
    h.shard.wake_quotas(QUOTA_WINDOW_NS);
    assert_eq!(h.dispatch(8, QUOTA_WINDOW_NS), [a2]);
}

#[test]
fn a_token_quota_waits_out_the_charged_debt() {
    // 100 ms a token; one at a time, so a2 cannot start before a1's cost is known.
    let mut h = Harness::new(vec![quota("a", Some(1), None, Some(600), OnExceed::Queue)]);
    let (a1, _) = h.submit("a", 3, 0);
    let (a2, _) = h.submit("a", 3, 0);
    assert_eq!(h.dispatch(8, 0), [a1]);
    // a1 cost 900 weighted tokens (900 prompt): 90 s of quota, 30 s beyond the minute held.
    h.in_flight[&a1].charge(0, 900, 0);
    h.release(a1, 0);
    assert_eq!(h.dispatch(8, 0), Vec::<u64>::new());
    let at = h.shard.quota_recheck_ns();
    assert_eq!(at, 30 * S + 1);
    h.shard.wake_quotas(at);
    assert_eq!(h.dispatch(8, at), [a2]);
}

#[test]
fn parked_requests_still_expire_cancel_and_drain_with_one_outcome_each() {
    let mut h = Harness::new(vec![quota("a", Some(1), None, None, OnExceed::Queue)]);
    h.submit("a", 3, 0);
    let (_, Admission::Queued(cancel)) = h.submit("a", 3, 0) else { panic!() };
    let (drained, _) = h.submit("a", 3, 0);
    assert_eq!(h.dispatch(8, MS).len(), 1);
    assert!(h.shard.dispatch_head().is_none());
    assert_eq!(h.shard.cancel(cancel, 2 * MS).map(|d| d.outcome), Some(Outcome::EvictedCancelled));
    let mut out = Vec::new();
    h.shard.drain_on_shutdown(3 * MS, &mut |d| out.push(d));
    assert_eq!(
        out.iter().map(|d| (d.completion, d.outcome)).collect::<Vec<_>>(),
        [(drained, Outcome::EvictedShutdown)]
    );
    assert!(h.shard.is_empty());
}

#[test]
fn a_reload_that_lifts_the_quota_lets_parked_requests_go() {
    let mut c = EngineConfig::default();
    c.workloads.quotas = vec![quota("a", Some(1), None, None, OnExceed::Queue)];
    let mut h = Harness::new(c.workloads.quotas.clone());
    h.submit("a", 3, 0);
    let (a2, _) = h.submit("a", 3, 0);
    assert_eq!(h.dispatch(8, 0).len(), 1);
    c.workloads.quotas.clear();
    h.shard.reconfigure(&c, 0);
    assert_eq!(h.shard.quota_recheck_ns(), 0, "a recheck is due at once");
    h.shard.wake_quotas(MS);
    assert_eq!(h.dispatch(8, MS), [a2]);
}

/// One step of the property run.
#[derive(Clone, Debug)]
enum Step {
    Submit { workload: u8, criticality: u8 },
    Dispatch,
    Release(usize),
    Charge(usize, u16),
    Advance(u32),
    Rescore,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u8..3, 1u8..=5).prop_map(|(workload, criticality)| Step::Submit { workload, criticality }),
        3 => Just(Step::Dispatch),
        3 => any::<usize>().prop_map(Step::Release),
        1 => (any::<usize>(), any::<u16>()).prop_map(|(i, c)| Step::Charge(i, c)),
        2 => (0u32..20_000).prop_map(Step::Advance),
        1 => Just(Step::Rescore),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `q` (queue: max_inflight 2, 30 rpm), `r` (reject: max_inflight 3, 60 rpm) and the
    /// unlimited `u` share 4 slots under random arrivals, dispatches, releases, charges and time.
    #[test]
    fn quotas_hold_and_every_request_has_one_outcome(steps in proptest::collection::vec(step(), 1..200)) {
        let mut h = Harness::new(vec![
            quota("q", Some(2), Some(30), None, OnExceed::Queue),
            quota("r", Some(3), Some(60), Some(50_000), OnExceed::Reject),
        ]);
        let names = ["q", "r", "u"];
        let mut now = 0u64;
        let mut submitted = 0u64;
        for s in steps {
            match s {
                Step::Submit { workload, criticality } => {
                    h.submit(names[workload as usize], criticality, now);
                    submitted += 1;
                }
                Step::Dispatch => { h.dispatch(4, now); }
                Step::Release(i) => {
                    let mut ids: Vec<u64> = h.in_flight.keys().copied().collect();
                    ids.sort_unstable();
                    if !ids.is_empty() {
                        h.release(ids[i % ids.len()], now);
                    }
                }
                Step::Charge(i, cost) => {
                    let mut ids: Vec<u64> = h.in_flight.keys().copied().collect();
                    ids.sort_unstable();
                    if !ids.is_empty() {
                        h.in_flight[&ids[i % ids.len()]].charge(now, u64::from(cost), 0);
                    }
                }
                Step::Advance(ms) => {
                    now += u64::from(ms) * MS;
                    if now >= h.shard.quota_recheck_ns() {
                        h.shard.wake_quotas(now);
                    }
                }
                Step::Rescore => h.shard.rescore(now, &mut |d| { h.refused.insert(d.completion, d); }),
            }
            // In flight never above max_inflight (r's admission counts queued ones too).
            prop_assert!(h.in_flight_of("q") <= 2, "q in flight {}", h.in_flight_of("q"));
            prop_assert!(h.in_flight_of("r") <= 3, "r in flight {}", h.in_flight_of("r"));
            prop_assert!(h.in_flight.len() <= 4);
        }
        // The request buckets: over any span of T, at most limit × (1 + T / 60 s) dispatches
        // (q, counted at dispatch).
        let q_times: Vec<u64> = h.dispatched.iter().filter(|d| d.1 == "q").map(|d| d.2).collect();
        for (i, &t1) in q_times.iter().enumerate() {
            for (j, &t2) in q_times.iter().enumerate().skip(i) {
                let n = (j - i + 1) as f64;
                let bound = 30.0 * (1.0 + (t2 - t1) as f64 / QUOTA_WINDOW_NS as f64);
                prop_assert!(n <= bound + 1e-9, "{n} q dispatches in {} ms", (t2 - t1) / MS);
            }
        }
        // Every request: dispatched, refused, or still queued; then drain the rest.
        let mut drained = Vec::new();
        h.shard.drain_on_shutdown(now, &mut |d| drained.push(d));
        let dispatched = h.dispatched.len() as u64;
        prop_assert_eq!(dispatched + h.refused.len() as u64 + drained.len() as u64, submitted);
        let mut seen: Vec<u64> = h.dispatched.iter().map(|d| d.0).chain(h.refused.keys().copied())
            .chain(drained.iter().map(|d| d.completion)).collect();
        seen.sort_unstable();
        seen.dedup();
        prop_assert_eq!(seen.len() as u64, submitted, "an id had two outcomes");
    }
}

/// One step of the token-bucket property run.
#[derive(Clone, Debug)]
enum TokenStep {
    Submit,
    Dispatch,
    /// Charge and release the in-flight request at this index (of the sorted ids).
    Finish(usize),
    Advance(u32),
}

fn token_step() -> impl Strategy<Value = TokenStep> {
    prop_oneof![
        4 => Just(TokenStep::Submit),
        3 => Just(TokenStep::Dispatch),
        3 => any::<usize>().prop_map(TokenStep::Finish),
        2 => (0u32..20_000).prop_map(TokenStep::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// `t` (queue, 10 000 tokens per minute, no other limit) sends requests of one cost `cost`
    /// into 6 slots, several in flight at once, each charged only when it finishes. After its
    /// first request's cost is known, the costs dispatched over any span T stay within
    /// `10 000 × (1 + T / 60 s)` plus one request: every request in flight holds its reservation.
    #[test]
    fn tokens_per_minute_exceed_the_limit_by_at_most_one_request(
        cost in 100u64..3_000,
        steps in proptest::collection::vec(token_step(), 1..300),
    ) {
        const TPM: u64 = 10_000;
        let mut h = Harness::new(vec![quota("t", None, None, Some(TPM), OnExceed::Queue)]);
        // The first request's cost is known before any other goes (the mean starts there).
        let (first, _) = h.submit("t", 3, 0);
        prop_assert_eq!(h.dispatch(6, 0), vec![first]);
        h.in_flight[&first].charge(0, cost, 0);
        h.release(first, 0);
        let mut now = 0u64;
        for s in steps {
            match s {
                TokenStep::Submit => { h.submit("t", 3, now); }
                TokenStep::Dispatch => { h.dispatch(6, now); }
                TokenStep::Finish(i) => {
                    let mut ids: Vec<u64> = h.in_flight.keys().copied().collect();
                    ids.sort_unstable();
                    if !ids.is_empty() {
                        let id = ids[i % ids.len()];
                        h.in_flight[&id].charge_reserved(now, cost, 0, h.reserved[&id]);
                        h.release(id, now);
                    }
                }
                TokenStep::Advance(ms) => {
                    now += u64::from(ms) * MS;
                    if now >= h.shard.quota_recheck_ns() {
                        h.shard.wake_quotas(now);
                    }
                }
            }
        }
        let times: Vec<u64> = h.dispatched.iter().skip(1).map(|d| d.2).collect();
        for (i, &t1) in times.iter().enumerate() {
            for (j, &t2) in times.iter().enumerate().skip(i) {
                let tokens = (j - i + 1) as f64 * cost as f64;
                let bound = TPM as f64 * (1.0 + (t2 - t1) as f64 / QUOTA_WINDOW_NS as f64) + cost as f64;
                prop_assert!(tokens <= bound + 1e-6, "{tokens} tokens dispatched in {} ms", (t2 - t1) / MS);
            }
        }
    }
}
