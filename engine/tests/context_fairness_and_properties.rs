//! Tests for GIE fairness ids as workload ids (`WorkloadContext::from_fairness_id`), and property
//! tests that arbitrary bytes, JSON-shaped headers and strings always give a valid context. The
//! header rules are in `context_header.rs`.

use std::sync::Arc;

use flowgate_engine::config::MAX_WORKLOAD_ID_BYTES;
use flowgate_engine::context::{
    DefaultReason, Defaults, WorkloadContext, DEFAULT_WORKLOAD_ID, MAX_HEADER_BYTES,
};
use proptest::prelude::*;

use common::{assert_valid, reasons, DC};
use DefaultReason::*;

#[path = "common/context.rs"]
mod common;

// ---- fairness id ----

#[test]
fn fairness_id_valid() {
    let (ctx, d) = WorkloadContext::from_fairness_id(b"tenant-a", 4);
    assert_eq!((&*ctx.workload_id, ctx.criticality, ctx.ttl), ("tenant-a", 4, None));
    assert_eq!(reasons(d), [CriticalityMissing]);
    let (ctx, _) = WorkloadContext::from_fairness_id("チャット 🚀".as_bytes(), DC);
    assert_eq!(&*ctx.workload_id, "チャット 🚀");
    // Taken verbatim: JSON is not parsed, spaces are kept.
    let (ctx, _) = WorkloadContext::from_fairness_id(br#" {"workload_id":"x"} "#, DC);
    assert_eq!(&*ctx.workload_id, r#" {"workload_id":"x"} "#);
    // "default" is the shared default id.
    let (ctx, _) = WorkloadContext::from_fairness_id(b"default", DC);
    assert!(Arc::ptr_eq(&ctx.workload_id, &WorkloadContext::default_workload(DC).workload_id));
}

#[test]
fn fairness_id_refused() {
    let cases: [(&[u8], DefaultReason); 9] = [
        (b"", IdEmpty),
        (&[b'a'; MAX_WORKLOAD_ID_BYTES + 1], IdTooLong),
        (&[0xffu8; 64 * 1024], IdTooLong),
        (&[0xff, 0xfe], NotUtf8),
        (b"ab\xffcd", NotUtf8),
        (b"a\nb", IdControlChars),
        (b"\0", IdControlChars),
        (b"a\x7f", IdControlChars),
        ("a\u{9f}".as_bytes(), IdControlChars),
    ];
    for (value, reason) in cases {
        let (ctx, d) = WorkloadContext::from_fairness_id(value, DC);
        assert_eq!(ctx, WorkloadContext::default_workload(DC), "{:?}", String::from_utf8_lossy(value));
        assert_eq!(reasons(d), [reason], "{:?}", String::from_utf8_lossy(value));
    }
}

#[test]
fn fairness_id_of_exactly_max_bytes_is_accepted() {
    let id = "b".repeat(MAX_WORKLOAD_ID_BYTES);
    let (ctx, d) = WorkloadContext::from_fairness_id(id.as_bytes(), DC);
    assert_eq!(&*ctx.workload_id, id);
    assert_eq!(reasons(d), [CriticalityMissing]);
}

// ---- property tests ----

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_give_a_valid_context(bytes in proptest::collection::vec(any::<u8>(), 0..1024), dc in 1u8..=5) {
        let (ctx, d) = WorkloadContext::parse(Some(&bytes), dc);
        assert_valid(&ctx);
        prop_assert!(!d.contains(Missing));
        let (ctx, d) = WorkloadContext::from_fairness_id(&bytes, dc);
        assert_valid(&ctx);
        prop_assert!(!d.is_empty());
    }

    #[test]
    fn arbitrary_json_shaped_headers_give_a_valid_context(
        id in any::<String>(),
        crit in prop_oneof![any::<i64>().prop_map(|c| c.to_string()), Just("null".to_string()), any::<f64>().prop_map(|f| format!("{f:?}")), (0i64..8).prop_map(|c| c.to_string())],
        ttl in prop_oneof![any::<i64>().prop_map(|t| t.to_string()), any::<u64>().prop_map(|t| t.to_string()), Just("\"x\"".to_string())],
        dc in 1u8..=5,
    ) {
        let header = serde_json_string(&id, &crit, &ttl);
        let (ctx, d) = WorkloadContext::parse(Some(header.as_bytes()), dc);
        assert_valid(&ctx);
        let id_ok = !id.is_empty() && id.len() <= MAX_WORKLOAD_ID_BYTES && !id.chars().any(char::is_control);
        if header.len() <= MAX_HEADER_BYTES && crit.parse::<i64>().is_ok() {
            if id_ok {
                prop_assert_eq!(&*ctx.workload_id, id.as_str());
                let c: i64 = crit.parse().unwrap();
                if (1..=5).contains(&c) {
                    prop_assert_eq!(i64::from(ctx.criticality), c);
                } else {
                    prop_assert!(d.contains(CriticalityOutOfRange));
                }
            } else {
                prop_assert_eq!(ctx, WorkloadContext::default_workload(dc));
                prop_assert_eq!(d.len(), 1);
            }
        }
    }

    #[test]
    fn arbitrary_strings_as_fairness_ids(id in any::<String>()) {
        let (ctx, d) = WorkloadContext::from_fairness_id(id.as_bytes(), 3);
        assert_valid(&ctx);
        let id_ok = !id.is_empty() && id.len() <= MAX_WORKLOAD_ID_BYTES && !id.chars().any(char::is_control);
        if id_ok {
            prop_assert_eq!(&*ctx.workload_id, id.as_str());
            prop_assert_eq!(d, Defaults::only(CriticalityMissing));
        } else {
            prop_assert_eq!(&*ctx.workload_id, DEFAULT_WORKLOAD_ID);
        }
    }
}

/// A header whose id is `id` JSON-escaped, with raw `crit` and `ttl` values.
fn serde_json_string(id: &str, crit: &str, ttl: &str) -> String {
    let id = serde_json::to_string(id).unwrap();
    format!(r#"{{"workload_id":{id},"criticality":{crit},"ttl_ms":{ttl}}}"#)
}
