//! The answers flowgate gives Envoy: the dispatch answer (destination header and metadata, and
//! the mode override that skips the response body when no usage is needed), the immediate
//! responses of requests not dispatched (429/503 with drop reason and `retry-after`), and the
//! quota headers added to a response.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, HeaderMutation, HeadersResponse, ImmediateResponse, ProcessingResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use flowgate_engine::quota::Remaining;
use flowgate_engine::Outcome;

use crate::usage_meter::ResponseWatch;

/// The header carrying the chosen backend, and its dynamic-metadata key.
pub const DESTINATION_HEADER: &str = "x-gateway-destination-endpoint";
/// Dynamic-metadata namespace read by Envoy's original-destination load balancing.
pub const LB_NAMESPACE: &str = "envoy.lb";
/// Header naming why a request was not dispatched.
pub const DROP_REASON_HEADER: &str = "x-flowgate-drop-reason";
/// The drop reason of a request refused for its workload's `reject` quota (a 429).
pub const QUOTA_DROP_REASON: &str = "quota";
/// Response header: requests left in the workload's quota bucket (workloads with a request quota).
pub const REMAINING_REQUESTS_HEADER: &str = "x-ratelimit-remaining-requests";
/// Response header: weighted tokens left in the workload's quota bucket (workloads with a token
/// quota).
pub const REMAINING_TOKENS_HEADER: &str = "x-ratelimit-remaining-tokens";
/// Prefix of the headers flowgate owns; client-sent ones are removed.
pub const OWN_HEADER_PREFIX: &str = "x-flowgate-";

fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn string_value(s: &str) -> Value {
    Value { kind: Some(Kind::StringValue(s.into())) }
}

/// The answer for a dispatched request, with the mode override of `watch` (what of the response
/// flowgate asks Envoy for).
pub fn dispatched(address: &str, remove: Vec<String>, watch: ResponseWatch) -> ProcessingResponse {
    let common = CommonResponse {
        header_mutation: Some(HeaderMutation {
            set_headers: vec![set_header(DESTINATION_HEADER, address)],
            remove_headers: remove,
        }),
        clear_route_cache: true,
        ..Default::default()
    };
    let lb = Struct { fields: [(DESTINATION_HEADER.to_string(), string_value(address))].into() };
    let metadata =
        Struct { fields: [(LB_NAMESPACE.to_string(), Value { kind: Some(Kind::StructValue(lb)) })].into() };
    ProcessingResponse {
        response: Some(Reply::RequestHeaders(HeadersResponse { response: Some(common) })),
        dynamic_metadata: Some(metadata),
        mode_override: watch.mode_override(),
        ..Default::default()
    }
}

/// `retry-after` seconds for a request not dispatched: 1 s when the queue is full (capacity,
/// displacement) or the server is going away (another replica can take it), otherwise the
/// request's TTL rounded up (a request that waited its whole TTL should not come back sooner).
pub fn retry_after_s(outcome: Outcome, ttl: Duration) -> u64 {
    match outcome.drop_reason() {
        Some("capacity" | "displaced" | "shutting-down") | None => 1,
        Some(_) => ttl.as_millis().div_ceil(1000).max(1) as u64,
    }
}

/// The answer for a request that was not dispatched (`None` for a cancelled one: nobody to
/// answer).
pub fn rejected(outcome: Outcome, ttl: Duration) -> Option<ProcessingResponse> {
    let status = outcome.http_status()?;
    let reason = outcome.drop_reason()?;
    Some(immediate_response(status, reason, retry_after_s(outcome, ttl)))
}

/// The answer for a request refused for its workload's `reject` quota: 429, drop reason
/// [`QUOTA_DROP_REASON`], `retry-after` the time until the workload may send again (whole
/// seconds, rounded up, at least 1).
pub fn rejected_for_quota(retry: Duration) -> ProcessingResponse {
    let retry_s = retry.as_nanos().div_ceil(1_000_000_000).max(1) as u64;
    immediate_response(429, QUOTA_DROP_REASON, retry_s)
}

/// The response-headers answer adding what is left of the workload's quota.
pub(crate) fn remaining_headers(r: Remaining) -> CommonResponse {
    let mut set = Vec::new();
    if let Some(n) = r.requests {
        set.push(set_header(REMAINING_REQUESTS_HEADER, &n.to_string()));
    }
    if let Some(n) = r.tokens {
        set.push(set_header(REMAINING_TOKENS_HEADER, &n.to_string()));
    }
    CommonResponse {
        header_mutation: Some(HeaderMutation { set_headers: set, remove_headers: vec![] }),
        ..Default::default()
    }
}

