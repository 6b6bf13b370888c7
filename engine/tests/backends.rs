//! The backend table (`backends.rs`) through the gate: room by slots, by metrics and by both, the
//! burst bound between two scrapes, staleness, KV-cache use, least-loaded picking.

use flowgate_engine::backends::BackendId;
use flowgate_engine::backends::ScrapeReading;
use flowgate_engine::clock::Clock;
use flowgate_engine::config::{BackendConfig, Detector, EngineConfig, SaturationConfig};
use flowgate_engine::gate::{Gate, Place, Refusal};

fn gate(caps: &[u32], detector: Detector, threshold: u32) -> Gate {
    let config = EngineConfig {
        backends: caps
            .iter()
            .enumerate()
            .map(|(i, &m)| BackendConfig { address: format!("10.0.0.{i}:8000"), max_inflight: m })
            .collect(),
        saturation: SaturationConfig { detector, queue_depth_threshold: threshold, ..Default::default() },
        ..EngineConfig::default()
    };
    assert!(config.validate().is_empty(), "{:?}", config.validate());
    Gate::new(&config, 1, Clock::new())
}

/// The id of the backend at position `i` of the configuration (slot order at start).
fn id(g: &Gate, i: usize) -> BackendId {
    g.backend_states()[i].id
}

/// The backend slot a place is on.
fn take(g: &Gate, criticality: u8) -> Result<u32, Refusal> {
    g.try_acquire(criticality).map(|p| p.backend)
}

fn scrape(waiting: f64, kv: f64) -> ScrapeReading {
    ScrapeReading { waiting, running: 1.0, kv_cache_usage: kv }
}

#[test]
fn a_backend_takes_nothing_before_its_first_scrape() {
    let g = gate(&[0], Detector::Utilization, 5);
    assert_eq!(take(&g, 3), Err(Refusal::NoRoom));
    let s = &g.backend_states()[0];
    assert!(s.stale && s.saturation >= 1.0 && s.waiting.is_none(), "{s:?}");
}

#[test]
fn one_scrape_lets_at_most_threshold_minus_waiting_through() {
    let g = gate(&[0], Detector::Utilization, 5);
    g.publish_scrape(id(&g, 0), scrape(2.0, 0.1));
    for _ in 0..3 {
        assert_eq!(take(&g, 3), Ok(0));
    }
    assert_eq!(take(&g, 3), Err(Refusal::NoRoom), "2 waiting + 3 sent = threshold");
    let s = &g.backend_states()[0];
    assert_eq!((s.sent_since_scrape, s.inflight), (3, 3));
    assert!(s.saturation >= 1.0);
    // The next scrape counts what arrived; what was sent restarts at 0.
    g.publish_scrape(id(&g, 0), scrape(4.0, 0.1));
    assert_eq!(take(&g, 3), Ok(0));
    assert_eq!(take(&g, 3), Err(Refusal::NoRoom));
}

/// A scrape whose answer comes after more requests went out (the server answered before they
/// reached it): those still count, so the late answer does not open a second burst.
#[test]
fn a_late_scrape_answer_keeps_what_was_sent_after_its_request() {
    let g = gate(&[0], Detector::Utilization, 5);
    g.publish_scrape(id(&g, 0), scrape(0.0, 0.0));
    assert_eq!((take(&g, 3), take(&g, 3)), (Ok(0), Ok(0)));
    // The next scrape is requested now, with 2 sent; 3 more go while it is on its way.
    let before = g.backends().sent_since_scrape(id(&g, 0));
    assert_eq!(before, 2);
    for _ in 0..3 {
        assert_eq!(take(&g, 3), Ok(0));
    }
    assert_eq!(take(&g, 3), Err(Refusal::NoRoom));
    // It answers "nothing waiting": the 2 sent before it are taken as seen, the 3 after are not.
    assert!(g.publish_scrape_since(id(&g, 0), scrape(0.0, 0.0), before));
    assert_eq!(g.backend_states()[0].sent_since_scrape, 3);
    assert_eq!((take(&g, 3), take(&g, 3)), (Ok(0), Ok(0)));
    assert_eq!(take(&g, 3), Err(Refusal::NoRoom), "5 in all since the request, not 5 more");
    // A backend that left: nothing to read, nothing published.
    let gone = BackendId { generation: id(&g, 0).generation + 1, ..id(&g, 0) };
    assert_eq!(g.backends().sent_since_scrape(gone), u32::MAX);
    assert!(!g.publish_scrape_since(gone, scrape(0.0, 0.0), 0));
}

