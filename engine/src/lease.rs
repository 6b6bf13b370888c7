//! Cluster mode's capacity rule for the backend table: which cap each capped backend's
//! [`Occupancy`](crate::occupancy::Occupancy) word holds, and when a lease lapses.
//!
//! Three modes, switched by one controller (the replica's cluster sync task):
//!
//! - **standalone** (the default, and always without `cluster:`): the cap is `max_inflight`;
//! - **leased**: the cap is the lease the last good sync granted (a backend the grant did not
//!   cover, e.g. one discovered since, has 0 until the next sync), valid until a deadline on the
//!   engine clock;
//! - **local** (Redis unreachable, or the leases lapsed): the cap is
//!   `max(1, ⌊max_inflight / replicas last seen⌋)`.
//!
//! Uncapped backends (`max_inflight: 0`) stay uncapped in every mode.
//!
//! **Queue shares.** With a metrics detector, one scrape showing `waiting = w` lets
//! `queue_depth_threshold − w` requests through (see [`crate::backends`]); with N replicas
//! scraping the same server that burst would be N-fold. So the same rule shares the threshold `T`
//! the way it shares `max_inflight`: a replica's *queue share* `s` is its lease of `T` (leased
//! mode), `max(1, ⌊T / replicas⌋)` (local mode) or all of it (standalone), and it may send
//! `⌊(T − w)·s / T⌋` per scrape ([`waiting_for_share`]). Σ shares ≤ `T` makes the sends of all
//! replicas between scrapes at most `T − w`: the burst bound holds pool-wide. The share is applied
//! by scaling the waiting count in the backend's load word, so dispatch reads nothing new.
//!
//! The dispatch path reads none of this: it reads only the occupancy word, which the controller
//! rewrites by compare-and-swap ([`BackendTable::grant_leases`](crate::backends::BackendTable::grant_leases)).
//! The mode words here are read by the backend-set controller (reload, discovery) to give a new
//! or changed backend the right cap, and by the sync task's lapse check
//! ([`BackendTable::lapse_leases`](crate::backends::BackendTable::lapse_leases)), which the sync
//! task runs on every tick whatever Redis does: a lease granted for `d` lapses locally within one
//! tick after `d`, before Redis expires it (the sync task chooses `d` so).

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Mode word: standalone.
const STANDALONE: u32 = 0;
/// Mode word: leased.
const LEASED: u32 = 1;
/// Mode word: local.
const LOCAL: u32 = 2;

/// Which rule gives the caps now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapMode {
    /// `max_inflight`.
    Standalone,
    /// The granted leases, until `deadline_ns` (engine clock).
    Leased {
        /// When they lapse.
        deadline_ns: u64,
    },
    /// `max(1, ⌊max_inflight / replicas⌋)`.
    Local {
        /// Replicas last seen (≥ 1).
        replicas: u32,
    },
}

impl CapMode {
    /// The cap of a backend with `max_inflight` `max` and, in leased mode, grant `granted`
    /// (`None`: not covered by the grant): `(cap, leased)` for
    /// [`Occupancy::with_cap`](crate::occupancy::Occupancy::with_cap).
    ///
    /// ```
    /// use flowgate_engine::lease::CapMode;
    /// assert_eq!(CapMode::Local { replicas: 3 }.cap(8, None), (2, true));
    /// assert_eq!(CapMode::Local { replicas: 9 }.cap(8, None), (1, true)); // at least 1
    /// assert_eq!(CapMode::Leased { deadline_ns: 5 }.cap(8, Some(9)), (8, true)); // never above max
    /// assert_eq!(CapMode::Leased { deadline_ns: 5 }.cap(8, None), (0, true));
    /// assert_eq!(CapMode::Leased { deadline_ns: 5 }.cap(0, Some(3)), (0, false)); // uncapped stays so
    /// assert_eq!(CapMode::Standalone.cap(8, Some(1)), (8, false));
    /// ```
    pub fn cap(self, max: u32, granted: Option<u32>) -> (u32, bool) {
        match self {
            _ if max == 0 => (0, false),
            CapMode::Standalone => (max, false),
            CapMode::Leased { .. } => (granted.unwrap_or(0).min(max), true),
            CapMode::Local { replicas } => (local_cap(max, replicas), true),
        }
    }
}

/// `max(1, ⌊max / replicas⌋)` for a capped backend (`replicas` 0 reads as 1).
pub fn local_cap(max: u32, replicas: u32) -> u32 {
    (max / replicas.max(1)).max(1)
}

