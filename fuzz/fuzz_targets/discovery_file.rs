//! Fuzz the endpoints-file parser (shim/src/discovery_file.rs): for arbitrary bytes,
//! `parse_endpoints` must never panic, must give the same answer twice, and a set it accepts
//! must hold: at most `MAX_BACKENDS` backends, sorted by address, each address a canonical
//! `ip:port` seen once, `max_inflight` in range, an `http://` metrics URL (any case), a bounded
//! name, and bounded reports of what it skipped or ignored.
//!
//! Run from the repository root: `bash scripts/fuzz.sh discovery_file 60`.
#![no_main]

use std::collections::BTreeSet;
use std::net::SocketAddr;

use flowgate::config::MAX_METRICS_URL_BYTES;
use flowgate::discovery_file::{parse_endpoints, Parsed, MAX_ENDPOINT_NAME_BYTES, MAX_REPORTED_SKIPS};
use flowgate_engine::config::{MAX_BACKENDS, MAX_BACKEND_INFLIGHT};
use libfuzzer_sys::fuzz_target;

fn check(parsed: &Parsed) {
    assert!(parsed.backends.len() <= MAX_BACKENDS);
    assert!(parsed.skipped.len() <= MAX_REPORTED_SKIPS && parsed.skipped.len() <= parsed.skipped_total);
    assert!(parsed.ignored.len() <= MAX_REPORTED_SKIPS && parsed.ignored.len() <= parsed.ignored_total);
    assert!(parsed.skipped.windows(2).all(|w| w[0].index < w[1].index), "{:?}", parsed.skipped);
    let mut seen = BTreeSet::new();
    for b in &parsed.backends {
        let addr: SocketAddr = b.address.parse().unwrap_or_else(|_| panic!("{b:?}"));
        assert_eq!(addr.to_string(), b.address, "not canonical: {b:?}");
        assert_ne!(addr.port(), 0, "{b:?}");
        assert!(seen.insert(b.address.clone()), "duplicate {b:?}");
        assert!(b.max_inflight <= MAX_BACKEND_INFLIGHT, "{b:?}");
        // The scheme is case-insensitive, as for a static backend's `metrics` (`htTp://` is http).
        let scheme = b.metrics.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://"));
        assert!(scheme && b.metrics.len() <= MAX_METRICS_URL_BYTES, "{b:?}");
        assert!(b.name.as_ref().is_none_or(|n| n.len() <= MAX_ENDPOINT_NAME_BYTES), "{b:?}");
    }
    assert!(parsed.backends.windows(2).all(|w| w[0].address < w[1].address));
}

fuzz_target!(|data: &[u8]| {
    let parsed = parse_endpoints(data);
    assert_eq!(parsed, parse_endpoints(data), "not deterministic");
    if let Ok(p) = &parsed {
        check(p);
    }
});
