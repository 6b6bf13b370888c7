//! The dispatch gate (`engine/src/gate.rs`): global free count + per-backend in-flight, permits,
//! and the published heads that steer a freed slot to the shard that needs it.
#![cfg(flowgate_loom)]

use flowgate_engine::permit::Permit;
use flowgate_engine::sync::{AtomicUsize, Ordering};
use flowgate_loom_tests::{
    assert_conserved, dispatch, gate, model, shard_dispatches_when_room, workload, Flag,
};
use loom::thread;
use std::sync::Arc;

/// A head score for a queued request.
const HEAD: f64 = 1.0;

/// Capacity 2 over two backends of one slot each, one slot held. One thread drops its permit while
/// two shards try to acquire. Never more permits alive than capacity (checked with a count that
/// under-approximates the live permits: decremented before a drop, incremented after a grant), no
/// reservation without a backend slot behind it (`try_acquire`'s own `expect`), the one free slot
/// is always granted to someone, and at the end `free + Σ inflight == capacity` with every permit
/// accounted for; once all are dropped, everything is free again.
#[test]
fn permit_release_races_slot_acquisition() {
    model(|| {
        let gate = gate(&[1, 1], 1);
        let workload = workload();
        let held = Arc::new(AtomicUsize::new(1));
        let p0 = dispatch(&gate, &workload).expect("a free slot");

        let releaser = {
            let held = held.clone();
            thread::spawn(move || {
                held.fetch_sub(1, Ordering::AcqRel);
                drop(p0);
            })
        };
        let acquirers: Vec<_> = (0..2)
            .map(|_| {
                let (gate, workload, held) = (gate.clone(), workload.clone(), held.clone());
                thread::spawn(move || {
                    let permit = dispatch(&gate, &workload)?;
                    let alive = held.fetch_add(1, Ordering::AcqRel) + 1;
                    assert!(alive as u64 <= gate.capacity(), "{alive} permits granted over capacity");
                    Some(permit)
                })
            })
            .collect();

        releaser.join().unwrap();
        let permits: Vec<Permit> = acquirers.into_iter().filter_map(|t| t.join().unwrap()).collect();
        assert!(!permits.is_empty(), "a slot was free throughout, yet nobody got one");
        assert_conserved(&gate, permits.len() as u64);
        assert_eq!(workload.active(), permits.len() as u64);
        drop(permits);
        assert_conserved(&gate, 0);
        assert_eq!(workload.active(), 0);
    });
}

/// Head publication vs slot release, the Dekker pair behind "a freed slot finds a waiting shard":
/// shard 0 (with work) publishes its head and reads the free count (`Gate::publish`), while a permit
/// drop bumps the free count and rings the best published head's doorbell (`release` →
/// `wake_best`). Shard 1 is idle. Shard 0's doorbell is armed beforehand as a probe so a ring of it
/// is recorded. Either the shard saw the free slot, or it was the one rung.
#[test]
fn freed_slot_always_reaches_a_shard_with_work() {
    model(|| {
        let gate = gate(&[1], 2);
        let workload = workload();
        let permit = dispatch(&gate, &workload).expect("a free slot");
        let (rung, waker) = Flag::waker();
        gate.shard(0).doorbell.prepare_sleep(&waker);

        let shard = {
            let gate = gate.clone();
            thread::spawn(move || gate.publish(0, HEAD, [Some(HEAD), None], 0, 1, false))
        };
        let releaser = thread::spawn(move || drop(permit));

        let saw_free = shard.join().unwrap();
        releaser.join().unwrap();
        assert!(
            saw_free || rung.woken(),
            "the freed slot reached nobody: shard 0 neither saw it nor was rung"
        );
        assert_conserved(&gate, 0);
    });
}

/// End to end, as `worker.rs` runs it: a shard whose head waits on a full gate dispatches if it can,
/// publishes, and sleeps (announce, look again, wait for a ring), while another thread drops the
/// permit holding the only slot. The shard must end up dispatching: a lost wake-up parks it
/// forever, which loom reports as a deadlock.
#[test]
fn released_slot_wakes_a_sleeping_shard() {
    model(|| {
        let gate = gate(&[1], 1);
        let workload = workload();
        let permit = dispatch(&gate, &workload).expect("a free slot");
        let releaser = thread::spawn(move || drop(permit));

        // The shard waits on its own thread, as a pinned shard executor does.
        let shard = {
            let (gate, workload) = (gate.clone(), workload.clone());
            thread::spawn(move || shard_dispatches_when_room(&gate, &workload, HEAD))
        };
        let dispatched = shard.join().unwrap();
        releaser.join().unwrap();
        assert_conserved(&gate, 1);
        drop(dispatched);
        assert_conserved(&gate, 0);
        assert_eq!(workload.active(), 0);
    });
}
