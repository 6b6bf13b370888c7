//! What `usage-cost` sends: the flowgate config (one workload metered, one not), and the message
//! stream of one request, the same for both workloads: request headers, then (once dispatched) a
//! streamed chat completion's response headers and its SSE body chunks, vLLM's shape with
//! `stream_options.include_usage`: one token delta per chunk (`"usage":null`), the last chunk the
//! usage event (`"choices":[]`) and `data: [DONE]`, with `end_of_stream`.

use crate::extproc::client::{header, request_headers_with, response_headers_of};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, ProcessingRequest};

/// The workload whose responses flowgate reads: it has a token quota.
pub const METERED_WORKLOAD: &str = "bench-metered";
/// The workload whose responses flowgate skips: no quota, and the score counts requests.
pub const UNMETERED_WORKLOAD: &str = "bench-unmetered";
/// The metered workload's `tokens_per_minute`: the engine's largest, never binding here.
pub const QUOTA_TOKENS_PER_MINUTE: u64 = flowgate_engine::quota_rule::MAX_TOKENS_PER_MINUTE;
/// The prompt tokens every response's usage reports.
pub const PROMPT_TOKENS: u64 = 212;
/// The request body's `content-length` (what an estimate would start from; never used here).
const REQUEST_BYTES: &str = "850";
/// The backend flowgate names (never contacted) and its slots: room for every stream.
const BACKEND: &str = "127.0.0.1:8000";
const BACKEND_SLOTS: u32 = 100_000;

/// The flowgate config: one backend with room for everything, a never-binding token quota on
/// [`METERED_WORKLOAD`] and nothing on [`UNMETERED_WORKLOAD`] (default scoring: requests).
pub fn flowgate_config() -> String {
    format!(
        "backends:\n  - address: {BACKEND}\n    max_inflight: {BACKEND_SLOTS}\nworkloads:\n  quotas:\n    - workload_id: {METERED_WORKLOAD}\n      tokens_per_minute: {QUOTA_TOKENS_PER_MINUTE}\n"
    )
}

/// The request headers of a request of `workload_id`.
pub fn request_headers(workload_id: &str) -> ProcessingRequest {
    let context = format!(r#"{{"workload_id":"{workload_id}","criticality":3}}"#);
    request_headers_with(&context, &[header("content-length", REQUEST_BYTES.as_bytes())])
}

/// The completion tokens every response's usage reports: one per delta chunk.
pub fn completion_tokens(chunks: usize) -> u64 {
    chunks.saturating_sub(1) as u64
}

/// Token delta event `i` (~180 bytes, as vLLM streams them).
fn delta_event(i: usize) -> String {
    format!(
        "data: {{\"id\":\"chatcmpl-5f0c2a9d\",\"object\":\"chat.completion.chunk\",\"created\":1764633600,\"model\":\"bench-model\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
    )
}

/// The last chunk: the usage event, then `[DONE]`.
fn usage_event(chunks: usize) -> String {
    let (p, c) = (PROMPT_TOKENS, completion_tokens(chunks));
    format!(
        "data: {{\"id\":\"chatcmpl-5f0c2a9d\",\"object\":\"chat.completion.chunk\",\"created\":1764633600,\"model\":\"bench-model\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"total_tokens\":{},\"completion_tokens\":{c}}}}}\n\ndata: [DONE]\n\n",
        p + c
    )
}

fn body(bytes: String, end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Msg::ResponseBody(HttpBody {
            body: bytes.into_bytes(),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The response's messages: SSE response headers, then `chunks` body chunks (at least one), the
/// last carrying the usage and the end of stream.
pub fn response(chunks: usize) -> Vec<ProcessingRequest> {
    let chunks = chunks.max(1);
    let mut messages = Vec::with_capacity(chunks + 1);
    messages.push(response_headers_of(Some("text/event-stream"), false));
    messages.extend((0..chunks - 1).map(|i| body(delta_event(i), false)));
    messages.push(body(usage_event(chunks), true));
    messages
}

/// The mean body chunk size of [`response`], bytes.
pub fn mean_chunk_bytes(chunks: usize) -> f64 {
    let bytes: usize = response(chunks)
        .iter()
        .filter_map(|m| match &m.request {
            Some(Msg::ResponseBody(b)) => Some(b.body.len()),
            _ => None,
        })
        .sum();
    bytes as f64 / chunks.max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate::usage::{BodyKind, UsageReader, UsageSource};

    /// flowgate's own reader finds the usage the stream reports, split as it is sent.
    #[test]
    fn the_stream_reports_its_usage_to_flowgates_reader() {
        let messages = response(64);
        assert_eq!(messages.len(), 65);
        let mut reader = UsageReader::new(BodyKind::Sse);
        let mut ends = 0;
        for m in &messages[1..] {
            let Some(Msg::ResponseBody(b)) = &m.request else { panic!("a body chunk") };
            reader.push(&b.body);
            ends += usize::from(b.end_of_stream);
        }
        assert_eq!(ends, 1);
        let Some(Msg::ResponseBody(last)) = &messages[64].request else { panic!() };
        assert!(last.end_of_stream);
        let u = reader.finish(None);
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.source),
            (PROMPT_TOKENS, 63, UsageSource::Reported)
        );
        let mean = mean_chunk_bytes(64);
        assert!((100.0..=250.0).contains(&mean), "{mean} bytes per chunk");
    }

    #[test]
    fn the_config_loads_with_one_token_quota() {
        let c = flowgate::config::ServeConfig::from_yaml(&flowgate_config()).expect("valid config");
        let w = &c.engine.workloads;
        assert!(w.quota_for(METERED_WORKLOAD).is_some_and(|q| q.limits_tokens()));
        assert!(w.quota_for(UNMETERED_WORKLOAD).is_none());
        assert!(!c.engine.scoring.needs_usage());
    }
}
