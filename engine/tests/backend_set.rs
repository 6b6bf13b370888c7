//! A backend set that changes while requests flow (`BackendTable::set`, `Engine::set_backends`,
//! `Engine::reconfigure`): add, drain, remove, re-add, slot reuse, live caps, live rules, and a
//! threaded churn with exact conservation. Waits are on real signals (tickets, engine counters).

use flowgate_engine::backends::BackendId;
use flowgate_engine::clock::Clock;
use flowgate_engine::config::{BackendConfig, Detector, EngineConfig, SaturationConfig};
use flowgate_engine::gate::{Gate, Refusal};
use flowgate_engine::load::ScrapeReading;
use flowgate_engine::outcome::{OtherReason, Outcome};
use flowgate_engine::{Engine, Request, WorkloadContext};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/engine_wait.rs"]
mod engine_wait;
use engine_wait::{count, until};

fn backend(i: u32, max_inflight: u32) -> BackendConfig {
    BackendConfig { address: format!("10.0.0.{i}:8000"), max_inflight }
}

fn gate_of(backends: Vec<BackendConfig>, max_backends: usize) -> Gate {
    let config = EngineConfig { backends, max_backends, ..EngineConfig::default() };
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    Gate::new(&config, 1, Clock::new())
}

fn addresses(g: &Gate) -> Vec<(String, u32, bool)> {
    g.backend_states().into_iter().map(|s| (s.address, s.inflight, s.draining)).collect()
}

fn request(workload: &str, criticality: u8) -> Request {
    Request {
        context: WorkloadContext { workload_id: Arc::from(workload), criticality, ttl: None },
        bytes: 0,
    }
}

#[test]
fn a_drained_backend_takes_nothing_new_and_leaves_with_its_last_request() {
    let g = gate_of(vec![backend(1, 2), backend(2, 2)], 4);
    let on_1 = g.try_acquire(3).unwrap();
    assert_eq!(on_1.backend, 0);
    let changes = g.set_backends(&[backend(2, 2)]);
    assert_eq!(changes.drained, vec!["10.0.0.1:8000".to_string()]);
    assert_eq!(addresses(&g), vec![("10.0.0.1:8000".into(), 1, true), ("10.0.0.2:8000".into(), 0, false)]);
    // Everything new goes to backend 2, until it is full; the draining one has a free slot but
    // takes nothing.
    assert_eq!(g.try_acquire(3).unwrap().backend, 1);
    assert_eq!(g.try_acquire(3).unwrap().backend, 1);
    assert_eq!(g.try_acquire(3), Err(Refusal::NoRoom));
    assert_eq!(g.capacity(), 2, "a draining backend's slots are not capacity");
    // Its in-flight request ends: it leaves the table.
    g.release(on_1);
    assert_eq!(addresses(&g), vec![("10.0.0.2:8000".into(), 2, false)]);
}

#[test]
fn a_draining_backend_that_comes_back_keeps_its_inflight_count() {
    let g = gate_of(vec![backend(1, 2)], 4);
    let held = g.try_acquire(3).unwrap();
    g.set_backends(&[]);
    assert_eq!(g.backends().active(), 0);
    let changes = g.set_backends(&[backend(1, 3)]);
    assert_eq!(changes.added.len(), 1);
    assert_eq!(addresses(&g), vec![("10.0.0.1:8000".into(), 1, false)]);
    assert_eq!(g.free(), 2, "3 slots, 1 still held by the request from before");
    g.release(held);
    assert_eq!(g.free(), 3);
}

#[test]
fn a_reused_slot_ignores_the_scrapes_of_the_backend_that_left() {
    let config = EngineConfig {
        backends: vec![backend(1, 0)],
        max_backends: 1,
        saturation: SaturationConfig { detector: Detector::Utilization, ..Default::default() },
        ..EngineConfig::default()
    };
    let g = Gate::new(&config, 1, Clock::new());
    let old: BackendId = g.backend_states()[0].id;
    g.set_backends(&[backend(2, 0)]);
    let new = g.backend_states()[0].id;
    assert_eq!(new.index, old.index, "the one slot is reused");
    assert_ne!(new.generation, old.generation);
    let idle = ScrapeReading { waiting: 0.0, running: 0.0, kv_cache_usage: 0.0 };
    assert!(!g.publish_scrape(old, idle), "the old backend's scraper publishes nothing");
    assert_eq!(g.try_acquire(3), Err(Refusal::NoRoom), "the new backend is still unscraped");
    assert!(g.publish_scrape(new, idle));
    assert_eq!(g.try_acquire(3).unwrap().backend, new.index);
}

