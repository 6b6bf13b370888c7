//! The ext_proc contract, end to end through the gRPC protocol: a server started in-process on
//! 127.0.0.1:0 with one backend of one slot, driven by a tonic `ExternalProcessorClient` the way
//! Envoy drives it (one stream per HTTP request, many streams over one connection).
//!
//! Synchronisation is by real signals only: awaited responses, and metrics polled until they show
//! the expected state (with a deadline).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{
    connect, context, destination, header, http_get, immediate, request_headers, start_server, Client,
    Stream, BACKEND,
};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest};
use flowgate::metrics::{sample, series, QUEUE_SIZE};
use flowgate::serve::Running;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Longest wait for any expected event.
const DEADLINE: Duration = Duration::from_secs(20);

/// A server plus a client connection to it.
struct Harness {
    running: Option<Running>,
    client: Client,
    metrics_addr: SocketAddr,
}

impl Harness {
    /// A server with 1 backend of 1 slot, 2 shards, and `extra` YAML sections.
    async fn start(extra: &str) -> Harness {
        Harness::start_with_shards(2, extra).await
    }

    /// A server with 1 backend of 1 slot, `shards` shards, and `extra` YAML sections.
    async fn start_with_shards(shards: usize, extra: &str) -> Harness {
        let running = start_server(shards, 1, extra).await;
        let client = connect(running.grpc_addr()).await;
        let metrics_addr = running.metrics_addr();
        Harness { running: Some(running), client, metrics_addr }
    }

    /// Open a stream and send its request headers.
    async fn open(&mut self, headers: Vec<HeaderValue>) -> Stream {
        Stream::open(&mut self.client, headers, DEADLINE).await
    }

    /// Open a stream for workload `id` at `criticality` and expect it dispatched.
    async fn dispatched(&mut self, id: &str, criticality: u8) -> Stream {
        let mut s = self.open(vec![context(id, criticality)]).await;
        let r = s.next().await;
        assert_eq!(destination(&r).as_deref(), Some(BACKEND), "{id} not dispatched: {r:?}");
        s
    }

    /// Open a stream and wait until the engine has it queued (`queued` requests in all).
    async fn queued(&mut self, headers: Vec<HeaderValue>, queued: u64) -> Stream {
        let s = self.open(headers).await;
        self.wait_metric("flowgate_queued_requests", queued as f64).await;
        s
    }

    async fn metrics(&self) -> String {
        http_get(self.metrics_addr, "/metrics", DEADLINE).await.1
    }

    /// Poll `/metrics` until `series` reads `value`.
    async fn wait_metric(&self, series: &str, value: f64) {
        common::wait_metric(self.metrics_addr, series, value, DEADLINE).await
    }

    async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// What these tests do with a stream besides [`Stream::next`].
impl Stream {
    async fn send(&self, request: ProcessingRequest) {
        self.tx.send(request).await.expect("stream open");
    }

    /// Finish the HTTP response: response headers with end of stream; expect CONTINUE.
    async fn finish(mut self) {
        self.send(response_headers(true)).await;
        let r = self.next().await;
        assert!(matches!(r.response, Some(Reply::ResponseHeaders(_))), "{r:?}");
    }

    /// After an immediate response the server closes the stream.
    async fn expect_closed(mut self) {
        let end = tokio::time::timeout(DEADLINE, self.rx.message()).await.expect("stream not closed");
        assert!(matches!(end, Ok(None)), "{end:?}");
    }
}

fn response_headers(end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Msg::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers: vec![header(":status", b"200")] }),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn body(response: bool, end_of_stream: bool) -> ProcessingRequest {
    let b = HttpBody { body: b"{}".to_vec(), end_of_stream, ..Default::default() };
    let request = if response { Msg::ResponseBody(b) } else { Msg::RequestBody(b) };
    ProcessingRequest { request: Some(request), ..Default::default() }
}

/// `(total, criticality)` of one workload from the workload API.
async fn workload(h: &Harness, id: &str) -> Option<(u64, u8)> {
    let (status, body) = http_get(h.metrics_addr, &format!("/api/v1/workload/{id}/metrics"), DEADLINE).await;
    if status == 404 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    Some((v["total"].as_u64().unwrap(), v["criticality"].as_u64().unwrap() as u8))
}

