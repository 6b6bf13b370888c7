//! One request over the ext_proc protocol, as Envoy makes it: the messages, the check of the
//! headers answer, and the stream itself.
//!
//! Each request is what Envoy does for one HTTP request: open a `Process` stream, send
//! `request_headers` carrying an `x-workload-context` (mixed workload ids and criticalities),
//! await the headers answer — **the measured latency is send → headers answer**, stream opening
//! included — then send `response_headers` with `end_of_stream` (flowgate releases the slot),
//! await its CONTINUE, close the request side and await the end of the stream.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingRequest, ProcessingResponse};
use flowgate::server::DESTINATION_HEADER;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

pub(crate) type Client = ExternalProcessorClient<Channel>;

/// Distinct workload ids in the mix.
const WORKLOADS: usize = 16;

fn header(key: &str, value: &[u8]) -> HeaderValue {
    HeaderValue { key: key.into(), raw_value: value.to_vec(), ..Default::default() }
}

/// The `request_headers` message of request `k` of worker `w`: a mix of 16 workload ids and
/// criticalities 1..=5.
pub fn request_headers(w: usize, k: usize) -> ProcessingRequest {
    let id = (w * 7 + k) % WORKLOADS;
    let criticality = 1 + (w + k) % 5;
    context_headers(&format!(r#"{{"workload_id":"tenant-{id}","criticality":{criticality}}}"#))
}

/// The `request_headers` message of a request carrying `x-workload-context: context`.
pub(crate) fn context_headers(context: &str) -> ProcessingRequest {
    let headers = vec![
        header(":method", b"POST"),
        header(":path", b"/v1/chat/completions"),
        header(":authority", b"llm.local"),
        header("content-type", b"application/json"),
        header("x-workload-context", context.as_bytes()),
    ];
    ProcessingRequest {
        request: Some(Msg::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers }),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The `response_headers` message that ends the HTTP response (and frees flowgate's slot).
fn response_headers() -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Msg::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers: vec![header(":status", b"200")] }),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Why a request did not complete.
#[derive(Debug, PartialEq)]
pub enum Failure {
    /// Answered, but not dispatched (an immediate response).
    NotDispatched(String),
    /// The stream failed, timed out or broke the protocol.
    Failed(String),
}

/// Check the headers answer: a `HeadersResponse`, and with `want_destination` one that sets the
/// destination header (flowgate's dispatch).
pub fn classify(answer: &ProcessingResponse, want_destination: bool) -> Result<(), Failure> {
    match &answer.response {
        Some(Reply::RequestHeaders(h)) => {
            if !want_destination {
                return Ok(());
            }
            let sets_destination =
                h.response.as_ref().and_then(|c| c.header_mutation.as_ref()).is_some_and(|m| {
                    m.set_headers.iter().any(|o| {
                        o.header.as_ref().is_some_and(|h| h.key.eq_ignore_ascii_case(DESTINATION_HEADER))
                    })
                });
            if sets_destination {
                Ok(())
            } else {
                Err(Failure::Failed(format!("headers answer without {DESTINATION_HEADER}")))
            }
        }
        Some(Reply::ImmediateResponse(i)) => {
            let status = i.status.as_ref().map_or(0, |s| s.code);
            Err(Failure::NotDispatched(format!("immediate response, status {status}: {}", i.details)))
        }
        other => Err(Failure::Failed(format!("unexpected headers answer: {other:?}"))),
    }
}

/// One request through one stream; when its headers answer came.
pub(crate) async fn one_request(
    client: &mut Client,
    first: ProcessingRequest,
    want_destination: bool,
) -> Result<(Instant, Instant), Failure> {
    request_holding(client, first, want_destination, async || Ok(())).await
}

/// [`one_request`], running `hold` between the headers answer and the release (as Envoy sends
/// the request upstream meanwhile); a `hold` error fails the request after its release.
pub(crate) async fn request_holding(
    client: &mut Client,
    first: ProcessingRequest,
    want_destination: bool,
    hold: impl AsyncFnOnce() -> Result<(), String>,
) -> Result<(Instant, Instant), Failure> {
    let failed = |what: &str, e: &dyn std::fmt::Display| Failure::Failed(format!("{what}: {e}"));
    let (tx, rx) = mpsc::channel(4);
    let sent = Instant::now();
    tx.try_send(first).expect("a fresh channel has room");
    let mut answers =
        client.process(ReceiverStream::new(rx)).await.map_err(|s| failed("open", &s))?.into_inner();
    let answer = answers
        .message()
        .await
        .map_err(|s| failed("headers answer", &s))?
        .ok_or_else(|| Failure::Failed("stream ended before the headers answer".into()))?;
    let answered = Instant::now();
    classify(&answer, want_destination)?;
    let held = hold().await;
    tx.send(response_headers()).await.map_err(|_| Failure::Failed("request side closed early".into()))?;
    match answers.message().await {
        Ok(Some(ProcessingResponse { response: Some(Reply::ResponseHeaders(_)), .. })) => {}
        other => return Err(Failure::Failed(format!("response headers answer: {other:?}"))),
    }
    drop(tx);
    match answers.message().await {
        Ok(None) => held.map(|()| (sent, answered)).map_err(Failure::Failed),
        other => Err(Failure::Failed(format!("stream end: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extproc::load::schedule;
    use crate::extproc::server::{continue_reply, BACKEND};
    use envoy_types::pb::envoy::service::ext_proc::v3::ImmediateResponse;
    use std::time::Duration;

    #[test]
    fn answers_are_classified() {
        let dispatched = flowgate::server::dispatched(BACKEND, vec![], true);
        assert_eq!(classify(&dispatched, true), Ok(()));
        assert_eq!(classify(&dispatched, false), Ok(()));
        let bare =
            ProcessingResponse { response: continue_reply(&request_headers(0, 0)), ..Default::default() };
        assert_eq!(classify(&bare, false), Ok(()));
        assert!(matches!(classify(&bare, true), Err(Failure::Failed(_))));
        let immediate = ProcessingResponse {
            response: Some(Reply::ImmediateResponse(ImmediateResponse::default())),
            ..Default::default()
        };
        assert!(matches!(classify(&immediate, true), Err(Failure::NotDispatched(_))));
        let wrong =
            ProcessingResponse { response: continue_reply(&response_headers()), ..Default::default() };
        assert!(matches!(classify(&wrong, false), Err(Failure::Failed(_))));
    }

    #[test]
    fn request_mix_and_schedule() {
        let mut ids = std::collections::HashSet::new();
        let mut crits = std::collections::HashSet::new();
        for w in 0..8 {
            for k in 0..8 {
                let Some(Msg::RequestHeaders(h)) = request_headers(w, k).request else { panic!() };
                let ctx = h.headers.unwrap().headers.into_iter().find(|h| h.key == "x-workload-context");
                let v: serde_json::Value = serde_json::from_slice(&ctx.unwrap().raw_value).unwrap();
                ids.insert(v["workload_id"].as_str().unwrap().to_string());
                crits.insert(v["criticality"].as_u64().unwrap());
            }
        }
        assert_eq!(ids.len(), WORKLOADS);
        assert_eq!(crits, (1..=5).collect());
        assert_eq!(schedule(0, 10_000.0), Duration::ZERO);
        assert_eq!(schedule(10_000, 10_000.0), Duration::from_secs(1));
        assert_eq!(schedule(3, 4.0), Duration::from_millis(750));
    }
}
