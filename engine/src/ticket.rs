//! The caller's side of a request: a [`Ticket`] waits for the decision a shard puts in its
//! [`Slot`] (a future, or a blocking [`Ticket::wait`]); dropping it cancels the request at once.

use crate::permit::Permit;
use crate::shared::Shared;
use crate::slot::{Decision, Slot};
use std::sync::Arc;

/// Yielding polls of a spinning [`Ticket::wait`] between two clock reads (a yield costs a few
/// hundred ns).
const WAIT_POLLS_PER_CLOCK: u32 = 4;
/// Busy polls (a `spin_loop` hint each, tens of ns) between two clock reads.
const PAUSE_POLLS_PER_CLOCK: u32 = 32;
/// Longest [`Ticket::wait`] polls without yielding while its shard runs on another CPU: enough for a
/// running shard to take the request and answer (about a microsecond), short enough that a shard
/// or producer sharing this CPU is not kept waiting long.
pub const REMOTE_POLL_NS: u64 = 5000;

/// A caller's claim on one request's outcome: a future (and, via [`Ticket::wait`], a blocking call)
/// resolving to its [`Decision`]. Dropping or cancelling it while the request is queued cancels the
/// request at once: the shard is told through its cancel queue and rung.
pub struct Ticket {
    /// `None` once the decision was taken (or the ticket cancelled).
    slot: Option<Arc<Slot<Permit>>>,
    shared: Arc<Shared>,
    /// The shard the request went to.
    shard: usize,
}

impl Ticket {
    pub(crate) fn new(slot: Arc<Slot<Permit>>, shared: Arc<Shared>, shard: usize) -> Self {
        Self { slot: Some(slot), shared, shard }
    }

    /// Give up on the request (same as dropping the ticket): `EvictedCancelled` if it was still
    /// queued; if it had been dispatched already, its permit is dropped, freeing the slot.
    pub fn cancel(self) {}

    /// Block this thread until the decision (for callers outside an async runtime). Polls for up
    /// to `spin_before_park` (without yielding for at most [`REMOTE_POLL_NS`] while its shard runs
    /// on another CPU, yielding its CPU between polls after that), then parks until the shard
    /// wakes it.
    pub fn wait(mut self) -> Decision<Permit> {
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
    fn poll_for(&self, slot: &Slot<Permit>, spin_ns: u64) -> Option<Decision<Permit>> {
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
fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and touches no memory of ours; it returns -1 on
    // failure, mapped to None.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl std::future::Future for Ticket {
    type Output = Decision<Permit>;

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

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if slot.cancel() {
                self.shared.request_cancel(self.shard, slot);
            }
        }
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("shard", &self.shard).field("pending", &self.slot.is_some()).finish()
    }
}
