//! Per-workload quotas over ext_proc, in-process (`workloads.quotas`): a `reject` quota answers
//! 429 with drop reason `quota` and the `retry-after` its bucket says; a `queue` quota holds the
//! workload's next request without holding anyone else up and lets it go when a slot of the
//! workload is released; dispatched responses carry `x-ratelimit-remaining-*`; a token quota
//! meters its workload's responses even when no scoring rule counts tokens.

mod common;

use std::time::Duration;

use common::{connect, context, destination, header, immediate, start_server, Stream};
use envoy_types::pb::envoy::config::core::v3::HeaderMap;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingRequest};
use flowgate::server::{REMAINING_REQUESTS_HEADER, REMAINING_TOKENS_HEADER};
use flowgate::usage_meter::ResponseWatch;

const DEADLINE: Duration = Duration::from_secs(10);

fn quotas(rules: &str) -> String {
    format!("workloads:\n  quotas:\n{rules}")
}

async fn open(running: &flowgate::serve::Running, workload: &str) -> Stream {
    let mut client = connect(running.grpc_addr()).await;
    Stream::open(&mut client, vec![context(workload, 3)], DEADLINE).await
}

fn response_headers() -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Msg::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers: vec![header(":status", b"200")] }),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The headers the response-headers answer sets, as (name, value).
async fn response_header_answer(stream: &mut Stream) -> Vec<(String, String)> {
    stream.tx.send(response_headers()).await.unwrap();
    let Some(Reply::ResponseHeaders(h)) = stream.next().await.response else { panic!("a headers answer") };
    h.response
        .and_then(|c| c.header_mutation)
        .map(|m| {
            m.set_headers
                .into_iter()
                .map(|o| {
                    let h = o.header.unwrap();
                    (h.key, String::from_utf8(h.raw_value).unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_reject_quota_answers_429_quota_with_its_retry_after() {
    let rules = "    - workload_id: \"team-*\"\n      max_inflight: 1\n      on_exceed: reject\n    - workload_id: slow\n      requests_per_minute: 1\n      on_exceed: reject\n";
    let running = start_server(1, 8, &quotas(rules)).await;
    let mut held = open(&running, "team-a").await;
    assert!(destination(&held.next().await).is_some());
    let mut over = open(&running, "team-a").await;
    assert_eq!(
        immediate(&over.next().await),
        Some((429, "quota".into(), "1".into())),
        "max_inflight: retry in 1 s"
    );
    let mut other = open(&running, "chat").await;
    assert!(destination(&other.next().await).is_some(), "other workloads are not limited");
    // A per-minute rate: the second request waits for the bucket, a minute after the first.
    let mut first = open(&running, "slow").await;
    assert!(destination(&first.next().await).is_some());
    let mut second = open(&running, "slow").await;
    let (status, reason, retry) = immediate(&second.next().await).expect("refused");
    assert_eq!((status, reason.as_str()), (429, "quota"));
    let retry: u64 = retry.parse().unwrap();
    assert!((59..=60).contains(&retry), "retry-after {retry}");
    common::wait_metric(running.metrics_addr(), "flowgate_quota_refusals_total", 2.0, DEADLINE).await;
    drop((held, first, other));
    running.shutdown().await;
}

#[tokio::test]
async fn a_queue_quota_holds_the_workload_without_holding_others_up() {
    let rules = "    - workload_id: batch\n      max_inflight: 1\n";
    let running = start_server(1, 8, &quotas(rules)).await;
    let mut first = open(&running, "batch").await;
    assert!(destination(&first.next().await).is_some());
    let mut waiting = open(&running, "batch").await;
    // Others go while it waits.
    for i in 0..3 {
        let mut s = open(&running, &format!("chat-{i}")).await;
        assert!(destination(&s.next().await).is_some());
    }
    let pending = tokio::time::timeout(Duration::from_millis(200), waiting.next()).await;
    assert!(pending.is_err(), "dispatched past its quota: {pending:?}");
    // The first one's stream ends: its slot is released, and the waiting one goes.
    drop(first);
    assert!(destination(&waiting.next().await).is_some(), "released after the first finished");
    running.shutdown().await;
}

#[tokio::test]
async fn dispatched_responses_carry_what_is_left_of_the_quota() {
    let rules = "    - workload_id: metered\n      requests_per_minute: 10\n      tokens_per_minute: 1000\n    - workload_id: counted\n      requests_per_minute: 5\n";
    let running = start_server(1, 8, &quotas(rules)).await;
    let mut s = open(&running, "metered").await;
    let answer = s.next().await;
    assert!(destination(&answer).is_some());
    assert_eq!(answer.mode_override, None, "a token quota needs the response read");
    let headers = response_header_answer(&mut s).await;
    assert!(headers.contains(&(REMAINING_REQUESTS_HEADER.into(), "9".into())), "{headers:?}");
    assert!(headers.contains(&(REMAINING_TOKENS_HEADER.into(), "1000".into())), "{headers:?}");
    // A request quota alone: the body is skipped, the headers still come for what is left.
    let mut counted = open(&running, "counted").await;
    let answer = counted.next().await;
    assert_eq!(answer.mode_override, ResponseWatch::Headers.mode_override());
    let headers = response_header_answer(&mut counted).await;
    assert!(headers.contains(&(REMAINING_REQUESTS_HEADER.into(), "4".into())), "{headers:?}");
    // No quota, no such headers: Envoy is asked for nothing but the response's end (an Envoy
    // ignoring the override still sends the headers, answered empty).
    let mut plain = open(&running, "plain").await;
    let answer = plain.next().await;
    assert_eq!(answer.mode_override, ResponseWatch::End.mode_override());
    assert!(response_header_answer(&mut plain).await.is_empty());
    running.shutdown().await;
}

#[test]
fn bad_quotas_are_refused_with_their_paths() {
    let yaml = "workloads:\n  quotas:\n    - workload_id: a\n    - workload_id: b\n      max_inflight: 0\n      on_exceed: later\n";
    let err = flowgate::config::ServeConfig::from_yaml(yaml).unwrap_err();
    let text = format!("{err:?}");
    assert!(text.contains("on_exceed"), "{text}");
    let yaml = "workloads:\n  quotas:\n    - workload_id: a\n    - workload_id: b\n      max_inflight: 0\n";
    let errors = flowgate::config::ServeConfig::from_yaml(yaml).unwrap_err();
    let text = format!("{errors:?}");
    assert!(text.contains("workloads.quotas[0].max_inflight"), "{text}");
    assert!(text.contains("workloads.quotas[1].max_inflight"), "{text}");
}
