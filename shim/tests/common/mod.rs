//! Helpers shared by the ext_proc integration tests (`protocol.rs`, `reliability.rs`, ...): starting
//! a server in-process ([`Server`]), opening ext_proc streams the way Envoy does, building request headers,
//! reading answers, and polling `/metrics`. Each test file passes its own deadline.

// Each test binary compiles this module but uses only a subset of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{HttpHeaders, ProcessingRequest, ProcessingResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use flowgate::config::ServeConfig;
use flowgate::metrics::sample;
use flowgate::serve::{self, Running};
use flowgate_engine::runtime::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

/// The backend named in answers (never contacted).
pub const BACKEND: &str = "127.0.0.1:8000";

pub type Client = ExternalProcessorClient<Channel>;

/// Start a server in-process on 127.0.0.1:0 (gRPC and metrics): one backend of `slots` slots,
/// `shards` shards, plus `extra` YAML sections.
pub async fn start_server(shards: usize, slots: u32, extra: &str) -> Running {
    let yaml = format!(
        "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: {shards}\nbackends:\n  - address: {BACKEND}\n    max_inflight: {slots}\n{extra}"
    );
    let config = ServeConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e:?}"));
    serve::start(config).await.expect("server starts")
}

/// A new HTTP/2 connection to `addr`.
pub async fn connect(addr: SocketAddr) -> Client {
    let channel = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connects");
    ExternalProcessorClient::new(channel)
}

/// One ext_proc stream, as Envoy holds it for one HTTP request.
pub struct Stream {
    /// The request side; the stream stays open while it is held.
    pub tx: mpsc::Sender<ProcessingRequest>,
    pub rx: Streaming<ProcessingResponse>,
    /// Longest [`Stream::next`] waits for an answer.
    pub deadline: Duration,
}

impl Stream {
    /// Open a stream on `client` and send its request headers (`headers` plus method and path).
    pub async fn open(client: &mut Client, headers: Vec<HeaderValue>, deadline: Duration) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        tx.send(request_headers(headers)).await.unwrap();
        let rx = tokio::time::timeout(deadline, client.process(ReceiverStream::new(rx)))
            .await
            .expect("stream opens in time")
            .expect("stream opens")
            .into_inner();
        Stream { tx, rx, deadline }
    }

    /// The next answer (panics after the deadline, on an error or at the end of the stream).
    pub async fn next(&mut self) -> ProcessingResponse {
        tokio::time::timeout(self.deadline, self.rx.message())
            .await
            .expect("no answer before the deadline")
            .expect("stream failed")
            .expect("stream ended without an answer")
    }
}

pub fn header(key: &str, value: &[u8]) -> HeaderValue {
    HeaderValue { key: key.into(), raw_value: value.to_vec(), ..Default::default() }
}

