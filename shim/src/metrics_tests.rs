//! Unit tests of [`super`]: names, label bounds, sweeping, and both text formats.

use super::*;
use crate::view::StaticView;
use flowgate_engine::clock::Clock;
use flowgate_engine::config::WorkloadConfig;
use flowgate_engine::registry::{hash_workload_id, RateWindow, WorkloadTable};
use flowgate_engine::registry_view::RegistryView;
use flowgate_engine::runtime::EngineStats;
use std::sync::atomic::AtomicUsize;

fn empty_view() -> StaticView {
    StaticView {
        registry: RegistryView::new(vec![], Arc::new(AtomicUsize::new(0)), Clock::new()),
        stats: EngineStats { queued: 7, queued_bytes: 0, inflight: 3, capacity: 16 },
        backends: vec![("10.0.0.1:8000".into(), 3), ("10.0.0.2:8000".into(), 0)],
        shard_parks: vec![5, 0],
    }
}

/// A view whose registry tracks `ids` (one shard table).
fn view_tracking(ids: &[&str]) -> (StaticView, WorkloadTable) {
    let tracked = Arc::new(AtomicUsize::new(0));
    let window = RateWindow::new(Duration::from_secs(60));
    let mut table = WorkloadTable::new(&WorkloadConfig::default(), window, tracked.clone());
    for id in ids {
        table.arrive(id, hash_workload_id(id), 3, 1);
    }
    let mut view = empty_view();
    view.registry = RegistryView::new(vec![table.directory()], tracked, Clock::new());
    (view, table)
}

fn queue_series(id: &str, priority: &str) -> String {
    series(QUEUE_SIZE, &[("fairness_id", id), ("priority", priority)])
}

#[test]
fn the_gie_families_are_scraped_before_any_request() {
    let m = Metrics::new(10, 3);
    let view = empty_view();
    for openmetrics in [true, false] {
        let text = m.render(&view, openmetrics);
        let duration = series(
            &format!("{QUEUE_DURATION}_count"),
            &[("fairness_id", "default"), ("priority", "3"), ("outcome", "dispatched")],
        );
        for want in [format!("{} 0", queue_series("default", "3")), format!("{duration} 0")] {
            assert!(text.lines().any(|l| l == want), "{want} missing (openmetrics {openmetrics}):\n{text}");
        }
    }
}

