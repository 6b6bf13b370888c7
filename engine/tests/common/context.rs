//! Helpers shared by the `X-Workload-Context` tests (`context_header.rs`,
//! `context_fairness_and_properties.rs`), which include this file with `#[path]`.

use flowgate_engine::config::{MAX_TTL, MAX_WORKLOAD_ID_BYTES};
use flowgate_engine::context::{DefaultReason, Defaults, WorkloadContext};

/// The default criticality the tests pass in.
pub const DC: u8 = 3;

pub fn reasons(d: Defaults) -> Vec<DefaultReason> {
    d.iter().collect()
}

/// The invariant every context must satisfy.
pub fn assert_valid(ctx: &WorkloadContext) {
    let id: &str = &ctx.workload_id;
    assert!(!id.is_empty(), "empty id");
    assert!(id.len() <= MAX_WORKLOAD_ID_BYTES, "id of {} bytes", id.len());
    assert!(!id.chars().any(char::is_control), "control char in {id:?}");
    assert!((1..=5).contains(&ctx.criticality), "criticality {}", ctx.criticality);
    if let Some(ttl) = ctx.ttl {
        assert!(!ttl.is_zero() && ttl <= MAX_TTL, "ttl {ttl:?}");
    }
}
