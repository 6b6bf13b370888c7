//! What the score's penalty term measures ([`Penalty`]), and the engine-wide floor of VTC's
//! virtual token counters ([`VtcFloors`]).
//!
//! **VTC** (Sheng et al., "Fairness in Serving Large Language Models", OSDI '24): each workload
//! counts the weighted tokens it was served; the least-served *active* workload goes first, and a
//! workload that becomes active is lifted to the active minimum so idle time cannot be banked. Here
//! the counter lives in the workload's entry (charged by its permit when the usage is known), and
//! the penalty is its lag behind the floor, `min(lag / vtc_cap, 1)`, so criticality and aging keep
//! their weights.
//!
//! Workloads are shard-local but the floor is global: each shard publishes the minimum counter
//! of its active workloads at every rescore pass (as it publishes its head score), and reads the
//! minimum of all shards' minima. A shard's floor is therefore at most one rescore interval old,
//! and never above any active workload's counter as of that pass.

use crate::config::{Fairness, RateUnit, ScoringConfig};
use crate::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// What a workload's cached penalty input is, in the unit its cap is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Penalty {
    /// Arrivals per second (cap: `rate_cap`).
    RequestRate,
    /// Weighted tokens charged per second (cap: `rate_cap`).
    TokenRate,
    /// Weighted tokens served beyond the active floor (cap: `vtc_cap`).
    VtcLag,
}

impl Penalty {
    /// The penalty `scoring` asks for.
    ///
    /// ```
    /// use flowgate_engine::{config::{Fairness, ScoringConfig}, fairness::Penalty};
    /// let mut s = ScoringConfig::default();
    /// assert_eq!(Penalty::of(&s), Penalty::RequestRate);
    /// s.fairness = Fairness::Vtc;
    /// assert_eq!(Penalty::of(&s), Penalty::VtcLag);
    /// ```
    pub fn of(scoring: &ScoringConfig) -> Self {
        match (scoring.fairness, scoring.rate_unit) {
            (Fairness::Vtc, _) => Penalty::VtcLag,
            (Fairness::Rate, RateUnit::Tokens) => Penalty::TokenRate,
            (Fairness::Rate, RateUnit::Requests) => Penalty::RequestRate,
        }
    }
}

/// What a shard publishes when it has no active workload.
pub const NO_ACTIVE: u64 = u64::MAX;

/// Each shard's minimum VTC counter over its active workloads.
#[derive(Debug)]
pub struct VtcFloors {
    /// Per shard: the minimum counter of its active workloads at its last pass, or [`NO_ACTIVE`].
    /// Written by that shard only.
    minima: Box<[CachePadded<AtomicU64>]>,
}

impl VtcFloors {
    /// Floors for `shards` shards, none active.
    ///
    /// ```
    /// use flowgate_engine::fairness::VtcFloors;
    /// let f = VtcFloors::new(2);
    /// f.publish(0, 500);
    /// f.publish(1, 300);
    /// assert_eq!(f.floor(), Some(300));
    /// ```
    pub fn new(shards: usize) -> Self {
        assert!(shards > 0, "at least one shard");
        Self { minima: (0..shards).map(|_| CachePadded::new(AtomicU64::new(NO_ACTIVE))).collect() }
    }

    /// Shard `shard`'s minimum ([`NO_ACTIVE`] for none).
    pub fn publish(&self, shard: usize, minimum: u64) {
        self.minima[shard].store(minimum, Ordering::Relaxed);
    }

    /// The least counter of any active workload, as of each shard's last pass; `None` when no
    /// shard has one.
    pub fn floor(&self) -> Option<u64> {
        let min = self.minima.iter().map(|m| m.load(Ordering::Relaxed)).min().unwrap_or(NO_ACTIVE);
        (min != NO_ACTIVE).then_some(min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_as_the_rate_unit() {
        let s = ScoringConfig { rate_unit: RateUnit::Tokens, ..ScoringConfig::default() };
        assert_eq!(Penalty::of(&s), Penalty::TokenRate);
        // VTC counts tokens whatever the rate unit.
        let s = ScoringConfig { fairness: Fairness::Vtc, ..s };
        assert_eq!(Penalty::of(&s), Penalty::VtcLag);
    }

    #[test]
    fn no_floor_until_a_shard_has_an_active_workload() {
        let f = VtcFloors::new(3);
        assert_eq!(f.floor(), None);
        f.publish(2, 7);
        assert_eq!(f.floor(), Some(7));
        f.publish(2, NO_ACTIVE);
        assert_eq!(f.floor(), None);
    }
}
