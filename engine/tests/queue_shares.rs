//! Cluster queue shares (`lease.rs`, `backends/caps.rs`) through the gate: with a metrics
//! detector, what replicas may send to a backend between two of its scrapes is shared the way its
//! slots are, so N replicas scraping the same server let through at most `threshold − waiting` in
//! all, not N times that.

use flowgate_engine::backends::{BackendId, Grants, ScrapeReading};
use flowgate_engine::clock::Clock;
use flowgate_engine::config::{BackendConfig, Detector, EngineConfig, SaturationConfig};
use flowgate_engine::gate::Gate;

/// One uncapped backend gated by metrics with `threshold`.
fn gate(threshold: u32) -> Gate {
    let config = EngineConfig {
        backends: vec![BackendConfig { address: "10.0.0.1:8000".into(), max_inflight: 0 }],
        saturation: SaturationConfig {
            detector: Detector::Utilization,
            queue_depth_threshold: threshold,
            ..Default::default()
        },
        ..EngineConfig::default()
    };
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    Gate::new(&config, 1, Clock::new())
}

fn id(g: &Gate) -> BackendId {
    g.backend_states()[0].id
}

fn scrape(g: &Gate, waiting: f64) {
    assert!(g.publish_scrape(id(g), ScrapeReading { waiting, running: 0.0, kv_cache_usage: 0.0 }));
}

/// Places taken until refused (the places are not given back: metrics room is per scrape).
fn sends(g: &Gate) -> u32 {
    let mut n = 0;
    while g.try_acquire(3).is_ok() {
        n += 1;
        assert!(n < 1000, "no bound");
    }
    n
}

fn share(g: &Gate, share: u32) -> bool {
    let queue = [(id(g), share)];
    g.backends().grant_leases(Grants { slots: &[], queue: &queue }, u64::MAX)
}

#[test]
fn standalone_sends_the_whole_room_and_reports_no_share() {
    let g = gate(6);
    scrape(&g, 2.0);
    assert_eq!(sends(&g), 4);
    assert_eq!(g.backend_states()[0].queue_share, None);
}

#[test]
fn a_share_scales_the_room_of_every_scrape() {
    let g = gate(6);
    share(&g, 2);
    scrape(&g, 0.0);
    assert_eq!(sends(&g), 2, "⌊6·2/6⌋");
    scrape(&g, 3.0);
    assert_eq!(sends(&g), 1, "⌊3·2/6⌋");
    let s = &g.backend_states()[0];
    assert_eq!((s.queue_share, s.waiting), (Some(2), Some(3.0)), "the API shows the real queue");
}

#[test]
fn replicas_sharing_the_threshold_send_at_most_the_room_in_all() {
    for threshold in [1u32, 5, 6, 16] {
        for waiting in [0u32, 1, 3, 7] {
            // Three replicas' tables, shares summing to the threshold in every split.
            for a in 0..=threshold {
                for b in 0..=threshold - a {
                    let c = threshold - a - b;
                    let total: u32 = [a, b, c]
                        .iter()
                        .map(|&s| {
                            let g = gate(threshold);
                            share(&g, s);
                            scrape(&g, f64::from(waiting));
                            sends(&g)
                        })
                        .sum();
                    let room = threshold.saturating_sub(waiting);
                    assert!(total <= room, "T {threshold} w {waiting} shares {a}/{b}/{c}: {total} > {room}");
                }
            }
        }
    }
}

#[test]
fn a_grown_share_applies_between_scrapes_and_keeps_what_was_sent() {
    let g = gate(8);
    share(&g, 2);
    scrape(&g, 0.0);
    assert_eq!(sends(&g), 2);
    assert!(share(&g, 6), "the room grew: the caller wakes a shard");
    assert_eq!(sends(&g), 4, "6 of 8 now, 2 of them sent");
    assert!(!share(&g, 1), "shrinking makes no room");
    assert_eq!(sends(&g), 0);
    assert_eq!(g.backend_states()[0].sent_since_scrape, 6);
}

#[test]
fn before_any_grant_there_is_no_share_and_local_mode_splits_evenly() {
    let g = gate(7);
    g.backends().grant_leases(Grants::default(), u64::MAX);
    scrape(&g, 0.0);
    assert_eq!(sends(&g), 0, "leased mode, not covered: nothing");
    assert!(g.backends().local_caps(3));
    assert_eq!(g.backend_states()[0].queue_share, Some(2));
    assert_eq!(sends(&g), 2, "⌊7/3⌋");
    g.backends().local_caps(20);
    scrape(&g, 0.0);
    assert_eq!(g.backend_states()[0].queue_share, Some(1), "at least 1");
    assert_eq!(sends(&g), 1, "⌊7·1/7⌋");
    scrape(&g, 1.0);
    assert_eq!(sends(&g), 0, "⌊6·1/7⌋: a share of 1 sends only while nothing waits");
}

#[test]
fn a_new_backend_in_leased_mode_has_no_share_until_granted() {
    let g = gate(4);
    share(&g, 4);
    g.set_backends(&[
        BackendConfig { address: "10.0.0.1:8000".into(), max_inflight: 0 },
        BackendConfig { address: "10.0.0.2:8000".into(), max_inflight: 0 },
    ]);
    let states = g.backend_states();
    assert_eq!((states[0].queue_share, states[1].queue_share), (Some(4), Some(0)));
}
