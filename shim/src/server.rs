//! The Envoy ext_proc service (`envoy.service.ext_proc.v3.ExternalProcessor/Process`).
//!
//! One bidirectional stream per HTTP request:
//!
//! 1. `request_headers`: the workload context is read from `x-workload-context` (JSON), else from
//!    GIE's `x-gateway-inference-fairness-id` (or llm-d's `x-llm-d-inference-fairness-id`), else the
//!    default workload; `workloads.caps` clamps
//!    its criticality; the request is submitted to the engine and the headers message is answered
//!    only once the engine has decided:
//!    * dispatched → `HeadersResponse` setting `x-gateway-destination-endpoint: <ip:port>`
//!      (overwriting whatever the client sent), removing client-sent `x-flowgate-*` headers, with
//!      `clear_route_cache`, plus the same address in dynamic metadata under `envoy.lb`;
//!    * not dispatched → `ImmediateResponse` (429 or 503) with `x-flowgate-drop-reason` and
//!      `retry-after`, then the answers end; the stream is let go once the client ends its side
//!      (Envoy does at once), or after [`REJECTED_LINGER`].
//! 2. Every other message is answered with CONTINUE, at once (no chunk is held back).
//! 3. The dispatched request's permit (its backend slot) is held until the response's end of
//!    stream (response headers or body with `end_of_stream`, or response trailers), or until the
//!    stream closes, whichever comes first.
//! 4. When the score counts tokens, a dispatched request's response is read for its usage as it
//!    passes ([`crate::usage_meter`]) and charged to its workload when the response ends; every
//!    other dispatch answer carries a mode override that skips the response body.
//!
//! A stream that closes (or is reset) while its request is queued drops the engine ticket at once,
//! which cancels the request. A stream that sends no request headers within [`HEADERS_TIMEOUT`] is
//! closed. On shutdown, streams already answered are closed (Envoy carries on
//! without the processor); queued ones get their `shutting-down` answer from the engine first.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::usage_meter::{content_length, ResponseWatch, UsageMeter};
use arc_swap::ArcSwap;
use envoy_types::pb::envoy::config::core::v3::HeaderValue;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessor;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, HttpHeaders, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use flowgate_engine::config::{effective_ttl, EngineConfig, WorkloadConfig};
use flowgate_engine::context::{CONTEXT_HEADER, FAIRNESS_ID_HEADER, LLM_D_FAIRNESS_ID_HEADER};
use flowgate_engine::outcome::OtherReason;
use flowgate_engine::quota::{QuotaNote, Remaining};
use flowgate_engine::runtime::{Engine, Permit, Request, SubmitError};
use flowgate_engine::{Outcome, WorkloadContext};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::{debug, debug_span};

use crate::answers::remaining_headers;
pub use crate::answers::{
    dispatched, rejected, rejected_for_quota, retry_after_s, DESTINATION_HEADER, DROP_REASON_HEADER,
    LB_NAMESPACE, OWN_HEADER_PREFIX, QUOTA_DROP_REASON, REMAINING_REQUESTS_HEADER, REMAINING_TOKENS_HEADER,
};
use crate::metrics::Metrics;

/// Most messages buffered from a stream while its request is queued (Envoy sends none in its
/// default modes); a stream sending more is refused.
const MAX_PENDING_MESSAGES: usize = 1024;
/// Longest a stream answered with an immediate response waits for the client to end it (Envoy
/// does at once); see [`FlowControl::serve_stream`].
pub const REJECTED_LINGER: Duration = Duration::from_secs(1);
/// Longest a stream may stay open without sending its request headers (Envoy sends them as soon
/// as it opens the stream); it is then closed, so streams that never ask for anything cannot pile
/// up. Once the headers arrive the stream lives as long as its request (queued, then in flight).
pub const HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers buffered per stream towards Envoy (the headers answer plus a few CONTINUEs; Envoy
/// waits for each answer).
const STREAM_ANSWERS: usize = 8;

/// The ext_proc service.
#[derive(Clone)]
pub struct FlowControl {
    shared: Arc<Shared>,
}

/// The live part of the configuration the service reads per request; replaced whole by a reload
/// ([`FlowControl::apply`]).
#[derive(Debug)]
struct Rules {
    workloads: WorkloadConfig,
    default_ttl: Duration,
    /// Whether dispatched requests' responses are read for their usage (the score counts tokens).
    read_usage: bool,
}

impl Rules {
    fn of(config: &EngineConfig) -> Arc<Rules> {
        Arc::new(Rules {
            workloads: config.workloads.clone(),
            default_ttl: config.queue.ttl,
            read_usage: config.scoring.needs_usage(),
        })
    }
}

struct Shared {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    rules: ArcSwap<Rules>,
    /// Cancelled when the server shuts down: streams already answered close.
    shutdown: CancellationToken,
}

impl std::fmt::Debug for FlowControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowControl").finish_non_exhaustive()
    }
}

