//! A minimal HTTP/1.1 client for the bench's own reads and writes: flowgate's `/metrics` and
//! `/api/v1/*`, the simulator's admin endpoints and one completion. `Connection: close`, the body
//! read to its end (every server here answers with a `Content-Length` body).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any one exchange may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest response read (a metrics page is a few KB).
const MAX_RESPONSE_BYTES: u64 = 4 << 20;

/// Send `method path` with `body` (JSON when not empty) and extra `headers`; the status and body.
pub async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<(u16, String)> {
    let work = async {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let req = flowgate_bench::http1::request(method, addr, path, headers, body);
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.take(MAX_RESPONSE_BYTES).read_to_end(&mut raw).await?;
        parse(&raw)
    };
    tokio::time::timeout(HTTP_TIMEOUT, work).await.unwrap_or_else(|_| {
        Err(io::Error::other(format!("{method} {addr}{path}: no answer in {HTTP_TIMEOUT:?}")))
    })
}

/// `GET path`; the body of a 200, an error otherwise.
pub async fn get(addr: SocketAddr, path: &str) -> io::Result<String> {
    match exchange(addr, "GET", path, &[], "").await? {
        (200, body) => Ok(body),
        (status, body) => Err(io::Error::other(format!("GET {addr}{path}: {status} {body}"))),
    }
}

/// Split a raw response into status and body; chunked bodies are refused (none expected).
fn parse(raw: &[u8]) -> io::Result<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| io::Error::other("no response head"))?;
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        return Err(io::Error::other("chunked response (not expected here)"));
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("bad status line"))?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi").unwrap(), (200, "hi".into()));
        assert_eq!(parse(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap().0, 404);
        assert!(parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n").is_err());
        assert!(parse(b"garbage").is_err());
    }
}
