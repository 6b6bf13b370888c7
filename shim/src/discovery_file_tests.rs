//! Unit tests of [`super`]: what an endpoints file turns into, which entries are skipped and why,
//! and which files are refused whole.

use super::*;

fn parse(yaml: &str) -> Parsed {
    parse_endpoints(yaml.as_bytes()).unwrap_or_else(|e| panic!("{yaml:?} refused: {e}"))
}

fn addresses(p: &Parsed) -> Vec<&str> {
    p.backends.iter().map(|b| b.address.as_str()).collect()
}

/// The one skipped entry's reason.
fn skip_reason(yaml: &str) -> String {
    let p = parse(yaml);
    assert_eq!(p.skipped.len(), 1, "{yaml:?} gave {p:?}");
    p.skipped[0].reason.clone()
}

#[test]
fn an_llm_d_file_gives_one_backend_per_endpoint_with_defaults() {
    let p = parse(
        r#"
endpoints:
  - name: vllm-0
    address: 10.0.0.7
    port: "8000"
    labels: { zone: a, role: decode }
  - name: vllm-1
    address: 10.0.0.8
    port: 8001
"#,
    );
    assert_eq!(p.skipped_total, 0);
    assert_eq!(p.ignored_total, 0);
    assert_eq!(
        p.backends,
        [
            DiscoveredBackend {
                address: "10.0.0.7:8000".into(),
                max_inflight: 0,
                metrics: "http://10.0.0.7:8000/metrics".into(),
                engine: ModelServer::Vllm,
                name: Some("vllm-0".into()),
            },
            DiscoveredBackend {
                address: "10.0.0.8:8001".into(),
                max_inflight: 0,
                metrics: "http://10.0.0.8:8001/metrics".into(),
                engine: ModelServer::Vllm,
                name: Some("vllm-1".into()),
            },
        ]
    );
}

#[test]
fn our_optional_fields_are_read() {
    let p = parse(
        "endpoints:\n  - { address: 10.0.0.9, port: 9000, max_inflight: 16, engine: sglang,\n      metrics: 'http://10.0.0.9:9100/stats' }\n",
    );
    let b = &p.backends[0];
    assert_eq!(
        (b.max_inflight, b.engine, b.metrics.as_str()),
        (16, ModelServer::Sglang, "http://10.0.0.9:9100/stats")
    );
    assert_eq!(b.name, None);
}

#[test]
fn ipv6_addresses_are_bracketed_with_or_without_brackets_in_the_file() {
    let p = parse(
        "endpoints:\n  - { address: 'fd00::7', port: 8000 }\n  - { address: '[fd00::8]', port: 8000 }\n",
    );
    assert_eq!(addresses(&p), ["[fd00::7]:8000", "[fd00::8]:8000"]);
    assert_eq!(p.backends[0].metrics, "http://[fd00::7]:8000/metrics");
}

#[test]
fn backends_are_sorted_by_address_whatever_the_file_order() {
    let p = parse("endpoints:\n  - { address: 10.0.0.9, port: 1 }\n  - { address: 10.0.0.1, port: 1 }\n");
    assert_eq!(addresses(&p), ["10.0.0.1:1", "10.0.0.9:1"]);
}

#[test]
fn a_bad_entry_is_skipped_with_its_index_and_name_and_the_rest_is_used() {
    let p = parse(
        "endpoints:\n  - { name: good, address: 10.0.0.1, port: 80 }\n  - { name: host, address: vllm.local, port: 80 }\n  - { name: good2, address: 10.0.0.2, port: 80 }\n",
    );
    assert_eq!(addresses(&p), ["10.0.0.1:80", "10.0.0.2:80"]);
    assert_eq!(p.skipped_total, 1);
    assert_eq!(p.skipped[0].index, 1);
    assert_eq!(p.skipped[0].name.as_deref(), Some("host"));
    assert!(
        p.skipped[0].reason.starts_with("address: \"vllm.local\" is not an IP address"),
        "{:?}",
        p.skipped
    );
}

