//! The completion slot: how a shard hands a request's single outcome to its waiting caller.
//!
//! A [`Slot`] is shared by the caller's `Ticket` (`ticket.rs`) and the shard. Its `state` moves once, from
//! `PENDING` to either `DONE` (the shard stored the decision) or `CANCELLED` (the caller gave up),
//! by compare-and-swap, so exactly one side wins:
//!
//! - the shard writes the decision into `result`, then CASes `PENDING → DONE` and wakes the waiter.
//!   If the CAS fails the caller is gone: the shard takes the decision back and drops it (a permit
//!   inside is released at once);
//! - the caller CASes `PENDING → CANCELLED` and asks the shard to drop the request; if that CAS fails
//!   the decision is already there, and dropping it releases its permit.
//!
//! `result` is only written by the shard before a successful `PENDING → DONE` and only read by the
//! caller after observing `DONE`, which is what makes the `UnsafeCell` sound.

use crate::heap::Handle;
use crate::outcome::Outcome;
use crate::quota::QuotaNote;
use crate::sync::{AtomicU8, Mutex, Ordering};
use std::cell::UnsafeCell;
use std::task::Waker;

const PENDING: u8 = 0;
const DONE: u8 = 1;
const CANCELLED: u8 = 2;

/// The decision on a request: its outcome and, when dispatched, the permit that holds its slot.
#[derive(Debug)]
pub struct Decision<P> {
    /// What happened.
    pub outcome: Outcome,
    /// `Some` exactly when `outcome` is `Dispatched`; dropping it frees the backend slot.
    pub permit: Option<P>,
    /// Time from submission to the decision, ns.
    pub queued_ns: u64,
    /// What its workload's quota had to say: why it was refused, or what is left of it.
    pub quota: Option<QuotaNote>,
}

/// Shared between one caller and one shard; see the module docs for the protocol.
pub struct Slot<P> {
    /// `PENDING`, then `DONE` or `CANCELLED`, never back.
    state: AtomicU8,
    /// Written by the shard before `PENDING → DONE`; read by the caller after it sees `DONE`.
    result: crate::sync::UnsafeCell<Option<Decision<P>>>,
    /// The caller's waker, replaced on each poll; taken by the shard after `DONE`.
    waker: Mutex<Option<Waker>>,
    /// Where the request sits in its shard's heap. Written and read only by the one shard thread
    /// the request was handed to (through the ring's release/acquire hand-off) after creation.
    position: UnsafeCell<Option<Handle>>,
}

// SAFETY: `result` is accessed by at most one thread at a time: the shard before it publishes
// `DONE` with Release, the caller only after it reads `DONE` with Acquire (module docs); every other
// field is a sync primitive. `P` moves between threads, hence `P: Send`.
unsafe impl<P: Send> Sync for Slot<P> {}
// SAFETY: as above; the slot owns a `P` and may be dropped on either thread.
unsafe impl<P: Send> Send for Slot<P> {}

impl<P> Slot<P> {
    /// A pending slot.
    pub fn new() -> Self {
        Self {
            state: AtomicU8::new(PENDING),
            result: crate::sync::UnsafeCell::new(None),
            waker: Mutex::new(None),
            position: UnsafeCell::new(None),
        }
    }

    /// Shard side: deliver `decision` and wake the caller. Returns it back if the caller had
    /// already cancelled.
    pub fn complete(&self, decision: Decision<P>) -> Result<(), Decision<P>> {
        if let Some(w) = self.complete_deferred(decision)? {
            w.wake();
        }
        Ok(())
    }

    /// Shard side: deliver `decision`, and hand back the caller's waker (if it registered one) for
    /// the shard to wake later, so a batch of completions costs the caller one wake-up, not one
    /// per request. The decision is visible to the caller at once; only the wake is deferred.
    /// Returns the decision back if the caller had already cancelled.
    pub fn complete_deferred(&self, decision: Decision<P>) -> Result<Option<Waker>, Decision<P>> {
        if self.state.load(Ordering::Acquire) != PENDING {
            return Err(decision);
        }
        // SAFETY: the state is PENDING and only this shard (the one owner of the request) writes
        // `result`; the caller does not read it until it observes DONE, published below.
        self.result.with_mut(|r| unsafe { *r = Some(decision) });
        match self.state.compare_exchange(PENDING, DONE, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ok(self.waker.lock().unwrap_or_else(|p| p.into_inner()).take()),
            // SAFETY: the caller cancelled, so it will never read `result`; we wrote it and take it
            // back before anyone else can look.
            Err(_) => Err(self.result.with_mut(|r| unsafe { (*r).take() }).expect("decision just written")),
        }
    }

