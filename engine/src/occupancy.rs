//! [`Occupancy`]: one backend slot's life and load in one word, so that taking a place, giving it
//! back, draining and freeing are each one compare-and-swap and can never disagree.
//!
//! Layout of the `u64`:
//!
//! | bits | field |
//! |---|---|
//! | 0..32 | `inflight`: requests holding a place on the backend |
//! | 32..61 | `max`: its `max_inflight` (0 = no cap), or its lease |
//! | 61 | `leased`: `max` is a cluster lease (or local-mode cap), so 0 means *no* room |
//! | 62..64 | [`SlotState`] |
//!
//! Life of a slot: `Free` → (the controller writes the backend in) `Active` → (it left the
//! backend set) `Draining` → (its last request ended) `Free`. A place is taken only while
//! `Active`, and a slot becomes `Free` only in the same step that makes `inflight` 0, so a freed
//! slot has nobody on it: the controller may then write a new backend into it.
//!
//! **Leases** (cluster mode): the cluster sync task lowers or raises `max` in place
//! ([`Occupancy::with_cap`]), in the same word the dispatchers compare-and-swap, so a place is
//! taken only within the cap that word held at that instant: after a lowering's CAS no new place
//! goes past the new cap (places taken before it stay until released, exactly as for a live
//! lowering of `max_inflight`).

/// Bits of `inflight`.
const INFLIGHT_BITS: u32 = 32;
/// Mask of `inflight`.
const INFLIGHT_MASK: u64 = (1 << INFLIGHT_BITS) - 1;
/// Bits of `max`.
const MAX_BITS: u32 = 29;
/// Largest `max` a word holds (validation keeps `max_inflight` ≤ 2^20).
pub const MAX_MAX: u32 = (1 << MAX_BITS) - 1;
/// The `leased` flag.
const LEASED_BIT: u64 = 1 << (INFLIGHT_BITS + MAX_BITS);
/// Where the state starts.
const STATE_SHIFT: u32 = INFLIGHT_BITS + MAX_BITS + 1;

/// Where a backend slot is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// No backend: the controller may write one in.
    Free,
    /// A backend in the set: it takes new requests.
    Active,
    /// A backend that left the set: no new requests; its in-flight ones finish.
    Draining,
}

/// One slot's state, `max_inflight` and in-flight count.
///
/// ```
/// use flowgate_engine::occupancy::{Occupancy, SlotState};
/// let o = Occupancy::active(1);
/// let held = o.reserved(true).unwrap();
/// assert_eq!(held.reserved(true), None); // full
/// let draining = held.drained();
/// assert_eq!(draining.state(), SlotState::Draining);
/// assert_eq!(draining.reserved(false), None); // nothing new while draining
/// assert_eq!(draining.released().state(), SlotState::Free); // the last one out frees it
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy(u64);

impl Occupancy {
    /// A free slot.
    pub const FREE: Occupancy = Occupancy(0);

    /// A freshly written backend with `max` slots (0 = no cap) and nothing in flight.
    pub fn active(max: u32) -> Occupancy {
        Occupancy(Self::state_bits(SlotState::Active) | Self::max_bits(max))
    }

    fn state_bits(state: SlotState) -> u64 {
        let s: u64 = match state {
            SlotState::Free => 0,
            SlotState::Active => 1,
            SlotState::Draining => 2,
        };
        s << STATE_SHIFT
    }

    fn max_bits(max: u32) -> u64 {
        u64::from(max.min(MAX_MAX)) << INFLIGHT_BITS
    }

    /// The word as stored.
    pub fn from_bits(bits: u64) -> Occupancy {
        Occupancy(bits)
    }

    /// The raw word.
    pub fn bits(self) -> u64 {
        self.0
    }

    /// Requests holding a place.
    pub fn inflight(self) -> u32 {
        (self.0 & INFLIGHT_MASK) as u32
    }

    /// `max_inflight` (0 = no cap, unless [`leased`](Self::leased)), or the lease.
    pub fn max(self) -> u32 {
        ((self.0 >> INFLIGHT_BITS) as u32) & MAX_MAX
    }

    /// Whether `max` is a lease (cluster mode): then it caps even at 0.
    pub fn leased(self) -> bool {
        self.0 & LEASED_BIT != 0
    }

    /// The same slot (state, in-flight) with cap `cap`: a lease when `leased` (0 = no room), else a
    /// plain `max_inflight` (0 = no cap).
    pub fn with_cap(self, cap: u32, leased: bool) -> Occupancy {
        let kept = self.0 & ((0b11 << STATE_SHIFT) | INFLIGHT_MASK);
        Occupancy(kept | Self::max_bits(cap) | if leased { LEASED_BIT } else { 0 })
    }

