//! The scrape hand-off (`engine/src/backends.rs`): a scraper publishes a backend's metrics while
//! dispatchers take places against them. Two properties: the burst bound (between two scrapes, at
//! most `queue_depth_threshold − waiting` requests go to a backend) and no lost wake-up (a scrape
//! that makes room reaches a shard whose head waits for it).
#![cfg(flowgate_loom)]

use flowgate_engine::backends::{BackendId, ScrapeReading};
use flowgate_engine::config::{Detector, SaturationConfig};
use flowgate_engine::gate::Gate;
use flowgate_loom_tests::{
    assert_conserved, dispatch, gate_with, model, shard_dispatches_when_room, spawn_dispatchers, workload,
};
use loom::thread;
use std::sync::Arc;

/// A head score for a queued request.
const HEAD: f64 = 1.0;

fn utilization(threshold: u32) -> SaturationConfig {
    SaturationConfig {
        detector: Detector::Utilization,
        queue_depth_threshold: threshold,
        ..Default::default()
    }
}

/// A gate of one uncapped backend under `utilization` with `threshold`, scraped showing `waiting`.
fn scraped_backend(threshold: u32, waiting: f64) -> (Arc<Gate>, BackendId) {
    let gate = gate_with(&[0], 1, utilization(threshold));
    let id = gate.backend_states()[0].id;
    gate.publish_scrape(id, reading(waiting));
    (gate, id)
}

fn reading(waiting: f64) -> ScrapeReading {
    ScrapeReading { waiting, running: 0.0, kv_cache_usage: 0.1 }
}

/// Threshold 2, a scrape showing 1 waiting (room for one), three dispatchers, and a scraper that
/// publishes a new scrape showing 2 waiting (no room) meanwhile. Whatever the interleaving, at most
/// one request goes (the first scrape's one place; the second has none), and the published word
/// never counts more than the threshold. A check-then-store dispatch (not one CAS) lets two through.
#[test]
fn scrape_and_dispatch_never_exceed_the_burst_bound() {
    model(|| {
        let (gate, id) = scraped_backend(2, 1.0);
        let workload = workload();
        let dispatchers = spawn_dispatchers(&gate, &workload, 2);
        let scraper = {
            let gate = gate.clone();
            thread::spawn(move || gate.publish_scrape(id, reading(2.0)))
        };
        let mut permits: Vec<_> = dispatchers.into_iter().filter_map(|t| t.join().unwrap()).collect();
        scraper.join().unwrap();
        // A dispatch after both scrapes finds no room either.
        permits.extend(dispatch(&gate, &workload));
        let granted = permits.len();
        assert!(granted <= 1, "{granted} requests went between scrapes allowing 1 and 0");
        let load = gate.backends().load(0);
        assert!(load.waiting() + load.sent() <= 2 || load.sent() == 0, "word over the threshold: {load:?}");
        assert_conserved(&gate, granted as u64);
        drop(permits);
        assert_conserved(&gate, 0);
    });
}

/// A scrape requested (its `sent_before` read) while two dispatchers take places, then answered
/// "nothing waiting". The answer may only forgive what was sent before its request: in all, at
/// most `threshold` requests go after the request, however late the answer lands, and two more
/// dispatches after everything find no room beyond that. Resetting `sent` to 0 at the answer (as
/// a scrape that saw every send does) lets a third and fourth through, which this model catches.
#[test]
fn a_late_scrape_answer_never_opens_a_second_burst() {
    model(|| {
        let (gate, id) = scraped_backend(2, 0.0);
        let workload = workload();
        let dispatchers = spawn_dispatchers(&gate, &workload, 2);
        let scraper = {
            let gate = gate.clone();
            thread::spawn(move || {
                let before = gate.backends().sent_since_scrape(id);
                assert!(gate.publish_scrape_since(id, reading(0.0), before));
                before
            })
        };
        let mut permits: Vec<_> = dispatchers.into_iter().filter_map(|t| t.join().unwrap()).collect();
        let before = scraper.join().unwrap() as usize;
        permits.extend(dispatch(&gate, &workload));
        permits.extend(dispatch(&gate, &workload));
        let granted = permits.len();
        assert!(granted <= 2 + before, "{granted} went, {before} of them before the scrape's request");
        assert_conserved(&gate, granted as u64);
        drop(permits);
        assert_conserved(&gate, 0);
    });
}

/// A shard whose head waits on a backend that was never scraped (no room) publishes and sleeps, as
/// `worker.rs` does, while the scraper publishes the first good scrape. The shard must end up
/// dispatching: a lost wake-up parks it forever, which loom reports as a deadlock.
#[test]
fn fresh_scrape_wakes_a_sleeping_shard() {
    model(|| {
        let gate = gate_with(&[0], 1, utilization(4));
        let id = gate.backend_states()[0].id;
        let workload = workload();
        let scraper = {
            let gate = gate.clone();
            thread::spawn(move || gate.publish_scrape(id, reading(0.0)))
        };
        let shard = {
            let (gate, workload) = (gate.clone(), workload.clone());
            thread::spawn(move || shard_dispatches_when_room(&gate, &workload, HEAD))
        };
        let permit = shard.join().unwrap();
        scraper.join().unwrap();
        assert_eq!(gate.backends().load(0).sent(), 1, "the dispatch was counted against the scrape");
        drop(permit);
        assert_conserved(&gate, 0);
    });
}
