//! A minimal HTTP/1.1 client for one streamed `/v1/completions` request to a sim: write the
//! request (`Connection: close`), read the status line and headers, then hand out the decoded
//! body (chunked or until EOF) as it arrives, so the first SSE event can be timed.

use std::io;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// An HTTP response whose body is being read.
pub struct Response {
    /// The status code.
    pub status: u16,
    stream: TcpStream,
    buf: Vec<u8>,
    chunked: bool,
    /// Bytes left in the current chunk; `None` = a chunk-size line comes next.
    left: Option<usize>,
    done: bool,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// POST `body` (JSON) to `path` on `addr` with the extra `headers`; returns once the response
/// head has arrived.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let req = flowgate_bench::http1::request("POST", addr, path, headers, body);
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(4096);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("response head too long"));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(bad("connection closed before the response head"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status =
        head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad status line"))?;
    let chunked = head.lines().any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
    buf.drain(..head_end + 4);
    Ok(Response { status, stream, buf, chunked, left: None, done: false })
}

impl Response {
    async fn fill(&mut self) -> io::Result<bool> {
        Ok(self.stream.read_buf(&mut self.buf).await? > 0)
    }

    /// The next piece of the decoded body; `None` at its end.
    pub async fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        if !self.chunked {
            if self.buf.is_empty() && !self.fill().await? {
                self.done = true;
                return Ok(None);
            }
            return Ok(Some(std::mem::take(&mut self.buf)));
        }
        loop {
            match self.left {
                None => {
                    let Some(eol) = find(&self.buf, b"\r\n") else {
                        if self.buf.len() > MAX_HEAD || !self.fill().await? {
                            return Err(bad("bad or truncated chunk size"));
                        }
                        continue;
                    };
                    let line = String::from_utf8_lossy(&self.buf[..eol]).into_owned();
                    let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| bad("bad chunk size"))?;
                    self.buf.drain(..eol + 2);
                    if size == 0 {
                        self.done = true;
                        return Ok(None);
                    }
                    self.left = Some(size);
                }
                Some(0) => {
                    // The CRLF after a chunk's data.
                    while self.buf.len() < 2 {
                        if !self.fill().await? {
                            return Err(bad("truncated chunk"));
                        }
                    }
                    self.buf.drain(..2);
                    self.left = None;
                }
                Some(n) => {
                    if self.buf.is_empty() && !self.fill().await? {
                        return Err(bad("truncated chunk"));
                    }
                    let take = n.min(self.buf.len());
                    let piece: Vec<u8> = self.buf.drain(..take).collect();
                    self.left = Some(n - take);
                    return Ok(Some(piece));
                }
            }
        }
    }
}
