//! The locked baselines' shared machinery: completion slots, tickets, permits, and [`Locked`], a
//! `Mutex`-guarded queue with one dispatcher thread, generic over its ordering [`Discipline`].
//!
//! Both locked baselines dispatch from one dispatcher thread, as upstream's per-shard worker loop
//! does: callers enqueue under the lock and block on their ticket; the dispatcher sleeps on a
//! condvar until a head and a free slot exist, pops every head it can under the lock and completes
//! the tickets outside it. That is *kinder* to the baselines than upstream's worker, which wakes on
//! a 1 ms ticker and dispatches at most one item per cycle (about 1000 dispatches/s); flowgate is
//! compared with the stronger version.
//! TTL is checked lazily when an item reaches the head (upstream sweeps every second); a full queue
//! refuses the arrival (upstream has no displacement).

use super::{lock, Decision, Permit, Queue, Refused, Req, Spec, Ticket};
use flowgate_engine::Outcome;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Completion slot shared by a [`LockedTicket`] and its queued item.
#[derive(Debug, Default)]
pub struct LockedSlot {
    inner: Mutex<SlotInner>,
}

#[derive(Debug, Default)]
struct SlotInner {
    decision: Option<Decision>,
    waker: Option<Waker>,
    /// The decision was delivered (taken or not).
    done: bool,
    /// The ticket was dropped before its decision.
    cancelled: bool,
}

impl LockedSlot {
    /// Deliver `d`; hands it back if the ticket is gone.
    fn complete(&self, d: Decision) -> Result<(), Decision> {
        let waker = {
            let mut s = lock(&self.inner);
            if s.cancelled {
                return Err(d);
            }
            s.decision = Some(d);
            s.done = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

/// A locked baseline's ticket. Dropping it while queued marks the item cancelled; it leaves when
/// it reaches the head (a zombie until then, like upstream's before its sweep).
#[derive(Debug)]
pub struct LockedTicket {
    slot: Option<Arc<LockedSlot>>,
}

impl LockedTicket {
    pub(super) fn wait(mut self) -> Decision {
        let slot = self.slot.take().expect("ticket already resolved");
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        loop {
            {
                let mut s = lock(&slot.inner);
                if let Some(d) = s.decision.take() {
                    return d;
                }
                s.waker = Some(waker.clone());
            }
            std::thread::park();
        }
    }
}

impl Future for LockedTicket {
    type Output = Decision;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Decision> {
        let slot = self.slot.as_ref().expect("ticket polled after it resolved");
        let mut s = lock(&slot.inner);
        if let Some(d) = s.decision.take() {
            drop(s);
            self.slot = None;
            return Poll::Ready(d);
        }
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Drop for LockedTicket {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let mut s = lock(&slot.inner);
            s.cancelled = true;
            // A decision delivered but never taken: its permit drops here, outside every queue lock.
            let d = s.decision.take();
            drop(s);
            drop(d);
        }
    }
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

/// A locked baseline's slot; dropping it frees the slot (and wakes the dispatcher if work waits).
pub struct LockedPermit {
    queue: Arc<dyn Releaser>,
    workload: Arc<str>,
}

impl std::fmt::Debug for LockedPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedPermit").field("workload", &self.workload).finish()
    }
}

impl Drop for LockedPermit {
    fn drop(&mut self) {
        self.queue.release(&self.workload);
    }
}

trait Releaser: Send + Sync {
    fn release(&self, workload: &Arc<str>);
}

/// A queued request in a locked baseline.
#[derive(Debug)]
pub struct Waiting {
    /// Its workload.
    pub workload: Arc<str>,
    /// Criticality 1..=5.
    pub criticality: u8,
    /// When it was submitted.
    pub enqueued: Instant,
    /// When its TTL runs out.
    pub deadline: Instant,
    pub(super) slot: Arc<LockedSlot>,
}

/// The ordering policy inside a locked baseline.
pub trait Discipline: Send + 'static {
    /// Queue an item (under the queue lock).
    fn push(&mut self, item: Waiting);
    /// Take the next item to dispatch (under the queue lock).
    fn pop(&mut self) -> Option<Waiting>;
    /// Items queued.
    fn len(&self) -> usize;
    /// Whether nothing is queued.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Seed registry hook: a request arrived (called before the queue lock is taken).
    fn arrive(_registry: &Self::Registry, _workload: &str) {}
    /// Seed registry hook: a request finished (called outside the queue lock).
    fn finish(_registry: &Self::Registry, _workload: &str) {}
    /// Shared state the hooks need (the seed registry; `()` for FIFO).
    type Registry: Send + Sync + 'static;
}

struct LockedState<D> {
    queue: D,
    /// Free model-server slots.
    free: u32,
    shut: bool,
    /// The dispatcher waits on the condvar (so a notify is needed to wake it).
    dispatcher_waiting: bool,
}

/// A `Mutex`-guarded queue with a dispatcher thread; [`SeedQueue`](super::seed::SeedQueue) and [`FifoQueue`](super::fifo::FifoQueue) are instances.
pub struct Locked<D: Discipline> {
    state: Mutex<LockedState<D>>,
    /// Wakes the dispatcher: work arrived while a slot is free, or a slot freed while work waits.
    work: Condvar,
    registry: Arc<D::Registry>,
    max_requests: u64,
    ttl: Duration,
    name: &'static str,
    /// Weak self, handed to permits.
    me: std::sync::Weak<Locked<D>>,
    dispatcher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Something to complete once the queue lock is released.
type Completion = (Arc<LockedSlot>, Decision);

impl<D: Discipline> Locked<D> {
    pub(super) fn build(queue: D, registry: Arc<D::Registry>, spec: &Spec, name: &'static str) -> Arc<Self> {
        let q = Arc::new_cyclic(|me| Locked {
            state: Mutex::new(LockedState {
                queue,
                free: spec.slots,
                shut: false,
                dispatcher_waiting: false,
            }),
            work: Condvar::new(),
            registry,
            max_requests: spec.max_requests,
            ttl: spec.ttl,
            name,
            me: me.clone(),
            dispatcher: Mutex::new(None),
        });
        let worker = q.clone();
        let handle = std::thread::Builder::new()
            .name(format!("{name}-dispatcher"))
            .spawn(move || worker.dispatcher_loop())
            .expect("dispatcher thread starts");
        *lock(&q.dispatcher) = Some(handle);
        q
    }