#[test]
fn releases_do_not_make_metric_room_only_scrapes_do() {
    let g = gate(&[0], Detector::Utilization, 1);
    g.publish_scrape(id(&g, 0), scrape(0.0, 0.0));
    let b = g.try_acquire(3).unwrap();
    g.release(b);
    assert_eq!(take(&g, 3), Err(Refusal::NoRoom), "the server may still hold it until it says otherwise");
    assert_eq!(g.backend_states()[0].inflight, 0);
}

#[test]
fn kv_cache_use_at_the_threshold_saturates() {
    let g = gate(&[0], Detector::Utilization, 5);
    g.publish_scrape(id(&g, 0), scrape(0.0, 0.8));
    assert_eq!(take(&g, 3), Err(Refusal::NoRoom));
    assert!((g.backend_states()[0].saturation - 1.0).abs() < 1e-9);
    g.publish_scrape(id(&g, 0), scrape(0.0, 0.79));
    assert_eq!(take(&g, 3), Ok(0));
}

#[test]
fn stale_saturates_until_the_next_good_scrape() {
    let g = gate(&[0], Detector::Utilization, 5);
    g.publish_scrape(id(&g, 0), scrape(0.0, 0.0));
    g.mark_stale(id(&g, 0));
    assert_eq!(take(&g, 3), Err(Refusal::NoRoom));
    assert!(g.backend_states()[0].stale);
    g.publish_scrape(id(&g, 0), scrape(0.0, 0.0));
    assert!(!g.backend_states()[0].stale);
    assert_eq!(take(&g, 3), Ok(0));
}

#[test]
fn picking_prefers_the_least_loaded_then_the_fewest_in_flight() {
    let g = gate(&[0, 0], Detector::Utilization, 10);
    g.publish_scrape(id(&g, 0), scrape(4.0, 0.0));
    g.publish_scrape(id(&g, 1), scrape(1.0, 0.0));
    let picks: Vec<u32> = (0..5).map(|_| take(&g, 3).unwrap()).collect();
    // B: 0.1, 0.2, 0.3; then both 0.4 (A has fewer in flight); then B 0.4 < A 0.5.
    assert_eq!(picks, [1, 1, 1, 0, 1]);
}

#[test]
fn kv_use_counts_in_the_score() {
    let g = gate(&[0, 0], Detector::Utilization, 10);
    g.publish_scrape(id(&g, 0), scrape(0.0, 0.6)); // 0.75 of the KV threshold
    g.publish_scrape(id(&g, 1), scrape(5.0, 0.0)); // 0.5 of the queue threshold
    assert_eq!(take(&g, 3), Ok(1));
}

#[test]
fn detector_both_needs_a_slot_and_metric_room() {
    let g = gate(&[1, 0], Detector::Both, 5);
    g.publish_scrape(id(&g, 0), scrape(0.0, 0.0));
    g.publish_scrape(id(&g, 1), scrape(4.0, 0.0));
    // Backend 0: slot 0/1 and queue 0/5 → score 0; backend 1 (uncapped): queue 4/5 → 0.8.
    assert_eq!(take(&g, 3), Ok(0));
    assert_eq!(take(&g, 3), Ok(1), "backend 0's one slot is held");
    assert_eq!(take(&g, 3), Err(Refusal::NoRoom), "backend 1 is at the queue threshold");
    g.release(Place { backend: 0, counted: false });
    assert_eq!(take(&g, 3), Ok(0), "a freed slot with metric room left");
}

#[test]
fn detector_concurrency_ignores_metrics() {
    let g = gate(&[2], Detector::Concurrency, 1);
    g.publish_scrape(id(&g, 0), scrape(100.0, 1.0));
    assert_eq!(take(&g, 3), Ok(0));
    assert_eq!(take(&g, 3), Ok(0));
    assert_eq!(take(&g, 3), Err(Refusal::NoRoom));
    assert_eq!(g.backend_states()[0].saturation, 1.0, "2 of 2 slots");
}

#[test]
fn ceilings_hold_back_low_criticalities_only() {
    let mut config = EngineConfig {
        backends: vec![BackendConfig { address: "10.0.0.1:8000".into(), max_inflight: 4 }],
        ..EngineConfig::default()
    };
    config.ceilings = [0.5, 1.0, 1.0, 1.0, 1.0];
    let g = Gate::new(&config, 1, Clock::new());
    assert_eq!(take(&g, 1), Ok(0));
    assert_eq!(take(&g, 1), Ok(0));
    assert_eq!(take(&g, 1), Err(Refusal::Ceiling));
    assert!(!g.has_slot_for(1) && g.has_slot_for(5));
    assert_eq!(take(&g, 5), Ok(0));
    assert_eq!(take(&g, 5), Ok(0));
    assert_eq!(take(&g, 5), Err(Refusal::NoRoom));
    g.release(Place { backend: 0, counted: true });
    assert_eq!(take(&g, 1), Err(Refusal::Ceiling), "3 held ≥ 2");
}
