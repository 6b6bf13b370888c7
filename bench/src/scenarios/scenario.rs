//! The scenarios: how workloads offer load, the [`Scenario`] type, and the six scenarios [`all`]
//! builds.
//!
//! **Time is compressed.** The aging rule only shows after `0.8·wait_cap` (60 s · 0.8 = 48 s with
//! the defaults), too long for a quick run, so scenarios scale the scoring clock: `wait_cap` and
//! `rate_window` are both set to the scenario's `wait_cap` (1.5 s quick, 4 s full) and the rescore
//! interval keeps its default ratio (wait_cap / 600). Weights and `rate_cap` keep their defaults.
//! The seed baseline scores with the same configuration.

use super::Options;
use crate::baseline::Spec;
use crate::driver::Rng;
use flowgate_engine::config::ScoringConfig;
use serde::Serialize;
use std::time::Duration;

/// How a workload offers load.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Load {
    /// Poisson arrivals.
    Open {
        /// Mean arrivals per second.
        rate_per_s: f64,
    },
    /// `count` arrivals at once (shuffled within 1 ms) every `every_ms`.
    Burst {
        /// Period.
        every_ms: u64,
        /// Arrivals per burst.
        count: usize,
    },
    /// `clients` clients, each resubmitting as soon as its previous request is served (or, if
    /// refused, after one service time).
    Closed {
        /// Concurrent clients.
        clients: usize,
    },
    /// `count` arrivals at `at_ms`.
    Once {
        /// When.
        at_ms: u64,
        /// How many.
        count: usize,
    },
}

/// One workload of a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    /// Id.
    pub name: String,
    /// Criticality 1..=5.
    pub criticality: u8,
    /// Its load.
    pub load: Load,
}

fn w(name: &str, criticality: u8, load: Load) -> Workload {
    Workload { name: name.into(), criticality, load }
}

/// A scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// File-name-safe name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Pool slots.
    pub slots: u32,
    /// Service time per request, ms.
    pub service_ms: f64,
    /// Arrivals stop after this, seconds.
    pub duration_s: f64,
    /// Most queued requests (0 = unlimited).
    pub max_requests: u64,
    /// Scoring `wait_cap` (= `rate_window`), seconds.
    pub wait_cap_s: f64,
    /// Seed for arrival times.
    pub seed: u64,
}

impl Scenario {
    pub(super) fn service(&self) -> Duration {
        Duration::from_secs_f64(self.service_ms / 1e3)
    }

    /// Dispatch capacity, requests/s.
    pub fn capacity_per_s(&self) -> f64 {
        f64::from(self.slots) / (self.service_ms / 1e3)
    }

    /// The scoring configuration (compressed time; see the module docs).
    pub fn scoring(&self) -> ScoringConfig {
        let cap = Duration::from_secs_f64(self.wait_cap_s);
        ScoringConfig {
            wait_cap: cap,
            rate_window: cap,
            rescore_interval: (cap / 600).max(Duration::from_millis(1)),
            ..ScoringConfig::default()
        }
    }

    /// The queue configuration every implementation gets.
    pub fn spec(&self) -> Spec {
        Spec {
            slots: self.slots,
            max_requests: self.max_requests,
            ttl: Duration::from_secs(30),
            scoring: self.scoring(),
            spin_before_park: None,
        }
    }

    /// Wait after which a criticality-`c` request outranks a fresh criticality-5 one of the same
    /// rate (the aging rule), seconds.
    pub fn aging_threshold_s(&self, c: u8) -> f64 {
        let s = self.scoring();
        (s.criticality_weight * f64::from(5 - c.min(5)) / 5.0) / s.wait_weight * self.wait_cap_s
    }

    /// Demand of workload `i` in requests/s (closed loop: clients / service time).
    pub(super) fn demand(&self, i: usize) -> f64 {
        match self.workloads[i].load {
            Load::Open { rate_per_s } => rate_per_s,
            Load::Burst { every_ms, count } => count as f64 / (every_ms as f64 / 1e3),
            Load::Closed { clients } => clients as f64 / (self.service_ms / 1e3),
            Load::Once { count, .. } => count as f64 / self.duration_s,
        }
    }

    /// Open-loop arrival times (ns from the start) and workload indices, ascending.
    pub fn schedule(&self) -> Vec<(u64, usize)> {
        let end = (self.duration_s * 1e9) as u64;
        let mut rng = Rng(self.seed);
        let mut out = Vec::new();
        for (i, wl) in self.workloads.iter().enumerate() {
            match wl.load {
                Load::Open { rate_per_s } if rate_per_s > 0.0 => {
                    let mut t = rng.exp(1e9 / rate_per_s);
                    while (t as u64) < end {
                        out.push((t as u64, i));
                        t += rng.exp(1e9 / rate_per_s);
                    }
                }
                Load::Burst { every_ms, count } => {
                    let mut t = 0u64;
                    while t < end {
                        for _ in 0..count {
                            out.push((t + rng.below(1_000_000), i));
                        }
                        t += every_ms * 1_000_000;
                    }
                }
                Load::Once { at_ms, count } => {
                    out.extend(std::iter::repeat_n((at_ms * 1_000_000, i), count));
                }
                _ => {}
            }
        }
        out.sort_by_key(|&(t, i)| (t, i));
        out
    }
}