#[test]
fn bad_ports_are_skipped() {
    for port in ["0", "65536", "'80a'", "''", "-1", "8.5", "[80]", "'+80'"] {
        let reason = skip_reason(&format!("endpoints:\n  - {{ address: 10.0.0.1, port: {port} }}\n"));
        assert!(reason.starts_with("port: "), "{port}: {reason}");
    }
    assert_eq!(skip_reason("endpoints:\n  - { address: 10.0.0.1 }\n"), "port: missing");
    assert_eq!(skip_reason("endpoints:\n  - { port: 1 }\n"), "address: missing");
}

#[test]
fn an_address_with_a_port_is_not_an_ip() {
    assert!(skip_reason("endpoints:\n  - { address: '10.0.0.1:80', port: 80 }\n").starts_with("address: "));
}

#[test]
fn out_of_range_max_inflight_is_skipped() {
    for v in ["1048577", "-1", "1.5", "'8'", "true"] {
        let reason =
            skip_reason(&format!("endpoints:\n  - {{ address: 10.0.0.1, port: 1, max_inflight: {v} }}\n"));
        assert!(reason.starts_with("max_inflight: "), "{v}: {reason}");
    }
    assert_eq!(
        parse("endpoints:\n  - { address: 10.0.0.1, port: 1, max_inflight: 1048576 }\n").backends.len(),
        1
    );
}

/// llm-d's own schema (no `max_inflight`) loads as it is: no cap, like `max_inflight: 0`.
#[test]
fn an_entry_without_max_inflight_is_uncapped_not_skipped() {
    let yaml = "endpoints:\n  - { name: a, address: 10.0.0.1, port: \"8000\", labels: {} }\n  - { address: 10.0.0.2, port: 1, max_inflight: 0 }\n  - { address: 10.0.0.3, port: 1, max_inflight: 4 }\n";
    let p = parse(yaml);
    assert_eq!(addresses(&p), ["10.0.0.1:8000", "10.0.0.2:1", "10.0.0.3:1"]);
    let caps: Vec<u32> = p.backends.iter().map(|b| b.max_inflight).collect();
    assert_eq!((caps, p.skipped.len()), (vec![0, 0, 4], 0));
}

#[test]
fn bad_metrics_urls_and_engines_are_skipped() {
    for m in ["https://10.0.0.1/metrics", "'http://u:p@10.0.0.1/m'", "'not a url'", "42"] {
        let reason =
            skip_reason(&format!("endpoints:\n  - {{ address: 10.0.0.1, port: 1, metrics: {m} }}\n"));
        assert!(reason.starts_with("metrics: "), "{m}: {reason}");
    }
    let reason = skip_reason("endpoints:\n  - { address: 10.0.0.1, port: 1, engine: tgi }\n");
    assert!(reason.starts_with("engine: unknown model server \"tgi\""), "{reason}");
}

#[test]
fn every_reason_of_one_entry_is_reported() {
    let reason = skip_reason("endpoints:\n  - { name: x, address: nope, port: 0, engine: tgi }\n");
    assert_eq!(reason.matches("; ").count(), 2, "{reason}");
}

#[test]
fn a_duplicate_address_keeps_the_first_entry() {
    let p = parse(
        "endpoints:\n  - { name: a, address: 10.0.0.1, port: 80, max_inflight: 1 }\n  - { name: b, address: 10.0.0.1, port: '80', max_inflight: 2 }\n  - { name: c, address: '::1', port: 80 }\n  - { name: d, address: '0:0::1', port: 80 }\n",
    );
    assert_eq!(addresses(&p), ["10.0.0.1:80", "[::1]:80"]);
    assert_eq!(p.backends[0].max_inflight, 1);
    let skipped: Vec<_> = p.skipped.iter().map(|s| (s.index, s.reason.as_str())).collect();
    assert_eq!(
        skipped,
        [(1, "address 10.0.0.1:80 is also endpoints[0]'s"), (3, "address [::1]:80 is also endpoints[2]'s")]
    );
}