#[test]
fn a_full_table_refuses_new_backends_and_keeps_the_rest() {
    let g = gate_of(vec![backend(1, 1)], 2);
    let held = g.try_acquire(3).unwrap();
    // Backend 1 drains but holds its slot; only one slot is left for two newcomers.
    let changes = g.set_backends(&[backend(2, 1), backend(3, 1)]);
    assert_eq!(changes.refused, vec!["10.0.0.3:8000".to_string()]);
    assert_eq!(changes.added.len(), 1);
    g.release(held);
    // With the drained slot free, the next set fits.
    let changes = g.set_backends(&[backend(2, 1), backend(3, 1)]);
    assert!(changes.refused.is_empty() && changes.added.len() == 1, "{changes:?}");
    assert_eq!(g.capacity(), 2);
}

#[test]
fn a_lowered_cap_holds_new_requests_until_in_flight_drops_below_it() {
    let g = gate_of(vec![backend(1, 3)], 4);
    let places: Vec<_> = (0..3).map(|_| g.try_acquire(3).unwrap()).collect();
    let changes = g.set_backends(&[backend(1, 1)]);
    assert_eq!(changes.updated.len(), 1);
    let mut places = places.into_iter();
    g.release(places.next().unwrap());
    assert_eq!(g.try_acquire(3), Err(Refusal::NoRoom), "2 in flight, cap 1");
    g.release(places.next().unwrap());
    assert_eq!(g.try_acquire(3), Err(Refusal::NoRoom), "1 in flight, cap 1");
    g.release(places.next().unwrap());
    assert!(g.try_acquire(3).is_ok());
}

#[test]
fn the_first_entry_of_a_duplicated_address_wins() {
    let g = gate_of(vec![], 4);
    let changes = g.set_backends(&[backend(1, 2), backend(1, 5)]);
    assert_eq!(changes.added.len(), 1);
    assert_eq!(g.capacity(), 2);
}

#[test]
fn ceilings_follow_the_capacity_of_the_set() {
    let mut config = EngineConfig { backends: vec![backend(1, 2)], ..EngineConfig::default() };
    config.ceilings = [0.5, 1.0, 1.0, 1.0, 1.0];
    let g = Gate::new(&config, 1, Clock::new());
    let first = g.try_acquire(1).unwrap();
    assert_eq!(g.try_acquire(1), Err(Refusal::Ceiling), "half of 2 slots");
    g.set_backends(&[backend(1, 2), backend(2, 2)]);
    let second = g.try_acquire(1).unwrap();
    assert_eq!(g.try_acquire(1), Err(Refusal::Ceiling), "half of 4 slots");
    g.release(first);
    g.release(second);
    assert!(g.try_acquire(5).is_ok());
}

#[test]
fn with_no_backend_every_request_is_refused_no_endpoints() {
    let config = EngineConfig { shards: 1, backends: vec![], ..EngineConfig::default() };
    let engine = Engine::start(config).unwrap();
    let d = engine.submit(request("w", 3)).unwrap().wait();
    assert_eq!(d.outcome, Outcome::RejectedOther(OtherReason::NoEndpoints));
    engine.set_backends(&[backend(1, 1)]);
    let d = engine.submit(request("w", 3)).unwrap().wait();
    assert_eq!(d.outcome, Outcome::Dispatched);
    assert_eq!(d.permit.as_ref().unwrap().address(), "10.0.0.1:8000");
    engine.shutdown();
}

#[test]
fn queued_requests_go_to_a_backend_added_later_and_never_to_a_removed_one() {
    // One shard: the queue order is exact (across shards it is within CROSS_SHARD_SLACK).
    let config = EngineConfig { shards: 1, backends: vec![backend(1, 1)], ..EngineConfig::default() };
    let engine = Engine::start(config).unwrap();
    let holder = engine.submit(request("holder", 3)).unwrap().wait().permit.unwrap();
    assert_eq!(holder.address(), "10.0.0.1:8000");
    let queued: Vec<_> = (0..4).map(|i| engine.submit(request(&format!("w{i}"), 3)).unwrap()).collect();
    until("4 queued", || engine.stats().queued == 4);
    // Replace backend 1 by backend 2 (2 slots): two queued requests go at once, to backend 2.
    engine.set_backends(&[backend(2, 2)]);
    until("2 dispatched", || count(&engine, Outcome::Dispatched) == 3);
    assert_eq!(engine.stats().queued, 2);
    // The holder's end frees backend 1 for good: nobody is dispatched to it.
    drop(holder);
    assert_eq!(engine.backend_states().len(), 1);
    // The two oldest went first (equal criticality: wait time decides), both to backend 2.
    let mut queued = queued.into_iter();
    let permits: Vec<_> = queued.by_ref().take(2).map(|t| t.wait().permit.unwrap()).collect();
    assert_eq!(permits.len(), 2);
    assert!(permits.iter().all(|p| p.address() == "10.0.0.2:8000"));
    drop(permits);
    for t in queued {
        assert_eq!(t.wait().permit.unwrap().address(), "10.0.0.2:8000");
    }
    engine.shutdown();
}

