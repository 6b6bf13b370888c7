//! The metrics listener (`metrics_listen`): Prometheus metrics, liveness and the workload API.
//!
//! | route | answer |
//! |-------|--------|
//! | `GET /metrics` | the metrics; OpenMetrics when the `Accept` header asks for it (as Prometheus does), else the classic text format 0.0.4 |
//! | `GET /healthz` | `200 ok`; `503 shutting down` once shutdown has begun |
//! | `GET /api/v1/workloads` | JSON array of every tracked workload, sorted by id |
//! | `GET /api/v1/workload/{id}/metrics` | JSON object for one workload; `404` with a JSON error for an unknown id |
//! | `GET /api/v1/backends` | JSON array, one object per backend ([`BackendJson`]), in slot order (draining ones included) |
//! | `GET /api/v1/engine` | JSON object of the engine's totals ([`EngineJson`]): queue by criticality, slots, outcomes |
//! | `GET /` | the status page ([`crate::status_page`]): HTML polling the three JSON routes above |
//!
//! A workload object is `{"workload_id", "criticality" (last seen), "active" (queued + in flight),
//! "total" (requests seen), "rate_per_s" (over the rate window), "prompt_tokens" and
//! "completion_tokens" (charged, ever), "token_rate_per_s" (weighted tokens charged per second
//! over the rate window), "remote_rate_per_s" and "remote_token_rate_per_s" (cluster mode: the
//! other replicas' rates at the last sync, 0 standalone)}`; tokens are counted only for requests whose usage is read (see
//! [`crate::usage`]). Ids are percent-decoded from
//! the path, so any id can be asked for (`/api/v1/workload/team%2Fa/metrics`).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flowgate_engine::backends::BackendState;
use flowgate_engine::registry::WorkloadSnapshot;
use serde::Serialize;

use crate::engine_json::EngineJson;
use crate::metrics::{wants_openmetrics, Metrics, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE};
use crate::view::EngineView;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The engine (or a stand-in).
    pub view: Arc<dyn EngineView>,
    /// The metrics to render.
    pub metrics: Arc<Metrics>,
    /// Set once shutdown begins; `/healthz` then answers 503.
    pub shutting_down: Arc<AtomicBool>,
}

impl std::fmt::Debug for HttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpState")
            .field("shutting_down", &self.shutting_down.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// One workload, as the JSON API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct WorkloadJson {
    /// Workload id (`__overflow__` for workloads beyond `max_tracked`).
    pub workload_id: String,
    /// Criticality of its most recent request.
    pub criticality: u8,
    /// Requests queued or in flight.
    pub active: u64,
    /// Requests seen.
    pub total: u64,
    /// Arrival rate over the rate window, requests/s.
    pub rate_per_s: f64,
    /// Prompt tokens charged, ever.
    pub prompt_tokens: u64,
    /// Completion tokens charged, ever.
    pub completion_tokens: u64,
    /// Weighted tokens (`input_token_weight`·prompt + `output_token_weight`·completion) charged per
    /// second over the rate window.
    pub token_rate_per_s: f64,
    /// Cluster mode: its arrival rate on the other replicas at the last sync (0 standalone); the
    /// score's rate is `rate_per_s + remote_rate_per_s`.
    #[serde(default)]
    pub remote_rate_per_s: f64,
    /// Cluster mode: its weighted token rate on the other replicas.
    #[serde(default)]
    pub remote_token_rate_per_s: f64,
}

impl From<WorkloadSnapshot> for WorkloadJson {
    fn from(w: WorkloadSnapshot) -> Self {
        WorkloadJson {
            workload_id: w.workload_id.to_string(),
            criticality: w.criticality,
            active: w.active,
            total: w.total,
            rate_per_s: w.rate_per_s,
            prompt_tokens: w.prompt_tokens,
            completion_tokens: w.completion_tokens,
            token_rate_per_s: w.token_rate_per_s,
            remote_rate_per_s: w.remote_rate_per_s,
            remote_token_rate_per_s: w.remote_token_rate_per_s,
        }
    }
}

