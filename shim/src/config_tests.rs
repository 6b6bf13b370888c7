//! Unit tests of [`super`]: defaults, scalar forms, unknown keys, and the path of every refusal.

use super::*;
use std::time::Duration;

/// Parse `yaml`, expecting errors; return them as `path: reason` strings.
fn errors(yaml: &str) -> Vec<String> {
    match ServeConfig::from_yaml(yaml) {
        Ok(c) => panic!("expected an error for {yaml:?}, got {c:?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

/// The single error's path, asserting there is exactly one.
fn error_path(yaml: &str) -> String {
    let e = ServeConfig::from_yaml(yaml).expect_err(yaml);
    assert_eq!(e.len(), 1, "{yaml:?} gave {e:?}");
    e[0].path.clone()
}

fn ok(yaml: &str) -> ServeConfig {
    ServeConfig::from_yaml(yaml).unwrap_or_else(|e| panic!("{yaml:?} refused: {e:?}"))
}

#[test]
fn embedded_default_is_the_engine_default_with_the_documented_listeners() {
    let c = ServeConfig::embedded_default();
    assert_eq!(c.listen, "127.0.0.1:9002".parse().unwrap());
    assert_eq!(c.metrics_listen, "127.0.0.1:9090".parse().unwrap());
    assert_eq!(c.engine, EngineConfig::default());
    assert_eq!(c.engine.backends[0].address, "127.0.0.1:8000");
    assert_eq!(c.engine.backends[0].max_inflight, 8);
}

#[test]
fn empty_file_and_empty_sections_take_defaults() {
    let d = ServeConfig::embedded_default();
    assert_eq!(ok(""), d);
    assert_eq!(ok("# only a comment\n"), d);
    assert_eq!(ok("queue:\nscoring:\nworkloads:\n  caps:\n"), d);
    assert_eq!(ok("{}"), d);
}

#[test]
fn partial_sections_keep_the_other_defaults() {
    let c = ok("queue:\n  ttl: 5s\nscoring:\n  rate_cap: 50\n");
    assert_eq!(c.engine.queue.ttl, Duration::from_secs(5));
    assert_eq!(c.engine.queue.max_requests, 10_000);
    assert_eq!(c.engine.scoring.rate_cap_per_s, 50.0);
    assert_eq!(c.engine.scoring.wait_cap, Duration::from_secs(60));
}

#[test]
fn the_design_brief_example_parses() {
    let c = ok(r#"
listen: 127.0.0.1:9002
metrics_listen: 127.0.0.1:9090
shards: 0
backends:
  - address: 10.0.0.7:8000
    max_inflight: 8
queue:
  max_requests: 10000
  max_bytes: 1GiB
  ttl: 30s
scoring:
  wait_weight: 0.4
  criticality_weight: 0.4
  rate_weight: 0.2
  wait_cap: 60s
  rate_cap: 100
  rate_window: 60s
  rescore_interval: 100ms
workloads:
  default_criticality: 3
  idle_timeout: 5m
  max_tracked: 100000
  caps:
    - workload_id: "batch-*"
      max_criticality: 2
"#);
    assert_eq!(c.engine.backends[0].address, "10.0.0.7:8000");
    assert_eq!(c.engine.workloads.caps.len(), 1);
    assert_eq!(c.engine.workloads.caps[0].pattern, "batch-*");
    assert_eq!(c.engine.workloads.caps[0].max_criticality, 2);
    assert_eq!(c.engine.workloads.clamp("batch-9", 5), (2, true));
}

#[test]
fn every_duration_form() {
    for (text, expected) in [
        ("50us", Duration::from_micros(50)),
        ("2µs", Duration::from_micros(2)),
        ("250ms", Duration::from_millis(250)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
        ("1.5s", Duration::from_millis(1500)),
        ("0.5m", Duration::from_secs(30)),
        (" 10 s ", Duration::from_secs(10)),
    ] {
        assert_eq!(parse_duration(text), Some(expected), "{text:?}");
    }
    for text in ["", "s", "30", "5 parsecs", "-1s", "1d", ".5s", "5.s", "1e3s", "30S", "1h30m"] {
        assert_eq!(parse_duration(text), None, "{text:?}");
    }
    let c = ok("queue:\n  ttl: 250ms\nworkloads:\n  idle_timeout: 1h\nscoring:\n  wait_cap: 5m\n");
    assert_eq!(c.engine.queue.ttl, Duration::from_millis(250));
    assert_eq!(c.engine.workloads.idle_timeout, Duration::from_secs(3600));
    assert_eq!(c.engine.scoring.wait_cap, Duration::from_secs(300));
}

#[test]
fn durations_must_be_strings_with_units() {
    let e = errors("scoring:\n  wait_cap: 5 parsecs\n");
    assert_eq!(
        e,
        [
            r#"scoring.wait_cap: "5 parsecs" is not a duration (write a number and a unit: 250ms, 30s, 5m, 1h)"#
        ]
    );
    let e = errors("queue:\n  ttl: 30\n");
    assert!(e[0].starts_with("queue.ttl: 30 has no unit"), "{e:?}");
    assert_eq!(error_path("queue:\n  ttl: 1.5\n"), "queue.ttl");
    assert_eq!(error_path("queue:\n  ttl: -3\n"), "queue.ttl");
    assert_eq!(error_path("queue:\n  ttl: [1]\n"), "queue.ttl");
}

#[test]
fn every_size_form() {
    for (text, expected) in [
        ("1GiB", 1u64 << 30),
        ("512MiB", 512 << 20),
        ("64KiB", 64 << 10),
        ("2TiB", 2 << 40),
        ("100", 100),
        ("100B", 100),
        ("10MB", 10_000_000),
        ("1GB", 1_000_000_000),
        ("3KB", 3_000),
        ("0", 0),
    ] {
        assert_eq!(parse_size(text), Some(expected), "{text:?}");
    }
    for text in ["", "GiB", "1.5GiB", "-1", "lots", "1 parsec", "99999999999TiB"] {
        assert_eq!(parse_size(text), None, "{text:?}");
    }
    assert_eq!(ok("queue:\n  max_bytes: 1048576\n").engine.queue.max_bytes, 1 << 20);
    assert_eq!(ok("queue:\n  max_bytes: 64KiB\n").engine.queue.max_bytes, 64 << 10);
    assert_eq!(ok("queue:\n  max_bytes: \"512MiB\"\n").engine.queue.max_bytes, 512 << 20);
    let e = errors("queue:\n  max_bytes: -1\n");
    assert_eq!(e, ["queue.max_bytes: -1 is not a size (sizes cannot be negative)"]);
    assert_eq!(error_path("queue:\n  max_bytes: 1.5GiB\n"), "queue.max_bytes");
    assert_eq!(error_path("queue:\n  max_bytes: 2.5\n"), "queue.max_bytes");
}

#[test]
fn unknown_keys_are_refused_with_their_path() {
    let e = errors("listne: 127.0.0.1:1\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("listne: unknown key (expected one of `listen`"), "{e:?}");
    let e = errors("scoring:\n  wait_cpa: 5s\n");
    assert!(e[0].starts_with("scoring.wait_cpa: unknown key"), "{e:?}");
    assert_eq!(error_path("queue:\n  ttl: 5s\n  ttl_ms: 5\n"), "queue.ttl_ms");
    assert_eq!(
        error_path("backends:\n  - address: 127.0.0.1:1\n    max_inflight: 1\n    weight: 2\n"),
        "backends[0].weight"
    );
    assert_eq!(
        error_path("workloads:\n  caps:\n    - workload_id: a\n      max_criticality: 2\n      min: 1\n"),
        "workloads.caps[0].min"
    );
}

#[test]
fn missing_required_keys_name_their_entry() {
    // `max_inflight` may be left out: 0, no cap (a warning under detector concurrency, not an error).
    let c = ServeConfig::from_yaml("backends:\n  - address: 127.0.0.1:1\n").expect("valid");
    assert_eq!(c.engine.backends[0].max_inflight, 0);
    let w: Vec<String> = c.warnings().iter().map(ToString::to_string).collect();
    assert_eq!(w, [format!("backends[0].max_inflight: {}", flowgate_engine::config::UNCAPPED_WARNING)]);
    let e = errors("backends:\n  - max_inflight: 1\n");
    assert_eq!(e, ["backends[0]: missing field `address`"]);
    let e = errors("workloads:\n  caps:\n    - max_criticality: 2\n");
    assert_eq!(e, ["workloads.caps[0]: missing field `workload_id`"]);
}

#[test]
fn impossible_values_name_their_field() {
    let cases = [
        ("backends:\n  - address: 127.0.0.1:1\n    max_inflight: 1048577\n", "backends[0].max_inflight"),
        ("backends:\n  - address: nowhere\n    max_inflight: 1\n", "backends[0].address"),
        ("backends: []\n", "backends"),
        ("backends:\n", "backends"),
        ("scoring:\n  wait_weight: -0.5\n", "scoring.wait_weight"),
        ("scoring:\n  rate_weight: .nan\n", "scoring.rate_weight"),
        ("scoring:\n  rescore_interval: 0ms\n", "scoring.rescore_interval"),
        ("scoring:\n  wait_cap: 0s\n", "scoring.wait_cap"),
        ("scoring:\n  rate_cap: 0\n", "scoring.rate_cap"),
        ("scoring:\n  rate_window: 1ms\n", "scoring.rate_window"),
        ("queue:\n  ttl: 2h\n", "queue.ttl"),
        ("queue:\n  ttl: 0s\n", "queue.ttl"),
        ("workloads:\n  default_criticality: 6\n", "workloads.default_criticality"),
        ("workloads:\n  max_tracked: 0\n", "workloads.max_tracked"),
        ("workloads:\n  idle_timeout: 0s\n", "workloads.idle_timeout"),
        (
            "workloads:\n  caps:\n    - workload_id: \"a*b\"\n      max_criticality: 2\n",
            "workloads.caps[0].workload_id",
        ),
        (
            "workloads:\n  caps:\n    - workload_id: \"\"\n      max_criticality: 2\n",
            "workloads.caps[0].workload_id",
        ),
        (
            "workloads:\n  caps:\n    - workload_id: \"**\"\n      max_criticality: 2\n",
            "workloads.caps[0].workload_id",
        ),
        (
            "workloads:\n  caps:\n    - workload_id: a\n      max_criticality: 9\n",
            "workloads.caps[0].max_criticality",
        ),
        (
            "workloads:\n  caps:\n    - workload_id: a\n      max_criticality: -1\n",
            "workloads.caps[0].max_criticality",
        ),
        ("shards: 1000\n", "shards"),
        ("shards: -1\n", "shards"),
        ("io_threads: 5000\n", "io_threads"),
        ("io_threads: -1\n", "io_threads"),
        ("io_threads: many\n", "io_threads"),
        ("ring_capacity: 0\n", "ring_capacity"),
        ("ceilings: [1.0, 1.0, 0.0, 1.0, 1.0]\n", "ceilings[2]"),
        ("ceilings: [1.0, 1.0]\n", "ceilings"),
        ("listen: nowhere\n", "listen"),
        ("metrics_listen: 127.0.0.1\n", "metrics_listen"),
        ("listen: 127.0.0.1:7000\nmetrics_listen: 127.0.0.1:7000\n", "metrics_listen"),
    ];
    for (yaml, path) in cases {
        assert_eq!(error_path(yaml), path, "{yaml:?}");
    }
}

#[test]
fn every_value_error_is_reported_at_once() {
    let e = errors(
        "backends:\n  - address: 127.0.0.1:1\n    max_inflight: 1048577\nqueue:\n  ttl: 2h\nscoring:\n  rescore_interval: 0s\n",
    );
    let paths: Vec<&str> = e.iter().map(|l| l.split(':').next().unwrap()).collect();
    assert_eq!(paths, ["backends[0].max_inflight", "queue.ttl", "scoring.rescore_interval"]);
}

#[test]
fn wrong_types_and_bad_syntax() {
    assert_eq!(error_path("shards: many\n"), "shards");
    assert_eq!(error_path("queue: 5\n"), "queue");
    assert_eq!(error_path("backends: {address: x}\n"), "backends");
    let e = errors("@reserved\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("config: "), "{e:?}");
    assert!(e[0].contains("line"), "{e:?}");
    assert_eq!(error_path("- 1\n- 2\n"), "config");
}

#[test]
fn listeners_accept_ipv6_and_port_zero() {
    let c = ok("listen: \"[::1]:0\"\nmetrics_listen: 127.0.0.1:0\n");
    assert_eq!(c.listen, "[::1]:0".parse().unwrap());
    assert_eq!(c.metrics_listen.port(), 0);
    ok("listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\n");
    let e = errors("listen: [::]:9002\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("listen: is a YAML list: quote IPv6 addresses"), "{e:?}");
    assert_eq!(error_path("listen: 9002\n"), "listen");
}

#[test]
fn ceilings_and_ring_capacity_are_optional_knobs() {
    let c = ok("ring_capacity: 64\nceilings: [0.5, 0.6, 0.7, 0.9, 1]\nspin_before_park: 0s\n");
    assert_eq!(c.engine.ring_capacity, 64);
    assert_eq!(c.engine.ceilings, [0.5, 0.6, 0.7, 0.9, 1.0]);
    assert_eq!(c.engine.spin_before_park, Duration::ZERO);
    assert_eq!(ServeConfig::embedded_default().engine.spin_before_park, Duration::from_micros(50));
    assert_eq!(error_path("spin_before_park: 11ms\n"), "spin_before_park");
}

#[test]
fn summary_and_duration_formatting() {
    let s = ServeConfig::embedded_default().summary();
    assert!(s.contains("listen 127.0.0.1:9002"), "{s}");
    assert!(s.contains("1 static backend(s) with 8 slot(s)"), "{s}");
    assert!(s.contains("ttl 30s"), "{s}");
    assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
    assert_eq!(format_duration(Duration::ZERO), "0s");
    assert!(s.contains("queue 10000 requests / 1GiB"), "{s}");
    assert_eq!(format_size(64 << 10), "64KiB");
    assert_eq!(format_size(1000), "1000B");
    assert_eq!(format_size(0), "0B");
}

#[test]
fn with_discovery_and_no_backends_key_there_is_no_static_backend() {
    let c = ok("discovery:\n  dns: { name: localhost, port: 8000, max_inflight: 4 }\n");
    assert!(c.engine.backends.is_empty() && c.scrape.is_empty(), "{c:?}");
    assert_eq!(ok("").engine.backends.len(), 1, "without discovery the default backend stays");
    assert_eq!(error_path("backends: []\n"), "backends");
}

#[test]
fn named_values_are_read_by_name_and_refused_with_the_choices() {
    let c = ok("scoring:\n  rate_unit: tokens\n  fairness: vtc\nworkloads:\n  quotas:\n    - workload_id: a\n      max_inflight: 2\n      on_exceed: reject\n");
    assert_eq!(c.engine.scoring.rate_unit, flowgate_engine::config::RateUnit::Tokens);
    assert_eq!(c.engine.scoring.fairness, flowgate_engine::config::Fairness::Vtc);
    assert_eq!(c.engine.workloads.quotas[0].on_exceed, flowgate_engine::quota_rule::OnExceed::Reject);
    let c = ok("workloads:\n  quotas:\n    - workload_id: a\n      max_inflight: 2\n");
    assert_eq!(
        c.engine.workloads.quotas[0].on_exceed,
        flowgate_engine::quota_rule::OnExceed::Queue,
        "the default"
    );
    for (yaml, choices) in [
        ("scoring:\n  rate_unit: bytes\n", "(requests or tokens)"),
        ("scoring:\n  fairness: drr\n", "(rate or vtc)"),
        ("saturation:\n  detector: magic\n", "(concurrency, utilization or both)"),
        (
            "workloads:\n  quotas:\n    - workload_id: a\n      max_inflight: 1\n      on_exceed: later\n",
            "(queue or reject)",
        ),
    ] {
        let e = errors(yaml);
        assert!(e.iter().any(|m| m.contains(choices)), "{yaml}: {e:?}");
    }
}

#[test]
fn io_threads_default_to_the_cpus_the_shards_leave_and_need_a_restart() {
    let auto = ok("shards: 1\n");
    let layout = auto.layout();
    assert_eq!(layout.shard_cpus.len(), 1);
    assert_eq!(layout.io_threads, (layout.cpus.len() - 1).max(1));
    let four = ok("shards: 1\nio_threads: 4\n");
    assert_eq!((four.io_threads, four.layout().io_threads), (4, 4));
    assert!(four.summary().contains("1 shard(s), 4 I/O thread(s)"), "{}", four.summary());
    assert!(auto.summary().contains("I/O thread(s) (auto)"), "{}", auto.summary());
    assert_eq!(auto.restart_only_changes(&four), vec!["io_threads"]);
}
