//! Fuzz the config-file parser (shim/src/config.rs, what `check-config`, `serve` and every reload
//! read): for arbitrary text, `ServeConfig::from_yaml` must never panic, must give the same
//! answer twice, must name a field path in every error, and a config it accepts must pass the
//! engine's own validation (so nothing invalid reaches a running engine) with its bounded lists
//! within their bounds.
//!
//! Seeds: `fuzz/corpus/config/` (the deploy and example configs). Run from the repository root:
//! `bash scripts/fuzz.sh config 60`.
#![no_main]

use flowgate::config::ServeConfig;
use flowgate_engine::config::MAX_BACKENDS;
use flowgate_engine::quota_rule::MAX_QUOTAS;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let first = ServeConfig::from_yaml(text);
    let second = ServeConfig::from_yaml(text);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.engine, b.engine, "not deterministic");
            assert!(a.engine.validate().is_empty(), "accepted an invalid engine config: {:?}", a.engine.validate());
            assert!(a.engine.backends.len() <= MAX_BACKENDS);
            assert!(a.engine.workloads.quotas.len() <= MAX_QUOTAS);
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.len(), b.len(), "not deterministic");
            assert!(!a.is_empty(), "an error without a reason");
            for e in a {
                assert!(!e.reason.is_empty(), "{e:?}");
            }
        }
        _ => panic!("accepted once, refused once"),
    }
});