#[test]
fn unknown_keys_are_tolerated_and_listed() {
    let p = parse(
        "kind: Endpoints\nendpoints:\n  - { address: 10.0.0.1, port: 1, namespace: x, max_inflght: 3 }\n",
    );
    assert_eq!(p.backends.len(), 1);
    assert_eq!(p.ignored, ["kind", "endpoints[0].namespace", "endpoints[0].max_inflght"]);
}

#[test]
fn an_entry_that_is_not_a_mapping_is_skipped() {
    let p = parse("endpoints:\n  - 10.0.0.1:80\n  - { address: 10.0.0.2, port: 1 }\n");
    assert_eq!(addresses(&p), ["10.0.0.2:1"]);
    assert_eq!(p.skipped[0].reason, "is a string, not a mapping");
}

#[test]
fn a_long_name_is_skipped_and_reported_cut() {
    let name = "n".repeat(MAX_ENDPOINT_NAME_BYTES + 1);
    let p = parse(&format!("endpoints:\n  - {{ name: {name}, address: 10.0.0.1, port: 1 }}\n"));
    assert!(p.backends.is_empty());
    assert_eq!(p.skipped[0].name.as_ref().unwrap().len(), 64 + '…'.len_utf8());
}

#[test]
fn an_explicit_empty_list_is_an_empty_set() {
    assert!(parse("endpoints: []\n").backends.is_empty());
}

#[test]
fn empty_and_half_written_files_are_refused_whole() {
    for yaml in ["", "   \n", "# nothing yet\n", "endpoints:\n", "endpoints: ~\n", "other: 1\n"] {
        assert_eq!(parse_endpoints(yaml.as_bytes()), Err(FileError::Empty), "{yaml:?}");
    }
}

#[test]
fn non_yaml_and_wrong_shapes_are_refused_whole() {
    for yaml in ["endpoints: [", "\u{0}\u{1}garbage: : :", "a: 1\n---\nb: 2\n", "endpoints: [1, 2"] {
        assert!(matches!(parse_endpoints(yaml.as_bytes()), Err(FileError::NotYaml(_))), "{yaml:?}");
    }
    for yaml in ["- 1\n- 2\n", "42\n", "endpoints: 3\n", "endpoints: { a: 1 }\n"] {
        assert!(matches!(parse_endpoints(yaml.as_bytes()), Err(FileError::Shape(_))), "{yaml:?}");
    }
    assert!(matches!(parse_endpoints(&[0xff, 0xfe, 0x00]), Err(FileError::NotYaml(_))));
}

#[test]
fn a_file_over_the_limit_is_refused_whole() {
    let mut yaml = String::from("endpoints: []\n");
    yaml.push_str(&"#".repeat(MAX_DISCOVERY_FILE_BYTES as usize));
    assert_eq!(parse_endpoints(yaml.as_bytes()), Err(FileError::TooLarge(yaml.len() as u64)));
}

#[test]
fn entries_past_max_backends_are_skipped_and_reports_are_bounded() {
    let mut yaml = String::from("endpoints:\n");
    let n = MAX_BACKENDS + 100;
    for i in 0..n {
        yaml.push_str(&format!("- {{address: 10.{}.{}.{}, port: 1}}\n", i >> 16, (i >> 8) & 255, i & 255));
    }
    let p = parse(&yaml);
    assert_eq!(p.backends.len(), MAX_BACKENDS);
    assert_eq!(p.skipped_total, 100);
    assert_eq!(p.skipped.len(), MAX_REPORTED_SKIPS);
    assert_eq!(p.skipped[0].index, MAX_BACKENDS);
    assert!(p.skipped[0].reason.starts_with("over the limit"));
}

#[test]
fn alias_bombs_are_refused_not_expanded() {
    let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        yaml.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    yaml.push_str("endpoints: []\n");
    assert!(matches!(parse_endpoints(yaml.as_bytes()), Err(FileError::NotYaml(_))));
}