impl FlowControl {
    /// A service submitting to `engine`, recording into `metrics`; streams already answered close
    /// when `shutdown` is cancelled.
    pub fn new(engine: Arc<Engine>, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        let config = engine.config();
        let shared = Shared { rules: ArcSwap::new(Rules::of(&config)), engine, metrics, shutdown };
        FlowControl { shared: Arc::new(shared) }
    }

    /// Take a reloaded configuration's caps, default criticality and default TTL (for requests
    /// arriving from now on), and its bound on per-workload metric labels.
    pub fn apply(&self, config: &EngineConfig) {
        self.shared.rules.store(Rules::of(config));
        self.shared.metrics.set_max_tracked(config.workloads.max_tracked);
    }
}

#[tonic::async_trait]
impl ExternalProcessor for FlowControl {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: tonic::Request<Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, Status> {
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_ANSWERS);
        let service = self.clone();
        tokio::spawn(async move { service.serve_stream(inbound, tx).await });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

impl FlowControl {
    /// Serve one ext_proc stream (one HTTP request): read `inbound` until it ends (or fails, or
    /// `outbound` is closed, or flow control closes it), answering on `outbound`. Returns once
    /// the stream is over; by then its backend slot (if it got one) is released and a request
    /// still queued is cancelled.
    ///
    /// [`ExternalProcessor::process`] runs this on a task with tonic's [`Streaming`] as `inbound`;
    /// any other stream of requests works the same (tests and the fuzz target drive it directly).
    pub async fn serve_stream<S>(
        &self,
        inbound: S,
        outbound: mpsc::Sender<Result<ProcessingResponse, Status>>,
    ) where
        S: Stream<Item = Result<ProcessingRequest, Status>>,
    {
        let inbound = pin!(inbound);
        let mut stream = StreamState {
            shared: self.shared.clone(),
            inbound,
            tx: outbound,
            permit: None,
            meter: None,
            remaining: None,
            answered: false,
            rejected: false,
            pending: VecDeque::new(),
        };
        stream.run().await;
        if stream.rejected {
            // End the answers, then wait (bounded) for the client to end its side of the stream
            // before letting go of it. Otherwise a connection closed at shutdown, right after the
            // last rejections were written, races the client's own ends of stream: a peer still
            // sending into a closed socket gets a TCP reset, and the reset destroys answers it
            // has not read yet.
            let StreamState { mut inbound, tx, .. } = stream;
            drop(tx);
            let drain = async { while let Some(Ok(_)) = inbound.next().await {} };
            let _ = tokio::time::timeout(REJECTED_LINGER, drain).await;
        }
    }
}

/// One ext_proc stream (one HTTP request).
struct StreamState<S> {
    shared: Arc<Shared>,
    inbound: S,
    tx: mpsc::Sender<Result<ProcessingResponse, Status>>,
    /// The backend slot while the request is in flight.
    permit: Option<Permit>,
    /// The response's usage, while it is read (dispatched requests whose cost matters).
    meter: Option<UsageMeter>,
    /// Its workload's quota left at dispatch, for the response headers (workloads with a quota).
    remaining: Option<Remaining>,
    /// Whether the request headers were answered (flow control is done for this stream).
    answered: bool,
    /// Whether the request was answered with an immediate response (the stream is over).
    rejected: bool,
    /// Messages that arrived while the request was queued, answered after the decision.
    pending: VecDeque<ProcessingRequest>,
}

/// How a stream goes on after a message.
enum Flow {
    Continue,
    Close,
}

impl<S> StreamState<S>
where
    S: Stream<Item = Result<ProcessingRequest, Status>> + Unpin,
{
    async fn run(&mut self) {
        let headers_deadline = tokio::time::Instant::now() + HEADERS_TIMEOUT;
        loop {
            if let Some(message) = self.pending.pop_front() {
                if let Flow::Close = Box::pin(self.handle(message)).await {
                    break;
                }
                continue;
            }
            let next = tokio::select! {
                m = self.inbound.next() => m,
                // Streams waiting for nothing from flow control close on shutdown.
                _ = self.shared.shutdown.cancelled(), if self.answered => break,
                _ = tokio::time::sleep_until(headers_deadline), if !self.answered => {
                    debug!(timeout = ?HEADERS_TIMEOUT, "no request headers in time: stream closed");
                    break;
                }
            };
            let message = match next {
                Some(Ok(m)) => m,
                None => break,
                Some(Err(status)) => {
                    debug!(%status, "ext_proc stream ended with an error");
                    break;
                }
            };
            // Boxed: a message's handling (admission's ticket and context, an answer being sent)
            // lives only while it runs, instead of sizing the task of every open stream.
            if let Flow::Close = Box::pin(self.handle(message)).await {
                break;
            }
        }
        // Charging the usage read so far (if metered) and dropping the permit frees the slot.
        self.release("stream closed");
    }

    async fn handle(&mut self, message: ProcessingRequest) -> Flow {
        let silent = message.observability_mode;
        let reply = match message.request {
            Some(Msg::RequestHeaders(headers)) if !self.answered => {
                self.answered = true;
                return self.admit(headers, silent).await;
            }
            Some(Msg::RequestHeaders(_)) => Reply::RequestHeaders(HeadersResponse::default()),
            Some(Msg::RequestBody(_)) => Reply::RequestBody(BodyResponse::default()),
            Some(Msg::RequestTrailers(_)) => Reply::RequestTrailers(TrailersResponse::default()),
            Some(Msg::ResponseHeaders(h)) => {
                if let Some(meter) = &mut self.meter {
                    meter.headers(find_header(&h, "content-type").and_then(|v| std::str::from_utf8(v).ok()));
                }
                if h.end_of_stream {
                    self.release("response headers end the stream");
                }
                Reply::ResponseHeaders(HeadersResponse {
                    response: self.remaining.take().map(remaining_headers),
                })
            }
            Some(Msg::ResponseBody(b)) => {
                if let Some(meter) = &mut self.meter {
                    meter.body(&b.body);
                }
                if b.end_of_stream {
                    self.release("response body ends the stream");
                }
                Reply::ResponseBody(BodyResponse::default())
            }
            Some(Msg::ResponseTrailers(_)) => {
                self.release("response trailers end the stream");
                Reply::ResponseTrailers(TrailersResponse::default())
            }
            None => return Flow::Continue,
        };
        if silent {
            return Flow::Continue;
        }
        self.send(ProcessingResponse { response: Some(reply), ..Default::default() }).await
    }

    /// The response is over (or the stream is): charge its usage if metered, free the slot.
    fn release(&mut self, why: &'static str) {
        if let Some(permit) = self.permit.take() {
            if let Some(meter) = self.meter.take() {
                let usage = meter.charge(&permit, &self.shared.metrics);
                debug!(
                    prompt_tokens = usage.prompt_tokens,
                    completion_tokens = usage.completion_tokens,
                    source = ?usage.source,
                    "usage charged"
                );
            }
            debug!(backend = permit.address(), why, "slot released");
        }
    }

    async fn send(&self, response: ProcessingResponse) -> Flow {
        match self.tx.send(Ok(response)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Close,
        }
    }

    /// Flow control for the request headers: submit, wait for the decision, answer.
    async fn admit(&mut self, headers: HttpHeaders, silent: bool) -> Flow {
        let shared = self.shared.clone();
        let (context, own_headers) = read_context(&shared, &headers);
        let request_bytes = find_header(&headers, "content-length").and_then(content_length);
        let span = debug_span!(
            "admit",
            workload = &*context.workload_id,
            criticality = context.criticality,
            ttl_ms = context.ttl.map(|t| t.as_millis() as u64),
        );
        let rules = shared.rules.load();
        // The wait the engine allows (a request's `ttl_ms` can only shorten `queue.ttl`, as in
        // the shard): a `ttl-expired` answer's `retry-after` is this long.
        let ttl = effective_ttl(context.ttl, rules.default_ttl);
        // The response is read for its usage when a token rule needs it.
        let read_usage = rules.read_usage
            || rules.workloads.quota_for(&context.workload_id).is_some_and(|q| q.limits_tokens());
        drop(rules);
        let queued = shared.metrics.enqueue(&context.workload_id, context.criticality);
        let started = Instant::now();
        let ticket = match shared.engine.submit(Request { context, bytes: 0 }) {
            Ok(ticket) => ticket,
            Err(e) => {
                let outcome = match e {
                    SubmitError::Backpressure(_) => Outcome::RejectedCapacity,
                    SubmitError::ShuttingDown(_) => Outcome::RejectedOther(OtherReason::ShuttingDown),
                };
                queued.finish(outcome, Duration::ZERO);
                span.in_scope(|| debug!(outcome = outcome.label(), "refused at submission"));
                return self.reject(outcome, ttl, None, silent).await;
            }
        };
        // Wait for the decision; a stream that closes meanwhile cancels the request.
        let mut ticket = pin!(ticket);
        let decision = loop {
            tokio::select! {
                biased;
                decision = &mut ticket => break Some(decision),
                m = self.inbound.next() => match m {
                    Some(Ok(m)) if self.pending.len() < MAX_PENDING_MESSAGES => self.pending.push_back(m),
                    _ => break None,
                },
                _ = self.tx.closed() => break None,
            }
        };
        let Some(decision) = decision else {
            // Dropping the ticket (on return) cancels the request in the engine at once.
            queued.finish(Outcome::EvictedCancelled, started.elapsed());
            span.in_scope(|| debug!("stream closed while queued: cancelled"));
            return Flow::Close;
        };
        let waited = Duration::from_nanos(decision.queued_ns);
        queued.finish(decision.outcome, waited);
        let waited_ms = waited.as_secs_f64() * 1e3;
        match decision.permit {
            Some(permit) => {
                span.in_scope(|| debug!(backend = permit.address(), waited_ms, "dispatched"));
                self.remaining = match decision.quota {
                    Some(QuotaNote::Remaining(r)) => Some(r),
                    _ => None,
                };
                let watch = ResponseWatch::of(read_usage, self.remaining.is_some());
                let response = dispatched(permit.address(), own_headers, watch);
                self.meter = read_usage.then(|| UsageMeter::new(request_bytes));
                self.permit = Some(permit);
                if silent {
                    Flow::Continue
                } else {
                    self.send(response).await
                }
            }
            None => {
                let outcome = decision.outcome.label();
                span.in_scope(|| debug!(outcome, waited_ms, "not dispatched"));
                let quota_retry = match decision.quota {
                    Some(QuotaNote::Refused { retry_after_ns }) => {
                        shared.metrics.count_quota_refusal();
                        Some(Duration::from_nanos(retry_after_ns))
                    }
                    _ => None,
                };
                self.reject(decision.outcome, ttl, quota_retry, silent).await
            }
        }
    }

    /// Answer a request that was not dispatched, then close the stream.
    async fn reject(
        &mut self,
        outcome: Outcome,
        ttl: Duration,
        quota_retry: Option<Duration>,
        silent: bool,
    ) -> Flow {
        let response = match quota_retry {
            Some(retry) => Some(rejected_for_quota(retry)),
            None => rejected(outcome, ttl),
        };
        if let Some(response) = response {
            if !silent {
                self.rejected = matches!(self.send(response).await, Flow::Continue);
            }
        }
        Flow::Close
    }
}

/// The raw bytes of a header value: Envoy sends `raw_value` (bytes, not necessarily UTF-8) or, in
/// older configurations, `value`.
fn header_bytes(h: &HeaderValue) -> &[u8] {
    if h.raw_value.is_empty() {
        h.value.as_bytes()
    } else {
        &h.raw_value
    }
}

/// The value of header `name` (any letter case) in `headers`, if present.
fn find_header<'a>(headers: &'a HttpHeaders, name: &str) -> Option<&'a [u8]> {
    let list = headers.headers.as_ref().map(|m| m.headers.as_slice()).unwrap_or_default();
    list.iter().find(|h| h.key.eq_ignore_ascii_case(name)).map(header_bytes)
}

