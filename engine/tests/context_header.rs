//! Tests for `X-Workload-Context` header parsing: every rule of `flowgate_engine::context`, the
//! reasons reported, the shared default workload and the `Defaults` bitset. Fairness ids and the
//! property tests are in `context_fairness_and_properties.rs`.

use std::sync::Arc;
use std::time::Duration;

use flowgate_engine::config::{MAX_TTL, MAX_WORKLOAD_ID_BYTES};
use flowgate_engine::context::{
    DefaultReason, Defaults, WorkloadContext, DEFAULT_WORKLOAD_ID, MAX_HEADER_BYTES,
};

use common::{assert_valid, reasons, DC};
use DefaultReason::*;

#[path = "common/context.rs"]
mod common;

fn parse(header: &[u8]) -> (WorkloadContext, Defaults) {
    let out = WorkloadContext::parse(Some(header), DC);
    assert_valid(&out.0);
    out
}

fn parse_str(header: &str) -> (WorkloadContext, Defaults) {
    parse(header.as_bytes())
}

/// The whole header was refused for exactly `reason`.
fn assert_whole_default(header: &[u8], reason: DefaultReason) {
    let (ctx, d) = parse(header);
    assert_eq!(ctx, WorkloadContext::default_workload(DC), "{:?}", String::from_utf8_lossy(header));
    assert!(Arc::ptr_eq(&ctx.workload_id, &WorkloadContext::default_workload(DC).workload_id));
    assert_eq!(reasons(d), [reason], "{:?}", String::from_utf8_lossy(header));
}

