//! Unit tests of [`super`]: the `discovery:` section as the config file reads it, the paths of
//! its refusals, and [`publish`]'s only-when-changed rule.

use super::*;
use crate::config::ServeConfig;

/// A config with one capped static backend plus `discovery`.
fn with(discovery: &str) -> Result<ServeConfig, Vec<String>> {
    let yaml = format!("backends:\n  - address: 127.0.0.1:8000\n    max_inflight: 4\n{discovery}");
    ServeConfig::from_yaml(&yaml).map_err(|e| e.iter().map(ToString::to_string).collect())
}

fn ok(discovery: &str) -> Discovery {
    with(discovery)
        .unwrap_or_else(|e| panic!("{discovery:?} refused: {e:?}"))
        .discovery
        .expect("discovery is set")
}

fn paths(discovery: &str) -> Vec<String> {
    match with(discovery) {
        Ok(c) => panic!("expected an error for {discovery:?}, got {c:?}"),
        Err(e) => e.into_iter().map(|e| e.split(": ").next().unwrap().to_string()).collect(),
    }
}

#[test]
fn no_discovery_section_means_none() {
    assert_eq!(with("").unwrap().discovery, None);
    assert_eq!(with("discovery:\n").unwrap().discovery, None);
}

#[test]
fn the_design_brief_example_parses_with_defaults_filled_in() {
    let d = ok(r#"discovery:
  file: { path: endpoints.yaml, watch: true }
  dns: { name: vllm.default.svc.cluster.local, port: 8000, refresh: 5s, max_inflight: 8 }
"#);
    assert_eq!(d.file, Some(FileDiscovery { path: "endpoints.yaml".into(), watch: true }));
    let dns = d.dns.unwrap();
    assert_eq!(dns.name, "vllm.default.svc.cluster.local");
    assert_eq!(dns.port, 8000);
    assert_eq!(dns.refresh, Duration::from_secs(5));
    assert_eq!(dns.max_inflight, 8);
    assert_eq!(dns.engine, ModelServer::Vllm);
}

#[test]
fn watch_defaults_to_true_and_refresh_to_five_seconds() {
    let d =
        ok("discovery:\n  file: { path: e.yaml }\n  dns: { name: localhost, port: 80, max_inflight: 1 }\n");
    assert!(d.file.unwrap().watch);
    assert_eq!(d.dns.unwrap().refresh, DEFAULT_DNS_REFRESH);
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    assert_eq!(paths("discovery:\n  consul: {}\n"), ["discovery.consul"]);
    assert_eq!(paths("discovery:\n  file: { path: e.yaml, poll: 1s }\n"), ["discovery.file.poll"]);
    assert_eq!(
        paths("discovery:\n  dns: { name: a, port: 1, max_inflight: 1, ttl: 1s }\n"),
        ["discovery.dns.ttl"]
    );
}

#[test]
fn a_bare_number_refresh_is_refused_at_its_path() {
    let e = with("discovery:\n  dns: { name: a, port: 1, max_inflight: 1, refresh: 5 }\n").unwrap_err();
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("discovery.dns.refresh: 5 has no unit"), "{e:?}");
}

#[test]
fn out_of_range_values_are_refused_at_their_paths() {
    assert_eq!(
        paths("discovery:\n  dns: { name: a, port: 1, max_inflight: 1, refresh: 10ms }\n"),
        ["discovery.dns.refresh"]
    );
    assert_eq!(
        paths("discovery:\n  dns: { name: a, port: 1, max_inflight: 1, refresh: 2h }\n"),
        ["discovery.dns.refresh"]
    );
    assert_eq!(paths("discovery:\n  dns: { name: a, port: 0, max_inflight: 1 }\n"), ["discovery.dns.port"]);
    assert_eq!(
        paths("discovery:\n  dns: { name: a, port: 70000, max_inflight: 1 }\n"),
        ["discovery.dns.port"]
    );
    assert_eq!(
        paths("discovery:\n  dns: { name: a, port: 1, max_inflight: 2000000 }\n"),
        ["discovery.dns.max_inflight"]
    );
    assert_eq!(
        paths("discovery:\n  dns: { name: 'bad name', port: 1, max_inflight: 1 }\n"),
        ["discovery.dns.name"]
    );
    assert_eq!(paths("discovery:\n  dns: { name: '', port: 1, max_inflight: 1 }\n"), ["discovery.dns.name"]);
    assert_eq!(paths("discovery:\n  file: { path: '' }\n"), ["discovery.file.path"]);
}

#[test]
fn an_uncapped_dns_block_is_valid_and_warned_about_under_detector_concurrency() {
    let c = with("discovery:\n  dns: { name: a, port: 1 }\n").unwrap();
    let warned: Vec<String> = c.warnings().into_iter().map(|w| w.path).collect();
    assert_eq!(warned, ["discovery.dns.max_inflight"]);
    let c = with("saturation: { detector: utilization }\ndiscovery:\n  dns: { name: a, port: 1 }\n").unwrap();
    assert!(c.warnings().is_empty());
    assert_eq!(c.discovery.unwrap().dns.unwrap().max_inflight, 0);
}

#[test]
fn dns_names_may_be_ip_literals_and_end_in_a_dot() {
    for name in ["10.0.0.7", "::1", "vllm.default.svc.cluster.local.", "my_host-1"] {
        assert_eq!(check_dns_name(name), Ok(()), "{name}");
    }
    for name in ["-a", "a..b", "a b", &"x".repeat(64), &format!("{}.a", "x.".repeat(130))] {
        assert!(check_dns_name(name).is_err(), "{name}");
    }
}

#[test]
fn source_names_are_the_api_spelling() {
    assert_eq!([Source::Static, Source::File, Source::Dns].map(Source::name), ["static", "file", "dns"]);
}

#[test]
fn publish_sends_only_a_changed_set() {
    let (tx, mut rx) = watch::channel(Arc::new(Vec::new()));
    rx.mark_unchanged();
    let b = DiscoveredBackend {
        address: "10.0.0.7:8000".into(),
        max_inflight: 1,
        metrics: "http://10.0.0.7:8000/metrics".into(),
        engine: ModelServer::Vllm,
        name: None,
    };
    assert!(!publish(&tx, Vec::new()));
    assert!(!rx.has_changed().unwrap());
    assert!(publish(&tx, vec![b.clone()]));
    assert!(rx.has_changed().unwrap());
    rx.mark_unchanged();
    assert!(!publish(&tx, vec![b]));
    assert!(!rx.has_changed().unwrap());
}

#[test]
fn the_commented_example_in_default_yaml_is_valid() {
    let text = crate::config::DEFAULT_YAML;
    let start = text.find("# discovery:").expect("default.yaml documents discovery");
    let block: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or("")))
        .collect();
    let c = ServeConfig::from_yaml(&block).unwrap_or_else(|e| panic!("{block}\nrefused: {e:?}"));
    let d = c.discovery.expect("discovery is set");
    assert_eq!(d.file.unwrap().path, PathBuf::from("endpoints.yaml"));
    assert_eq!(d.dns.unwrap().max_inflight, 8);
}