/// The request's workload context (after caps, with defaults and caps counted), and the names of
/// client-sent `x-flowgate-*` headers to remove.
fn read_context(shared: &Shared, headers: &HttpHeaders) -> (WorkloadContext, Vec<String>) {
    let rules = shared.rules.load();
    let default_criticality = rules.workloads.default_criticality;
    let list = headers.headers.as_ref().map(|m| m.headers.as_slice()).unwrap_or_default();
    let find = |name: &str| find_header(headers, name);
    let fairness_id = find(FAIRNESS_ID_HEADER).or_else(|| find(LLM_D_FAIRNESS_ID_HEADER));
    let (mut context, defaults) = match (find(CONTEXT_HEADER), fairness_id) {
        (Some(value), _) => WorkloadContext::parse(Some(value), default_criticality),
        (None, Some(id)) => WorkloadContext::from_fairness_id(id, default_criticality),
        (None, None) => WorkloadContext::parse(None, default_criticality),
    };
    shared.metrics.count_defaults(defaults);
    let (criticality, capped) = rules.workloads.clamp(&context.workload_id, context.criticality);
    if capped {
        shared.metrics.count_capped();
        context.criticality = criticality;
    }
    let mut own: Vec<String> =
        list.iter().filter(|h| is_own_header(&h.key)).map(|h| h.key.to_ascii_lowercase()).collect();
    own.sort();
    own.dedup();
    (context, own)
}