    /// Caller side: give up. `true` if the request was still pending (the shard must now drop it);
    /// `false` if a decision had already arrived (it is taken and dropped here).
    pub fn cancel(&self) -> bool {
        match self.state.compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(DONE) => {
                // SAFETY: DONE was observed with Acquire; the shard no longer touches `result`.
                drop(self.result.with_mut(|r| unsafe { (*r).take() }));
                false
            }
            Err(_) => false,
        }
    }

    /// Whether the caller has cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire) == CANCELLED
    }

    /// Caller side: take the decision if it is there, else remember `waker` for the shard to wake.
    pub fn poll_take(&self, waker: &Waker) -> Option<Decision<P>> {
        if let Some(d) = self.try_take() {
            return Some(d);
        }
        {
            let mut slot = self.waker.lock().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some(w) if w.will_wake(waker) => {}
                _ => *slot = Some(waker.clone()),
            }
        }
        // Re-check after registering: the shard may have completed between the two steps, in
        // which case it may have found no waker to wake.
        self.try_take()
    }

    /// Caller side: take the decision if it is there (no waker registered).
    pub fn try_take(&self) -> Option<Decision<P>> {
        if self.state.load(Ordering::Acquire) == DONE {
            // SAFETY: DONE observed with Acquire: the shard's write happened-before, and it will not
            // touch `result` again. Only the one caller (the ticket owner) calls this.
            self.result.with_mut(|r| unsafe { (*r).take() })
        } else {
            None
        }
    }

    /// Shard side: remember where the request is queued.
    ///
    /// # Safety
    /// Only the shard thread that owns the request may call this or [`position`](Self::position),
    /// and never concurrently with itself.
    pub unsafe fn set_position(&self, handle: Handle) {
        // SAFETY: the caller is the owning shard thread, the only one touching `position`.
        unsafe { *self.position.get() = Some(handle) };
    }

    /// Shard side: where the request is queued, if it was.
    ///
    /// # Safety
    /// As for [`set_position`](Self::set_position).
    pub unsafe fn position(&self) -> Option<Handle> {
        // SAFETY: the caller is the owning shard thread, the only one touching `position`.
        unsafe { *self.position.get() }
    }
}

impl<P> Default for Slot<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> std::fmt::Debug for Slot<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").field("state", &self.state.load(Ordering::Relaxed)).finish()
    }
}

#[cfg(all(test, not(flowgate_loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn decision(outcome: Outcome) -> Decision<Arc<()>> {
        Decision { outcome, permit: Some(Arc::new(())), queued_ns: 1, quota: None }
    }

    #[test]
    fn complete_then_take_wakes_the_waiter() {
        let slot = Slot::new();
        let flag = Arc::new(Flag(Default::default()));
        let waker = Waker::from(flag.clone());
        assert!(slot.poll_take(&waker).is_none());
        slot.complete(decision(Outcome::Dispatched)).unwrap();
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(slot.poll_take(&waker).unwrap().outcome, Outcome::Dispatched);
        assert!(!slot.cancel(), "cancel after the decision is refused");
    }

    #[test]
    fn cancel_first_returns_the_decision_to_the_shard() {
        let slot: Slot<Arc<()>> = Slot::new();
        assert!(slot.cancel());
        let permit = Arc::new(());
        let back = slot
            .complete(Decision {
                outcome: Outcome::Dispatched,
                permit: Some(permit.clone()),
                queued_ns: 0,
                quota: None,
            })
            .unwrap_err();
        drop(back);
        assert_eq!(Arc::strong_count(&permit), 1, "the permit is not kept anywhere");
    }

    #[test]
    fn cancel_after_done_drops_the_permit() {
        let slot = Slot::new();
        let permit = Arc::new(());
        slot.complete(Decision {
            outcome: Outcome::Dispatched,
            permit: Some(permit.clone()),
            queued_ns: 0,
            quota: None,
        })
        .unwrap();
        assert!(!slot.cancel());
        assert_eq!(Arc::strong_count(&permit), 1);
    }
}
