//! The one HTTP/1.1 request the bench's small clients write (`pool`'s streamed completion,
//! `cluster`'s admin and metrics reads): a JSON body, `Connection: close`, extra headers.

use std::fmt::Display;

/// The bytes of `method path` to `host` with `body` (sent as JSON, `content-length` set) and the
/// extra `headers`, closing the connection after the answer.
///
/// ```
/// let req = flowgate_bench::http1::request("GET", "127.0.0.1:80", "/metrics", &[("x-a", "1")], "");
/// assert!(req.starts_with("GET /metrics HTTP/1.1\r\nhost: 127.0.0.1:80\r\n"));
/// assert!(req.contains("content-length: 0\r\nconnection: close\r\nx-a: 1\r\n\r\n"));
/// ```
pub fn request(method: &str, host: impl Display, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    req
}