/// Is `key` one of flowgate's own headers (`x-flowgate-*`, any letter case)? Compared as bytes:
/// a name is any string, and a non-ASCII character may straddle the prefix's end.
pub fn is_own_header(key: &str) -> bool {
    key.as_bytes()
        .get(..OWN_HEADER_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(OWN_HEADER_PREFIX.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> FlowControl {
        let engine = Arc::new(Engine::start(flowgate_engine::config::EngineConfig::default()).unwrap());
        FlowControl::new(engine, Arc::new(Metrics::new(100, 3)), CancellationToken::new())
    }

    /// A stream that never sends its request headers is closed at `HEADERS_TIMEOUT`, not before.
    #[tokio::test(start_paused = true)]
    async fn a_stream_without_request_headers_is_closed_at_the_timeout() {
        let service = service();
        let (tx, mut rx) = mpsc::channel(STREAM_ANSWERS);
        let start = tokio::time::Instant::now();
        let served = tokio::spawn(async move {
            service.serve_stream(tokio_stream::pending::<Result<ProcessingRequest, Status>>(), tx).await
        });
        tokio::time::sleep(HEADERS_TIMEOUT - Duration::from_millis(1)).await;
        assert!(!served.is_finished(), "closed before the timeout");
        let closed = tokio::time::timeout(HEADERS_TIMEOUT, served).await;
        assert!(closed.expect("still open long after the timeout").is_ok());
        assert!(start.elapsed() >= HEADERS_TIMEOUT);
        assert!(rx.recv().await.is_none(), "closed without an answer");
    }

    /// Every open stream's task holds this future for its whole life: what a message's handling
    /// needs is boxed while it runs, so the task stays small (3.4 KB before, in a debug build).
    #[test]
    fn the_stream_future_stays_small() {
        const MAX_STREAM_FUTURE_BYTES: usize = 1024;
        let service = service();
        let (tx, _rx) = mpsc::channel(STREAM_ANSWERS);
        let fut = service.serve_stream(tokio_stream::pending::<Result<ProcessingRequest, Status>>(), tx);
        let size = std::mem::size_of_val(&fut);
        assert!(size <= MAX_STREAM_FUTURE_BYTES, "serve_stream's future is {size} bytes");
    }

    #[test]
    fn own_headers_by_prefix_in_any_case_and_any_name() {
        assert!(is_own_header("x-flowgate-drop-reason"));
        assert!(is_own_header("X-Flowgate-Anything"));
        assert!(is_own_header("x-flowgate-"));
        assert!(!is_own_header("x-flowgate"));
        assert!(!is_own_header("x-gateway-destination-endpoint"));
        assert!(!is_own_header(""));
        // A multi-byte character across the prefix's end (found by the extproc fuzz target: it
        // used to panic on slicing inside the character).
        assert!(!is_own_header("x-flowgate\u{5c4}"));
        assert!(!is_own_header("x-flowgat\u{e9}-x"));
        assert!(is_own_header("x-flowgate-\u{e9}"));
    }
}
