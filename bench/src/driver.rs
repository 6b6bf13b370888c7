//! Driving many outstanding tickets from one thread: each ticket is polled with its own waker,
//! which, when the implementation resolves it, pushes the ticket's index onto a ready list and
//! unparks the driver. Every implementation is driven through the same [`Tracker`].
//!
//! Before it parks, the driver polls its ready list for a while, yielding between polls (the
//! engine's own blocking `Ticket::wait` does the same, for `spin_before_park`). A driver that
//! parks at once after each collection, sharing a CPU with a shard that is delivering a batch of
//! decisions, is woken once per decision: each wake-up preempts the shard, the driver collects the
//! one decision whose wake ran, parks, and the shard resumes for the next (measured with `perf
//! sched`: a 14 µs switch pair per dispatch, and the 10k-queued run with 2 shards at 0.3× of 1).

use crate::baseline::{Decision, Queue, Refused, Req, Ticket};
use flowgate_engine::registry::hash_workload_id;
use flowgate_engine::ring::shard_of;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

struct Ready {
    list: Mutex<Vec<usize>>,
    driver: Thread,
}

struct IndexWaker {
    index: usize,
    ready: Arc<Ready>,
}

impl Wake for IndexWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.list.lock().unwrap_or_else(|p| p.into_inner()).push(self.index);
        self.ready.driver.unpark();
    }
}

/// Outstanding tickets with per-ticket metadata `M`, owned by one driver thread.
pub struct Tracker<M> {
    ready: Arc<Ready>,
    slots: Vec<Option<(Ticket, M, Waker)>>,
    vacant: Vec<usize>,
    pending: usize,
    scratch: Vec<usize>,
    /// How long [`park_until`](Self::park_until) polls before it parks.
    spin: Duration,
}

impl<M> Default for Tracker<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M> Tracker<M> {
    /// A tracker driven by the calling thread.
    pub fn new() -> Self {
        Tracker {
            ready: Arc::new(Ready { list: Mutex::new(Vec::new()), driver: std::thread::current() }),
            slots: Vec::new(),
            vacant: Vec::new(),
            pending: 0,
            scratch: Vec::new(),
            spin: crate::baseline::spin_before_park()
                .unwrap_or(flowgate_engine::EngineConfig::default().spin_before_park),
        }
    }

    /// Tickets not resolved yet.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Track `ticket`; if it is already resolved, its decision comes back at once.
    pub fn insert(&mut self, mut ticket: Ticket, meta: M) -> Option<(Decision, M)> {
        let index = self.vacant.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let waker = Waker::from(Arc::new(IndexWaker { index, ready: self.ready.clone() }));
        match Pin::new(&mut ticket).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(d) => {
                self.vacant.push(index);
                Some((d, meta))
            }
            Poll::Pending => {
                self.slots[index] = Some((ticket, meta, waker));
                self.pending += 1;
                None
            }
        }
    }

    /// Whether some ticket has signalled since the last [`collect`](Self::collect).
    pub fn has_ready(&self) -> bool {
        !self.ready.list.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Append every decision that has arrived to `out`.
    pub fn collect(&mut self, out: &mut Vec<(Decision, M)>) {
        std::mem::swap(&mut self.scratch, &mut *self.ready.list.lock().unwrap_or_else(|p| p.into_inner()));
        for i in 0..self.scratch.len() {
            let index = self.scratch[i];
            let Some((ticket, _, waker)) = self.slots[index].as_mut() else { continue };
            if let Poll::Ready(d) = Pin::new(ticket).poll(&mut Context::from_waker(waker)) {
                let (_, meta, _) = self.slots[index].take().expect("slot is occupied");
                self.vacant.push(index);
                self.pending -= 1;
                out.push((d, meta));
            }
        }
        self.scratch.clear();
    }

    /// Wait until a ticket signals or `deadline` passes (returns at once if one already has):
    /// poll, yielding, for up to the engine's `spin_before_park`, then park (module docs).
    pub fn park_until(&self, deadline: Instant) {
        if self.has_ready() {
            return;
        }
        let spin_until = deadline.min(Instant::now() + self.spin);
        while Instant::now() < spin_until {
            std::thread::yield_now();
            if self.has_ready() {
                return;
            }
        }
        let now = Instant::now();
        if deadline > now {
            std::thread::park_timeout(deadline - now);
        }
    }

    /// Give up on every outstanding ticket (dropping them cancels the requests).
    pub fn cancel_all(&mut self) -> usize {
        let n = self.pending;
        for s in &mut self.slots {
            *s = None;
        }
        self.vacant = (0..self.slots.len()).collect();
        self.pending = 0;
        n
    }
}