/// The `x-workload-context` header for workload `id` at `criticality`.
pub fn context(id: &str, criticality: u8) -> HeaderValue {
    header(
        "x-workload-context",
        format!(r#"{{"workload_id":"{id}","criticality":{criticality}}}"#).as_bytes(),
    )
}

/// Request headers: `headers`, then `:method POST` and `:path /v1/chat/completions`.
pub fn request_headers(mut headers: Vec<HeaderValue>) -> ProcessingRequest {
    headers.extend([header(":method", b"POST"), header(":path", b"/v1/chat/completions")]);
    ProcessingRequest {
        request: Some(Msg::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers }),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The destination a dispatched answer sets, checking the answer's whole shape (route cache
/// cleared, exactly one overwriting destination header, the same address in `envoy.lb` metadata).
pub fn destination(r: &ProcessingResponse) -> Option<String> {
    let Some(Reply::RequestHeaders(h)) = &r.response else {
        return None;
    };
    let common = h.response.as_ref()?;
    assert!(common.clear_route_cache);
    let m = common.header_mutation.as_ref()?;
    let set: Vec<_> = m
        .set_headers
        .iter()
        .filter(|o| o.header.as_ref().unwrap().key == "x-gateway-destination-endpoint")
        .collect();
    assert_eq!(set.len(), 1, "{r:?}");
    assert_eq!(set[0].append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
    let address = String::from_utf8(set[0].header.as_ref().unwrap().raw_value.clone()).unwrap();
    let md = r.dynamic_metadata.as_ref().expect("dynamic metadata");
    let Some(Kind::StructValue(lb)) = &md.fields["envoy.lb"].kind else { panic!("{md:?}") };
    assert_eq!(lb.fields["x-gateway-destination-endpoint"].kind, Some(Kind::StringValue(address.clone())));
    Some(address)
}

/// The destination header a dispatched answer sets, without checking the rest of its shape.
pub fn destination_header(r: &ProcessingResponse) -> Option<String> {
    let Some(Reply::RequestHeaders(h)) = &r.response else {
        return None;
    };
    let m = h.response.as_ref()?.header_mutation.as_ref()?;
    let set =
        m.set_headers.iter().find(|o| o.header.as_ref().unwrap().key == "x-gateway-destination-endpoint")?;
    Some(String::from_utf8(set.header.as_ref().unwrap().raw_value.clone()).unwrap())
}

/// `(status, x-flowgate-drop-reason, retry-after)` of an immediate response.
pub fn immediate(r: &ProcessingResponse) -> Option<(i32, String, String)> {
    let Some(Reply::ImmediateResponse(i)) = &r.response else {
        return None;
    };
    let get = |key: &str| {
        let h = i.headers.as_ref()?.set_headers.iter().find(|o| o.header.as_ref().unwrap().key == key)?;
        Some(String::from_utf8(h.header.as_ref().unwrap().raw_value.clone()).unwrap())
    };
    Some((i.status?.code, get("x-flowgate-drop-reason")?, get("retry-after")?))
}

/// A minimal HTTP/1.1 GET: (status, body); the answer must be complete within `deadline`.
pub async fn http_get(addr: SocketAddr, path: &str, deadline: Duration) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(deadline, stream.read_to_end(&mut raw)).await.expect("HTTP answer in time").unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_string())
}

/// Poll `/metrics` at `metrics` until `series` reads `value`, for at most `deadline`.
pub async fn wait_metric(metrics: SocketAddr, series: &str, value: f64, deadline: Duration) {
    let start = Instant::now();
    loop {
        let text = http_get(metrics, "/metrics", deadline).await.1;
        let got = sample(&text, series);
        if got == Some(value) {
            return;
        }
        assert!(start.elapsed() < deadline, "{series} stayed at {got:?}, expected {value}\n{text}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `GET /api/v1/backends` of `running`, parsed.
pub async fn backends(running: &Running, deadline: Duration) -> Vec<serde_json::Value> {
    let (status, body) = http_get(running.metrics_addr(), "/api/v1/backends", deadline).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Poll `/api/v1/backends` until `pred` holds, for at most `deadline`.
pub async fn wait_backends(
    running: &Running,
    what: &str,
    deadline: Duration,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let b = backends(running, deadline).await;
        if pred(&b) {
            return b;
        }
        assert!(start.elapsed() < deadline, "{what}: backends stayed {b:#?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Longest [`Server::wait_metric`] waits.
pub const SERVER_DEADLINE: Duration = Duration::from_secs(30);

/// A server started in-process, with its addresses at hand.
pub struct Server {
    running: Option<Running>,
    /// Its ext_proc listener.
    pub grpc: SocketAddr,
    /// Its metrics and API listener.
    pub metrics: SocketAddr,
}

impl Server {
    /// One backend of `slots` slots, `shards` shards, plus `extra` YAML sections.
    pub async fn start(shards: usize, slots: u32, extra: &str) -> Server {
        let running = start_server(shards, slots, extra).await;
        let (grpc, metrics) = (running.grpc_addr(), running.metrics_addr());
        Server { running: Some(running), grpc, metrics }
    }

    /// Its engine.
    pub fn engine(&self) -> Arc<Engine> {
        self.running.as_ref().unwrap().engine().clone()
    }

    /// A client connected to its ext_proc listener.
    pub async fn client(&self) -> Client {
        connect(self.grpc).await
    }

    /// Wait until `series` reads `value` on its `/metrics` (at most [`SERVER_DEADLINE`]).
    pub async fn wait_metric(&self, series: &str, value: f64) {
        wait_metric(self.metrics, series, value, SERVER_DEADLINE).await
    }

    /// Shut it down: every queued request answered first.
    pub async fn shutdown(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// A fresh directory for one test's files (`tag` names the test; the process id keeps runs apart).
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("flowgate-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Replace `path`'s contents at once (write aside, rename), as an operator's tooling does.
pub fn write_atomically(path: &std::path::Path, text: &str) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text).unwrap();
    std::fs::rename(&aside, path).unwrap();
}
