//! Cluster leases (`engine/src/lease.rs`, `BackendTable::grant_leases`): the sync task rewrites a
//! backend's cap in its occupancy word while dispatchers take and give back places on it. Two
//! properties: a lowered lease is never exceeded by a place taken after the lowering (the cap and
//! the count are one CAS word), and a grant that makes room wakes a shard sleeping on none.
#![cfg(flowgate_loom)]

use flowgate_engine::backends::Grants;
use flowgate_engine::sync::{fence, Ordering};
use flowgate_loom_tests::{gate, model, shard_dispatches_when_room, spawn_dispatchers, workload};
use loom::thread;

/// `max_inflight` 2, leased 2; two dispatchers take a place each while the sync task lowers the
/// lease to 1. Whatever the interleaving, the in-flight count at the end is at most what was in
/// flight when the lowering landed (read right after it) or the new lease: no place is taken past
/// the lowered cap. A lease kept in a word of its own, checked before the count's CAS, fails this.
#[test]
fn a_lowered_lease_is_never_exceeded_by_later_places() {
    model(|| {
        let gate = gate(&[2], 1);
        let id = gate.backend_states()[0].id;
        gate.backends().grant_leases(Grants { slots: &[(id, 2)], ..Grants::default() }, u64::MAX);
        let workload = workload();
        let dispatchers = spawn_dispatchers(&gate, &workload, 2);
        let sync = {
            let gate = gate.clone();
            thread::spawn(move || {
                gate.backends().grant_leases(Grants { slots: &[(id, 1)], ..Grants::default() }, u64::MAX);
                gate.backends().occupancy(0).inflight()
            })
        };
        let at_lowering = sync.join().unwrap();
        let permits: Vec<_> = dispatchers.into_iter().filter_map(|t| t.join().unwrap()).collect();
        let inflight = gate.backends().occupancy(0).inflight();
        assert_eq!(inflight as usize, permits.len(), "every place is a permit");
        assert!(inflight <= at_lowering.max(1), "{inflight} in flight, {at_lowering} when lowered to 1");
        assert_eq!(gate.backend_states()[0].lease, Some(1));
        drop(permits);
        assert_eq!(gate.inflight_total(), 0);
    });
}

/// A shard whose head waits on a lease of 0 sleeps, as `worker.rs` does, while the sync task
/// grants 1 and wakes the best shard (`Engine::grant_leases`: grant, fence, wake). The shard must
/// end up dispatching: a lost wake-up parks it forever, which loom reports as a deadlock.
#[test]
fn a_grant_wakes_a_shard_sleeping_on_a_zero_lease() {
    model(|| {
        let gate = gate(&[3], 1);
        let id = gate.backend_states()[0].id;
        gate.backends().grant_leases(Grants { slots: &[(id, 0)], ..Grants::default() }, u64::MAX);
        let workload = workload();
        let sync = {
            let gate = gate.clone();
            thread::spawn(move || {
                if gate.backends().grant_leases(Grants { slots: &[(id, 1)], ..Grants::default() }, u64::MAX) {
                    fence(Ordering::SeqCst);
                    gate.wake_best(None);
                }
            })
        };
        let shard = {
            let (gate, workload) = (gate.clone(), workload.clone());
            thread::spawn(move || shard_dispatches_when_room(&gate, &workload, 1.0))
        };
        let permit = shard.join().unwrap();
        sync.join().unwrap();
        assert_eq!(gate.inflight_total(), 1);
        drop(permit);
        assert_eq!(gate.inflight_total(), 0);
    });
}
