//! Usage accounting over ext_proc, in-process: a dispatched request's response is read for its
//! token usage when the score counts tokens (here `fairness: vtc`), charged to its workload when
//! the response ends (or when its stream closes first), and shown in the workload API; without a
//! token rule the dispatch answer carries the mode override that skips the response body.

mod common;

use std::time::Duration;

use common::{connect, context, destination, header, http_get, start_server, wait_metric, Stream};
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest};
use flowgate::http::WorkloadJson;
use flowgate::reload::ReloadOutcome;
use flowgate::serve::{self, Running, ServeOptions};
use flowgate::usage_meter::ResponseWatch;

const DEADLINE: Duration = Duration::from_secs(10);
const VTC: &str = "scoring:\n  fairness: vtc\n";

fn response_headers(content_type: &str, end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Msg::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: vec![header(":status", b"200"), header("content-type", content_type.as_bytes())],
            }),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn response_body(chunk: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Msg::ResponseBody(HttpBody {
            body: chunk.to_vec(),
            end_of_stream,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Open a stream for `workload` with a request body of `content_length` bytes; it must dispatch.
/// Returns the stream and the answer's mode override.
async fn dispatch(
    running: &Running,
    workload: &str,
    content_length: u64,
) -> (Stream, Option<envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode>) {
    let mut client = connect(running.grpc_addr()).await;
    let headers = vec![context(workload, 3), header("content-length", content_length.to_string().as_bytes())];
    let mut stream = Stream::open(&mut client, headers, DEADLINE).await;
    let answer = stream.next().await;
    assert!(destination(&answer).is_some(), "dispatched: {answer:?}");
    (stream, answer.mode_override)
}

/// Send `message` and wait for its answer.
async fn exchange(stream: &mut Stream, message: ProcessingRequest) -> Reply {
    stream.tx.send(message).await.unwrap();
    stream.next().await.response.expect("an answer")
}

async fn workload(running: &Running, id: &str) -> WorkloadJson {
    let (status, body) =
        http_get(running.metrics_addr(), &format!("/api/v1/workload/{id}/metrics"), DEADLINE).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn a_streamed_response_is_charged_its_reported_usage_at_its_last_chunk() {
    let running = start_server(1, 4, VTC).await;
    let (mut stream, overridden) = dispatch(&running, "chat", 4000).await;
    assert!(overridden.is_none(), "a metered request keeps its response body phase");
    assert!(matches!(
        exchange(&mut stream, response_headers("text/event-stream", false)).await,
        Reply::ResponseHeaders(_)
    ));
    // The usage event split across chunks, mid-key and mid-number.
    let events: [&[u8]; 3] = [
        b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\ndata: {\"choices\":[],\"us",
        b"age\":{\"prompt_tokens\":1234,\"completion_tokens\":5",
        b"6,\"total_tokens\":1290}}\n\ndata: [DONE]\n\n",
    ];
    for chunk in &events[..2] {
        assert!(matches!(exchange(&mut stream, response_body(chunk, false)).await, Reply::ResponseBody(_)));
        assert_eq!(workload(&running, "chat").await.prompt_tokens, 0, "nothing charged before the end");
    }
    assert!(matches!(exchange(&mut stream, response_body(events[2], true)).await, Reply::ResponseBody(_)));
    // Charged before the last chunk was answered, so visible now (the stream is still open).
    let w = workload(&running, "chat").await;
    assert_eq!((w.prompt_tokens, w.completion_tokens), (1234, 56));
    assert!(w.token_rate_per_s > 0.0, "{w:?}");
    wait_metric(running.metrics_addr(), "flowgate_usage_reported_total", 1.0, DEADLINE).await;
    wait_metric(running.metrics_addr(), "flowgate_usage_estimated_total", 0.0, DEADLINE).await;
    wait_metric(running.metrics_addr(), "flowgate_inflight{backend=\"127.0.0.1:8000\"}", 0.0, DEADLINE).await;
    drop(stream);
    running.shutdown().await;
}

#[tokio::test]
async fn a_json_response_without_usage_is_charged_an_estimate() {
    let running = start_server(1, 4, VTC).await;
    let (mut stream, _) = dispatch(&running, "embed", 400).await;
    exchange(&mut stream, response_headers("application/json", false)).await;
    exchange(&mut stream, response_body(&[b'x'; 81], true)).await;
    let w = workload(&running, "embed").await;
    // 400 request bytes / 4 and 81 response bytes / 4, rounded up.
    assert_eq!((w.prompt_tokens, w.completion_tokens), (100, 21));
    wait_metric(running.metrics_addr(), "flowgate_usage_estimated_total", 1.0, DEADLINE).await;
    running.shutdown().await;
}

#[tokio::test]
async fn a_stream_closed_mid_response_is_charged_what_was_read() {
    let running = start_server(1, 4, VTC).await;
    let (mut stream, _) = dispatch(&running, "cut", 0).await;
    exchange(&mut stream, response_headers("text/event-stream", false)).await;
    exchange(&mut stream, response_body(&[b'y'; 40], false)).await;
    drop(stream); // the client went away mid-answer
    wait_metric(running.metrics_addr(), "flowgate_usage_estimated_total", 1.0, DEADLINE).await;
    wait_metric(running.metrics_addr(), "flowgate_inflight{backend=\"127.0.0.1:8000\"}", 0.0, DEADLINE).await;
    let w = workload(&running, "cut").await;
    assert_eq!((w.prompt_tokens, w.completion_tokens), (0, 10));
    running.shutdown().await;
}

#[tokio::test]
async fn without_a_token_rule_the_body_phase_is_skipped_and_nothing_is_charged() {
    let running = start_server(1, 4, "").await;
    let mut client = connect(running.grpc_addr()).await;
    let mut stream = Stream::open(&mut client, vec![context("plain", 3)], DEADLINE).await;
    let answer = stream.next().await;
    assert!(destination(&answer).is_some());
    assert_eq!(answer.mode_override, ResponseWatch::End.mode_override());
    // Envoy without allow_mode_override still sends the response: it passes, uncharged.
    exchange(&mut stream, response_headers("text/event-stream", false)).await;
    exchange(&mut stream, response_body(b"data: {\"usage\":{\"prompt_tokens\":5}}\n\n", true)).await;
    wait_metric(running.metrics_addr(), "flowgate_inflight{backend=\"127.0.0.1:8000\"}", 0.0, DEADLINE).await;
    let w = workload(&running, "plain").await;
    assert_eq!((w.prompt_tokens, w.completion_tokens), (0, 0));
    wait_metric(running.metrics_addr(), "flowgate_usage_reported_total", 0.0, DEADLINE).await;
    wait_metric(running.metrics_addr(), "flowgate_usage_estimated_total", 0.0, DEADLINE).await;
    running.shutdown().await;
}

#[tokio::test]
async fn a_reload_to_vtc_meters_requests_dispatched_after_it() {
    let dir = std::env::temp_dir().join(format!("flowgate-usage-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flowgate.yaml");
    let base = format!(
        "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends:\n  - address: {}\n    max_inflight: 4\n",
        common::BACKEND
    );
    std::fs::write(&path, &base).unwrap();
    let parsed = flowgate::reload::read_config(&path).unwrap_or_else(|e| panic!("{e:?}"));
    let options = ServeOptions { config_path: Some(path.clone()), ..Default::default() };
    let running = serve::start_with(parsed, options).await.expect("server starts");
    let (stream, overridden) = dispatch(&running, "before", 0).await;
    assert!(overridden.is_some(), "skipped before the reload");
    std::fs::write(&path, format!("{base}{VTC}")).unwrap();
    assert_eq!(running.reload(), Some(ReloadOutcome::Applied { restart_only: vec![] }));
    let (_after, overridden) = dispatch(&running, "after", 0).await;
    assert!(overridden.is_none(), "metered after the reload");
    drop(stream);
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
