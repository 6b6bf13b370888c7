//! The engine's clock: nanoseconds since a fixed epoch. Only the edges of the engine read it
//! (arrival stamping, timers); the heap and the scores never do.

use std::time::Instant;

/// A monotonic clock with a fixed epoch, cheap to copy between threads.
///
/// ```
/// let clock = flowgate_engine::clock::Clock::new();
/// let a = clock.now_ns();
/// assert!(clock.now_ns() >= a);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// The instant `now_ns() == 0` refers to; fixed for the engine's life.
    epoch: Instant,
    /// The same moment on the kernel's monotonic clock, ns (what `Instant` reads on Linux), for
    /// [`coarse_now_ns`](Self::coarse_now_ns).
    epoch_mono_ns: u64,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        let epoch = Instant::now();
        Self { epoch, epoch_mono_ns: monotonic_ns(libc::CLOCK_MONOTONIC).unwrap_or(0) }
    }

    /// Nanoseconds since the epoch from the kernel's coarse clock (`CLOCK_MONOTONIC_COARSE`: no
    /// hardware clock read, a few ns, behind [`now_ns`](Self::now_ns) by at most one scheduler
    /// tick, 1-4 ms). For bookkeeping that tolerates milliseconds (when a workload was last
    /// active), never for wait times or deadlines.
    ///
    /// ```
    /// let clock = flowgate_engine::clock::Clock::new();
    /// std::thread::sleep(std::time::Duration::from_millis(20));
    /// let coarse = clock.coarse_now_ns();
    /// assert!(coarse >= 5_000_000 && coarse <= clock.now_ns() + 1_000_000);
    /// ```
    #[inline]
    pub fn coarse_now_ns(&self) -> u64 {
        match monotonic_ns(libc::CLOCK_MONOTONIC_COARSE) {
            Some(ns) => ns.saturating_sub(self.epoch_mono_ns),
            None => self.now_ns(),
        }
    }

    /// Nanoseconds since the epoch (saturating after ~584 years).
    #[inline]
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `ns` nanoseconds after the epoch.
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.epoch + std::time::Duration::from_nanos(ns)
    }
}

/// The kernel clock `id` in ns, `None` if it cannot be read.
#[inline]
fn monotonic_ns(id: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call; clock_gettime writes only
    // it, and `id` is one of libc's clock constants.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