    /// Where the slot is in its life.
    pub fn state(self) -> SlotState {
        match self.0 >> STATE_SHIFT {
            0 => SlotState::Free,
            1 => SlotState::Active,
            _ => SlotState::Draining,
        }
    }

    /// Free places when `caps` are enforced and the backend is capped; `u32::MAX` when nothing
    /// limits it; 0 unless `Active`.
    pub fn room(self, caps: bool) -> u32 {
        if self.state() != SlotState::Active {
            0
        } else if caps && (self.max() > 0 || self.leased()) {
            self.max().saturating_sub(self.inflight())
        } else {
            u32::MAX
        }
    }

    /// One more in flight, if the slot is `Active` and (with `caps`) below its `max`.
    pub fn reserved(self, caps: bool) -> Option<Occupancy> {
        (self.room(caps) > 0 && self.inflight() < u32::MAX).then_some(Occupancy(self.0 + 1))
    }

    /// One fewer in flight; a `Draining` slot whose last request this was becomes `Free`.
    ///
    /// # Panics
    /// If nothing is in flight (a place given back twice).
    pub fn released(self) -> Occupancy {
        assert!(self.inflight() > 0, "released a backend place that was not held");
        let next = Occupancy(self.0 - 1);
        if next.state() == SlotState::Draining && next.inflight() == 0 {
            Occupancy::FREE
        } else {
            next
        }
    }

    /// Out of the set: `Draining`, or straight to `Free` with nothing in flight.
    pub fn drained(self) -> Occupancy {
        match self.state() {
            SlotState::Free => self,
            _ if self.inflight() == 0 => Occupancy::FREE,
            _ => Occupancy(
                Self::state_bits(SlotState::Draining)
                    | Self::max_bits(self.max())
                    | u64::from(self.inflight()),
            ),
        }
    }

    /// Back in the set (or still in it) with a new `max`, keeping what is in flight.
    pub fn reactivated(self, max: u32) -> Occupancy {
        debug_assert_ne!(self.state(), SlotState::Free);
        Occupancy(Self::state_bits(SlotState::Active) | Self::max_bits(max) | u64::from(self.inflight()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncapped_slot_takes_places_without_limit_but_still_counts_them() {
        let mut o = Occupancy::active(0);
        for _ in 0..100 {
            o = o.reserved(true).unwrap();
        }
        assert_eq!(o.inflight(), 100);
        assert_eq!(o.room(true), u32::MAX);
    }

    #[test]
    fn caps_off_ignores_max() {
        let o = Occupancy::active(1).reserved(true).unwrap();
        assert_eq!(o.reserved(true), None);
        assert_eq!(o.reserved(false).unwrap().inflight(), 2);
    }

    #[test]
    fn draining_an_idle_slot_frees_it_at_once() {
        assert_eq!(Occupancy::active(4).drained(), Occupancy::FREE);
        assert_eq!(Occupancy::FREE.drained(), Occupancy::FREE);
    }

    #[test]
    fn reactivated_keeps_inflight_and_takes_the_new_max() {
        let o = Occupancy::active(2).reserved(true).unwrap().reserved(true).unwrap().drained();
        let back = o.reactivated(3);
        assert_eq!((back.state(), back.inflight(), back.max()), (SlotState::Active, 2, 3));
        assert_eq!(back.room(true), 1);
    }

    #[test]
    fn a_lease_caps_even_at_zero_and_keeps_state_and_inflight() {
        let o = Occupancy::active(4).reserved(true).unwrap().reserved(true).unwrap();
        let l = o.with_cap(0, true);
        assert_eq!((l.state(), l.inflight(), l.max(), l.leased()), (SlotState::Active, 2, 0, true));
        assert_eq!(l.room(true), 0);
        assert_eq!(l.reserved(true), None);
        assert_eq!(l.with_cap(3, true).room(true), 1);
        // Unleased 0 is still "no cap"; drained and released keep working on leased words.
        assert_eq!(o.with_cap(0, false).room(true), u32::MAX);
        let d = l.drained();
        assert_eq!(d.state(), SlotState::Draining);
        assert_eq!(d.released().released(), Occupancy::FREE);
        assert_eq!(Occupancy::active(MAX_MAX).max(), MAX_MAX);
        assert!(!Occupancy::active(MAX_MAX).leased());
    }

    #[test]
    #[should_panic(expected = "not held")]
    fn releasing_an_empty_slot_panics() {
        Occupancy::active(1).released();
    }
}
