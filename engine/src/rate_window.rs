//! The sliding rate window's geometry: [`RATE_BUCKETS`] buckets of `rate_window / RATE_BUCKETS`
//! each, and how a workload's windows move to a new geometry when a reload changes
//! `scoring.rate_window`.
//!
//! Both windows of a workload (its arrivals, written by the owning shard, and its weighted tokens,
//! charged from any thread) index buckets by absolute number, `now_ns / bucket_ns`, so a new bucket
//! width makes every held index meaningless. A reload therefore **re-bases** each workload on its
//! owning shard: it reads the counts in the old window, rescales them to the same *rate* over the
//! new window ([`RateWindow::rescale`]), and spreads them evenly over the new window's buckets
//! ([`seed_share`]). The rate reads the same just after the reload (to the new window's resolution:
//! a window of `W` counts whole arrivals, so rates in steps of `1/W`) and then follows the new
//! window: seeded counts slide out bucket by bucket, as real ones would.
//!
//! The geometry each workload uses lives in its [`WindowCell`], written by the owning shard and read
//! by every charger and reader, so a charge that reads it after the re-base lands in the new
//! geometry. A charge racing the re-base may read the old width and land in a bucket the new
//! geometry does not count: at most that one charge is missed by the rate (never by the totals),
//! once per reload that changes the window.

use crate::config::RATE_BUCKETS;
use crate::sync::{AtomicU64, Ordering};

/// Bucket geometry of the sliding rate window.
///
/// ```
/// use flowgate_engine::rate_window::RateWindow;
/// use std::time::Duration;
/// let w = RateWindow::new(Duration::from_secs(60));
/// assert_eq!((w.bucket_ns(), w.window_s()), (5_000_000_000, 60.0));
/// // 120 arrivals in 60 s are 10 in 5 s: the same 2 per second.
/// assert_eq!(RateWindow::new(Duration::from_secs(5)).rescale(120, w), 10);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateWindow {
    /// Width of one bucket, ns (> 0).
    bucket_ns: u64,
}

impl RateWindow {
    /// The window for `rate_window` split into [`RATE_BUCKETS`] buckets (at least 1 ns each).
    pub fn new(rate_window: std::time::Duration) -> Self {
        let window_ns = rate_window.as_nanos().min(u128::from(u64::MAX)) as u64;
        Self::of_bucket_ns(window_ns / RATE_BUCKETS as u64)
    }

    fn of_bucket_ns(bucket_ns: u64) -> Self {
        Self { bucket_ns: bucket_ns.max(1) }
    }

    /// Width of one bucket, ns.
    pub fn bucket_ns(self) -> u64 {
        self.bucket_ns
    }

    /// The bucket `now_ns` falls in (absolute index).
    pub fn bucket_of(self, now_ns: u64) -> u64 {
        now_ns / self.bucket_ns
    }

    /// The whole window, seconds.
    pub fn window_s(self) -> f64 {
        (self.bucket_ns * RATE_BUCKETS as u64) as f64 / 1e9
    }

    /// `count` events over `from`'s window, as the count of the same rate over this window
    /// (rounded to the nearest).
    pub fn rescale(self, count: u64, from: RateWindow) -> u64 {
        let scaled = count as f64 * self.bucket_ns as f64 / from.bucket_ns as f64;
        scaled.round().min(u64::MAX as f64) as u64
    }
}

/// What bucket `bucket` holds when `total` is spread evenly over the window's buckets ending at
/// `head` (`head + 1 − RATE_BUCKETS ..= head`, those ≥ 0): `total / n` each, the remainder one
/// apiece on the newest (they slide out last). 0 outside the window.
///
/// ```
/// use flowgate_engine::rate_window::seed_share;
/// let shares: Vec<u64> = (0..12).map(|b| seed_share(25, 11, b)).collect();
/// assert_eq!(shares.iter().sum::<u64>(), 25);
/// assert_eq!((shares[0], shares[11]), (2, 3));
/// // Early on (head 1) only buckets 0 and 1 exist.
/// assert_eq!((seed_share(5, 1, 0), seed_share(5, 1, 1), seed_share(5, 1, 2)), (2, 3, 0));
/// ```
pub fn seed_share(total: u64, head: u64, bucket: u64) -> u64 {
    let oldest = head.saturating_sub(RATE_BUCKETS as u64 - 1);
    if bucket < oldest || bucket > head {
        return 0;
    }
    let n = head - oldest + 1;
    let newest_rank = head - bucket; // 0 for the newest
    total / n + u64::from(newest_rank < total % n)
}

/// The bucket (absolute index) slot `slot` stands for in the window ending at bucket `head`: the
/// latest `b ≤ head` with `b % RATE_BUCKETS == slot`; `None` if that would be before bucket 0.
///
/// ```
/// use flowgate_engine::rate_window::slot_bucket;
/// assert_eq!((slot_bucket(25, 1), slot_bucket(25, 2), slot_bucket(3, 5)), (Some(25), Some(14), None));
/// ```
pub fn slot_bucket(head: u64, slot: usize) -> Option<u64> {
    let n = RATE_BUCKETS as u64;
    head.checked_sub((head % n + n - slot as u64) % n)
}

/// One workload's current window geometry. Written by its owning shard (at creation and at a
/// re-base), read by anyone who charges or reads its windows.
#[derive(Debug)]
pub struct WindowCell {
    /// [`RateWindow::bucket_ns`] of the geometry in force. Invariant: > 0.
    bucket_ns: AtomicU64,
}

impl WindowCell {
    /// A cell holding `window`.
    pub fn new(window: RateWindow) -> Self {
        Self { bucket_ns: AtomicU64::new(window.bucket_ns) }
    }

    /// The geometry in force.
    #[inline]
    pub fn get(&self) -> RateWindow {
        // Acquire: a reader that sees the new width also sees the re-based buckets' head.
        RateWindow::of_bucket_ns(self.bucket_ns.load(Ordering::Acquire))
    }

    /// Owning shard: the geometry from now on (the caller re-bases the buckets).
    pub fn set(&self, window: RateWindow) {
        self.bucket_ns.store(window.bucket_ns, Ordering::Release);
    }
}

#[cfg(all(test, not(flowgate_loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn seeding_spreads_exactly_the_total_over_the_window() {
        for total in [0, 1, 11, 12, 13, 1000] {
            for head in [0, 3, 11, 12, 500] {
                let sum: u64 = (0..=head + 2).map(|b| seed_share(total, head, b)).sum();
                assert_eq!(sum, total, "total {total} head {head}");
            }
        }
    }

    #[test]
    fn rescaling_keeps_the_rate() {
        let minute = RateWindow::new(Duration::from_secs(60));
        let ten_min = RateWindow::new(Duration::from_secs(600));
        assert_eq!(ten_min.rescale(60, minute), 600);
        assert_eq!(minute.rescale(600, ten_min), 60);
        assert_eq!(minute.rescale(0, ten_min), 0);
        assert_eq!(minute.rescale(u64::MAX, RateWindow::new(Duration::from_millis(12))), u64::MAX);
    }

    #[test]
    fn a_tiny_window_still_has_one_ns_buckets() {
        let w = RateWindow::new(Duration::from_nanos(3));
        assert_eq!(w.bucket_ns(), 1);
        assert_eq!(w.bucket_of(7), 7);
    }
}
