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
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self { epoch: Instant::now() }
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

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
