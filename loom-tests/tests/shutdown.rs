//! A model of the shutdown protocol of `engine/src/ring.rs` (with its shard half in `worker.rs`
//! `shut_down` and `Engine::shutdown`). Those modules need glommio and are compiled out under
//! loom, so the protocol is restated here on the facade atomics, step for step:
//!
//! - submitter (`Submitter::submit`): `enter` = `busy.store(true, SeqCst)`, then
//!   `shutting_down.load(SeqCst)`: refused if set (clearing `busy`); else push into its SPSC ring,
//!   then `leave` = `busy.store(false, Release)`;
//! - `Engine::shutdown`: `shutting_down.store(true, SeqCst)` (and rings every shard);
//! - shard (`Worker::run` → `shut_down`): sees `shutting_down` (SeqCst load), waits while the
//!   submitter's `busy` (SeqCst load) is set, then drains the ring.
//!
//! The argument is the single total order of `SeqCst` accesses, which loom does not model (it treats
//! `SeqCst` loads and stores as acquire/release and would report a false store-buffering failure).
//! It does model `SeqCst` fences, which give the same store→load ordering, so each side's
//! `SeqCst` store-then-load pair is encoded with a `SeqCst` fence between them. The ring (rtrb) is
//! modelled by its tail index: release store on push, acquire load on pop.
#![cfg(flowgate_loom)]

use flowgate_engine::sync::{fence, AtomicBool, AtomicUsize, Ordering};
use flowgate_loom_tests::model;
use loom::thread;
use std::sync::Arc;

/// What the submitter and the shard share.
#[derive(Debug, Default)]
struct Shared {
    /// `SubmitterState::busy`.
    busy: AtomicBool,
    /// `Shared::shutting_down`.
    shutting_down: AtomicBool,
    /// The submitter's ring to the shard: its tail (requests pushed).
    tail: AtomicUsize,
}

/// `Submitter::submit`: `true` if the request was pushed, `false` if refused as shutting down.
fn submit(s: &Shared) -> bool {
    // ring::enter
    s.busy.store(true, Ordering::SeqCst);
    fence(Ordering::SeqCst); // stands for the SeqCst total order (module docs)
    if s.shutting_down.load(Ordering::SeqCst) {
        s.busy.store(false, Ordering::Release);
        return false;
    }
    s.tail.store(1, Ordering::Release); // producer.push
    s.busy.store(false, Ordering::Release); // ring::leave
    true
}

/// The shard's run loop until it sees the flag, then `Worker::shut_down`'s ring drain: returns how
/// many requests it answered.
fn shard(s: &Shared) -> usize {
    while !s.shutting_down.load(Ordering::SeqCst) {
        thread::yield_now(); // a pass, or a sleep until `shutdown` rings
    }
    fence(Ordering::SeqCst); // stands for the SeqCst total order (module docs)
    while s.busy.load(Ordering::SeqCst) {
        thread::yield_now(); // std::hint::spin_loop()
    }
    s.tail.load(Ordering::Acquire) // pop everything there, answer each with ShuttingDown
}

/// A submission racing shutdown is either refused (it saw the flag) or lands in a ring the shard
/// drains after it has seen the flag: never pushed and left unanswered.
#[test]
fn shutdown_never_strands_a_submission() {
    model(|| {
        let s = Arc::new(Shared::default());
        let submitter = {
            let s = s.clone();
            thread::spawn(move || submit(&s))
        };
        let shard = {
            let s = s.clone();
            thread::spawn(move || shard(&s))
        };
        s.shutting_down.store(true, Ordering::SeqCst); // Engine::shutdown
        let pushed = submitter.join().unwrap();
        let answered = shard.join().unwrap();
        assert_eq!(answered, usize::from(pushed), "pushed={pushed}: a submission was stranded in its ring");
    });
}