/// The six scenarios for `opts`.
pub fn all(opts: &Options) -> Vec<Scenario> {
    let base = Scenario {
        name: String::new(),
        description: String::new(),
        workloads: Vec::new(),
        slots: opts.slots,
        service_ms: opts.service_ms,
        duration_s: opts.duration_s,
        max_requests: 0,
        wait_cap_s: opts.wait_cap_s,
        seed: 1,
    };
    let c = base.capacity_per_s();
    let slots = opts.slots as usize;
    let burst = ((0.3 * c * 0.1).round() as usize).max(1);
    vec![
        Scenario {
            name: "basic_priority".into(),
            description: format!(
                "bursts of {burst} each of criticality 1/3/5 every 100 ms (0.9 of capacity): higher criticality waits less"
            ),
            workloads: vec![
                w("batch", 1, Load::Burst { every_ms: 100, count: burst }),
                w("standard", 3, Load::Burst { every_ms: 100, count: burst }),
                w("interactive", 5, Load::Burst { every_ms: 100, count: burst }),
            ],
            seed: 11,
            ..base.clone()
        },
        Scenario {
            name: "wait_boost".into(),
            description: format!(
                "{} closed-loop criticality-5 clients keep the pool saturated; {slots} criticality-1 requests arrive at 100 ms: they must get through by aging, not wait forever",
                2 * slots
            ),
            workloads: vec![
                w("premium", 5, Load::Closed { clients: 2 * slots }),
                w("background", 1, Load::Once { at_ms: 100, count: slots }),
            ],
            seed: 12,
            ..base.clone()
        },
        Scenario {
            name: "rate_fairness".into(),
            description: "a flood of 50 concurrent requests from workload A vs single requests from workload B, equal criticality: B is not starved".into(),
            workloads: vec![w("flood", 4, Load::Closed { clients: 50 }), w("single", 4, Load::Closed { clients: 1 })],
            seed: 13,
            ..base.clone()
        },
        Scenario {
            name: "mixed_30_50_20".into(),
            description: "the seed's mixed test: 30 low (crit 1), 50 medium (crit 3), 20 high (crit 5) concurrent clients".into(),
            workloads: vec![
                w("low", 1, Load::Closed { clients: 30 }),
                w("medium", 3, Load::Closed { clients: 50 }),
                w("high", 5, Load::Closed { clients: 20 }),
            ],
            seed: 14,
            ..base.clone()
        },
        Scenario {
            name: "starvation".into(),
            description: format!(
                "sustained high-criticality load ({0} crit-5 + {0} crit-4 closed-loop clients) with crit-1 and crit-2 trickles: their waits stay bounded by the aging rule",
                slots * 3 / 2
            ),
            workloads: vec![
                w("premium", 5, Load::Closed { clients: slots * 3 / 2 }),
                w("gold", 4, Load::Closed { clients: slots * 3 / 2 }),
                w("batch", 1, Load::Open { rate_per_s: 0.0125 * c }),
                w("bulk", 2, Load::Open { rate_per_s: 0.0125 * c }),
            ],
            seed: 15,
            ..base.clone()
        },
        Scenario {
            name: "overload".into(),
            description: format!(
                "offered load 2x capacity, criticality 1..5 in equal parts, queue bounded at {}: the queue stays bounded and the lowest criticality is shed first",
                8 * slots
            ),
            workloads: (1..=5u8).map(|k| w(&format!("crit{k}"), k, Load::Open { rate_per_s: 0.4 * c })).collect(),
            max_requests: 8 * slots as u64,
            seed: 16,
            ..base
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_deterministic_and_bounded() {
        let opts = Options {
            quick: true,
            slots: 8,
            service_ms: 20.0,
            shards: 2,
            duration_s: 1.0,
            wait_cap_s: 1.0,
            only: None,
            sequential: false,
        };
        let scs = all(&opts);
        assert_eq!(scs.len(), 6);
        for sc in &scs {
            let a = sc.schedule();
            assert_eq!(a, sc.schedule());
            assert!(a.windows(2).all(|w| w[0].0 <= w[1].0));
            assert!(a.iter().all(|&(t, _)| t < 1_000_000_000 + 1_000_000));
        }
        let overload = scs.iter().find(|s| s.name == "overload").unwrap();
        let n = overload.schedule().len() as f64;
        assert!((n - 800.0).abs() < 150.0, "2x of 400 req/s for 1 s: {n}");
        assert!((overload.aging_threshold_s(1) - 0.8).abs() < 1e-9);
    }
}
