//! The `saturation` section and the per-backend `metrics` / `engine` fields.

use super::*;
use flowgate_engine::config::{Detector, SaturationConfig};
use std::time::Duration;

fn ok(yaml: &str) -> ServeConfig {
    ServeConfig::from_yaml(yaml).unwrap_or_else(|e| panic!("{yaml}: {e:?}"))
}

fn error_paths(yaml: &str) -> Vec<String> {
    ServeConfig::from_yaml(yaml).expect_err(yaml).into_iter().map(|e| e.path).collect()
}

#[test]
fn saturation_defaults_keep_the_concurrency_detector() {
    let c = ServeConfig::embedded_default();
    assert_eq!(c.engine.saturation, SaturationConfig::default());
    assert_eq!(c.engine.saturation.detector, Detector::Concurrency);
    assert_eq!(
        c.scrape,
        [ScrapeTarget { url: "http://127.0.0.1:8000/metrics".into(), engine: ModelServer::Vllm }]
    );
}

#[test]
fn a_full_saturation_section_parses() {
    let c = ok("backends:
  - address: 10.0.0.7:8000
    max_inflight: 0
    metrics: http://10.0.0.7:9400/stats/metrics
    engine: sglang
  - address: 10.0.0.8:8000
    engine: triton-tensorrt-llm
saturation:
  detector: utilization
  scrape_interval: 25ms
  scrape_timeout: 500ms
  queue_depth_threshold: 3
  kv_cache_threshold: 0.9
  staleness: 1s
");
    let s = &c.engine.saturation;
    assert_eq!(s.detector, Detector::Utilization);
    assert_eq!(s.scrape_interval, Duration::from_millis(25));
    assert_eq!(s.scrape_timeout, Duration::from_millis(500));
    assert_eq!(s.queue_depth_threshold, 3);
    assert_eq!(s.kv_cache_threshold, 0.9);
    assert_eq!(s.staleness, Duration::from_secs(1));
    assert_eq!(c.engine.backends[1].max_inflight, 0, "max_inflight defaults to 0 = no cap");
    assert_eq!(
        c.scrape,
        [
            ScrapeTarget { url: "http://10.0.0.7:9400/stats/metrics".into(), engine: ModelServer::Sglang },
            ScrapeTarget {
                url: "http://10.0.0.8:8000/metrics".into(),
                engine: ModelServer::TritonTensorrtLlm
            },
        ]
    );
}

#[test]
fn detector_both_keeps_caps_where_set() {
    let c = ok("backends:\n  - address: 10.0.0.7:8000\n    max_inflight: 4\n  - address: 10.0.0.8:8000\nsaturation:\n  detector: both\n");
    assert_eq!(c.engine.saturation.detector, Detector::Both);
    assert_eq!(c.engine.total_slots(), 4);
}

#[test]
fn bad_saturation_values_name_their_field() {
    let cases = [
        ("saturation:\n  detector: magic\n", "saturation.detector"),
        ("saturation:\n  scrape_interval: 5ms\n", "saturation.scrape_interval"),
        ("saturation:\n  scrape_interval: 50\n", "saturation.scrape_interval"),
        ("saturation:\n  scrape_timeout: 0s\n", "saturation.scrape_timeout"),
        ("saturation:\n  queue_depth_threshold: 0\n", "saturation.queue_depth_threshold"),
        ("saturation:\n  queue_depth_threshold: 99999999\n", "saturation.queue_depth_threshold"),
        ("saturation:\n  kv_cache_threshold: 1.5\n", "saturation.kv_cache_threshold"),
        ("saturation:\n  kv_cache_threshold: 0\n", "saturation.kv_cache_threshold"),
        ("saturation:\n  staleness: 0s\n", "saturation.staleness"),
        ("saturation:\n  sample_rate: 2\n", "saturation.sample_rate"),
        (
            "backends:\n  - address: 10.0.0.7:8000\n    max_inflight: 1\n    engine: tgi\n",
            "backends[0].engine",
        ),
    ];
    for (yaml, path) in cases {
        assert_eq!(error_paths(yaml), [path], "{yaml:?}");
    }
}

#[test]
fn metrics_urls_must_be_plain_http() {
    for url in ["https://10.0.0.7/metrics", "not a url", "http:///metrics", "http://user:pw@10.0.0.7/metrics"]
    {
        let yaml = format!(
            "backends:\n  - address: 10.0.0.7:8000\n    metrics: \"{url}\"\nsaturation:\n  detector: utilization\n"
        );
        assert_eq!(error_paths(&yaml), ["backends[0].metrics"], "{url}");
    }
    // Under detector concurrency the page is never read, so its URL is not checked.
    ok("backends:\n  - address: 10.0.0.7:8000\n    max_inflight: 1\n    metrics: \"https://x/metrics\"\n");
}

#[test]
fn uncapped_backends_are_valid_and_warned_about_under_detector_concurrency() {
    let warned = |yaml: &str| ok(yaml).warnings().into_iter().map(|w| w.path).collect::<Vec<_>>();
    assert_eq!(
        warned("backends:\n  - address: 10.0.0.7:8000\n    max_inflight: 0\n"),
        ["backends[0].max_inflight"]
    );
    let metered =
        "backends:\n  - address: 10.0.0.7:8000\n    max_inflight: 0\nsaturation:\n  detector: utilization\n";
    assert!(warned(metered).is_empty());
    assert_eq!(
        error_paths(
            "backends:\n  - address: 10.0.0.7:8000\nsaturation:\n  detector: both\nceilings: [0.5, 1, 1, 1, 1]\n"
        ),
        ["ceilings"],
        "ceilings count slots: an uncapped backend has none"
    );
    assert_eq!(
        error_paths(
            "backends:\n  - address: 10.0.0.7:8000\n    max_inflight: 2\nsaturation:\n  detector: utilization\nceilings: [0.5, 1, 1, 1, 1]\n"
        ),
        ["ceilings"],
        "detector utilization ignores slots"
    );
}
