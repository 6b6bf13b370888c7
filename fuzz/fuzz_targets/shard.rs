//! The shard state machine against a simple model.
//!
//! Random enqueue / dispatch / cancel / expire / rescore / displace sequences under random limits.
//! After every step: the queue budget equals what the shard holds and stays within its limits, a
//! dispatch takes the best queued request (never jumps a better one), and no request has two
//! outcomes. At the end (after the shutdown drain) every request has exactly one outcome and every
//! workload's active count is back to zero.
//!
//! Run with `scripts/fuzz.sh shard 60`.
#![no_main]

use arbitrary::Arbitrary;
use flowgate_engine::budget::QueueBudget;
use flowgate_engine::config::EngineConfig;
use flowgate_engine::heap::Handle;
use flowgate_engine::outcome::Outcome;
use flowgate_engine::registry::hash_workload_id;
use flowgate_engine::shard::{Admission, Arrival, Done, Shard};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

const MS: u64 = 1_000_000;
const WORKLOADS: [&str; 4] = ["a", "b", "c", "default"];

#[derive(Arbitrary, Debug)]
enum Op {
    Enqueue { workload: u8, criticality: u8, bytes: u8, ttl_ms: Option<u16>, late_ms: u8 },
    Dispatch,
    Cancel(u16),
    Advance(u16),
    Rescore,
    DisplaceBelow(i8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    max_requests: u8,
    max_bytes: u8,
    ttl_ms: u16,
    max_tracked: u8,
    ops: Vec<Op>,
}

fuzz_target!(|input: Input| {
    let mut config = EngineConfig::default();
    config.queue.max_requests = u64::from(input.max_requests % 16);
    config.queue.max_bytes = u64::from(input.max_bytes);
    config.queue.ttl = Duration::from_millis(u64::from(input.ttl_ms.max(1)));
    config.workloads.max_tracked = usize::from(input.max_tracked % 4) + 1;
    let budget = Arc::new(QueueBudget::new(config.queue.max_requests, config.queue.max_bytes));
    let mut shard: Shard<u64> = Shard::new(&config, 0, 1, budget.clone(), Arc::new(AtomicUsize::new(0)));

    let mut now = 0u64;
    let mut next_id = 0u64;
    let mut outcomes: HashMap<u64, Outcome> = HashMap::new();
    let mut handles: Vec<Handle> = Vec::new();
    let record = |outcomes: &mut HashMap<u64, Outcome>, d: Done<u64>| {
        if d.outcome == Outcome::Dispatched {
            // The request finished on its model server at once.
            d.workload.release(0);
        }
        assert!(outcomes.insert(d.completion, d.outcome).is_none(), "request {} got two outcomes", d.completion);
    };

    for op in input.ops.into_iter().take(512) {
        match op {
            Op::Enqueue { workload, criticality, bytes, ttl_ms, late_ms } => {
                let id = WORKLOADS[usize::from(workload) % WORKLOADS.len()];
                let arrival = Arrival {
                    workload_id: Arc::from(id),
                    hash: hash_workload_id(id),
                    criticality: criticality % 5 + 1,
                    ttl: ttl_ms.map(|t| Duration::from_millis(u64::from(t))),
                    bytes: u64::from(bytes),
                    // Submitted a little before it reaches the shard.
                    arrived_ns: now.saturating_sub(u64::from(late_ms) * MS),
                    completion: next_id,
                };
                next_id += 1;
                let mut done = Vec::new();
                if let Admission::Queued(h) = shard.enqueue(arrival, now, &mut |d| done.push(d)) {
                    handles.push(h);
                }
                for d in done {
                    record(&mut outcomes, d);
                }
            }
            Op::Dispatch => {
                let best = shard.head_key();
                if let Some(d) = shard.dispatch_next(now) {
                    if let Some(next) = shard.head_key() {
                        assert!(best.unwrap() > next, "dispatch jumped a better request");
                    }
                    record(&mut outcomes, d);
                }
            }
            Op::Cancel(i) => {
                if !handles.is_empty() {
                    let h = handles[usize::from(i) % handles.len()];
                    if let Some(d) = shard.cancel(h, now) {
                        assert_eq!(d.outcome, Outcome::EvictedCancelled);
                        record(&mut outcomes, d);
                    }
                }
            }
            Op::Advance(ms) => {
                now += u64::from(ms) * MS;
                let mut done = Vec::new();
                shard.expire(now, &mut |d| done.push(d));
                for d in done {
                    assert_eq!(d.outcome, Outcome::EvictedTtl);
                    record(&mut outcomes, d);
                }
            }
            Op::Rescore => {
                let mut done = Vec::new();
                shard.rescore(now, &mut |d| done.push(d));
                for d in done {
                    record(&mut outcomes, d);
                }
            }
            Op::DisplaceBelow(s) => {
                let mut done = Vec::new();
                shard.displace_below(f64::from(s) / 64.0, now, &mut |d| done.push(d));
                for d in done {
                    assert_eq!(d.outcome, Outcome::EvictedDisplaced);
                    record(&mut outcomes, d);
                }
            }
        }
        assert_eq!(budget.requests(), shard.len() as u64);
        assert_eq!(budget.bytes(), shard.bytes());
        if config.queue.max_requests > 0 {
            assert!(budget.requests() <= config.queue.max_requests);
        }
        if config.queue.max_bytes > 0 {
            assert!(budget.bytes() <= config.queue.max_bytes);
        }
        assert!(shard.table().len() <= config.workloads.max_tracked);
    }

    let mut done = Vec::new();
    shard.drain_on_shutdown(now, &mut |d| done.push(d));
    for d in done {
        assert_eq!(d.outcome, Outcome::EvictedShutdown);
        record(&mut outcomes, d);
    }
    assert_eq!(outcomes.len() as u64, next_id, "a request was lost");
    assert_eq!((budget.requests(), budget.bytes()), (0, 0));
    let dir = shard.table().directory();
    for entry in dir.lock().unwrap().iter() {
        assert_eq!(entry.active(), 0, "workload {} still active", entry.id());
    }
});
