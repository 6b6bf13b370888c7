//! Heap-safe scoring: the seed's formula turned into a cached, totally ordered [`Key`].
//!
//! The seed scores `w_wait·min(wait/wait_cap, 1) + w_crit·crit/5 − w_rate·min(rate/rate_cap, 1)` and
//! re-evaluates it, clock and all, inside the heap's comparator, which breaks the heap invariant as
//! time passes mid-operation. Here, while `wait < wait_cap`, the wait term is the same linear function
//! of `now` for every request, so
//!
//! ```text
//! score(now) = w_wait·now/wait_cap  +  [ −w_wait·t_enq/wait_cap + w_crit·crit/5 − w_rate·rate_term ]
//!              (common to all)         (the key: fixed per request)
//! ```
//!
//! orders requests exactly with no clock at all. Two things still change: the wait term saturates at
//! `wait_cap`, and a workload's rate moves. The shard's periodic rescore pass recomputes both with
//! `t_eff = max(t_enq, now − wait_cap)`; between passes a capped request can look at most
//! `w_wait·rescore_interval/wait_cap` better than it is (0.00067 with the defaults).
//! Times are nanoseconds since the engine's epoch.
//!
//! The penalty term generalises the seed's rate: `min(pressure / cap, 1)`, where the workload's
//! pressure is what its table's [`Penalty`](crate::fairness::Penalty) says (arrivals/s, weighted
//! tokens/s, both against `rate_cap`; or the VTC lag in weighted tokens, against `vtc_cap`).

use crate::config::ScoringConfig;
use std::cmp::Ordering;

/// A cached priority key. Greater dispatches first: an unparked key before a parked one, then
/// higher `score`, then earlier arrival.
///
/// A *parked* key belongs to a request waiting on its workload's quota: it sorts below every
/// unparked key whatever its score, so it never holds anyone up and is the first displaced.
///
/// ```
/// use flowgate_engine::score::Key;
/// let best = Key { score: 9.0, seq: 1 };
/// let parked = best.parked();
/// assert!(parked.is_parked() && parked < Key { score: -9.0, seq: 2 });
/// assert_eq!(parked.unparked(), best);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Key {
    /// Epoch-relative score (see the module docs); finite.
    pub score: f64,
    /// Arrival order within the engine (unique per request, below [`PARKED_BIT`]), with
    /// [`PARKED_BIT`] set when the key is parked.
    pub seq: u64,
}

/// The bit of [`Key::seq`] marking a parked key (arrival numbers never reach it).
pub const PARKED_BIT: u64 = 1 << 63;

impl Key {
    /// This key, parked.
    #[inline]
    pub fn parked(self) -> Key {
        Key { seq: self.seq | PARKED_BIT, ..self }
    }

    /// This key, unparked.
    #[inline]
    pub fn unparked(self) -> Key {
        Key { seq: self.seq & !PARKED_BIT, ..self }
    }

    /// Whether the key is parked.
    #[inline]
    pub fn is_parked(self) -> bool {
        self.seq & PARKED_BIT != 0
    }
}

impl Eq for Key {}

