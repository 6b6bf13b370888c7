//! The queue budget: how many requests and body bytes may wait, across all shards together.
//!
//! Shards reserve from one shared [`QueueBudget`] at admission and give back when a request
//! leaves the queue (dispatch, eviction). Limits follow the upstream capacity table: a reservation
//! that lands exactly at the limit is admitted, one over is refused, and a limit of 0 is unlimited.

use crate::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// The queue is "nearly full" within `max_requests / NEARLY_FULL_FRACTION` of its request limit.
pub const NEARLY_FULL_FRACTION: u64 = 8;

/// Shared, lock-free counters of queued requests and bytes against their limits.
///
/// ```
/// use flowgate_engine::budget::QueueBudget;
/// let b = QueueBudget::new(2, 0);
/// assert!(b.try_reserve(10));
/// assert!(b.try_reserve(10)); // exactly at the limit: admitted
/// assert!(!b.try_reserve(10)); // one over: refused
/// b.release(10);
/// assert!(b.try_reserve(10));
/// ```
#[derive(Debug)]
pub struct QueueBudget {
    /// Requests currently reserved. Invariant: ≤ `max_requests` when that is non-zero
    /// (a reload that lowers the limit leaves the requests queued above it; none is added).
    requests: CachePadded<AtomicU64>,
    /// Bytes currently reserved. Invariant: ≤ `max_bytes` when that is non-zero (as
    /// for `requests`).
    bytes: CachePadded<AtomicU64>,
    /// Request limit; 0 = unlimited. Changed live by [`set_limits`](Self::set_limits).
    max_requests: AtomicU64,
    /// Byte limit; 0 = unlimited.
    max_bytes: AtomicU64,
}

impl QueueBudget {
    /// A budget of `max_requests` requests and `max_bytes` bytes (0 = unlimited).
    pub fn new(max_requests: u64, max_bytes: u64) -> Self {
        Self {
            requests: CachePadded::new(AtomicU64::new(0)),
            bytes: CachePadded::new(AtomicU64::new(0)),
            max_requests: AtomicU64::new(max_requests),
            max_bytes: AtomicU64::new(max_bytes),
        }
    }

    /// New limits (a reload). Requests already queued stay, even above a lowered limit: the
    /// queue shrinks as they leave, and newcomers are admitted only by displacing worse ones.
    pub fn set_limits(&self, max_requests: u64, max_bytes: u64) {
        self.max_requests.store(max_requests, Ordering::Relaxed);
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
    }

    fn max_requests(&self) -> u64 {
        self.max_requests.load(Ordering::Relaxed)
    }

    fn max_bytes(&self) -> u64 {
        self.max_bytes.load(Ordering::Relaxed)
    }

    /// Whether a request of `bytes` could ever fit (is not larger than the byte limit on its own).
    pub fn could_fit(&self, bytes: u64) -> bool {
        let max = self.max_bytes();
        max == 0 || bytes <= max
    }

    /// Reserve room for one request of `bytes`; `false` (and nothing reserved) if over a limit.
    pub fn try_reserve(&self, bytes: u64) -> bool {
        if !reserve(&self.requests, 1, self.max_requests()) {
            return false;
        }
        if !reserve(&self.bytes, bytes, self.max_bytes()) {
            // Undo the count reservation: the request does not fit by bytes.
            self.requests.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Reserve one request of `bytes` beyond the request limit, by at most `overshoot` requests,
    /// while the byte limit still holds. Used for a cross-shard displacement: the newcomer is
    /// admitted at once and another shard evicts its worse tail, bringing the count back.
    pub fn try_reserve_over(&self, bytes: u64, overshoot: u64) -> bool {
        let max = self.max_requests();
        let limit = if max == 0 { 0 } else { max + overshoot };
        if !reserve(&self.requests, 1, limit) {
            return false;
        }
        if !reserve(&self.bytes, bytes, self.max_bytes()) {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Whether the byte limit (not the count) is what a reservation of `bytes` would hit.
    pub fn bytes_bound(&self, bytes: u64) -> bool {
        let max = self.max_bytes();
        max != 0 && self.bytes.load(Ordering::Acquire).saturating_add(bytes) > max
    }

    /// Give back what one [`try_reserve`](Self::try_reserve)`(bytes)` took.
    pub fn release(&self, bytes: u64) {
        let r = self.requests.fetch_sub(1, Ordering::AcqRel);
        assert!(r >= 1, "queue budget: released more requests than reserved");
        let b = self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        assert!(b >= bytes, "queue budget: released more bytes than reserved");
    }

    /// Whether one more request is over the request limit (the next arrival must displace).
    pub fn is_full(&self) -> bool {
        let max = self.max_requests();
        max != 0 && self.requests() >= max
    }

    /// Whether the request count is within an eighth of its limit ([`NEARLY_FULL_FRACTION`]):
    /// from here shards publish their tails at each admission, since a displacement may come.
    pub fn is_nearly_full(&self) -> bool {
        let max = self.max_requests();
        max != 0 && self.requests() + max / NEARLY_FULL_FRACTION >= max
    }

    /// Requests currently queued (reserved).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Acquire)
    }

    /// Bytes currently queued (reserved).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }
}

/// Add `amount` to `counter` unless that would pass `limit` (0 = unlimited).
fn reserve(counter: &AtomicU64, amount: u64, limit: u64) -> bool {
    if limit == 0 {
        counter.fetch_add(amount, Ordering::AcqRel);
        return true;
    }
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_add(amount).filter(|&m| m <= limit))
        .is_ok()
}

#[cfg(all(test, not(flowgate_loom)))]
mod tests {
    use super::*;

    #[test]
    fn zero_means_unlimited() {
        let b = QueueBudget::new(0, 0);
        for _ in 0..1000 {
            assert!(b.try_reserve(u64::MAX / 2000));
        }
        assert_eq!(b.requests(), 1000);
    }

    #[test]
    fn bytes_exact_at_limit_admitted_one_over_refused() {
        let b = QueueBudget::new(0, 100);
        assert!(b.try_reserve(60));
        assert!(!b.try_reserve(41));
        assert_eq!((b.requests(), b.bytes()), (1, 60), "a refused reservation changes nothing");
        assert!(b.try_reserve(40));
        assert_eq!(b.bytes(), 100);
        assert!(!b.could_fit(101));
    }

    #[test]
    fn count_limit_holds_under_concurrency() {
        let b = std::sync::Arc::new(QueueBudget::new(1000, 0));
        let granted: u64 = (0..4)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || (0..1000).filter(|_| b.try_reserve(1)).count() as u64)
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(granted, 1000);
        assert_eq!(b.requests(), 1000);
    }
}