    /// The seed registry (or `()`).
    pub fn registry(&self) -> &Arc<D::Registry> {
        &self.registry
    }

    /// The dispatcher: upstream's per-shard worker loop, minus its 1 ms ticker and its one item
    /// per cycle: it sleeps until there is a head and a free slot, then dispatches every head it
    /// can and completes the tickets outside the lock.
    fn dispatcher_loop(self: Arc<Self>) {
        let mut out = Vec::new();
        loop {
            {
                let mut s = lock(&self.state);
                while !s.shut && (s.free == 0 || s.queue.is_empty()) {
                    s.dispatcher_waiting = true;
                    s = self.work.wait(s).unwrap_or_else(|p| p.into_inner());
                    s.dispatcher_waiting = false;
                }
                if s.shut {
                    return;
                }
                self.dispatch(&mut s, &mut out);
            }
            Self::deliver(&mut out);
        }
    }

    /// Pop heads while a slot is free (expired and cancelled heads leave without one).
    fn dispatch(&self, s: &mut LockedState<D>, out: &mut Vec<Completion>) {
        while s.free > 0 {
            let Some(item) = s.queue.pop() else { return };
            let now = Instant::now();
            let queued_ns = now.saturating_duration_since(item.enqueued).as_nanos() as u64;
            if item.deadline <= now {
                out.push((item.slot, Decision { outcome: Outcome::EvictedTtl, permit: None, queued_ns }));
                D::finish(&self.registry, &item.workload);
                continue;
            }
            if lock(&item.slot.inner).cancelled {
                D::finish(&self.registry, &item.workload);
                continue;
            }
            s.free -= 1;
            let permit =
                LockedPermit { queue: self.me.upgrade().expect("queue alive"), workload: item.workload };
            out.push((
                item.slot,
                Decision { outcome: Outcome::Dispatched, permit: Some(Permit::Locked(permit)), queued_ns },
            ));
        }
    }

    fn deliver(out: &mut Vec<Completion>) {
        for (slot, d) in out.drain(..) {
            // A cancelled ticket hands the decision back: dropping it (and its permit) here, with
            // no lock held, frees the slot again.
            drop(slot.complete(d));
        }
    }

    fn submit_inner(&self, req: &Req) -> Result<Ticket, Refused> {
        let now = Instant::now();
        let ttl = req.ttl.map_or(self.ttl, |t| t.min(self.ttl));
        let slot = Arc::new(LockedSlot::default());
        // The seed's HandleRequestHeaders: IncrementActive before EnqueueAndWait.
        D::arrive(&self.registry, &req.workload);
        let wake = {
            let mut s = lock(&self.state);
            if s.shut {
                drop(s);
                D::finish(&self.registry, &req.workload);
                return Err(Refused::ShuttingDown);
            }
            if self.max_requests != 0 && s.queue.len() as u64 >= self.max_requests {
                drop(s);
                D::finish(&self.registry, &req.workload);
                let d = Decision { outcome: Outcome::RejectedCapacity, permit: None, queued_ns: 0 };
                let _ = slot.complete(d);
                return Ok(Ticket::Locked(LockedTicket { slot: Some(slot) }));
            }
            s.queue.push(Waiting {
                workload: req.workload.clone(),
                criticality: req.criticality,
                enqueued: now,
                deadline: now + ttl,
                slot: slot.clone(),
            });
            s.free > 0 && s.dispatcher_waiting
        };
        if wake {
            self.work.notify_one();
        }
        Ok(Ticket::Locked(LockedTicket { slot: Some(slot) }))
    }
}

impl<D: Discipline> Releaser for Locked<D> {
    fn release(&self, workload: &Arc<str>) {
        // The seed's deferred DecrementActive at request completion.
        D::finish(&self.registry, workload);
        let wake = {
            let mut s = lock(&self.state);
            s.free += 1;
            !s.queue.is_empty() && s.dispatcher_waiting
        };
        if wake {
            self.work.notify_one();
        }
    }
}

impl<D: Discipline> Queue for Locked<D> {
    fn name(&self) -> String {
        self.name.to_string()
    }

    fn submit(&self, req: &Req) -> Result<Ticket, Refused> {
        self.submit_inner(req)
    }

    fn queued(&self) -> u64 {
        lock(&self.state).queue.len() as u64
    }

    fn shutdown(&self) {
        let mut out = Vec::new();
        {
            let mut s = lock(&self.state);
            s.shut = true;
            while let Some(item) = s.queue.pop() {
                let queued_ns = item.enqueued.elapsed().as_nanos() as u64;
                D::finish(&self.registry, &item.workload);
                out.push((
                    item.slot,
                    Decision { outcome: Outcome::EvictedShutdown, permit: None, queued_ns },
                ));
            }
        }
        self.work.notify_all();
        let handle = lock(&self.dispatcher).take();
        if let Some(h) = handle {
            if h.thread().id() != std::thread::current().id() {
                h.join().expect("dispatcher thread");
            }
        }
        Self::deliver(&mut out);
    }
}
