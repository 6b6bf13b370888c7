//! One request over the ext_proc protocol, as Envoy makes it: the messages, the check of the
//! headers answer, and the stream itself.
//!
//! Each request is what Envoy does for one HTTP request: open a `Process` stream, send
//! `request_headers` carrying an `x-workload-context` (mixed workload ids and criticalities),
//! await the headers answer — **the measured latency is send → headers answer**, stream opening
//! included — then send the response's messages one at a time, each answered before the next (by
//! default only `response_headers` with `end_of_stream`: flowgate releases the slot), close the
//! request side and await the end of the stream.

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
use tonic::Streaming;

pub(crate) type Client = ExternalProcessorClient<Channel>;

/// Distinct workload ids in the mix.
const WORKLOADS: usize = 16;

/// A header with a raw value, as Envoy sends it.
pub(crate) fn header(key: &str, value: &[u8]) -> HeaderValue {
    HeaderValue { key: key.into(), raw_value: value.to_vec(), ..Default::default() }
}

/// The `request_headers` message of request `k` of worker `w`: a mix of 16 workload ids and
/// criticalities 1..=5.
pub fn request_headers(w: usize, k: usize) -> ProcessingRequest {
    let id = (w * 7 + k) % WORKLOADS;
    let criticality = 1 + (w + k) % 5;
    request_headers_with(&format!(r#"{{"workload_id":"tenant-{id}","criticality":{criticality}}}"#), &[])
}

/// The `request_headers` message of a chat completion with workload context `context` (the
/// `x-workload-context` value) and the `extra` headers.
pub(crate) fn request_headers_with(context: &str, extra: &[HeaderValue]) -> ProcessingRequest {
    let mut headers = vec![
        header(":method", b"POST"),
        header(":path", b"/v1/chat/completions"),
        header(":authority", b"llm.local"),
        header("content-type", b"application/json"),
        header("x-workload-context", context.as_bytes()),
    ];
    headers.extend_from_slice(extra);
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
pub(crate) fn response_headers() -> ProcessingRequest {
    response_headers_of(None, true)
}

/// A `200` `response_headers` message with `content_type`, ending the response or not.
pub(crate) fn response_headers_of(content_type: Option<&str>, end_of_stream: bool) -> ProcessingRequest {
    let mut headers = vec![header(":status", b"200")];
    headers.extend(content_type.map(|c| header("content-type", c.as_bytes())));
    ProcessingRequest {
        request: Some(Msg::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers }),
            end_of_stream,
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

/// A stream whose request headers have been answered.
pub(crate) struct Opened {
    /// The request side: what the client sends next.
    pub(crate) tx: mpsc::Sender<ProcessingRequest>,
    /// The answers still to come.
    pub(crate) answers: Streaming<ProcessingResponse>,
    /// When the request headers were sent.
    pub(crate) sent: Instant,
    /// When their answer came.
    pub(crate) answered: Instant,
    /// The headers answer.
    pub(crate) answer: ProcessingResponse,
}

fn failed(what: &str, e: &dyn std::fmt::Display) -> Failure {
    Failure::Failed(format!("{what}: {e}"))
}

/// Open a stream with `first` (the request headers) and await their answer (not checked).
pub(crate) async fn open(client: &mut Client, first: ProcessingRequest) -> Result<Opened, Failure> {
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
    Ok(Opened { tx, answers, sent, answered: Instant::now(), answer })
}

/// Whether `reply` answers `message` (the same phase: response body for response body, ...).
fn answers_message(message: &ProcessingRequest, reply: &ProcessingResponse) -> bool {
    matches!(
        (&message.request, &reply.response),
        (Some(Msg::RequestHeaders(_)), Some(Reply::RequestHeaders(_)))
            | (Some(Msg::RequestBody(_)), Some(Reply::RequestBody(_)))
            | (Some(Msg::RequestTrailers(_)), Some(Reply::RequestTrailers(_)))
            | (Some(Msg::ResponseHeaders(_)), Some(Reply::ResponseHeaders(_)))
            | (Some(Msg::ResponseBody(_)), Some(Reply::ResponseBody(_)))
            | (Some(Msg::ResponseTrailers(_)), Some(Reply::ResponseTrailers(_)))
    )
}

/// One request through one stream: `first`, its (checked) answer, then each of `after`, each
/// answered before the next; when the headers answer came.
pub(crate) async fn one_request(
    client: &mut Client,
    first: ProcessingRequest,
    after: &[ProcessingRequest],
    want_destination: bool,
) -> Result<(Instant, Instant), Failure> {
    request_holding(client, first, after, want_destination, async || Ok(())).await
}

/// [`one_request`], running `hold` between the headers answer and the rest (as Envoy sends the
/// request upstream meanwhile); a `hold` error fails the request after its release.
pub(crate) async fn request_holding(
    client: &mut Client,
    first: ProcessingRequest,
    after: &[ProcessingRequest],
    want_destination: bool,
    hold: impl AsyncFnOnce() -> Result<(), String>,
) -> Result<(Instant, Instant), Failure> {
    let Opened { tx, mut answers, sent, answered, answer } = open(client, first).await?;
    classify(&answer, want_destination)?;
    let held = hold().await;
    for message in after {
        tx.send(message.clone()).await.map_err(|_| Failure::Failed("request side closed early".into()))?;
        match answers.message().await {
            Ok(Some(reply)) if answers_message(message, &reply) => {}
            other => return Err(Failure::Failed(format!("answer to a response message: {other:?}"))),
        }
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
    use flowgate::usage_meter::ResponseWatch;
    use std::time::Duration;

    #[test]
    fn answers_are_classified() {
        let dispatched = flowgate::server::dispatched(BACKEND, vec![], ResponseWatch::End);
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