/// One backend, as `GET /api/v1/backends` shows it. Scraped fields are `null` until the first
/// good scrape (and stay `null` under detector `concurrency`, which scrapes nothing).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct BackendJson {
    /// `ip:port`.
    pub address: String,
    /// Where the backend came from: `static` (the config's `backends`), `file` or `dns`
    /// (discovery).
    pub source: String,
    /// Requests holding a slot on it.
    pub inflight: u32,
    /// Its `max_inflight` (0 = no cap).
    pub max_inflight: u32,
    /// Cluster mode: the slots of it this replica may use now (its lease, or its local-mode
    /// share); `null` standalone and for uncapped backends.
    #[serde(default)]
    pub lease: Option<u32>,
    /// Cluster mode with a metrics detector: this replica's share of `queue_depth_threshold`
    /// (it sends at most that share of the room a scrape shows); `null` otherwise.
    #[serde(default)]
    pub queue_share: Option<u32>,
    /// Requests waiting in it, last scrape.
    pub waiting: Option<f64>,
    /// Requests running in it, last scrape.
    pub running: Option<f64>,
    /// KV-cache use (fraction), last scrape.
    pub kv_cache_usage: Option<f64>,
    /// Dispatched to it since the last scrape (counted as waiting).
    pub sent_since_scrape: u32,
    /// The detector's score; ≥ 1 = saturated.
    pub saturation: f64,
    /// Time since the last good scrape, ms.
    pub metrics_age_ms: Option<f64>,
    /// Its metrics are stale: it takes nothing until a good scrape.
    pub stale: bool,
    /// Leaving the pool: takes nothing new, its in-flight requests finish.
    pub draining: bool,
}

impl BackendJson {
    /// The JSON of `b`, which came from `source` (`static` | `file` | `dns`).
    pub fn new(b: BackendState, source: &str) -> Self {
        BackendJson {
            address: b.address,
            source: source.into(),
            inflight: b.inflight,
            max_inflight: b.max_inflight,
            lease: b.lease,
            queue_share: b.queue_share,
            waiting: b.waiting,
            running: b.running,
            kv_cache_usage: b.kv_cache_usage,
            sent_since_scrape: b.sent_since_scrape,
            saturation: b.saturation,
            metrics_age_ms: b.metrics_age_ns.map(|ns| ns as f64 / 1e6),
            stale: b.stale,
            draining: b.draining,
        }
    }
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/workloads", get(workloads))
        .route("/api/v1/workload/{id}/metrics", get(workload))
        .route("/api/v1/backends", get(backends))
        .route("/api/v1/engine", get(engine))
        .route("/", get(crate::status_page::status_page))
        .with_state(state)
}

/// Serve the routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let openmetrics = wants_openmetrics(accept);
    let body = state.metrics.render(state.view.as_ref(), openmetrics);
    let content_type = if openmetrics { OPENMETRICS_CONTENT_TYPE } else { PROMETHEUS_CONTENT_TYPE };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn healthz(State(state): State<HttpState>) -> Response {
    if state.shutting_down.load(Ordering::Acquire) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
    } else {
        (StatusCode::OK, "ok").into_response()
    }
}

async fn workloads(State(state): State<HttpState>) -> Json<Vec<WorkloadJson>> {
    Json(state.view.registry().workloads().into_iter().map(WorkloadJson::from).collect())
}

async fn backends(State(state): State<HttpState>) -> Json<Vec<BackendJson>> {
    let view = state.view.as_ref();
    Json(
        view.backend_states()
            .into_iter()
            .map(|b| {
                let source = view.backend_source(&b.address);
                BackendJson::new(b, source)
            })
            .collect(),
    )
}

async fn engine(State(state): State<HttpState>) -> Json<EngineJson> {
    Json(EngineJson::read(state.view.as_ref(), &state.metrics))
}

async fn workload(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    match state.view.registry().workload(&id) {
        Some(w) => Json(WorkloadJson::from(w)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "unknown workload", "workload_id": id })),
        )
            .into_response(),
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