#[test]
fn every_metric_is_exported_in_both_formats() {
    let m = Arc::new(Metrics::new(10, 3));
    m.enqueue(&Arc::from("chat"), 4).finish(Outcome::Dispatched, Duration::from_millis(3));
    m.count_capped();
    let (view, _table) = view_tracking(&["chat"]);
    for openmetrics in [true, false] {
        let text = m.render(&view, openmetrics);
        for name in [
            "inference_extension_flow_control_queue_size{",
            "inference_extension_flow_control_request_queue_duration_seconds_bucket{",
            "inference_extension_flow_control_request_queue_duration_seconds_count{",
            "flowgate_requests_total{outcome=\"dispatched\"} 1",
            "flowgate_requests_total{outcome=\"evicted_cancelled\"} 0",
            "flowgate_inflight{backend=\"10.0.0.1:8000\"} 3",
            "flowgate_inflight{backend=\"10.0.0.2:8000\"} 0",
            "flowgate_queued_requests 7",
            "flowgate_tracked_workloads 1",
            "flowgate_context_defaults_total{reason=\"missing\"} 0",
            "flowgate_criticality_capped_total 1",
            "flowgate_shard_parks_total{shard=\"0\"} 5",
            "flowgate_shard_parks_total{shard=\"1\"} 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert_eq!(text.ends_with("# EOF\n"), openmetrics);
    }
}

#[test]
fn queue_gauge_follows_requests_and_outcomes_are_counted() {
    let m = Arc::new(Metrics::new(10, 3));
    let (view, _table) = view_tracking(&["chat"]);
    let id: Arc<str> = Arc::from("chat");
    let a = m.enqueue(&id, 5);
    let b = m.enqueue(&id, 5);
    let c = m.enqueue(&id, 1);
    let text = m.render(&view, false);
    assert_eq!(sample(&text, &queue_series("chat", "5")), Some(2.0));
    assert_eq!(sample(&text, &queue_series("chat", "1")), Some(1.0));
    a.finish(Outcome::EvictedTtl, Duration::from_secs(2));
    b.finish(Outcome::EvictedDisplaced, Duration::from_millis(1));
    drop(c); // unfinished: leaves the gauge, counts no outcome
    let text = m.render(&view, false);
    assert_eq!(sample(&text, &queue_series("chat", "5")), Some(0.0));
    assert_eq!(sample(&text, &queue_series("chat", "1")), Some(0.0));
    assert_eq!(sample(&text, "flowgate_requests_total{outcome=\"evicted_ttl\"}"), Some(1.0));
    assert_eq!(sample(&text, "flowgate_requests_total{outcome=\"evicted_displaced\"}"), Some(1.0));
    let count = series(
        &format!("{QUEUE_DURATION}_count"),
        &[("fairness_id", "chat"), ("priority", "5"), ("outcome", "evicted_ttl")],
    );
    assert_eq!(sample(&text, &count), Some(1.0));
    let sum = series(
        &format!("{QUEUE_DURATION}_sum"),
        &[("fairness_id", "chat"), ("priority", "5"), ("outcome", "evicted_ttl")],
    );
    assert_eq!(sample(&text, &sum), Some(2.0));
}

#[test]
fn labels_beyond_max_tracked_share_the_overflow_label() {
    let m = Arc::new(Metrics::new(2, 3));
    let guards: Vec<Queued> = ["a", "b", "c", "d"].iter().map(|id| m.enqueue(&Arc::from(*id), 3)).collect();
    assert_eq!(m.admitted(), 2);
    let (view, _table) = view_tracking(&["a", "b", "c", "d"]);
    let text = m.render(&view, false);
    assert_eq!(sample(&text, &queue_series("a", "3")), Some(1.0));
    assert_eq!(sample(&text, &queue_series("b", "3")), Some(1.0));
    assert_eq!(sample(&text, &queue_series("c", "3")), None);
    assert_eq!(sample(&text, &queue_series("__overflow__", "3")), Some(2.0));
    drop(guards);
    let text = m.render(&view, false);
    assert_eq!(sample(&text, &queue_series("__overflow__", "3")), Some(0.0));
    // A client naming itself `__overflow__`, and the default workload, take no place.
    let _g = m.enqueue(&Arc::from("__overflow__"), 3);
    let _d = m.enqueue(&Arc::from("default"), 3);
    assert_eq!(m.admitted(), 2);
}

#[test]
fn a_reloaded_label_bound_applies_to_new_workloads() {
    let m = Arc::new(Metrics::new(3, 3));
    let _held: Vec<Queued> = ["a", "b"].iter().map(|id| m.enqueue(&Arc::from(*id), 3)).collect();
    m.set_max_tracked(1);
    let _c = m.enqueue(&Arc::from("c"), 3);
    assert_eq!(m.admitted(), 2, "a and b keep their labels; c overflows");
    m.set_max_tracked(4);
    let _d = m.enqueue(&Arc::from("d"), 3);
    assert_eq!(m.admitted(), 3);
}

#[test]
fn sweep_forgets_idle_workloads_the_engine_forgot() {
    let m = Arc::new(Metrics::new(2, 3));
    m.enqueue(&Arc::from("gone"), 2).finish(Outcome::Dispatched, Duration::ZERO);
    m.enqueue(&Arc::from("kept"), 2).finish(Outcome::Dispatched, Duration::ZERO);
    let busy = m.enqueue(&Arc::from("busy"), 2); // over the bound: overflow
    drop(busy);
    let _queued = m.enqueue(&Arc::from("kept"), 2);
    // The engine still tracks only "kept"; "gone" is idle and forgotten.
    let (view, _table) = view_tracking(&["kept"]);
    let text = m.render(&view, false);
    assert_eq!(m.admitted(), 1);
    assert!(!text.contains("fairness_id=\"gone\""), "{text}");
    assert_eq!(sample(&text, &queue_series("kept", "2")), Some(1.0));
    // Its place is free again.
    let _n = m.enqueue(&Arc::from("new"), 2);
    assert_eq!(m.admitted(), 2);
}

#[test]
fn a_workload_with_queued_requests_is_never_swept() {
    let m = Arc::new(Metrics::new(10, 3));
    let _q = m.enqueue(&Arc::from("waiting"), 3);
    assert_eq!(m.sweep(&HashSet::new()), 0);
    assert_eq!(m.admitted(), 1);
}

#[test]
fn defaults_are_counted_by_reason() {
    let m = Metrics::new(10, 3);
    let (_, d) = flowgate_engine::WorkloadContext::parse(Some(b"not json"), 3);
    m.count_defaults(d);
    m.count_defaults(Defaults::only(DefaultReason::Missing));
    m.count_defaults(Defaults::only(DefaultReason::Missing));
    let text = m.render(&empty_view(), false);
    assert_eq!(sample(&text, "flowgate_context_defaults_total{reason=\"invalid_json\"}"), Some(1.0));
    assert_eq!(sample(&text, "flowgate_context_defaults_total{reason=\"missing\"}"), Some(2.0));
}

#[test]
fn prometheus_text_is_well_formed() {
    let m = Arc::new(Metrics::new(10, 3));
    let id = "a \"quoted\" \\ id";
    m.enqueue(&Arc::from(id), 3).finish(Outcome::RejectedCapacity, Duration::ZERO);
    let (view, _table) = view_tracking(&[id]);
    let text = m.render(&view, false);
    let mut families: HashMap<String, String> = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        assert!(!line.starts_with("# EOF") && !line.starts_with("# UNIT"), "{line}");
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        let family = families
            .keys()
            .find(|f| {
                name == f.as_str() || ["_bucket", "_sum", "_count"].iter().any(|s| name == format!("{f}{s}"))
            })
            .unwrap_or_else(|| panic!("sample {name} has no # TYPE line"));
        if families[family] == "counter" {
            assert!(family.ends_with("_total"), "{family}");
        }
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
    }
    assert_eq!(families["flowgate_requests_total"], "counter");
    assert_eq!(families[QUEUE_DURATION], "histogram");
    assert_eq!(families[QUEUE_SIZE], "gauge");
    assert!(text.contains(r#"fairness_id="a \"quoted\" \\ id""#), "{text}");
}

#[test]
fn openmetrics_is_chosen_from_the_accept_header() {
    assert!(wants_openmetrics(Some(
        "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )));
    assert!(wants_openmetrics(Some("application/openmetrics-text")));
    assert!(!wants_openmetrics(Some("text/plain")));
    assert!(!wants_openmetrics(Some("*/*")));
    assert!(!wants_openmetrics(Some("application/openmetrics-text; q=0")));
    assert!(!wants_openmetrics(None));
}

#[test]
fn conversion_renames_counter_families_only() {
    let om = "# HELP c Help.\n# TYPE c counter\nc_total 1\n# HELP g G.\n# TYPE g gauge\n# UNIT g seconds\ng 2\n# EOF\n";
    assert_eq!(
        openmetrics_to_prometheus(om),
        "# HELP c_total Help.\n# TYPE c_total counter\nc_total 1\n# HELP g G.\n# TYPE g gauge\ng 2\n"
    );
}

#[test]
fn the_queue_gauge_is_exported_before_any_request_and_default_is_never_swept() {
    let m = Arc::new(Metrics::new(10, 2));
    let text = m.render(&empty_view(), false);
    assert_eq!(sample(&text, &queue_series("default", "2")), Some(0.0), "{text}");
    m.enqueue(&Arc::from("default"), 4).finish(Outcome::Dispatched, Duration::ZERO);
    assert_eq!(m.sweep(&HashSet::new()), 0);
    let text = m.render(&empty_view(), false);
    assert_eq!(sample(&text, &queue_series("default", "4")), Some(0.0), "{text}");
}
