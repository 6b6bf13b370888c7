//! The FIFO baseline: upstream's default list queue ([`Fifo`]) as a locked [`Discipline`].

use super::{Discipline, Locked, Spec, Waiting};
use std::collections::VecDeque;
use std::sync::Arc;

/// Upstream's default list queue: one global `Mutex<VecDeque>`.
#[derive(Debug, Default)]
pub struct Fifo(VecDeque<Waiting>);

impl Discipline for Fifo {
    type Registry = ();
    fn push(&mut self, item: Waiting) {
        self.0.push_back(item);
    }
    fn pop(&mut self) -> Option<Waiting> {
        self.0.pop_front()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// The FIFO baseline.
pub type FifoQueue = Locked<Fifo>;

impl FifoQueue {
    /// A FIFO baseline for `spec`.
    pub fn new(spec: &Spec) -> Arc<Self> {
        Locked::build(Fifo::default(), Arc::new(()), spec, "fifo")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::baseline::{Queue, Req};
    use flowgate_engine::Outcome;

    #[test]
    fn fifo_queue_rejects_when_full_and_keeps_order() {
        let q = FifoQueue::new(&Spec { slots: 1, max_requests: 2, ..Spec::default() });
        let w: Arc<str> = Arc::from("w");
        let held = q.submit(&Req::new(&w, 3)).unwrap().wait();
        let t1 = q.submit(&Req::new(&w, 1)).unwrap();
        let t2 = q.submit(&Req::new(&w, 5)).unwrap();
        let t3 = q.submit(&Req::new(&w, 5)).unwrap().wait();
        assert_eq!(t3.outcome, Outcome::RejectedCapacity);
        drop(held);
        let d1 = t1.wait();
        assert_eq!(d1.outcome, Outcome::Dispatched, "FIFO: the first queued goes first");
        drop(d1);
        assert_eq!(t2.wait().outcome, Outcome::Dispatched);
    }
}
