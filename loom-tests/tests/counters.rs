//! Shared counters: a workload's active count (`engine/src/registry.rs`) and the queue budget
//! (`engine/src/budget.rs`).
#![cfg(flowgate_loom)]

use flowgate_engine::budget::QueueBudget;
use flowgate_engine::sync::{AtomicU64, Ordering};
use flowgate_loom_tests::{model, workload};
use loom::thread;
use std::sync::Arc;

/// Two dispatched requests' permits are dropped on two request threads (`release` from any
/// thread) while the owning shard admits a request (`acquire`), evicts it (`release`) and admits
/// another. The count never goes below zero (`release` asserts it), never below what the shard
/// itself holds, and ends exact: 2 + 2 − 3 = 1.
#[test]
fn workload_counters_exact_under_concurrency() {
    model(|| {
        let w = workload();
        w.acquire_as_shard();
        w.acquire_as_shard();

        let permits: Vec<_> = (0..2)
            .map(|i| {
                let w = w.clone();
                thread::spawn(move || w.release(10 + i))
            })
            .collect();

        w.acquire_as_shard();
        assert!(w.active() >= 1, "the shard's own admission is counted");
        w.release(20);
        w.acquire_as_shard();
        assert!(w.active() >= 1, "the shard's own admission is counted");

        for p in permits {
            p.join().unwrap();
        }
        assert_eq!(w.active(), 1);
    });
}

/// Three shards reserve requests of 6, 6 and 3 bytes against a budget of 2 requests and 10 bytes,
/// then release. The reserved totals never pass the limits (checked with counts that
/// under-approximate the reservations: raised after a grant, lowered before the release), a refused
/// reservation leaves nothing behind (the byte refusal undoes its count), the first reservation
/// always fits, and everything is back to zero at the end.
#[test]
fn queue_budget_reservations_never_exceed_limits() {
    model(|| {
        let budget = Arc::new(QueueBudget::new(2, 10));
        let held = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let shards: Vec<_> = [6u64, 6, 3]
            .into_iter()
            .map(|bytes| {
                let (budget, held) = (budget.clone(), held.clone());
                thread::spawn(move || {
                    if !budget.try_reserve(bytes) {
                        return false;
                    }
                    let n = held.0.fetch_add(1, Ordering::AcqRel) + 1;
                    let b = held.1.fetch_add(bytes, Ordering::AcqRel) + bytes;
                    assert!(n <= 2, "{n} requests reserved, limit 2");
                    assert!(b <= 10, "{b} bytes reserved, limit 10");
                    held.0.fetch_sub(1, Ordering::AcqRel);
                    held.1.fetch_sub(bytes, Ordering::AcqRel);
                    budget.release(bytes);
                    true
                })
            })
            .collect();
        let granted = shards.into_iter().map(|t| t.join().unwrap()).filter(|&g| g).count();
        assert!(granted >= 1, "the first reservation always fits");
        assert_eq!((budget.requests(), budget.bytes()), (0, 0), "every reservation given back");
    });
}