/// The waiting count that leaves a replica with queue share `share` of `threshold` its part of
/// the room a scrape showing `waiting` gives: `threshold − ⌊(threshold − waiting)·share /
/// threshold⌋` (`waiting` itself when the share is the whole threshold or more).
///
/// ```
/// use flowgate_engine::lease::waiting_for_share;
/// assert_eq!(waiting_for_share(2, 9, 5), 2); // the whole: room 3
/// assert_eq!(waiting_for_share(0, 2, 5), 3); // room 2 of 5
/// assert_eq!(waiting_for_share(2, 2, 5), 4); // room ⌊3·2/5⌋ = 1 of 3
/// assert_eq!(waiting_for_share(7, 2, 5), 5); // no room at all
/// assert_eq!(waiting_for_share(0, 0, 5), 5); // no share: no room
/// ```
pub fn waiting_for_share(waiting: u64, share: u32, threshold: u32) -> u64 {
    let threshold = u64::from(threshold.max(1));
    let share = u64::from(share);
    if share >= threshold {
        return waiting;
    }
    let room = threshold.saturating_sub(waiting);
    threshold - room * share / threshold
}

/// The table's mode, in two words: the mode (with its replica count) and the deadline.
///
/// Writers: one controller at a time (the sync task). A reader may see the mode and deadline of
/// two different writes; both are advisory to it (see the module docs), never to dispatch.
#[derive(Debug)]
pub struct LeaseRule {
    /// Low 2 bits: the mode; the rest: replicas (local mode).
    mode: AtomicU32,
    /// Leased mode's deadline, ns on the engine clock.
    deadline_ns: AtomicU64,
}

impl Default for LeaseRule {
    fn default() -> Self {
        Self { mode: AtomicU32::new(STANDALONE), deadline_ns: AtomicU64::new(0) }
    }
}

impl LeaseRule {
    /// The mode now.
    pub fn get(&self) -> CapMode {
        let word = self.mode.load(Ordering::Acquire);
        match word & 0b11 {
            LEASED => CapMode::Leased { deadline_ns: self.deadline_ns.load(Ordering::Acquire) },
            LOCAL => CapMode::Local { replicas: (word >> 2).max(1) },
            _ => CapMode::Standalone,
        }
    }

    /// Switch to `mode` (controller only).
    pub fn set(&self, mode: CapMode) {
        match mode {
            CapMode::Standalone => self.mode.store(STANDALONE, Ordering::Release),
            CapMode::Leased { deadline_ns } => {
                self.deadline_ns.store(deadline_ns, Ordering::Release);
                self.mode.store(LEASED, Ordering::Release);
            }
            CapMode::Local { replicas } => {
                self.mode.store(LOCAL | (replicas.clamp(1, u32::MAX >> 2) << 2), Ordering::Release)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip() {
        let r = LeaseRule::default();
        assert_eq!(r.get(), CapMode::Standalone);
        r.set(CapMode::Leased { deadline_ns: 42 });
        assert_eq!(r.get(), CapMode::Leased { deadline_ns: 42 });
        r.set(CapMode::Local { replicas: 7 });
        assert_eq!(r.get(), CapMode::Local { replicas: 7 });
        r.set(CapMode::Local { replicas: 0 });
        assert_eq!(r.get(), CapMode::Local { replicas: 1 });
    }

    #[test]
    fn queue_shares_never_give_more_room_than_the_scrape_left() {
        for threshold in 1..=12u32 {
            for waiting in 0..=14u64 {
                let room = u64::from(threshold).saturating_sub(waiting);
                // Any split of the threshold into shares: the rooms sum to at most the room.
                for a in 0..=threshold {
                    let b = threshold - a;
                    let rooms: u64 = [a, b]
                        .iter()
                        .map(|&s| {
                            u64::from(threshold)
                                - waiting_for_share(waiting, s, threshold).min(u64::from(threshold))
                        })
                        .sum();
                    assert!(rooms <= room, "T {threshold} w {waiting} shares {a}+{b}: {rooms} > {room}");
                }
                assert_eq!(waiting_for_share(waiting, threshold, threshold), waiting);
            }
        }
    }

    #[test]
    fn local_caps_sum_to_at_most_max_when_replicas_do_not_exceed_it() {
        for max in 1..40u32 {
            for n in 1..=max {
                assert!(local_cap(max, n) * n <= max, "max {max} n {n}");
            }
        }
    }
}