#[test]
fn reconfigure_rescores_queued_requests_by_the_new_rule() {
    let mut config = EngineConfig { shards: 1, backends: vec![backend(1, 1)], ..EngineConfig::default() };
    let engine = Engine::start(config.clone()).unwrap();
    let holder = engine.submit(request("holder", 3)).unwrap().wait().permit.unwrap();
    // A criticality-1 request queued long before a criticality-5 one: with wait time weighing
    // everything, it is first.
    let low = engine.submit(request("low", 1)).unwrap();
    until("low queued", || engine.stats().queued == 1);
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(30) {
        std::thread::yield_now();
    }
    let high = engine.submit(request("high", 5)).unwrap();
    until("both queued", || engine.stats().queued == 2);
    config.scoring.wait_weight = 1.0;
    config.scoring.criticality_weight = 0.0;
    config.scoring.rate_weight = 0.0;
    config.scoring.wait_cap = Duration::from_millis(10);
    let parks = engine.shard_states()[0].parks;
    let done = engine.reconfigure(config).unwrap();
    assert!(done.restart_only.is_empty() && done.backends.is_empty(), "{done:?}");
    // The shard applies the new rule at its next pass. A park counted before that pass may be
    // one already under way; the second one is after it.
    until("the shard passed and parked again", || engine.shard_states()[0].parks >= parks + 2);
    drop(holder);
    let first = low.wait();
    assert_eq!(first.outcome, Outcome::Dispatched, "wait time alone decides now");
    assert_eq!(engine.stats().queued, 1, "the other one is still queued");
    drop(first);
    assert_eq!(high.wait().outcome, Outcome::Dispatched);
    engine.shutdown();
}

#[test]
fn a_bad_reconfiguration_is_refused_whole() {
    let config = EngineConfig { shards: 1, backends: vec![backend(1, 1)], ..EngineConfig::default() };
    let engine = Engine::start(config.clone()).unwrap();
    let mut bad = config.clone();
    bad.backends.push(backend(2, 4));
    bad.scoring.rescore_interval = Duration::ZERO;
    let errors = engine.reconfigure(bad).unwrap_err();
    assert_eq!(errors[0].path, "scoring.rescore_interval");
    assert_eq!(engine.backend_states().len(), 1, "nothing of the bad config was applied");
    assert_eq!(*engine.config(), config);
    engine.shutdown();
}

#[test]
fn lowering_the_queue_limit_keeps_what_is_queued() {
    let mut config = EngineConfig { shards: 1, backends: vec![backend(1, 1)], ..EngineConfig::default() };
    let engine = Engine::start(config.clone()).unwrap();
    let holder = engine.submit(request("holder", 3)).unwrap().wait().permit.unwrap();
    let queued: Vec<_> = (0..5).map(|i| engine.submit(request(&format!("w{i}"), 3)).unwrap()).collect();
    until("5 queued", || engine.stats().queued == 5);
    config.queue.max_requests = 2;
    engine.reconfigure(config).unwrap();
    let refused = engine.submit(request("late", 1)).unwrap().wait();
    assert_eq!(refused.outcome, Outcome::RejectedCapacity, "over the new limit, and not better");
    assert_eq!(engine.stats().queued, 5, "nothing queued was dropped");
    drop(holder);
    for t in queued {
        drop(t.wait());
    }
    engine.shutdown();
}

#[test]
fn churn_conserves_every_place() {
    // Four threads take and give back places while a controller flips the backend set between
    // overlapping sets; at the end nothing is in flight and only the last set is left.
    let g = Arc::new(gate_of(vec![backend(1, 2), backend(2, 2)], 8));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (g, stop) = (g.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut taken = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(place) = g.try_acquire(3) {
                        let draining =
                            g.backend_states().iter().any(|s| s.id.index == place.backend && s.draining);
                        taken += 1;
                        std::hint::black_box(draining);
                        g.release(place);
                    }
                }
                taken
            })
        })
        .collect();
    let sets =
        [vec![backend(1, 2), backend(2, 2)], vec![backend(2, 1), backend(3, 3)], vec![backend(4, 2)], vec![]];
    for round in 0..2000 {
        g.set_backends(&sets[round % sets.len()]);
    }
    g.set_backends(&[backend(5, 2)]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let taken: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(taken > 0);
    assert_eq!(g.inflight_total(), 0);
    assert_eq!(addresses(&g), vec![("10.0.0.5:8000".into(), 0, false)]);
    assert_eq!(g.free(), 2);
}