/// Id and ttl kept, criticality defaulted for exactly `reason`.
fn assert_criticality_default(criticality_json: &str, reason: DefaultReason) {
    let header = format!(r#"{{"workload_id":"chat","criticality":{criticality_json},"ttl_ms":100}}"#);
    let (ctx, d) = parse_str(&header);
    assert_eq!(&*ctx.workload_id, "chat", "{header}");
    assert_eq!(ctx.criticality, DC, "{header}");
    assert_eq!(ctx.ttl, Some(Duration::from_millis(100)), "{header}");
    assert_eq!(reasons(d), [reason], "{header}");
}

/// Id and criticality kept, the ttl gives `ttl` and exactly the `reason`s.
fn assert_ttl(ttl_json: &str, ttl: Option<Duration>, expected: &[DefaultReason]) {
    let header = format!(r#"{{"workload_id":"chat","criticality":5,"ttl_ms":{ttl_json}}}"#);
    let (ctx, d) = parse_str(&header);
    assert_eq!(&*ctx.workload_id, "chat", "{header}");
    assert_eq!(ctx.criticality, 5, "{header}");
    assert_eq!(ctx.ttl, ttl, "{header}");
    assert_eq!(reasons(d), expected, "{header}");
}

// ---- valid headers ----

#[test]
fn valid_header() {
    let (ctx, d) = parse_str(r#"{"workload_id": "chat-frontend", "criticality": 4, "ttl_ms": 5000}"#);
    assert_eq!(&*ctx.workload_id, "chat-frontend");
    assert_eq!(ctx.criticality, 4);
    assert_eq!(ctx.ttl, Some(Duration::from_secs(5)));
    assert!(d.is_empty());
    assert_eq!(d.len(), 0);
}

#[test]
fn valid_without_ttl() {
    let (ctx, d) = parse_str(r#"{"workload_id":"batch","criticality":1}"#);
    assert_eq!((&*ctx.workload_id, ctx.criticality, ctx.ttl), ("batch", 1, None));
    assert!(d.is_empty());
}

#[test]
fn every_valid_criticality() {
    for c in 1..=5u8 {
        let (ctx, d) = parse_str(&format!(r#"{{"workload_id":"w","criticality":{c}}}"#));
        assert_eq!(ctx.criticality, c);
        assert!(d.is_empty());
    }
}

#[test]
fn whitespace_and_key_order_do_not_matter() {
    let (ctx, d) =
        parse_str(" \n\t{ \"ttl_ms\" : 1 , \"criticality\" : 2 ,\r\n \"workload_id\" : \"x\" } \n");
    assert_eq!((&*ctx.workload_id, ctx.criticality, ctx.ttl), ("x", 2, Some(Duration::from_millis(1))));
    assert!(d.is_empty());
}

#[test]
fn unknown_keys_are_ignored() {
    let (ctx, d) = parse_str(
        r#"{"workload_id":"chat","extra":{"deep":[1,2,{"x":null}]},"criticality":2,"zzz":"s","ttl_ms":10,"other":1.5}"#,
    );
    assert_eq!((&*ctx.workload_id, ctx.criticality, ctx.ttl), ("chat", 2, Some(Duration::from_millis(10))));
    assert!(d.is_empty());
}

#[test]
fn keys_are_case_sensitive() {
    let (ctx, d) = parse_str(r#"{"Workload_Id":"chat","criticality":2}"#);
    assert_eq!(ctx, WorkloadContext::default_workload(DC));
    assert_eq!(reasons(d), [IdMissing]);
}

#[test]
fn duplicate_keys_last_wins() {
    let (ctx, d) = parse_str(r#"{"workload_id":"a","criticality":1,"workload_id":"b","criticality":5}"#);
    assert_eq!((&*ctx.workload_id, ctx.criticality), ("b", 5));
    assert!(d.is_empty());
}

#[test]
fn unicode_ids_are_accepted() {
    for id in ["チャット", "modèle-🚀", "Ω≈ç√", "тенант", "عربى", "a\u{200b}b", "😀😀😀😀"]
    {
        let (ctx, d) = parse_str(&format!(r#"{{"workload_id":"{id}","criticality":2}}"#));
        assert_eq!(&*ctx.workload_id, id);
        assert!(d.is_empty(), "{id}: {d:?}");
    }
}

#[test]
fn escaped_ids_are_unescaped() {
    let (ctx, d) = parse_str(r#"{"workload_id":"a\/b\"c\\d\u00e9\ud83d\ude80","criticality":2}"#);
    assert_eq!(&*ctx.workload_id, "a/b\"c\\dé🚀");
    assert!(d.is_empty());
}

#[test]
fn ids_are_not_trimmed() {
    let (ctx, d) = parse_str(r#"{"workload_id":" chat ","criticality":2}"#);
    assert_eq!(&*ctx.workload_id, " chat ");
    assert!(d.is_empty());
}

#[test]
fn explicit_default_id_shares_the_default_arc() {
    let (ctx, d) = parse_str(r#"{"workload_id":"default","criticality":5}"#);
    assert_eq!((&*ctx.workload_id, ctx.criticality), (DEFAULT_WORKLOAD_ID, 5));
    assert!(Arc::ptr_eq(&ctx.workload_id, &WorkloadContext::default_workload(1).workload_id));
    assert!(d.is_empty());
}

// ---- whole-header defaults ----

#[test]
fn missing_header() {
    let (ctx, d) = WorkloadContext::parse(None, DC);
    assert_eq!(ctx, WorkloadContext::default_workload(DC));
    assert_eq!(&*ctx.workload_id, "default");
    assert_eq!(ctx.criticality, 3);
    assert_eq!(ctx.ttl, None);
    assert_eq!(reasons(d), [Missing]);
}

#[test]
fn missing_header_uses_given_default_criticality() {
    for c in 1..=5 {
        let (ctx, _) = WorkloadContext::parse(None, c);
        assert_eq!(ctx.criticality, c);
        let (ctx, _) = WorkloadContext::parse(Some(b"nope"), c);
        assert_eq!(ctx.criticality, c);
        let (ctx, _) = WorkloadContext::parse(Some(br#"{"workload_id":"a"}"#), c);
        assert_eq!(ctx.criticality, c);
    }
}

#[test]
fn out_of_range_default_criticality_is_clamped() {
    let (ctx, _) = WorkloadContext::parse(None, 0);
    assert_eq!(ctx.criticality, 1);
    let (ctx, _) = WorkloadContext::parse(Some(br#"{"workload_id":"a"}"#), 200);
    assert_eq!(ctx.criticality, 5);
    assert_eq!(WorkloadContext::default_workload(9).criticality, 5);
    assert_eq!(WorkloadContext::from_fairness_id(b"a", 0).0.criticality, 1);
}

#[test]
fn not_json() {
    for h in [
        &b"not json"[..],
        b"",
        b"   ",
        b"{",
        b"{\"workload_id\":\"a\",}",
        b"{'workload_id':'a'}",
        b"{workload_id:\"a\"}",
        b"{\"workload_id\":\"a\"} trailing",
        b"{\"workload_id\":\"a\"}{}",
        b"{\"workload_id\":\"a\",\"criticality\":NaN}",
        b"{\"workload_id\":\"a\",\"criticality\":01}",
        b"{\"workload_id\":\"a\",\"criticality\":+1}",
        b"{\"workload_id\":\"a\tb\"}",
        b"{\"workload_id\":\"a\nb\"}",
        b"{\"workload_id\":\"\\x41\"}",
        // Numbers beyond f64 are a parse error in serde_json.
        b"{\"workload_id\":\"a\",\"criticality\":1e400}",
    ] {
        assert_whole_default(h, InvalidJson);
    }
}

#[test]
fn lone_surrogate_escape_is_invalid_json() {
    assert_whole_default(br#"{"workload_id":"\ud800","criticality":2}"#, InvalidJson);
}

#[test]
fn deep_nesting_is_invalid_json_not_a_stack_overflow() {
    let mut h = String::from(r#"{"workload_id":"a","x":"#);
    h.push_str(&"[".repeat(4000));
    h.push_str(&"]".repeat(4000));
    h.push('}');
    assert!(h.len() <= MAX_HEADER_BYTES);
    assert_whole_default(h.as_bytes(), InvalidJson);
}

#[test]
fn top_level_not_an_object() {
    for h in ["[]", r#"["workload_id","a"]"#, r#""str""#, "5", "-1.5", "null", "true", "false"] {
        assert_whole_default(h.as_bytes(), NotAnObject);
    }
}

#[test]
fn not_utf8() {
    assert_whole_default(&[0xff, 0xfe], NotUtf8);
    // Valid JSON structure, invalid UTF-8 byte inside the id string.
    assert_whole_default(b"{\"workload_id\":\"ab\xffcd\",\"criticality\":2}", NotUtf8);
    // Overlong encoding of '/' and a UTF-8-encoded surrogate.
    assert_whole_default(b"{\"workload_id\":\"\xc0\xaf\"}", NotUtf8);
    assert_whole_default(b"{\"workload_id\":\"\xed\xa0\x80\"}", NotUtf8);
    // Invalid byte in an ignored key still refuses the whole header.
    assert_whole_default(b"{\"workload_id\":\"a\",\"x\":\"\x80\"}", NotUtf8);
}

#[test]
fn too_large_header() {
    // Exactly MAX_HEADER_BYTES is parsed...
    let prefix = r#"{"workload_id":"a","criticality":2,"pad":""#;
    let mut h = String::from(prefix);
    h.push_str(&"x".repeat(MAX_HEADER_BYTES - prefix.len() - 2));
    h.push_str("\"}");
    assert_eq!(h.len(), MAX_HEADER_BYTES);
    let (ctx, d) = parse_str(&h);
    assert_eq!((&*ctx.workload_id, ctx.criticality), ("a", 2));
    assert!(d.is_empty());
    // ...one byte more is refused unread.
    h.insert(h.len() - 1, ' ');
    assert_whole_default(h.as_bytes(), TooLarge);
    // Size is checked before anything else, even UTF-8.
    assert_whole_default(&vec![0xffu8; MAX_HEADER_BYTES + 1], TooLarge);
}

#[test]
fn id_of_64_kib_is_handled_as_default() {
    let h = format!(r#"{{"workload_id":"{}","criticality":5}}"#, "a".repeat(64 * 1024));
    assert_whole_default(h.as_bytes(), TooLarge);
    // Even a 1 MiB value.
    let h = format!(r#"{{"workload_id":"{}","criticality":5}}"#, "a".repeat(1 << 20));
    assert_whole_default(h.as_bytes(), TooLarge);
}

// ---- id rules ----

#[test]
fn id_missing() {
    assert_whole_default(br#"{}"#, IdMissing);
    assert_whole_default(br#"{"criticality":5,"ttl_ms":100}"#, IdMissing);
}

#[test]
fn id_wrong_type() {
    for id in ["42", "4.5", "true", "null", "[]", r#"["a"]"#, r#"{"id":"a"}"#] {
        let h = format!(r#"{{"workload_id":{id},"criticality":5,"ttl_ms":100}}"#);
        assert_whole_default(h.as_bytes(), IdWrongType);
    }
}

#[test]
fn id_empty() {
    assert_whole_default(br#"{"workload_id":"","criticality":5,"ttl_ms":100}"#, IdEmpty);
}

#[test]
fn id_of_exactly_max_bytes_is_accepted() {
    let id = "a".repeat(MAX_WORKLOAD_ID_BYTES);
    assert_eq!(id.len(), 256);
    let (ctx, d) = parse_str(&format!(r#"{{"workload_id":"{id}","criticality":2}}"#));
    assert_eq!(&*ctx.workload_id, id);
    assert!(d.is_empty());
    // Counted in bytes, not chars: 64 four-byte chars = 256 bytes.
    let id = "🚀".repeat(64);
    assert_eq!(id.len(), 256);
    let (ctx, d) = parse_str(&format!(r#"{{"workload_id":"{id}","criticality":2}}"#));
    assert_eq!(&*ctx.workload_id, id);
    assert!(d.is_empty());
    // Written entirely as escapes: the limit applies to the unescaped id.
    let escaped = r"\u0061".repeat(MAX_WORKLOAD_ID_BYTES);
    let (ctx, d) = parse_str(&format!(r#"{{"workload_id":"{escaped}","criticality":2}}"#));
    assert_eq!(&*ctx.workload_id, "a".repeat(256));
    assert!(d.is_empty());
}

#[test]
fn id_one_byte_over_max_is_refused() {
    let id = "a".repeat(MAX_WORKLOAD_ID_BYTES + 1);
    assert_whole_default(format!(r#"{{"workload_id":"{id}","criticality":5}}"#).as_bytes(), IdTooLong);
    // 85 three-byte chars + 2 bytes = 257 bytes, only 87 chars.
    let id = format!("{}ab", "あ".repeat(85));
    assert_eq!(id.len(), 257);
    assert_whole_default(format!(r#"{{"workload_id":"{id}","criticality":5}}"#).as_bytes(), IdTooLong);
}

#[test]
fn id_with_control_chars_is_refused() {
    for escaped in
        [r"a\nb", r"\u0000", r"a\u0000", r"\t", r"a\rb", r"\u001b[31m", r"x\u007f", r"\u0085", r"\u009f"]
    {
        let h = format!(r#"{{"workload_id":"{escaped}","criticality":5}}"#);
        assert_whole_default(h.as_bytes(), IdControlChars);
    }
    // A raw DEL or C1 control (legal unescaped in JSON strings) is refused too.
    assert_whole_default("{\"workload_id\":\"a\u{7f}\"}".as_bytes(), IdControlChars);
    assert_whole_default("{\"workload_id\":\"a\u{85}\"}".as_bytes(), IdControlChars);
}

#[test]
fn id_problem_defaults_criticality_and_ttl_too() {
    // An unusable id makes the whole header unusable; its criticality and ttl are not reported.
    let (ctx, d) = parse_str(r#"{"workload_id":"","criticality":"bad","ttl_ms":-1}"#);
    assert_eq!(ctx, WorkloadContext::default_workload(DC));
    assert_eq!(reasons(d), [IdEmpty]);
}

// ---- criticality rules ----

#[test]
fn criticality_missing() {
    let (ctx, d) = parse_str(r#"{"workload_id":"chat","ttl_ms":100}"#);
    assert_eq!((&*ctx.workload_id, ctx.criticality, ctx.ttl), ("chat", DC, Some(Duration::from_millis(100))));
    assert_eq!(reasons(d), [CriticalityMissing]);
}

#[test]
fn criticality_out_of_range() {
    for c in [
        "0",
        "6",
        "-1",
        "255",
        "256",
        "-128",
        "9223372036854775807",
        "18446744073709551615",
        "-9223372036854775808",
    ] {
        assert_criticality_default(c, CriticalityOutOfRange);
    }
}

#[test]
fn criticality_wrong_type() {
    for c in [
        "4.5",
        "4.0",
        "4e0",
        "1E0",
        "-0.0",
        "3.0000000001",
        "18446744073709551616",
        r#""5""#,
        r#""""#,
        "true",
        "false",
        "null",
        "[5]",
        r#"{"v":5}"#,
    ] {
        assert_criticality_default(c, CriticalityWrongType);
    }
}

// ---- ttl rules ----

#[test]
fn ttl_absent_is_none_without_reason() {
    let (ctx, d) = parse_str(r#"{"workload_id":"chat","criticality":5}"#);
    assert_eq!(ctx.ttl, None);
    assert!(d.is_empty());
}

#[test]
fn ttl_valid() {
    assert_ttl("1", Some(Duration::from_millis(1)), &[]);
    assert_ttl("1500", Some(Duration::from_millis(1500)), &[]);
    let max_ms = MAX_TTL.as_millis();
    assert_ttl(&max_ms.to_string(), Some(MAX_TTL), &[]);
}

#[test]
fn ttl_clamped() {
    let max_ms = MAX_TTL.as_millis();
    assert_ttl(&(max_ms + 1).to_string(), Some(MAX_TTL), &[TtlClamped]);
    assert_ttl("9223372036854775807", Some(MAX_TTL), &[TtlClamped]);
    assert_ttl("18446744073709551615", Some(MAX_TTL), &[TtlClamped]);
}

#[test]
fn ttl_invalid() {
    for t in [
        "0",
        "-0",
        "-1",
        "-9223372036854775808",
        "1.5",
        "100.0",
        "1e3",
        "18446744073709551616",
        r#""100""#,
        "true",
        "null",
        "[]",
        "{}",
    ] {
        assert_ttl(t, None, &[TtlInvalid]);
    }
}

#[test]
fn several_reasons_at_once() {
    let (ctx, d) = parse_str(r#"{"workload_id":"chat","ttl_ms":0}"#);
    assert_eq!((&*ctx.workload_id, ctx.criticality, ctx.ttl), ("chat", DC, None));
    assert_eq!(reasons(d), [CriticalityMissing, TtlInvalid]);
    assert_eq!(d.len(), 2);

    let (ctx, d) = parse_str(r#"{"workload_id":"chat","criticality":7,"ttl_ms":99999999}"#);
    assert_eq!((ctx.criticality, ctx.ttl), (DC, Some(MAX_TTL)));
    assert_eq!(reasons(d), [CriticalityOutOfRange, TtlClamped]);

    let (_, d) = parse_str(r#"{"workload_id":"chat","criticality":"7","ttl_ms":"x"}"#);
    assert_eq!(reasons(d), [CriticalityWrongType, TtlInvalid]);
}

// ---- default workload, reasons, bitset ----

#[test]
fn default_workload_shares_one_arc() {
    let a = WorkloadContext::default_workload(1);
    let b = WorkloadContext::default_workload(5);
    assert!(Arc::ptr_eq(&a.workload_id, &b.workload_id));
    assert_eq!((&*a.workload_id, a.criticality, a.ttl), ("default", 1, None));
    assert_eq!(b.criticality, 5);
    let (c, _) = WorkloadContext::parse(Some(b"[]"), 2);
    assert!(Arc::ptr_eq(&a.workload_id, &c.workload_id));
}

#[test]
fn labels_are_unique_stable_snake_case() {
    let labels: Vec<&str> = DefaultReason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(
        labels,
        [
            "missing",
            "too_large",
            "not_utf8",
            "invalid_json",
            "not_an_object",
            "id_missing",
            "id_wrong_type",
            "id_empty",
            "id_too_long",
            "id_control_chars",
            "criticality_missing",
            "criticality_wrong_type",
            "criticality_out_of_range",
            "ttl_invalid",
            "ttl_clamped",
        ]
    );
    for r in DefaultReason::ALL {
        assert_eq!(r.to_string(), r.label());
    }
}

#[test]
fn defaults_bitset() {
    let mut d = Defaults::new();
    assert!(d.is_empty());
    assert_eq!(d, Defaults::default());
    assert_eq!(d.iter().count(), 0);
    for (i, r) in DefaultReason::ALL.into_iter().enumerate() {
        assert!(!d.contains(r));
        d.insert(r);
        d.insert(r);
        assert!(d.contains(r));
        assert_eq!(d.len(), i + 1);
        assert_eq!(Defaults::only(r).len(), 1);
        assert_eq!(Defaults::only(r).iter().collect::<Vec<_>>(), [r]);
    }
    assert_eq!(d.iter().collect::<Vec<_>>(), DefaultReason::ALL);
    assert_eq!(d, DefaultReason::ALL.into_iter().collect::<Defaults>());
    assert_eq!(d.bits().count_ones() as usize, DefaultReason::ALL.len());
    let two: Defaults = [TtlClamped, Missing].into_iter().collect();
    assert_eq!(format!("{two:?}"), "{Missing, TtlClamped}");
}
