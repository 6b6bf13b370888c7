//! The open-loop generator, playing Envoy in front of the pool.
//!
//! Poisson arrivals at a fixed rate (seeded, so every configuration sees the same arrivals), the
//! scenarios' "mixed 30/50/20" classes (30 % `low` crit 1, 50 % `medium` crit 3, 20 % `high`
//! crit 5). Each request: open an ext_proc stream to flowgate, send `request_headers` with
//! `x-workload-context`, await the headers answer (a destination = dispatched, an
//! `ImmediateResponse` = shed), POST the streamed completion to that sim, send
//! `response_headers` when its head arrives, time the first SSE `data:` event (TTFT) and the end
//! (end to end), send the last body piece as `response_body` with `end_of_stream` (the slot is
//! freed), close the stream. Times are from the scheduled arrival, so queueing in flowgate counts.
//! At most `max_outstanding` requests are open at once; an arrival beyond that is dropped by
//! the client (counted).

use super::http;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest};
use flowgate::server::DESTINATION_HEADER;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

pub type Client = ExternalProcessorClient<Channel>;

/// The classes of the mix: workload id, criticality, share.
pub const CLASSES: [(&str, u8, f64); 3] = [("low", 1, 0.3), ("medium", 3, 0.5), ("high", 5, 0.2)];

/// What one load run offers.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Arrivals/s (Poisson).
    pub rate: f64,
    /// Arrivals stop after this long.
    pub duration: Duration,
    /// Most requests open at once.
    pub max_outstanding: usize,
    /// Arrival and class seed.
    pub seed: u64,
    /// The request body (same for every request).
    pub body: Arc<String>,
    /// Longest one request may take in all (TTL + service + slack); longer = harness broken.
    pub timeout: Duration,
    /// Send only this class (index into [`CLASSES`]) instead of the mix.
    pub only_class: Option<usize>,
}

/// How a request ended.
#[derive(Clone, Debug)]
pub enum Fate {
    /// Streamed to the end: TTFT and end to end from the arrival, completion tokens, end time.
    Completed { ttft: Duration, e2e: Duration, tokens: u64, done: Duration },
    /// flowgate answered with an immediate response (429 or 503).
    Shed,
    /// The sim answered a non-200 status.
    BackendStatus,
    /// The client's own bound on open requests was reached.
    ClientDropped,
    /// No answer, a protocol error, an I/O error: a broken harness.
    Failed(String),
}

/// One request's record: its class index, arrival offset and fate.
#[derive(Clone, Debug)]
pub struct Record {
    pub class: usize,
    pub arrival: Duration,
    pub fate: Fate,
}

/// SplitMix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The class of a uniform draw `u` in [0, 1).
pub fn class_of(u: f64) -> usize {
    let mut acc = 0.0;
    for (i, (_, _, share)) in CLASSES.iter().enumerate() {
        acc += share;
        if u < acc {
            return i;
        }
    }
    CLASSES.len() - 1
}

/// Connect `n` HTTP/2 connections to flowgate's ext_proc listener.
pub async fn connect(addr: SocketAddr, n: usize) -> Result<Vec<Client>, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Client::new(endpoint.connect().await?));
    }
    Ok(clients)
}

/// Offer `spec` through `clients`; every arrival's record, in arrival order.
pub async fn run(clients: &[Client], spec: &LoadSpec) -> Vec<Record> {
    let mut rng = Rng(spec.seed);
    let permits = Arc::new(Semaphore::new(spec.max_outstanding.max(1)));
    let start = Instant::now() + Duration::from_millis(5);
    let mut at = Duration::ZERO;
    let mut handles = Vec::new();
    let mut records = Vec::new();
    for i in 0.. {
        at += Duration::from_secs_f64(-(1.0 - rng.next_f64()).ln() / spec.rate);
        if at >= spec.duration {
            break;
        }
        let class = spec.only_class.unwrap_or_else(|| class_of(rng.next_f64()));
        tokio::time::sleep_until(start + at).await;
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            records.push(Record { class, arrival: at, fate: Fate::ClientDropped });
            continue;
        };
        let client = clients[i % clients.len()].clone();
        let (body, timeout) = (spec.body.clone(), spec.timeout);
        let arrival = start + at;
        handles.push((
            class,
            at,
            tokio::spawn(async move {
                let fate = tokio::time::timeout(timeout, one(client, class, arrival, start, &body))
                    .await
                    .unwrap_or_else(|_| Fate::Failed(format!("no end within {timeout:?}")));
                drop(permit);
                fate
            }),
        ));
    }
    for (class, arrival, h) in handles {
        let fate = h.await.unwrap_or_else(|e| Fate::Failed(format!("request task: {e}")));
        records.push(Record { class, arrival, fate });
    }
    records.sort_by_key(|r| r.arrival);
    records
}

fn header(key: &str, value: &str) -> HeaderValue {
    HeaderValue { key: key.into(), raw_value: value.as_bytes().to_vec(), ..Default::default() }
}

fn message(m: Msg) -> ProcessingRequest {
    ProcessingRequest { request: Some(m), ..Default::default() }
}

fn headers_msg(headers: Vec<HeaderValue>, end_of_stream: bool) -> ProcessingRequest {
    message(Msg::RequestHeaders(HttpHeaders {
        headers: Some(HeaderMap { headers }),
        end_of_stream,
        ..Default::default()
    }))
}

