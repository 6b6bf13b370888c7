//! Cluster queue shares (`engine/src/backends/caps.rs`, `BackendTable::publish_scrape`): the sync
//! task changes this replica's share of `queue_depth_threshold` by rewriting the backend's load
//! word, while the scraper replaces that word with a new scrape scaled to the share it read. The
//! property: whatever the interleaving, the word ends scaled to the share in force and to the
//! latest scrape, so the replica never keeps a share it no longer holds (which would break the
//! pool-wide burst bound) nor an old scrape's queue.
#![cfg(flowgate_loom)]

use flowgate_engine::backends::{Grants, ScrapeReading};
use flowgate_engine::config::{Detector, SaturationConfig};
use flowgate_loom_tests::{gate_with, model};
use loom::thread;

const THRESHOLD: u32 = 6;

fn reading(waiting: f64) -> ScrapeReading {
    ScrapeReading { waiting, running: 0.0, kv_cache_usage: 0.1 }
}

/// Threshold 6, share 6 (all of it), a scrape showing 3 waiting. Then at once: the scraper
/// publishes a scrape showing 0 waiting, and the sync task lowers the share to 2. At the end the
/// room must be ⌊6·2/6⌋ = 2. A scraper that does not look at the share again after its CAS
/// leaves room 6 when its CAS lands after the rewrite; a rewrite that took the waiting count from
/// before the CAS it replaces leaves room ⌊3·2/6⌋ = 1.
#[test]
fn a_share_change_racing_a_scrape_ends_scaled_to_both() {
    model(|| {
        let saturation = SaturationConfig {
            detector: Detector::Utilization,
            queue_depth_threshold: THRESHOLD,
            ..Default::default()
        };
        let gate = gate_with(&[0], 1, saturation);
        let id = gate.backend_states()[0].id;
        let all = [(id, THRESHOLD)];
        gate.backends().grant_leases(Grants { slots: &[], queue: &all }, u64::MAX);
        assert!(gate.publish_scrape(id, reading(3.0)));
        assert_eq!(gate.backends().load(0).room(THRESHOLD), 3);
        let scraper = {
            let gate = gate.clone();
            thread::spawn(move || assert!(gate.publish_scrape(id, reading(0.0))))
        };
        let sync = {
            let gate = gate.clone();
            thread::spawn(move || {
                let two = [(id, 2)];
                gate.backends().grant_leases(Grants { slots: &[], queue: &two }, u64::MAX);
            })
        };
        scraper.join().unwrap();
        sync.join().unwrap();
        let load = gate.backends().load(0);
        assert_eq!(load.room(THRESHOLD), 2, "word not scaled to share 2 of the last scrape: {load:?}");
        assert_eq!(gate.backend_states()[0].queue_share, Some(2));
    });
}