impl Ord for Key {
    #[inline]
    fn cmp(&self, other: &Self) -> Ordering {
        // Parked below unparked; then score; then the earlier arrival (lower seq) is greater.
        other
            .is_parked()
            .cmp(&self.is_parked())
            .then_with(|| self.score.total_cmp(&other.score))
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Key {
    #[inline]
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Computes keys from a [`ScoringConfig`], with the divisions done once.
///
/// ```
/// use flowgate_engine::{config::ScoringConfig, score::Scorer};
/// let s = Scorer::new(&ScoringConfig::default());
/// // A criticality-1 request that has waited 60 s beats a fresh criticality-5 one.
/// let old = s.key(0, 60_000_000_000, 1, 0.0, 1);
/// let new = s.key(60_000_000_000, 60_000_000_000, 5, 0.0, 2);
/// assert!(old > new);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Scorer {
    /// `w_wait / wait_cap`, per nanosecond.
    wait_per_ns: f64,
    wait_weight: f64,
    /// `w_crit / 5`.
    crit_per_level: f64,
    rate_weight: f64,
    /// `1 / cap` of the penalty's unit: `rate_cap` (per second) or `vtc_cap` (weighted tokens).
    inv_rate_cap: f64,
    wait_cap_ns: u64,
}

impl Scorer {
    /// A scorer for `config` (assumed validated: finite, non-negative weights, caps > 0).
    pub fn new(config: &ScoringConfig) -> Self {
        let wait_cap_ns = config.wait_cap.as_nanos().clamp(1, u64::MAX as u128) as u64;
        Self {
            wait_per_ns: config.wait_weight / wait_cap_ns as f64,
            wait_weight: config.wait_weight,
            crit_per_level: config.criticality_weight / 5.0,
            rate_weight: config.rate_weight,
            inv_rate_cap: match crate::fairness::Penalty::of(config) {
                crate::fairness::Penalty::VtcLag => 1.0 / config.vtc_cap_tokens,
                _ => 1.0 / config.rate_cap_per_s,
            },
            wait_cap_ns,
        }
    }

    /// The key of a request that arrived at `enqueue_ns`, evaluated at `now_ns`, with its workload's
    /// current penalty input `rate_per_s` (its pressure, in the penalty's unit) and arrival number
    /// `seq`.
    #[inline]
    pub fn key(&self, enqueue_ns: u64, now_ns: u64, criticality: u8, rate_per_s: f64, seq: u64) -> Key {
        debug_assert!((1..=5).contains(&criticality), "criticality {criticality} out of range");
        // The wait term stops growing at wait_cap: age the request no further back than that.
        let effective_ns = enqueue_ns.max(now_ns.saturating_sub(self.wait_cap_ns));
        let rate_term = (rate_per_s.max(0.0) * self.inv_rate_cap).min(1.0);
        let score = -(effective_ns as f64) * self.wait_per_ns + f64::from(criticality) * self.crit_per_level
            - rate_term * self.rate_weight;
        debug_assert!(score.is_finite());
        Key { score, seq }
    }

    /// The seed's absolute score of `key` at `now_ns` (for reports and tests; never used to order).
    pub fn score_at(&self, key: Key, now_ns: u64) -> f64 {
        key.score + now_ns as f64 * self.wait_per_ns
    }

    /// The seed's formula evaluated directly, as the reference the keys must agree with.
    pub fn reference_score(&self, wait_ns: u64, criticality: u8, rate_per_s: f64) -> f64 {
        let wait_term = (wait_ns as f64 * self.wait_per_ns).min(self.wait_weight);
        wait_term + f64::from(criticality) * self.crit_per_level
            - (rate_per_s.max(0.0) * self.inv_rate_cap).min(1.0) * self.rate_weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: u64 = 1_000_000_000;

    fn scorer() -> Scorer {
        Scorer::new(&ScoringConfig::default())
    }

    #[test]
    fn higher_criticality_first_at_equal_arrival() {
        let s = scorer();
        let k5 = s.key(10 * S, 10 * S, 5, 0.0, 3);
        let k3 = s.key(10 * S, 10 * S, 3, 0.0, 1);
        let k1 = s.key(10 * S, 10 * S, 1, 0.0, 2);
        assert!(k5 > k3 && k3 > k1);
    }

    #[test]
    fn ties_go_to_the_earlier_arrival() {
        let s = scorer();
        let first = s.key(5 * S, 5 * S, 3, 0.0, 7);
        let second = Key { seq: 8, ..first };
        assert!(first > second);
    }

    #[test]
    fn rate_penalty_makes_a_busy_workload_yield() {
        let s = scorer();
        let busy = s.key(S, S, 4, 100.0, 1);
        let quiet = s.key(S, S, 4, 1.0 / 60.0, 2);
        assert!(quiet > busy);
        // The penalty is capped at rate_cap.
        assert_eq!(s.key(S, S, 4, 1000.0, 1).score, busy.score);
    }

    #[test]
    fn wait_term_saturates_at_the_cap() {
        let s = scorer();
        // Two criticality-1 requests that both waited past the cap score the same (then FIFO).
        let a = s.key(0, 200 * S, 1, 0.0, 1);
        let b = s.key(100 * S, 200 * S, 1, 0.0, 2);
        assert_eq!(a.score, b.score);
        // A fresh criticality-3 request (0.24) beats a capped criticality-1 (0.4 + 0.08 = 0.48)? No:
        let fresh3 = s.key(200 * S, 200 * S, 3, 0.0, 3);
        assert!(a > fresh3);
    }

    proptest! {
        /// Keys order requests exactly as the seed's formula does at any `now` after both arrived
        /// (rescored at `now`), up to float rounding.
        #[test]
        fn keys_agree_with_the_reference_formula(
            t1 in 0u64..500 * S, t2 in 0u64..500 * S, extra in 0u64..200 * S,
            c1 in 1u8..=5, c2 in 1u8..=5, r1 in 0.0f64..300.0, r2 in 0.0f64..300.0,
        ) {
            let s = scorer();
            let now = t1.max(t2) + extra;
            let k1 = s.key(t1, now, c1, r1, 1);
            let k2 = s.key(t2, now, c2, r2, 2);
            let ref1 = s.reference_score(now - t1, c1, r1);
            let ref2 = s.reference_score(now - t2, c2, r2);
            prop_assert!((s.score_at(k1, now) - ref1).abs() < 1e-9);
            prop_assert!((s.score_at(k2, now) - ref2).abs() < 1e-9);
            if (ref1 - ref2).abs() > 1e-9 {
                prop_assert_eq!(k1 > k2, ref1 > ref2);
            }
        }
    }
}