/// The completion tokens in an SSE usage event, if `event` is one.
fn usage_tokens(event: &str) -> Option<u64> {
    let data = event.strip_prefix("data: ")?;
    let v: serde_json::Value = serde_json::from_str(data).ok()?;
    v["usage"]["completion_tokens"].as_u64()
}

/// One request, as Envoy would carry it.
async fn one(mut client: Client, class: usize, arrival: Instant, start: Instant, body: &str) -> Fate {
    let (workload, criticality, _) = CLASSES[class];
    let context = format!(r#"{{"workload_id":"{workload}","criticality":{criticality}}}"#);
    let (tx, rx) = mpsc::channel(4);
    let first = headers_msg(
        vec![
            header(":method", "POST"),
            header(":path", "/v1/completions"),
            header(":authority", "llm.local"),
            header("content-type", "application/json"),
            header("x-workload-context", &context),
        ],
        false,
    );
    tx.try_send(first).expect("a fresh channel has room");
    let mut answers = match client.process(ReceiverStream::new(rx)).await {
        Ok(a) => a.into_inner(),
        Err(s) => return Fate::Failed(format!("ext_proc open: {s}")),
    };
    let answer = match answers.message().await {
        Ok(Some(a)) => a,
        other => return Fate::Failed(format!("headers answer: {other:?}")),
    };
    let destination = match answer.response {
        Some(Reply::RequestHeaders(h)) => {
            h.response
                .and_then(|c| c.header_mutation)
                .and_then(|m| {
                    m.set_headers
                        .into_iter()
                        .filter_map(|o| o.header)
                        .find(|h| h.key.eq_ignore_ascii_case(DESTINATION_HEADER))
                })
                .map(|h| {
                    if h.raw_value.is_empty() {
                        h.value
                    } else {
                        String::from_utf8_lossy(&h.raw_value).into()
                    }
                })
        }
        Some(Reply::ImmediateResponse(_)) => return Fate::Shed,
        other => return Fate::Failed(format!("unexpected headers answer: {other:?}")),
    };
    let Some(Ok(addr)) = destination.map(|d| d.parse::<SocketAddr>()) else {
        return Fate::Failed("dispatched without a usable destination".into());
    };
    let mut response =
        match http::post(addr, "/v1/completions", &[("x-workload-context", &context)], body).await {
            Ok(r) => r,
            Err(e) => return Fate::Failed(format!("POST {addr}: {e}")),
        };
    let status = response.status;
    let head = HttpHeaders {
        headers: Some(HeaderMap { headers: vec![header(":status", &status.to_string())] }),
        end_of_stream: false,
        ..Default::default()
    };
    if tx.send(message(Msg::ResponseHeaders(head))).await.is_err() {
        return Fate::Failed("ext_proc request side closed early".into());
    }
    match answers.message().await {
        Ok(Some(a)) if matches!(a.response, Some(Reply::ResponseHeaders(_))) => {}
        other => return Fate::Failed(format!("response headers answer: {other:?}")),
    }
    // Read the stream: SSE events are separated by a blank line.
    let (mut pending, mut ttft, mut events, mut usage) = (String::new(), None, 0u64, None);
    let mut last = Vec::new();
    loop {
        match response.next().await {
            Ok(Some(piece)) => {
                pending.push_str(&String::from_utf8_lossy(&piece));
                last = piece;
                while let Some(i) = pending.find("\n\n") {
                    let event: String = pending.drain(..i + 2).collect();
                    let event = event.trim();
                    if !event.starts_with("data:") {
                        continue;
                    }
                    ttft.get_or_insert_with(|| arrival.elapsed());
                    if let Some(u) = usage_tokens(event) {
                        usage = Some(u);
                    } else if event != "data: [DONE]" {
                        events += 1;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => return Fate::Failed(format!("reading the stream from {addr}: {e}")),
        }
    }
    let e2e = arrival.elapsed();
    let end = HttpBody { body: last, end_of_stream: true, ..Default::default() };
    if tx.send(message(Msg::ResponseBody(end))).await.is_err() {
        return Fate::Failed("ext_proc request side closed before the body's end".into());
    }
    match answers.message().await {
        Ok(Some(a)) if matches!(a.response, Some(Reply::ResponseBody(_))) => {}
        other => return Fate::Failed(format!("response body answer: {other:?}")),
    }
    drop(tx);
    match answers.message().await {
        Ok(None) => {}
        other => return Fate::Failed(format!("stream end: {other:?}")),
    }
    if status != 200 {
        return Fate::BackendStatus;
    }
    match ttft {
        Some(ttft) => Fate::Completed { ttft, e2e, tokens: usage.unwrap_or(events), done: start.elapsed() },
        None => Fate::Failed(format!("a 200 stream from {addr} without a data event")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_30_50_20_and_usage_is_read() {
        let mut rng = Rng(7);
        let mut n = [0usize; 3];
        for _ in 0..100_000 {
            n[class_of(rng.next_f64())] += 1;
        }
        for (c, (_, _, share)) in CLASSES.iter().enumerate() {
            assert!((n[c] as f64 / 1e5 - share).abs() < 0.01, "{n:?}");
        }
        let u = r#"data: {"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":24}}"#;
        assert_eq!(usage_tokens(u), Some(24));
        assert_eq!(usage_tokens("data: [DONE]"), None);
    }
}
