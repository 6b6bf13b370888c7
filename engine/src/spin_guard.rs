//! When an idle shard may poll before it parks, and when polling only gives its core away.
//!
//! An idle shard polls for `spin_before_park`, yielding its core between polls, so busy traffic
//! never pays a futex wake-up and a producer sharing the core runs at once. That is right while
//! the threads that want the core are this process's own. Beside another process's CPU-bound
//! thread (a busy Envoy, a sidecar, a noisy tenant), each yield hands that thread a whole scheduler
//! slice (EEVDF moves the yielder's deadline one slice on), and a request arriving meanwhile waits
//! it out: `flowgate-bench layouts` measured the ext_proc path's p99 beside one spinning process at
//! about 4 ms with the yielding poll. A parked shard is woken by its doorbell instead, and a woken
//! thread preempts one that has used its share.
//!
//! So the poll watches itself:
//! 1. A gap between two looks for work longer than [`YIELD_STALL_NS`] is a **stall**: a yield
//!    gave the core away for a slice.
//! 2. Whose slice? If this process's threads used at least [`OWN_CPU_SHARE_PCT`] % of the poll's
//!    wall time in CPU (`CLOCK_PROCESS_CPUTIME_ID`, read once per poll and once per stall), the
//!    core went to one of ours (a producer, an I/O thread, a caller collecting decisions) and the
//!    yield did its job: polling goes on.
//! 3. Otherwise another process took it, and the shard parks at once (no polling) for a back-off,
//!    then tries polling again. The back-off starts at [`SPIN_BACKOFF_MIN_NS`] and doubles with
//!    each stall in a row up to [`SPIN_BACKOFF_MAX_NS`] (a neighbour that stays costs one slice per
//!    4 s); a yield that comes back at once resets it.
//!
//! On an idle core a yield comes back in about a microsecond and the guard never trips.

/// A gap between two polls longer than this means a yield handed the core away for a slice (a
/// yield on a free core returns in about 1 µs; the co-workers sharing a core rarely hold it this
/// long between two of the shard's polls).
pub const YIELD_STALL_NS: u64 = 1_000_000;
/// A stall is this process's own when its threads' CPU time over the poll reaches this share of
/// the poll's wall time (on a 2-CPU machine a co-worker on this core alone gives about 100 %,
/// another process on it with ours busy on the other core at most about 100 % too, usually far
/// less: the share errs towards going on polling, i.e. today's behaviour).
pub const OWN_CPU_SHARE_PCT: u64 = 75;
/// How long a shard parks at once instead of polling after a first stalled yield.
pub const SPIN_BACKOFF_MIN_NS: u64 = 1_000_000_000;
/// The longest back-off (stalls in a row double it up to this).
pub const SPIN_BACKOFF_MAX_NS: u64 = 4_000_000_000;

/// One shard's polling state. Lives on the shard's thread.
///
/// ```
/// use flowgate_engine::spin_guard::{SpinGuard, SPIN_BACKOFF_MIN_NS};
/// let mut g = SpinGuard::default();
/// assert!(g.may_spin(0));
/// // A 2 ms stall over a 2 ms poll during which this process used 1.9 ms of CPU: ours.
/// assert!(!g.stalled(2_000_000, 2_000_000, 1_900_000));
/// assert!(g.may_spin(2_000_000));
/// // The same stall with 0.2 ms of our CPU: another process took the core.
/// assert!(g.stalled(4_000_000, 2_000_000, 200_000));
/// assert!(!g.may_spin(5_000_000));
/// assert!(g.may_spin(4_000_000 + SPIN_BACKOFF_MIN_NS));
/// assert_eq!(g.backoffs(), 1);
/// ```
#[derive(Debug)]
pub struct SpinGuard {
    /// Polling is off until this time, ns (0: on). Invariant: only moves forward.
    off_until_ns: u64,
    /// The next back-off, ns. Invariant: within `SPIN_BACKOFF_MIN_NS..=SPIN_BACKOFF_MAX_NS`.
    backoff_ns: u64,
    /// Stalls that turned polling off so far.
    backoffs: u64,
}