fn immediate_response(status: u16, reason: &str, retry_after_s: u64) -> ProcessingResponse {
    let retry_after = retry_after_s.to_string();
    let immediate = ImmediateResponse {
        status: Some(HttpStatus { code: i32::from(status) }),
        headers: Some(HeaderMutation {
            set_headers: vec![
                set_header(DROP_REASON_HEADER, reason),
                set_header("retry-after", &retry_after),
                set_header("content-type", "text/plain; charset=utf-8"),
            ],
            remove_headers: vec![],
        }),
        body: format!("flowgate: request not admitted ({reason})\n").into_bytes(),
        details: format!("flowgate_{}", reason.replace('-', "_")),
        ..Default::default()
    };
    ProcessingResponse { response: Some(Reply::ImmediateResponse(immediate)), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_engine::outcome::OtherReason;

    #[test]
    fn retry_after_per_reason() {
        let ttl = Duration::from_millis(2500);
        assert_eq!(retry_after_s(Outcome::RejectedCapacity, ttl), 1);
        assert_eq!(retry_after_s(Outcome::EvictedDisplaced, ttl), 1);
        assert_eq!(retry_after_s(Outcome::EvictedShutdown, ttl), 1);
        assert_eq!(retry_after_s(Outcome::EvictedTtl, ttl), 3);
        assert_eq!(retry_after_s(Outcome::EvictedTtl, Duration::from_millis(10)), 1);
        assert_eq!(retry_after_s(Outcome::RejectedOther(OtherReason::NoEndpoints), ttl), 3);
    }

    #[test]
    fn rejected_answers_carry_status_reason_and_retry_after() {
        for outcome in Outcome::ALL {
            let Some(r) = rejected(outcome, Duration::from_secs(30)) else {
                assert!(matches!(outcome, Outcome::Dispatched | Outcome::EvictedCancelled));
                continue;
            };
            let Some(Reply::ImmediateResponse(i)) = r.response else { panic!("{outcome:?}") };
            assert_eq!(i.status.unwrap().code, i32::from(outcome.http_status().unwrap()));
            let h = i.headers.unwrap().set_headers;
            assert_eq!(h[0].header.as_ref().unwrap().key, DROP_REASON_HEADER);
            assert_eq!(h[0].header.as_ref().unwrap().raw_value, outcome.drop_reason().unwrap().as_bytes());
            assert_eq!(h[1].header.as_ref().unwrap().key, "retry-after");
            assert!(!i.details.contains(' ') && !i.details.contains('-'), "{}", i.details);
        }
    }

    #[test]
    fn dispatched_answer_sets_header_and_metadata() {
        let r = dispatched("10.0.0.7:8000", vec!["x-flowgate-debug".into()], ResponseWatch::End);
        assert_eq!(r.mode_override, ResponseWatch::End.mode_override());
        assert_eq!(dispatched("10.0.0.7:8000", vec![], ResponseWatch::Metered).mode_override, None);
        let Some(Reply::RequestHeaders(h)) = r.response else { panic!() };
        let common = h.response.unwrap();
        assert!(common.clear_route_cache);
        let m = common.header_mutation.unwrap();
        let set = &m.set_headers[0];
        assert_eq!(set.header.as_ref().unwrap().key, DESTINATION_HEADER);
        assert_eq!(set.header.as_ref().unwrap().raw_value, b"10.0.0.7:8000");
        assert_eq!(set.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
        assert_eq!(m.remove_headers, ["x-flowgate-debug"]);
        let md = r.dynamic_metadata.unwrap();
        let Some(Kind::StructValue(lb)) = &md.fields[LB_NAMESPACE].kind else { panic!() };
        assert_eq!(lb.fields[DESTINATION_HEADER].kind, Some(Kind::StringValue("10.0.0.7:8000".into())));
    }

    #[test]
    fn a_quota_refusal_is_a_429_with_the_retry_rounded_up() {
        let r = rejected_for_quota(Duration::from_millis(1500));
        let Some(Reply::ImmediateResponse(i)) = r.response else { panic!() };
        assert_eq!(i.status.unwrap().code, 429);
        let h = i.headers.unwrap().set_headers;
        assert_eq!(h[0].header.as_ref().unwrap().raw_value, b"quota");
        assert_eq!(h[1].header.as_ref().unwrap().raw_value, b"2");
        let r = rejected_for_quota(Duration::ZERO);
        let Some(Reply::ImmediateResponse(i)) = r.response else { panic!() };
        assert_eq!(
            i.headers.unwrap().set_headers[1].header.as_ref().unwrap().raw_value,
            b"1",
            "at least 1 s"
        );
    }

    #[test]
    fn remaining_headers_name_only_the_limits_there_are() {
        let c = remaining_headers(Remaining { requests: Some(7), tokens: None });
        let set = c.header_mutation.unwrap().set_headers;
        assert_eq!(set.len(), 1);
        assert_eq!(set[0].header.as_ref().unwrap().key, REMAINING_REQUESTS_HEADER);
        assert_eq!(set[0].header.as_ref().unwrap().raw_value, b"7");
    }
}
