//! The load: a closed-loop HTTP/1.1 client (hyper) over `connections` keep-alive connections to
//! Envoy, each sending streamed `POST /v1/completions` of one workload back to back and reading
//! every SSE response to its end; and one-shot `GET`s for the observers.

use flowgate_bench::stats::Hist;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Largest response body read (a 64-chunk SSE completion is ~15 KB; a metrics page ~100 KB).
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// Longest one request may take before the harness counts it as broken.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The event a complete OpenAI-style stream ends with.
const DONE: &[u8] = b"data: [DONE]";

/// One keep-alive connection to Envoy's listener.
pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

fn broken(what: impl std::fmt::Display) -> io::Error {
    io::Error::other(what.to_string())
}

/// Open one HTTP/1.1 connection to `addr`.
pub async fn connect(addr: SocketAddr) -> io::Result<Connection> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(broken)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Connection { sender, host: addr.to_string() })
}

/// Send `req` on `conn`; the status and the whole (bounded) body.
async fn exchange(conn: &mut Connection, req: Request<Full<Bytes>>) -> io::Result<(u16, Bytes)> {
    let round_trip = async {
        conn.sender.ready().await.map_err(broken)?;
        let resp = conn.sender.send_request(req).await.map_err(broken)?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES).collect().await.map_err(broken)?;
        Ok((status, body.to_bytes()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, round_trip)
        .await
        .map_err(|_| broken(format!("no complete answer within {} s", REQUEST_TIMEOUT.as_secs())))?
}

/// `GET path` on `addr` over a fresh connection: status and body.
pub async fn get(addr: SocketAddr, path: &str) -> io::Result<(u16, Bytes)> {
    let mut conn = connect(addr).await?;
    let req = Request::get(path)
        .header("host", conn.host.as_str())
        .body(Full::new(Bytes::new()))
        .map_err(broken)?;
    exchange(&mut conn, req).await
}

/// `GET path` that must answer 200 with UTF-8 text.
pub async fn get_text(addr: SocketAddr, path: &str) -> io::Result<String> {
    let (status, body) = get(addr, path).await?;
    if status != 200 {
        return Err(broken(format!("GET {addr}{path}: status {status}")));
    }
    String::from_utf8(body.to_vec()).map_err(|_| broken(format!("GET {addr}{path}: not UTF-8")))
}

/// The completion request: `max_tokens` streamed tokens (one chunk each on a sim with
/// `--tokens-per-chunk 1`), the usage in a last event.
pub fn completion_body(max_tokens: u32) -> String {
    format!(
        r#"{{"model":"sim-model","prompt":"hello envoy","max_tokens":{max_tokens},"stream":true,"stream_options":{{"include_usage":true}}}}"#
    )
}

/// The `X-Workload-Context` value naming `workload`.
pub fn workload_context(workload: &str) -> String {
    format!(r#"{{"workload_id":"{workload}","criticality":3}}"#)
}

/// What one round of load did.
pub struct RoundLoad {
    /// Requests completed (every one 200 and ending with `data: [DONE]`).
    pub requests: u64,
    /// From the first request sent to the last answer read, s.
    pub elapsed_s: f64,
    /// Each request's latency (sent → last byte read).
    pub latency: Hist,
}

/// One request on `conn`, checked complete: its latency.
async fn one(conn: &mut Connection, context: &str, body: &Bytes) -> io::Result<Duration> {
    let req = Request::post("/v1/completions")
        .header("host", conn.host.as_str())
        .header("content-type", "application/json")
        .header("x-workload-context", context)
        .body(Full::new(body.clone()))
        .map_err(broken)?;
    let started = Instant::now();
    let (status, body) = exchange(conn, req).await?;
    let took = started.elapsed();
    let text = body.trim_ascii_end();
    if status != 200 || !text.ends_with(DONE) {
        let tail = String::from_utf8_lossy(&text[text.len().saturating_sub(160)..]).into_owned();
        return Err(broken(format!("incomplete answer: status {status}, body ends {tail:?}")));
    }
    Ok(took)
}

/// Run every connection closed-loop for `seconds` with `workload`'s requests; the connections
/// come back for the next round. Any failed or incomplete request fails the round.
pub async fn round(
    conns: Vec<Connection>,
    workload: &str,
    max_tokens: u32,
    seconds: f64,
) -> io::Result<(Vec<Connection>, RoundLoad)> {
    let context = workload_context(workload);
    let body = Bytes::from(completion_body(max_tokens));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (context, body) = (context.clone(), body.clone());
            tokio::spawn(async move {
                let mut latency = Hist::default();
                while Instant::now() < deadline {
                    let took = one(&mut conn, &context, &body).await?;
                    latency.record(took.as_nanos() as u64);
                }
                Ok::<_, io::Error>((conn, latency))
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(tasks.len());
    let mut latency = Hist::default();
    let mut first_error = None;
    for t in tasks {
        match t.await.map_err(broken).and_then(|r| r) {
            Ok((conn, h)) => {
                latency.add(&h);
                conns.push(conn);
            }
            Err(e) => first_error = first_error.or(Some(e)),
        }
    }
    if let Some(e) = first_error {
        return Err(broken(format!("{workload}: {e}")));
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    Ok((conns, RoundLoad { requests: latency.len(), elapsed_s, latency }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_valid_json_streaming_with_usage() {
        let v: serde_json::Value = serde_json::from_str(&completion_body(64)).expect("json");
        assert_eq!(v["max_tokens"], 64);
        assert_eq!(v["stream"], true);
        assert_eq!(v["stream_options"]["include_usage"], true);
        let c: serde_json::Value = serde_json::from_str(&workload_context("plain")).expect("json");
        assert_eq!(c["workload_id"], "plain");
    }
}
