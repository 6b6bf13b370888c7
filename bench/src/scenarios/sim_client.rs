//! One non-streamed `POST /v1/completions` to a `flowgate-sim` server, returning the usage the
//! sim reports: a minimal HTTP/1.1 client (`Connection: close`, the body read to its end).

use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response read (the sim's answer to a short completion is a few KB).
const MAX_RESPONSE: usize = 1 << 20;

/// The token usage a model server reported for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// `usage.prompt_tokens`.
    pub prompt_tokens: u64,
    /// `usage.completion_tokens`.
    pub completion_tokens: u64,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The request body: a prompt of `prompt_bytes` bytes (the sim counts `ceil(bytes / 4)` prompt
/// tokens) and `max_tokens` completion tokens, not streamed.
pub fn body(prompt_bytes: usize, max_tokens: u32) -> String {
    format!(r#"{{"model":"sim-model","prompt":"{}","max_tokens":{max_tokens}}}"#, "x".repeat(prompt_bytes))
}

/// Decode a chunked transfer-encoded body.
fn dechunk(mut raw: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    loop {
        let eol = find(raw, b"\r\n").ok_or_else(|| bad("truncated chunk size"))?;
        let line = String::from_utf8_lossy(&raw[..eol]);
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("bad chunk size"))?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err(bad("truncated chunk"));
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// POST `body` to `/v1/completions` on `addr` as workload `workload` (the `x-workload-context`
/// header, so the sim counts it per workload); the usage of a 200 answer, an error otherwise.
pub async fn complete(addr: SocketAddr, workload: &str, body: &str) -> io::Result<Usage> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nx-workload-context: {{\"workload_id\":\"{workload}\"}}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    while stream.read_buf(&mut buf).await? > 0 {
        if buf.len() > MAX_RESPONSE {
            return Err(bad("response too long"));
        }
    }
    let head_end = find(&buf, b"\r\n\r\n").ok_or_else(|| bad("no response head"))?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status line"))?;
    let raw = &buf[head_end + 4..];
    let chunked = head.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
    if status != 200 {
        return Err(bad(format!("status {status}: {}", String::from_utf8_lossy(&body))));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| bad(format!("bad JSON: {e}")))?;
    let field = |name: &str| v["usage"][name].as_u64().ok_or_else(|| bad(format!("no usage.{name}")));
    Ok(Usage { prompt_tokens: field("prompt_tokens")?, completion_tokens: field("completion_tokens")? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(), b"abcde");
        assert!(dechunk(b"5\r\nab").is_err());
    }

    #[test]
    fn the_body_asks_for_the_given_sizes() {
        let v: serde_json::Value = serde_json::from_str(&body(8, 3)).unwrap();
        assert_eq!(v["prompt"].as_str().unwrap().len(), 8);
        assert_eq!(v["max_tokens"], 3);
    }
}
