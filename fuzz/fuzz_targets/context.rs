//! Fuzz `X-Workload-Context` parsing: arbitrary bytes as the header value and as a GIE fairness
//! id must never panic and must always give a valid context.
//!
//! Run from the repository root: `cargo fuzz run --sanitizer none context`.
#![no_main]

use flowgate_engine::config::{MAX_TTL, MAX_WORKLOAD_ID_BYTES};
use flowgate_engine::context::{DefaultReason, Defaults, WorkloadContext, DEFAULT_WORKLOAD_ID};
use libfuzzer_sys::fuzz_target;

/// The invariant every context must satisfy.
fn check(ctx: &WorkloadContext, defaults: Defaults, default_criticality: u8) {
    let id: &str = &ctx.workload_id;
    assert!(!id.is_empty(), "empty id");
    assert!(
        id.len() <= MAX_WORKLOAD_ID_BYTES,
        "id of {} bytes",
        id.len()
    );
    assert!(
        !id.chars().any(char::is_control),
        "control character in {id:?}"
    );
    assert!(
        (1..=5).contains(&ctx.criticality),
        "criticality {}",
        ctx.criticality
    );
    if let Some(ttl) = ctx.ttl {
        assert!(!ttl.is_zero() && ttl <= MAX_TTL, "ttl {ttl:?}");
    }
    // Each defaulted part comes with a reason.
    if ctx.criticality != default_criticality.clamp(1, 5) {
        assert!(!defaults.contains(DefaultReason::CriticalityMissing));
        assert!(!defaults.contains(DefaultReason::CriticalityWrongType));
        assert!(!defaults.contains(DefaultReason::CriticalityOutOfRange));
    }
    for r in defaults.iter() {
        assert!(!r.label().is_empty());
    }
    // A refused id always means the whole default workload, with exactly that one reason.
    let id_refused = [
        DefaultReason::Missing,
        DefaultReason::TooLarge,
        DefaultReason::NotUtf8,
        DefaultReason::InvalidJson,
        DefaultReason::NotAnObject,
        DefaultReason::IdMissing,
        DefaultReason::IdWrongType,
        DefaultReason::IdEmpty,
        DefaultReason::IdTooLong,
        DefaultReason::IdControlChars,
    ];
    if id_refused.iter().any(|r| defaults.contains(*r)) {
        assert_eq!(defaults.len(), 1, "{defaults:?}");
        assert_eq!(*ctx, WorkloadContext::default_workload(default_criticality));
        assert_eq!(id, DEFAULT_WORKLOAD_ID);
    }
}

fuzz_target!(|data: &[u8]| {
    // A default criticality derived from the input, sometimes outside 1..=5 to exercise clamping.
    let dc = data.first().map_or(3, |b| b % 8);

    let (ctx, defaults) = WorkloadContext::parse(Some(data), 3);
    check(&ctx, defaults, 3);
    assert!(!defaults.contains(DefaultReason::Missing));

    // The default criticality changes only the criticality, never the id, ttl or reasons.
    let (other, other_defaults) = WorkloadContext::parse(Some(data), dc);
    check(&other, other_defaults, dc);
    assert_eq!(other.workload_id, ctx.workload_id);
    assert_eq!(other.ttl, ctx.ttl);
    assert_eq!(other_defaults, defaults);

    let (ctx, defaults) = WorkloadContext::from_fairness_id(data, dc);
    check(&ctx, defaults, dc);
    assert!(
        !defaults.is_empty(),
        "a fairness id never carries a criticality"
    );
    assert_eq!(ctx.ttl, None);
    assert_eq!(ctx.criticality, dc.clamp(1, 5));
});
