//! `GET /`: the status page, one self-contained HTML document (inline CSS and JS, no external
//! assets) that polls the JSON API every second and renders it with plain DOM calls.
//!
//! It shows the engine's queue by criticality, each backend (in flight / max, saturation, source,
//! stale and draining flags), the ten busiest workloads and decisions per second by outcome
//! (differences between consecutive polls of the outcome counters). Until its first poll answers
//! every figure reads `–`; a failed poll shows an error banner over the last figures.
//!
//! Elements a test can find: `#queued-total`, `[data-queued-crit="1".."5"]`, `#shards`,
//! `#inflight`, `#capacity`, rows `tr[data-backend="ADDR"]`, `tr[data-workload="ID"]`,
//! `tr[data-outcome="LABEL"]` (cells `.total` and `.rate`), `#error`, `#updated`.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The page.
pub const STATUS_HTML: &str = include_str!("status.html");

/// Content type of the page.
pub const HTML_CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// The API paths the page polls, relative to the page (so it also works behind a path prefix).
pub const POLLED_PATHS: [&str; 3] = ["api/v1/engine", "api/v1/backends", "api/v1/workloads"];

/// Serve the page.
pub async fn status_page() -> Response {
    ([(header::CONTENT_TYPE, HTML_CONTENT_TYPE), (header::CACHE_CONTROL, "no-cache")], STATUS_HTML)
        .into_response()
}
