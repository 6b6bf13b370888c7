//! Streams held open as an LLM gateway holds them: each is one HTTP request that was dispatched
//! and whose response is streaming — `request_headers` sent and answered with a destination,
//! then `response_headers` (no end of stream, `text/event-stream`) sent and answered — and that
//! now waits for its body. Closing one sends the last body chunk (`end_of_stream`), awaits its
//! answer, ends the request side and awaits the end of the stream.

use crate::extproc::client::{classify, request_headers};
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

type Client = ExternalProcessorClient<Channel>;

/// Longest one stream may take to open (both answers) or to close.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams opened at once (the rest wait their turn), so that the opening burst stays well
/// inside the server's submission rings.
const OPENING_AT_ONCE: usize = 256;

/// One open stream.
pub struct Held {
    tx: mpsc::Sender<ProcessingRequest>,
    answers: Streaming<ProcessingResponse>,
}

fn header(key: &str, value: &[u8]) -> HeaderValue {
    HeaderValue { key: key.into(), raw_value: value.to_vec(), ..Default::default() }
}

fn message(request: Msg) -> ProcessingRequest {
    ProcessingRequest { request: Some(request), ..Default::default() }
}

/// The model server's response headers: a stream of server-sent events begins.
fn streaming_response_headers() -> ProcessingRequest {
    let headers = vec![header(":status", b"200"), header("content-type", b"text/event-stream")];
    message(Msg::ResponseHeaders(HttpHeaders {
        headers: Some(HeaderMap { headers }),
        end_of_stream: false,
        ..Default::default()
    }))
}

/// The response's last chunk.
fn last_chunk() -> ProcessingRequest {
    message(Msg::ResponseBody(HttpBody {
        body: b"data: [DONE]\n\n".to_vec(),
        end_of_stream: true,
        ..Default::default()
    }))
}

async fn answer(
    answers: &mut Streaming<ProcessingResponse>,
    what: &str,
) -> Result<ProcessingResponse, String> {
    match answers.message().await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(format!("stream ended before the {what} answer")),
        Err(s) => Err(format!("{what} answer: {s}")),
    }
}

/// Open stream `i` on `client` and bring it to its steady state.
async fn open(mut client: Client, i: usize) -> Result<Held, String> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(request_headers(i, 0)).await.map_err(|_| "request side closed".to_string())?;
    let mut answers =
        client.process(ReceiverStream::new(rx)).await.map_err(|s| format!("open: {s}"))?.into_inner();
    let headers = answer(&mut answers, "request headers").await?;
    classify(&headers, true).map_err(|f| format!("{f:?}"))?;
    tx.send(streaming_response_headers()).await.map_err(|_| "request side closed".to_string())?;
    match answer(&mut answers, "response headers").await?.response {
        Some(Reply::ResponseHeaders(_)) => Ok(Held { tx, answers }),
        other => Err(format!("unexpected response headers answer: {other:?}")),
    }
}

/// End a held stream cleanly.
async fn close(held: Held) -> Result<(), String> {
    let Held { tx, mut answers } = held;
    tx.send(last_chunk()).await.map_err(|_| "request side closed".to_string())?;
    match answer(&mut answers, "last body chunk").await?.response {
        Some(Reply::ResponseBody(_)) => {}
        other => return Err(format!("unexpected body answer: {other:?}")),
    }
    drop(tx);
    match answers.message().await {
        Ok(None) => Ok(()),
        other => Err(format!("stream end: {other:?}")),
    }
}

async fn bounded<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| Err(format!("{what}: no answer in {STEP_TIMEOUT:?}")))
}

/// `n` HTTP/2 connections to `addr`.
pub async fn connect(addr: &str, n: usize) -> Result<Vec<Client>, String> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5));
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        clients.push(Client::new(endpoint.connect().await.map_err(|e| format!("connect {addr}: {e}"))?));
    }
    Ok(clients)
}

/// Open `n` streams over `clients` (round robin), each in its steady state once this returns.
pub async fn open_all(clients: &[Client], n: usize) -> Result<Vec<Held>, String> {
    let mut held = Vec::with_capacity(n);
    let mut next = 0;
    while next < n {
        let batch = (next..n.min(next + OPENING_AT_ONCE))
            .map(|i| tokio::spawn(bounded("open", open(clients[i % clients.len()].clone(), i))))
            .collect::<Vec<_>>();
        next += batch.len();
        for h in batch {
            held.push(h.await.map_err(|e| format!("open task: {e}"))??);
        }
    }
    Ok(held)
}

/// Close every stream of `held`, all at once.
pub async fn close_all(held: Vec<Held>) -> Result<(), String> {
    let tasks: Vec<_> = held.into_iter().map(|h| tokio::spawn(bounded("close", close(h)))).collect();
    for t in tasks {
        t.await.map_err(|e| format!("close task: {e}"))??;
    }
    Ok(())
}
