//! Helpers shared by the simulator's integration tests: starting a simulator in-process on
//! 127.0.0.1:0 with fast timings, a minimal HTTP/1.1 client over a raw `TcpStream`
//! (`Connection: close`, chunked bodies decoded), reading metrics samples, and polling a
//! condition with a deadline.

// Each test binary compiles this module but uses only a subset of it.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use flowgate_sim::{Sim, SimConfig, SimStats};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Longest any single step of a test may wait.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A configuration with fast timings: 1 ms decode steps, 1 µs per prompt token, listening on
/// an ephemeral port.
pub fn fast() -> SimConfig {
    SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        prefill_us_per_token: 1.0,
        decode_step_ms: 1.0,
        ..SimConfig::default()
    }
}

/// Start a simulator with `config`.
pub async fn start(config: SimConfig) -> Sim {
    Sim::start(config).await.expect("simulator starts")
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
}

/// The bytes of one HTTP/1.1 request with `Connection: close`.
pub fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nhost: sim\r\nconnection: close\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        out.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = find(body, b"\r\n") {
        let size = std::str::from_utf8(&body[..end]).unwrap().split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size, 16).expect("chunk size");
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 2 + size + 2..];
    }
    out
}

/// Parse a complete response read until the server closed the connection.
pub fn parse_response(raw: &[u8]) -> Resp {
    let split = find(raw, b"\r\n\r\n").expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    Resp { status, headers, body }
}

/// Send one request and read the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    s.write_all(&raw_request(method, path, headers, body)).await.expect("writes");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("reads");
    parse_response(&raw)
}

/// [`request`] bounded by [`DEADLINE`].
pub async fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    tokio::time::timeout(DEADLINE, request(addr, method, path, headers, body))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} answered within {DEADLINE:?}"))
}

/// POST `body` as JSON to `path`.
pub async fn post(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    call(addr, "POST", path, &[], body.to_string().as_bytes()).await
}

/// GET `path`.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    call(addr, "GET", path, &[], b"").await
}

/// `GET /admin/stats`.
pub async fn stats(addr: SocketAddr) -> SimStats {
    serde_json::from_value(get(addr, "/admin/stats").await.json()).expect("stats JSON")
}

/// The data payloads of a server-sent event stream, in order.
pub fn sse_events(body: &[u8]) -> Vec<String> {
    let text = std::str::from_utf8(body).expect("UTF-8 stream");
    assert!(text.ends_with("\n\n"), "stream ends with a blank line: {text:?}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap_or_else(|| panic!("data event: {e:?}")).to_string())
        .collect()
}

/// The value of the sample `name` whose labels contain `label` (e.g. `model_name="m"`).
pub fn sample(page: &str, name: &str, label: &str) -> Option<f64> {
    page.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, labels) = series.split_once('{').unwrap_or((series, ""));
        (n == name && labels.contains(label)).then(|| value.parse().ok()).flatten()
    })
}

/// Poll `f` until it returns `Some`, failing after [`DEADLINE`]. Polls every millisecond: the
/// sleep paces the polling, it does not synchronise anything.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Poll the stats until `pred` holds.
pub async fn stats_until(sim: &Sim, what: &str, pred: impl Fn(&SimStats) -> bool) -> SimStats {
    eventually(what, || {
        let s = sim.stats();
        let ok = pred(&s);
        async move { ok.then_some(s) }
    })
    .await
}

/// A completion request body with `prompt` and `max_tokens`.
pub fn completion(prompt: &str, max_tokens: u32) -> Value {
    serde_json::json!({"model": "sim-model", "prompt": prompt, "max_tokens": max_tokens})
}
