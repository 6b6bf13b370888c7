//! The completion slot: how a shard hands a request's single outcome to its waiting caller.
//!
//! A [`Slot`] is shared by the caller's [`Ticket`] and the shard. Its `state` moves once, from
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
use crate::sync::{AtomicU8, Mutex, Ordering};
use std::cell::UnsafeCell;
use std::task::Waker;

/// Yielding polls of a spinning [`Ticket::wait`] between two clock reads (a yield costs a few
/// hundred ns).
#[cfg(not(flowgate_loom))]
const WAIT_POLLS_PER_CLOCK: u32 = 4;
/// Busy polls (a `spin_loop` hint each, tens of ns) between two clock reads.
#[cfg(not(flowgate_loom))]
const PAUSE_POLLS_PER_CLOCK: u32 = 32;
/// Longest [`Ticket::wait`] polls without yielding while its shard runs on another CPU: enough for a
/// running shard to take the request and answer (about a microsecond), short enough that a shard
/// or producer sharing this CPU is not kept waiting long.
#[cfg(not(flowgate_loom))]
pub const REMOTE_POLL_NS: u64 = 5000;

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

    fn try_take(&self) -> Option<Decision<P>> {
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

/// A caller's claim on one request's outcome: a future (and, via [`Ticket::wait`], a blocking call)
/// resolving to its [`Decision`]. Dropping or cancelling it while the request is queued cancels the
/// request at once: the shard is told through its cancel queue and rung.
#[cfg(not(flowgate_loom))]
pub struct Ticket {
    /// `None` once the decision was taken (or the ticket cancelled).
    slot: Option<std::sync::Arc<Slot<crate::gate::Permit>>>,
    shared: std::sync::Arc<crate::runtime::Shared>,
    /// The shard the request went to.
    shard: usize,
}

#[cfg(not(flowgate_loom))]
impl Ticket {
    pub(crate) fn new(
        slot: std::sync::Arc<Slot<crate::gate::Permit>>,
        shared: std::sync::Arc<crate::runtime::Shared>,
        shard: usize,
    ) -> Self {
        Self { slot: Some(slot), shared, shard }
    }

    /// Give up on the request (same as dropping the ticket): `EvictedCancelled` if it was still
    /// queued; if it had been dispatched already, its permit is dropped, freeing the slot.
    pub fn cancel(self) {}

    /// Block this thread until the decision (for callers outside an async runtime). Polls for up
    /// to `spin_before_park`, then parks until the shard wakes it (see [`poll_for`](Self::poll_for)).
    pub fn wait(mut self) -> Decision<crate::gate::Permit> {
        let slot = self.slot.take().expect("ticket already resolved");
        if let Some(d) = slot.try_take() {
            return d; // the common case under load: no clock read, no registration
        }
        let spin_ns = self.shared.config.spin_before_park.as_nanos() as u64;
        if let Some(d) = self.poll_for(&slot, spin_ns) {
            return d;
        }
        let waker = std::task::Waker::from(std::sync::Arc::new(ThreadWaker(std::thread::current())));
        loop {
            if let Some(d) = slot.poll_take(&waker) {
                return d;
            }
            std::thread::park();
        }
    }

    /// Poll `slot` for up to `spin_ns`:
    ///
    /// 1. while the shard is pinned to another CPU than the one this thread runs on, without
    ///    giving the CPU up, for at most [`REMOTE_POLL_NS`]: the shard works in parallel, and a
    ///    yield would only hand this CPU to whatever shares it (often a polling shard) for a
    ///    context switch or two;
    /// 2. then yielding between polls, so a shard sharing this CPU gets to run at once.
    fn poll_for(
        &self,
        slot: &Slot<crate::gate::Permit>,
        spin_ns: u64,
    ) -> Option<Decision<crate::gate::Permit>> {
        if spin_ns == 0 {
            return None;
        }
        let clock = &self.shared.clock;
        let start_ns = clock.now_ns();
        if current_cpu().is_some_and(|cpu| cpu != self.shared.shard_cpu(self.shard)) {
            let until_ns = start_ns.saturating_add(spin_ns.min(REMOTE_POLL_NS));
            let mut polls = 0u32;
            loop {
                std::hint::spin_loop();
                if let Some(d) = slot.try_take() {
                    return Some(d);
                }
                polls += 1;
                if polls.is_multiple_of(PAUSE_POLLS_PER_CLOCK) && clock.now_ns() >= until_ns {
                    break;
                }
            }
        }
        let until_ns = start_ns.saturating_add(spin_ns);
        let mut polls = 0u32;
        loop {
            if polls.is_multiple_of(WAIT_POLLS_PER_CLOCK) && clock.now_ns() >= until_ns {
                return None;
            }
            std::thread::yield_now();
            if let Some(d) = slot.try_take() {
                return Some(d);
            }
            polls += 1;
        }
    }
}

/// The CPU the calling thread runs on now, if the kernel says.
#[cfg(not(flowgate_loom))]
fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours; it returns -1 on
    // failure, mapped to None.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

#[cfg(not(flowgate_loom))]
struct ThreadWaker(std::thread::Thread);

#[cfg(not(flowgate_loom))]
impl std::task::Wake for ThreadWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

#[cfg(not(flowgate_loom))]
impl std::future::Future for Ticket {
    type Output = Decision<crate::gate::Permit>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let slot = self.slot.as_ref().expect("ticket polled after it resolved");
        match slot.poll_take(cx.waker()) {
            Some(d) => {
                self.slot = None;
                std::task::Poll::Ready(d)
            }
            None => std::task::Poll::Pending,
        }
    }
}

#[cfg(not(flowgate_loom))]
impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if slot.cancel() {
                self.shared.request_cancel(self.shard, slot);
            }
        }
    }
}

#[cfg(not(flowgate_loom))]
impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("shard", &self.shard).field("pending", &self.slot.is_some()).finish()
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
        Decision { outcome, permit: Some(Arc::new(())), queued_ns: 1 }
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
            .complete(Decision { outcome: Outcome::Dispatched, permit: Some(permit.clone()), queued_ns: 0 })
            .unwrap_err();
        drop(back);
        assert_eq!(Arc::strong_count(&permit), 1, "the permit is not kept anywhere");
    }

    #[test]
    fn cancel_after_done_drops_the_permit() {
        let slot = Slot::new();
        let permit = Arc::new(());
        slot.complete(Decision { outcome: Outcome::Dispatched, permit: Some(permit.clone()), queued_ns: 0 })
            .unwrap();
        assert!(!slot.cancel());
        assert_eq!(Arc::strong_count(&permit), 1);
    }
}