fn queue_gauge(id: &str, priority: u8) -> String {
    series(QUEUE_SIZE, &[("fairness_id", id), ("priority", &priority.to_string())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_criticality_is_dispatched_first() {
    let mut h = Harness::start("").await;
    let holder = h.dispatched("holder", 3).await;
    let mut low = h.queued(vec![context("low", 1)], 1).await;
    let mut high = h.queued(vec![context("high", 5)], 2).await;
    h.wait_metric(&queue_gauge("low", 1), 1.0).await;
    h.wait_metric(&queue_gauge("high", 5), 1.0).await;
    holder.finish().await;
    let r = high.next().await;
    assert_eq!(destination(&r).as_deref(), Some(BACKEND), "{r:?}");
    // The low one is still queued.
    h.wait_metric("flowgate_queued_requests", 1.0).await;
    h.wait_metric(&queue_gauge("high", 5), 0.0).await;
    high.finish().await;
    let r = low.next().await;
    assert_eq!(destination(&r).as_deref(), Some(BACKEND), "{r:?}");
    low.finish().await;
    h.wait_metric("flowgate_requests_total{outcome=\"dispatched\"}", 3.0).await;
    h.wait_metric("flowgate_inflight{backend=\"127.0.0.1:8000\"}", 0.0).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_better_request_displaces_a_worse_one_from_a_full_queue() {
    // Two shards: the better request may hash to the other shard than the worse one.
    let mut h = Harness::start("queue:\n  max_requests: 1\n").await;
    let holder = h.dispatched("holder", 3).await;
    let mut low = h.queued(vec![context("low", 1)], 1).await;
    let mut high = h.open(vec![context("high", 5)]).await;
    let r = low.next().await;
    assert_eq!(immediate(&r), Some((429, "displaced".into(), "1".into())), "{r:?}");
    low.expect_closed().await;
    // The queue is still full (with the better one): a worse newcomer is refused at once.
    let mut worse = h.open(vec![context("worse", 1)]).await;
    let r = worse.next().await;
    assert_eq!(immediate(&r), Some((429, "capacity".into(), "1".into())), "{r:?}");
    holder.finish().await;
    let r = high.next().await;
    assert_eq!(destination(&r).as_deref(), Some(BACKEND), "{r:?}");
    h.wait_metric("flowgate_requests_total{outcome=\"evicted_displaced\"}", 1.0).await;
    h.wait_metric("flowgate_requests_total{outcome=\"rejected_capacity\"}", 1.0).await;
    high.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_ttl_expires_with_503() {
    let mut h = Harness::start("queue:\n  ttl: 300ms\n").await;
    let holder = h.dispatched("holder", 3).await;
    let mut waiting = h.open(vec![context("waiting", 3)]).await;
    let r = waiting.next().await;
    assert_eq!(immediate(&r), Some((503, "ttl-expired".into(), "1".into())), "{r:?}");
    waiting.expect_closed().await;
    h.wait_metric("flowgate_requests_total{outcome=\"evicted_ttl\"}", 1.0).await;
    let count = series(
        "inference_extension_flow_control_request_queue_duration_seconds_count",
        &[("fairness_id", "waiting"), ("priority", "3"), ("outcome", "evicted_ttl")],
    );
    h.wait_metric(&count, 1.0).await;
    holder.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_ttl_overrides_the_default() {
    let mut h = Harness::start("queue:\n  ttl: 1h\n").await;
    let holder = h.dispatched("holder", 3).await;
    let ctx = header("x-workload-context", br#"{"workload_id":"hasty","criticality":3,"ttl_ms":200}"#);
    let mut hasty = h.open(vec![ctx]).await;
    let r = hasty.next().await;
    assert_eq!(immediate(&r), Some((503, "ttl-expired".into(), "1".into())), "{r:?}");
    holder.finish().await;
    h.shutdown().await;
}

/// `ttl_ms` only shortens `queue.ttl`: a longer one expires at the queue's, and the answer's
/// `retry-after` is that wait (it used to be computed from the longer `ttl_ms`: 5 here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_ttl_longer_than_the_queue_ttl_expires_at_the_queue_ttl() {
    let mut h = Harness::start("queue:\n  ttl: 1500ms\n").await;
    let holder = h.dispatched("holder", 3).await;
    let ctx = header("x-workload-context", br#"{"workload_id":"patient","criticality":3,"ttl_ms":5000}"#);
    let started = std::time::Instant::now();
    let mut patient = h.open(vec![ctx]).await;
    let r = patient.next().await;
    let waited = started.elapsed();
    assert_eq!(immediate(&r), Some((503, "ttl-expired".into(), "2".into())), "{r:?}");
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_millis(4500), "{waited:?}");
    holder.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_queued_stream_cancels_its_request() {
    let mut h = Harness::start("").await;
    let holder = h.dispatched("holder", 3).await;
    let gone = h.queued(vec![context("gone", 4)], 1).await;
    h.wait_metric(&queue_gauge("gone", 4), 1.0).await;
    drop(gone); // the client goes away: stream reset
    h.wait_metric("flowgate_queued_requests", 0.0).await;
    h.wait_metric(&queue_gauge("gone", 4), 0.0).await;
    h.wait_metric("flowgate_requests_total{outcome=\"evicted_cancelled\"}", 1.0).await;
    // The slot was not given to the cancelled request: the next one gets it.
    holder.finish().await;
    let next = h.dispatched("next", 1).await;
    next.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closing_a_queued_stream_cancels_too() {
    let mut h = Harness::start("").await;
    let holder = h.dispatched("holder", 3).await;
    let Stream { tx, mut rx, .. } = h.queued(vec![context("half", 4)], 1).await;
    drop(tx); // end of the request stream, response side still open
    h.wait_metric("flowgate_queued_requests", 0.0).await;
    let end = tokio::time::timeout(DEADLINE, rx.message()).await.expect("stream closed");
    assert!(matches!(end, Ok(None)), "{end:?}");
    holder.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_contexts_are_served_as_the_default_workload() {
    let mut h = Harness::start("").await;
    let long_id = format!(r#"{{"workload_id":"{}","criticality":5}}"#, "a".repeat(64 << 10));
    let cases: Vec<(&str, Vec<HeaderValue>)> = vec![
        ("missing", vec![]),
        ("not json", vec![header("x-workload-context", b"not json")]),
        ("empty value", vec![header("x-workload-context", b"")]),
        ("not an object", vec![header("x-workload-context", b"[1,2]")]),
        ("id wrong type", vec![header("x-workload-context", br#"{"workload_id":5,"criticality":5}"#)]),
        ("id missing", vec![header("x-workload-context", br#"{"criticality":5}"#)]),
        ("empty id", vec![header("x-workload-context", br#"{"workload_id":"","criticality":5}"#)]),
        ("64 KiB id", vec![header("x-workload-context", long_id.as_bytes())]),
        (
            "300-byte id",
            vec![header(
                "x-workload-context",
                format!(r#"{{"workload_id":"{}"}}"#, "b".repeat(300)).as_bytes(),
            )],
        ),
        ("control char", vec![header("x-workload-context", br#"{"workload_id":"a\nb","criticality":5}"#)]),
        (
            "non-UTF-8",
            vec![header("x-workload-context", b"{\"workload_id\":\"\xff\xfe\",\"criticality\":5}")],
        ),
        ("non-UTF-8 fairness id", vec![header("x-gateway-inference-fairness-id", b"\xff")]),
        ("empty fairness id", vec![header("x-gateway-inference-fairness-id", b"")]),
    ];
    for (i, (what, headers)) in cases.into_iter().enumerate() {
        let mut s = h.open(headers).await;
        let r = s.next().await;
        assert_eq!(destination(&r).as_deref(), Some(BACKEND), "{what}: {r:?}");
        s.finish().await;
        assert_eq!(workload(&h, "default").await, Some((i as u64 + 1, 3)), "{what}");
    }
    // Criticality problems keep the id and use the default criticality.
    for (what, value) in [
        ("criticality wrong type", &br#"{"workload_id":"named","criticality":"high"}"#[..]),
        ("criticality float", br#"{"workload_id":"named","criticality":4.0}"#),
        ("criticality out of range", br#"{"workload_id":"named","criticality":9}"#),
        ("criticality negative", br#"{"workload_id":"named","criticality":-1}"#),
        ("criticality missing", br#"{"workload_id":"named"}"#),
        ("ttl invalid", br#"{"workload_id":"named","criticality":3,"ttl_ms":-5}"#),
    ] {
        let mut s = h.open(vec![header("x-workload-context", value)]).await;
        let r = s.next().await;
        assert_eq!(destination(&r).as_deref(), Some(BACKEND), "{what}: {r:?}");
        s.finish().await;
        assert_eq!(workload(&h, "named").await.map(|w| w.1), Some(3), "{what}");
    }
    let text = h.metrics().await;
    for reason in [
        "missing",
        "invalid_json",
        "too_large",
        "not_utf8",
        "id_empty",
        "id_too_long",
        "criticality_out_of_range",
    ] {
        let s = format!("flowgate_context_defaults_total{{reason=\"{reason}\"}}");
        assert!(sample(&text, &s).unwrap() >= 1.0, "{s}\n{text}");
    }
    // Still serving.
    let (status, _) = http_get(h.metrics_addr, "/healthz", DEADLINE).await;
    assert_eq!(status, 200);
    h.dispatched("after", 3).await.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_may_come_as_a_string_value_and_fairness_id_is_accepted() {
    let mut h = Harness::start("").await;
    let as_string = HeaderValue {
        key: "x-workload-context".into(),
        value: r#"{"workload_id":"via-value","criticality":4}"#.into(),
        ..Default::default()
    };
    let mut s = h.open(vec![as_string]).await;
    assert_eq!(destination(&s.next().await).as_deref(), Some(BACKEND));
    s.finish().await;
    assert_eq!(workload(&h, "via-value").await, Some((1, 4)));
    let mut s = h.open(vec![header("x-gateway-inference-fairness-id", b"tenant-a")]).await;
    assert_eq!(destination(&s.next().await).as_deref(), Some(BACKEND));
    s.finish().await;
    assert_eq!(workload(&h, "tenant-a").await, Some((1, 3)));
    // llm-d's name for it, read the same way; GIE's wins when both are sent.
    let mut s = h.open(vec![header("x-llm-d-inference-fairness-id", b"tenant-llmd")]).await;
    assert_eq!(destination(&s.next().await).as_deref(), Some(BACKEND));
    s.finish().await;
    assert_eq!(workload(&h, "tenant-llmd").await, Some((1, 3)));
    let mut s = h
        .open(vec![
            header("x-llm-d-inference-fairness-id", b"tenant-other"),
            header("x-gateway-inference-fairness-id", b"tenant-gie"),
        ])
        .await;
    assert_eq!(destination(&s.next().await).as_deref(), Some(BACKEND));
    s.finish().await;
    assert_eq!(workload(&h, "tenant-gie").await, Some((1, 3)));
    assert_eq!(workload(&h, "tenant-other").await, None);
    // The context header wins over the fairness id.
    let mut s =
        h.open(vec![header("x-gateway-inference-fairness-id", b"tenant-b"), context("ctx-wins", 2)]).await;
    assert_eq!(destination(&s.next().await).as_deref(), Some(BACKEND));
    s.finish().await;
    assert_eq!(workload(&h, "ctx-wins").await, Some((1, 2)));
    assert_eq!(workload(&h, "tenant-b").await, None);
    // Only when no context header is present: an unusable one is the workload `default`, and
    // the fairness id beside it is not read.
    let garbled = header("x-workload-context", b"{not json");
    let mut s = h.open(vec![garbled, header("x-gateway-inference-fairness-id", b"tenant-c")]).await;
    assert_eq!(destination(&s.next().await).as_deref(), Some(BACKEND));
    s.finish().await;
    assert_eq!(workload(&h, "default").await, Some((1, 3)));
    assert_eq!(workload(&h, "tenant-c").await, None);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_supplied_destination_and_flowgate_headers_are_never_honoured() {
    let mut h = Harness::start("").await;
    let mut s = h
        .open(vec![
            context("sneaky", 3),
            header("x-gateway-destination-endpoint", b"6.6.6.6:666"),
            header("X-Flowgate-Drop-Reason", b"forged"),
            header("x-flowgate-anything", b"forged"),
        ])
        .await;
    let r = s.next().await;
    assert_eq!(destination(&r).as_deref(), Some(BACKEND), "{r:?}");
    let Some(Reply::RequestHeaders(hr)) = &r.response else { unreachable!() };
    let m = hr.response.as_ref().unwrap().header_mutation.as_ref().unwrap();
    let mut removed = m.remove_headers.clone();
    removed.sort();
    assert_eq!(removed, ["x-flowgate-anything", "x-flowgate-drop-reason"]);
    s.finish().await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_clamp_claimed_criticality() {
    let mut h =
        Harness::start("workloads:\n  caps:\n    - workload_id: \"batch-*\"\n      max_criticality: 2\n")
            .await;
    let holder = h.dispatched("holder", 3).await;
    let mut batch = h.queued(vec![context("batch-7", 5)], 1).await;
    h.wait_metric(&queue_gauge("batch-7", 2), 1.0).await;
    let mut chat = h.queued(vec![context("chat", 3)], 2).await;
    holder.finish().await;
    let r = chat.next().await;
    assert_eq!(destination(&r).as_deref(), Some(BACKEND), "{r:?}");
    h.wait_metric("flowgate_queued_requests", 1.0).await;
    chat.finish().await;
    let r = batch.next().await;
    assert_eq!(destination(&r).as_deref(), Some(BACKEND), "{r:?}");
    batch.finish().await;
    h.wait_metric("flowgate_criticality_capped_total", 1.0).await;
    assert_eq!(workload(&h, "batch-7").await.map(|w| w.1), Some(2));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_is_held_until_the_response_ends() {
    let mut h = Harness::start("").await;
    let mut s = h.dispatched("bodies", 3).await;
    // Request body and trailers, response headers without end of stream: all CONTINUE, slot held.
    s.send(body(false, true)).await;
    assert!(matches!(s.next().await.response, Some(Reply::RequestBody(_))));
    s.send(ProcessingRequest {
        request: Some(Msg::RequestTrailers(HttpTrailers::default())),
        ..Default::default()
    })
    .await;
    assert!(matches!(s.next().await.response, Some(Reply::RequestTrailers(_))));
    s.send(response_headers(false)).await;
    assert!(matches!(s.next().await.response, Some(Reply::ResponseHeaders(_))));
    s.send(body(true, false)).await;
    assert!(matches!(s.next().await.response, Some(Reply::ResponseBody(_))));
    let text = h.metrics().await;
    assert_eq!(sample(&text, "flowgate_inflight{backend=\"127.0.0.1:8000\"}"), Some(1.0));
    // The last response body chunk releases it.
    s.send(body(true, true)).await;
    assert!(matches!(s.next().await.response, Some(Reply::ResponseBody(_))));
    h.wait_metric("flowgate_inflight{backend=\"127.0.0.1:8000\"}", 0.0).await;
    // Response trailers release too.
    let mut t = h.dispatched("trailers", 3).await;
    t.send(ProcessingRequest {
        request: Some(Msg::ResponseTrailers(HttpTrailers::default())),
        ..Default::default()
    })
    .await;
    assert!(matches!(t.next().await.response, Some(Reply::ResponseTrailers(_))));
    h.wait_metric("flowgate_inflight{backend=\"127.0.0.1:8000\"}", 0.0).await;
    // A stream that closes before its response ends releases it as well.
    let closed = h.dispatched("closed", 3).await;
    drop(closed);
    h.wait_metric("flowgate_inflight{backend=\"127.0.0.1:8000\"}", 0.0).await;
    h.dispatched("last", 3).await.finish().await;
    drop((s, t));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_queued_requests_with_503() {
    let mut h = Harness::start("").await;
    let _holder = h.dispatched("holder", 3).await;
    let mut waiting = h.queued(vec![context("waiting", 3)], 1).await;
    let running = h.running.take().unwrap();
    let metrics_addr = running.metrics_addr();
    let shutdown = tokio::spawn(running.shutdown());
    let r = waiting.next().await;
    assert_eq!(immediate(&r), Some((503, "shutting-down".into(), "1".into())), "{r:?}");
    tokio::time::timeout(DEADLINE, shutdown).await.expect("shutdown finishes").unwrap();
    assert!(tokio::net::TcpStream::connect(metrics_addr).await.is_err(), "metrics listener closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let h = Harness::start("").await;
    let addr = h.running.as_ref().unwrap().grpc_addr();
    let mut health =
        HealthClient::new(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap());
    for service in ["envoy.service.ext_proc.v3.ExternalProcessor", ""] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_each_get_exactly_one_answer() {
    const STREAMS: usize = 200;
    let h = Harness::start("").await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..STREAMS {
        let mut client = h.client.clone();
        tasks.spawn(async move {
            let (tx, rx) = mpsc::channel(4);
            let ctx = context(&format!("w{}", i % 7), (i % 5) as u8 + 1);
            tx.send(request_headers(vec![ctx])).await.unwrap();
            let rx = client.process(ReceiverStream::new(rx)).await.unwrap().into_inner();
            let mut s = Stream { tx, rx, deadline: DEADLINE };
            let r = s.next().await;
            assert_eq!(destination(&r).as_deref(), Some(BACKEND), "{r:?}");
            s.finish().await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    h.wait_metric("flowgate_requests_total{outcome=\"dispatched\"}", STREAMS as f64).await;
    h.wait_metric("flowgate_queued_requests", 0.0).await;
    h.wait_metric("flowgate_inflight{backend=\"127.0.0.1:8000\"}", 0.0).await;
    h.shutdown().await;
}
