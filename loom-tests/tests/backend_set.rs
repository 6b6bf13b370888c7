//! The backend set changing while requests are dispatched (`engine/src/backends.rs`,
//! `BackendTable::set` through `Gate::set_backends`): a controller drains, re-adds and replaces
//! backends while dispatchers take and give back places. Properties:
//! - a drained backend leaves the table exactly when its last place is given back, whoever gets
//!   there first (no slot stuck draining with nothing in flight, no place on a freed slot);
//! - a slot is rewritten only when nobody holds a place on it: loom's `UnsafeCell` checks that the
//!   controller's address write never races a permit holder's read;
//! - a backend added while a shard sleeps with its head waiting for room wakes that shard.
#![cfg(flowgate_loom)]

use flowgate_engine::config::{BackendConfig, SaturationConfig};
use flowgate_loom_tests::{
    assert_conserved, dispatch, gate, gate_sized, model, shard_dispatches_when_room, workload,
};
use loom::thread;

fn backend(i: u32, max_inflight: u32) -> BackendConfig {
    BackendConfig { address: format!("10.0.0.{i}:8000"), max_inflight }
}

/// One backend (one slot); a dispatcher takes a place and gives it back while the controller
/// removes the backend. At the end the table is empty and nothing is in flight, whichever of the
/// drain, the reserve and the release came first. A drain that only set `Draining` without
/// checking for idle (or a release that did not free a draining slot) leaves it stuck.
#[test]
fn drain_races_acquire_and_release() {
    model(|| {
        let gate = gate(&[1], 1);
        let workload = workload();
        let dispatcher = {
            let (gate, workload) = (gate.clone(), workload.clone());
            thread::spawn(move || {
                let permit = dispatch(&gate, &workload);
                let got = permit.is_some();
                drop(permit);
                got
            })
        };
        let controller = {
            let gate = gate.clone();
            thread::spawn(move || gate.set_backends(&[]))
        };
        dispatcher.join().unwrap();
        let changes = controller.join().unwrap();
        assert_eq!(changes.drained.len(), 1);
        assert!(gate.backend_states().is_empty(), "left: {:?}", gate.backend_states());
        assert_eq!(gate.inflight_total(), 0);
        assert!(dispatch(&gate, &workload).is_none(), "nothing takes a removed backend");
    });
}

/// A request holds backend 1's place; the controller removes backend 1 and adds it back while
/// the request ends. Either the slot was freed and written anew, or it came back from draining
/// with its in-flight count: in both cases one backend, nothing in flight, its one slot free.
#[test]
fn re_add_races_the_last_release() {
    model(|| {
        let gate = gate(&[1], 1);
        let workload = workload();
        let permit = dispatch(&gate, &workload).expect("a free slot");
        let holder = thread::spawn(move || drop(permit));
        let controller = {
            let gate = gate.clone();
            thread::spawn(move || {
                gate.set_backends(&[]);
                gate.set_backends(&[backend(0, 1)]);
            })
        };
        holder.join().unwrap();
        controller.join().unwrap();
        let states = gate.backend_states();
        assert_eq!(states.len(), 1, "{states:?}");
        assert!(!states[0].draining && states[0].inflight == 0, "{states:?}");
        assert_eq!(gate.capacity(), 1);
        assert_conserved(&gate, 0);
    });
}

/// A table of one slot: a permit holder reads its backend's address while the controller replaces
/// that backend by another one (same slot, once free). Loom fails the model if the address write
/// can race the read; the holder always reads the backend it was dispatched to.
#[test]
fn a_slot_is_rewritten_only_after_its_last_holder_left() {
    model(|| {
        let gate = gate_sized(&[1], 1, SaturationConfig::default(), 1);
        let workload = workload();
        let dispatcher = {
            let (gate, workload) = (gate.clone(), workload.clone());
            thread::spawn(move || {
                if let Some(permit) = dispatch(&gate, &workload) {
                    let address = permit.address().to_string();
                    assert!(address == "10.0.0.0:8000" || address == "10.0.0.2:8000", "{address}");
                }
            })
        };
        let controller = {
            let gate = gate.clone();
            thread::spawn(move || {
                gate.set_backends(&[]);
                gate.set_backends(&[backend(2, 1)])
            })
        };
        dispatcher.join().unwrap();
        let changes = controller.join().unwrap();
        // The second set found the slot free (or still draining: then it was refused).
        let states = gate.backend_states();
        if changes.refused.is_empty() {
            assert_eq!(states.len(), 1);
            assert_eq!(states[0].address, "10.0.0.2:8000");
        } else {
            assert!(states.is_empty() || states[0].address == "10.0.0.0:8000");
        }
        assert_eq!(gate.inflight_total(), 0);
    });
}

/// Every slot of backend 0 is held; a shard's head waits for room and sleeps. The controller adds
/// a backend: the shard must wake and dispatch to it (a lost wake-up parks it forever, which loom
/// reports as a deadlock).
#[test]
fn an_added_backend_wakes_a_sleeping_shard() {
    model(|| {
        let gate = gate_sized(&[1], 1, SaturationConfig::default(), 2);
        let workload = workload();
        let held = dispatch(&gate, &workload).expect("a free slot");
        let controller = {
            let gate = gate.clone();
            thread::spawn(move || gate.set_backends(&[backend(0, 1), backend(7, 1)]))
        };
        let shard = {
            let (gate, workload) = (gate.clone(), workload.clone());
            thread::spawn(move || shard_dispatches_when_room(&gate, &workload, 1.0))
        };
        let permit = shard.join().unwrap();
        controller.join().unwrap();
        assert_eq!(permit.address(), "10.0.0.7:8000");
        drop((permit, held));
        assert_conserved(&gate, 0);
    });
}