impl Default for SpinGuard {
    fn default() -> Self {
        Self { off_until_ns: 0, backoff_ns: SPIN_BACKOFF_MIN_NS, backoffs: 0 }
    }
}

impl SpinGuard {
    /// Whether the shard may poll before parking at `now_ns`.
    #[inline]
    pub fn may_spin(&self, now_ns: u64) -> bool {
        now_ns >= self.off_until_ns
    }

    /// Whether the gap between two looks for work at `before_ns` and `after_ns` is a stall.
    #[inline]
    pub fn is_stall(before_ns: u64, after_ns: u64) -> bool {
        debug_assert!(after_ns >= before_ns, "the clock is monotonic");
        after_ns.saturating_sub(before_ns) > YIELD_STALL_NS
    }

    /// A yield came back at once: the next back-off starts from the minimum again.
    #[inline]
    pub fn clean_poll(&mut self) {
        self.backoff_ns = SPIN_BACKOFF_MIN_NS;
    }

    /// A stall at `now_ns`, in a poll of `poll_ns` wall time during which this process used
    /// `own_cpu_ns` of CPU: `true` if another process took the core and polling is now off.
    pub fn stalled(&mut self, now_ns: u64, poll_ns: u64, own_cpu_ns: u64) -> bool {
        if own_cpu_ns.saturating_mul(100) >= poll_ns.saturating_mul(OWN_CPU_SHARE_PCT) {
            return false;
        }
        self.off_until_ns = self.off_until_ns.max(now_ns.saturating_add(self.backoff_ns));
        self.backoff_ns = (self.backoff_ns * 2).min(SPIN_BACKOFF_MAX_NS);
        self.backoffs += 1;
        debug_assert!((SPIN_BACKOFF_MIN_NS..=SPIN_BACKOFF_MAX_NS).contains(&self.backoff_ns));
        true
    }

    /// Stalls that turned polling off so far.
    pub fn backoffs(&self) -> u64 {
        self.backoffs
    }
}

/// CPU time this process's threads have used, ns (`CLOCK_PROCESS_CPUTIME_ID`; 0 if unreadable,
/// which makes every stall look like another process's: the shard parks sooner, never later).
pub fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; clock_gettime writes only into it.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } == 0;
    if !ok {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gaps_over_the_threshold_are_stalls() {
        assert!(!SpinGuard::is_stall(10, 10 + YIELD_STALL_NS));
        assert!(SpinGuard::is_stall(10, 11 + YIELD_STALL_NS));
    }

    #[test]
    fn a_stall_of_our_own_threads_keeps_polling_on() {
        let mut g = SpinGuard::default();
        let poll = 4 * YIELD_STALL_NS;
        assert!(!g.stalled(poll, poll, poll * OWN_CPU_SHARE_PCT / 100));
        assert!(!g.stalled(poll, poll, 2 * poll), "both cores ours");
        assert!(g.may_spin(poll) && g.backoffs() == 0);
    }

    #[test]
    fn stalls_in_a_row_double_the_backoff_up_to_the_cap_and_a_clean_poll_resets_it() {
        let mut g = SpinGuard::default();
        let mut now = 0u64;
        let mut expect = SPIN_BACKOFF_MIN_NS;
        for _ in 0..10 {
            now += 2 * YIELD_STALL_NS;
            assert!(g.stalled(now, 2 * YIELD_STALL_NS, 0));
            assert!(!g.may_spin(now + expect - 1) && g.may_spin(now + expect), "back-off {expect}");
            now += expect;
            expect = (expect * 2).min(SPIN_BACKOFF_MAX_NS);
        }
        assert_eq!(expect, SPIN_BACKOFF_MAX_NS);
        g.clean_poll();
        assert!(g.stalled(now, 2 * YIELD_STALL_NS, 0));
        assert!(g.may_spin(now + SPIN_BACKOFF_MIN_NS), "reset to the minimum");
        assert_eq!(g.backoffs(), 11);
    }

    #[test]
    fn the_process_cpu_clock_moves_forward() {
        let a = process_cpu_ns();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(process_cpu_ns() > a);
    }
}
