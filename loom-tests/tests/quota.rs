//! The quota wake-up (`engine/src/shard.rs` `settle_head`, `engine/src/permit.rs` `Drop`): a
//! shard parking a workload at its `max_inflight` races a permit of that workload being
//! released on another thread. Either the shard's second look sees the release (and lets the
//! request go), or the permit sees the `parked` flag and flags the shard for a quota wake-up:
//! never neither, which would leave the parked request waiting for an unrelated event.
#![cfg(flowgate_loom)]

use flowgate_engine::budget::QueueBudget;
use flowgate_engine::config::EngineConfig;
use flowgate_engine::permit::Permit;
use flowgate_engine::quota_rule::{OnExceed, Quota};
use flowgate_engine::registry::hash_workload_id;
use flowgate_engine::shard::{Arrival, Shard};
use flowgate_engine::sync::AtomicUsize;
use flowgate_loom_tests::{gate, model};
use loom::thread;
use std::sync::Arc;

#[test]
fn parking_races_the_release_of_a_permit_without_losing_the_wake_up() {
    model(|| {
        let gate = gate(&[2], 1);
        let mut config = EngineConfig::default();
        config.workloads.quotas = vec![Quota {
            pattern: "a".into(),
            max_inflight: Some(1),
            requests_per_minute: None,
            tokens_per_minute: None,
            on_exceed: OnExceed::Queue,
        }];
        let mut shard: Shard<u32> =
            Shard::new(&config, 0, 1, Arc::new(QueueBudget::new(0, 0)), Arc::new(AtomicUsize::new(0)));
        for id in 0..2 {
            let arrival = Arrival {
                workload_id: "a".into(),
                hash: hash_workload_id("a"),
                criticality: 3,
                ttl: None,
                bytes: 0,
                arrived_ns: 0,
                completion: id,
            };
            shard.enqueue(arrival, 0, &mut |_| panic!("admitted"));
        }
        // The first is dispatched; its permit is released on a request thread.
        shard.settle_head(0);
        let first = shard.dispatch_next(0).expect("under quota");
        let place = gate.try_acquire(3).expect("a free slot");
        let permit = Permit::new(gate.clone(), place, first.workload.clone(), 0);
        let holder = thread::spawn(move || drop(permit));

        // The shard looks at the second meanwhile.
        shard.settle_head(0);
        let parked = shard.dispatch_head().is_none();
        holder.join().unwrap();
        if parked {
            assert!(gate.shard(0).quota_wake_pending(), "parked, and nobody told the shard of the release");
            // What the worker then does: wake, and the request may go.
            assert!(gate.shard(0).take_quota_wake());
            shard.wake_quotas(0);
            shard.settle_head(0);
            assert!(shard.dispatch_head().is_some(), "unparked after the wake-up");
        }
    });
}