/// Submit, spinning politely while the implementation pushes back (a full ring).
pub fn submit(q: &dyn Queue, req: &Req) -> Result<Ticket, Refused> {
    let mut spins = 0u32;
    loop {
        match q.submit(req) {
            Err(Refused::Backpressure) => {
                spins += 1;
                if spins > 64 {
                    std::thread::sleep(Duration::from_micros(20));
                } else {
                    std::thread::yield_now();
                }
            }
            other => return other,
        }
    }
}

/// `n` workload ids spread evenly over the shards of an engine with `shards` shards (ids are
/// hashed to shards; these are picked so that each shard gets `n / shards` of them).
pub fn balanced_ids(prefix: &str, n: usize, shards: usize) -> Vec<Arc<str>> {
    let shards = shards.max(1);
    let mut per: Vec<Vec<Arc<str>>> = vec![Vec::new(); shards];
    let want = n.div_ceil(shards);
    let mut i = 0u64;
    while per.iter().any(|p| p.len() < want) {
        let id = format!("{prefix}-{i}");
        let s = shard_of(hash_workload_id(&id), shards);
        if per[s].len() < want {
            per[s].push(Arc::from(id));
        }
        i += 1;
    }
    // Interleave so that consecutive ids go to different shards.
    let mut out = Vec::with_capacity(n);
    for k in 0..want {
        for p in &per {
            if out.len() < n {
                out.push(p[k].clone());
            }
        }
    }
    out
}

/// splitmix64: deterministic and small.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with mean `mean`.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::{Kind, Spec};
    use flowgate_engine::Outcome;

    #[test]
    fn balanced_ids_spread_over_shards() {
        let ids = balanced_ids("w", 8, 2);
        assert_eq!(ids.len(), 8);
        let on0 = ids.iter().filter(|id| shard_of(hash_workload_id(id), 2) == 0).count();
        assert_eq!(on0, 4);
        assert_ne!(shard_of(hash_workload_id(&ids[0]), 2), shard_of(hash_workload_id(&ids[1]), 2));
    }

    #[test]
    fn tracker_collects_decisions_as_slots_free_up() {
        for kind in [Kind::Fifo, Kind::Seed, Kind::Flowgate(1)] {
            let q = Spec { slots: 1, ..Spec::default() }.build(kind);
            let w: Arc<str> = Arc::from("w");
            let mut t: Tracker<u32> = Tracker::new();
            let mut got = 0;
            // One slot: each decision's permit is dropped at once, freeing the slot for the next.
            for i in 0..3 {
                if let Some((d, _)) = t.insert(submit(&*q, &Req::new(&w, 3)).unwrap(), i) {
                    assert_eq!(d.outcome, Outcome::Dispatched);
                    got += 1;
                }
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while got < 3 {
                assert!(Instant::now() < deadline, "{kind:?}: all three dispatch");
                t.park_until(Instant::now() + Duration::from_millis(5));
                let mut out = Vec::new();
                t.collect(&mut out);
                for (d, _) in out {
                    assert_eq!(d.outcome, Outcome::Dispatched);
                    got += 1;
                }
            }
            assert_eq!(t.pending(), 0);
            q.shutdown();
        }
    }
}
