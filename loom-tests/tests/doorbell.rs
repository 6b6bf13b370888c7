//! The doorbell (`engine/src/doorbell.rs`): a shard sleeps only after announcing it and looking for
//! work once more; a producer publishes work, then rings.
#![cfg(flowgate_loom)]

use flowgate_engine::doorbell::Doorbell;
use flowgate_engine::sync::{AtomicUsize, Ordering};
use flowgate_loom_tests::{block_on, model, Sleep};
use loom::thread;
use std::sync::Arc;

/// A submitter pushes a request into its SPSC ring to a shard and rings the shard's doorbell,
/// while the shard drains what it sees and otherwise sleeps (`prepare_sleep`, look again, `rung`
/// on later polls, with the newest waker), so the ring may land in any phase of the sleep: before
/// the announcement, between it and the re-check, or after. rtrb is not loom-aware, so the ring is
/// modelled by its tail index, as rtrb publishes it (release store by the producer, acquire load by
/// the consumer). The shard must take the request: a lost wake-up leaves it waiting forever, which
/// loom reports as a deadlock.
///
/// One push and one ring: loom 0.7 cannot judge more. Its modification order is only partial, so
/// once a ringer's `swap(false)` is unordered with the shard's next `store(true)` (a second ring,
/// or a second ringer), loom lets a later load return a value that every real execution has
/// overwritten (known loom issues #282 and #389) and reports a deadlock no execution has: we traced
/// both shapes (a ringer reading back `true` right after its own `swap(false)`; a ringer's
/// post-fence load reading its own earlier `false` instead of the shard's later `true`).
#[test]
fn ring_handoff_with_sleep_never_loses_a_wakeup() {
    model(|| {
        let bell = Arc::new(Doorbell::new());
        let tail = Arc::new(AtomicUsize::new(0));

        let producer = {
            let (bell, tail) = (bell.clone(), tail.clone());
            thread::spawn(move || {
                tail.store(1, Ordering::Release); // push
                bell.ring();
            })
        };

        let taken = block_on(async {
            loop {
                let seen = tail.load(Ordering::Acquire);
                if seen > 0 {
                    return seen; // pop
                }
                Sleep::new(&bell, || tail.load(Ordering::Acquire) > 0).await;
            }
        });
        assert_eq!(taken, 1, "the shard took the request");
        producer.join().unwrap();
    });
}
