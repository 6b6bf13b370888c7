//! The completion slot (`engine/src/ticket.rs`): one decision, handed from a shard to one caller.
#![cfg(flowgate_loom)]

use flowgate_engine::outcome::Outcome;
use flowgate_engine::permit::Permit;
use flowgate_engine::slot::{Decision, Slot};
use flowgate_loom_tests::{assert_conserved, block_on, dispatch, gate, model, workload, Flag};
use loom::thread;
use std::future::poll_fn;
use std::sync::Arc;
use std::task::{Poll, Waker};

/// How the caller's side ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caller {
    /// It polled and took the decision.
    Took,
    /// It cancelled while the request was pending: the shard must drop the decision.
    CancelledPending,
    /// It cancelled after the decision arrived: it dropped the decision itself.
    CancelledAfterDone,
}

/// A caller polls once then gives up (`Ticket` drop), while the shard completes with a dispatched
/// decision holding a real gate `Permit`. Exactly one side wins the slot; whichever side ends up
/// with the decision drops it, so the permit (backend slot + workload count) is released exactly
/// once, while the slot itself is still alive (nothing parked in it), and nothing is delivered
/// twice (a second take finds nothing).
#[test]
fn cancel_races_completion_exactly_one_outcome() {
    model(|| {
        let gate = gate(&[1], 1);
        let workload = workload();
        let permit = dispatch(&gate, &workload).expect("a free slot");
        let slot: Arc<Slot<Permit>> = Arc::new(Slot::new());

        let shard = {
            let slot = slot.clone();
            thread::spawn(move || {
                let decision = Decision {
                    outcome: Outcome::Dispatched,
                    permit: Some(permit),
                    queued_ns: 0,
                    quota: None,
                };
                match slot.complete(decision) {
                    Ok(()) => true,
                    Err(back) => {
                        // worker.rs: "the caller cancelled as we dispatched: its permit drops here".
                        assert!(back.permit.is_some(), "the decision comes back whole");
                        drop(back);
                        false
                    }
                }
            })
        };
        let caller = {
            let slot = slot.clone();
            thread::spawn(move || {
                let (_woken, waker) = Flag::waker();
                if let Some(d) = slot.poll_take(&waker) {
                    assert_eq!(d.outcome, Outcome::Dispatched);
                    assert!(d.permit.is_some());
                    return Caller::Took;
                }
                if slot.cancel() {
                    Caller::CancelledPending
                } else {
                    Caller::CancelledAfterDone
                }
            })
        };

        let delivered = shard.join().unwrap();
        let caller = caller.join().unwrap();
        assert_eq!(delivered, caller != Caller::CancelledPending, "exactly one side wins: {caller:?}");
        assert_eq!(slot.is_cancelled(), caller == Caller::CancelledPending);
        // The permit was dropped by whoever held the decision last: slot and workload count are back.
        assert_conserved(&gate, 0);
        assert_eq!(workload.active(), 0, "workload count released exactly once");
        assert!(slot.poll_take(Waker::noop()).is_none(), "nothing left to deliver twice");
    });
}

/// The caller's task polls (registering its waker) while the shard completes. No lost wake-up: the
/// caller either takes the decision on a poll or is woken to poll again. A lost wake-up leaves the
/// caller parked forever, which loom reports as a deadlock.
#[test]
fn waker_registered_before_completion_is_woken() {
    model(|| {
        let slot: Arc<Slot<u32>> = Arc::new(Slot::new());
        let d = complete_while_caller_waits(slot);
        assert_eq!((d.outcome, d.permit, d.queued_ns), (Outcome::Dispatched, Some(7), 1));
    });
}

/// A ticket polled first from one task, then moved to another (a new waker): the completion must
/// wake the newest waker, not the stale one, or the second task sleeps forever.
#[test]
fn repoll_with_new_waker_is_the_one_woken() {
    model(|| {
        let slot: Arc<Slot<u32>> = Arc::new(Slot::new());
        let (_stale, stale_waker) = Flag::waker();
        let taken_early = slot.poll_take(&stale_waker);
        assert!(taken_early.is_none(), "nobody completed yet");
        let d = complete_while_caller_waits(slot);
        assert_eq!(d.permit, Some(7));
    });
}

/// The shard delivers two decisions with `complete_deferred` and wakes only at the end of its pass
/// (worker.rs batches wake-ups). The caller, waiting on both, must never sleep through either: a
/// decision is visible as soon as it is delivered, and each registered waker is woken by the
/// flush. A lost wake-up parks the caller forever, which loom reports as a deadlock.
#[test]
fn deferred_wakes_reach_every_waiter() {
    model(|| {
        let slots: [Arc<Slot<u32>>; 2] = [Arc::new(Slot::new()), Arc::new(Slot::new())];
        let shard = {
            let slots = slots.clone();
            thread::spawn(move || {
                let mut held = Vec::new();
                for (i, slot) in slots.iter().enumerate() {
                    let decision = Decision {
                        outcome: Outcome::Dispatched,
                        permit: Some(i as u32),
                        queued_ns: 0,
                        quota: None,
                    };
                    held.extend(slot.complete_deferred(decision).expect("the caller never cancels"));
                }
                held.into_iter().for_each(Waker::wake);
            })
        };
        let caller = thread::spawn(move || {
            let mut got = [None, None];
            block_on(poll_fn(|cx| {
                for (g, slot) in got.iter_mut().zip(&slots) {
                    if g.is_none() {
                        *g = slot.poll_take(cx.waker()).map(|d| d.permit);
                    }
                }
                if got.iter().all(Option::is_some) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }));
            got
        });
        shard.join().unwrap();
        assert_eq!(caller.join().unwrap(), [Some(Some(0)), Some(Some(1))]);
    });
}

/// The shard completes `slot` with a dispatched decision (permit 7, queued 1 ns) on one thread
/// while the caller, on another (as a `Ticket::wait` caller), polls it until it resolves.
fn complete_while_caller_waits(slot: Arc<Slot<u32>>) -> Decision<u32> {
    let shard = {
        let slot = slot.clone();
        thread::spawn(move || {
            let decision =
                Decision { outcome: Outcome::Dispatched, permit: Some(7), queued_ns: 1, quota: None };
            slot.complete(decision).expect("the caller never cancels");
        })
    };
    let caller = thread::spawn(move || {
        block_on(poll_fn(|cx| match slot.poll_take(cx.waker()) {
            Some(d) => Poll::Ready(d),
            None => Poll::Pending,
        }))
    });
    shard.join().unwrap();
    caller.join().unwrap()
}
