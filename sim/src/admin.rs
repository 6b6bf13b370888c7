//! `GET /metrics` (in the metrics mode of the moment) and the admin endpoints: `/admin/force`,
//! `/admin/metrics`, `/admin/stats`, `/admin/reset`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use crate::error::ApiError;
use crate::http::App;
use crate::metrics::{self, Snapshot, CONTENT_TYPE, MAX_STALL};
use crate::state::{Force, MetricsMode, SimStats};

/// The values the metrics page reports now: live unless forced.
pub fn snapshot(app: &App) -> Snapshot {
    let shared = &app.shared;
    let cfg = &shared.config;
    let force = shared.force();
    let c = shared.counters();
    let s = &c.stats;
    Snapshot {
        model: cfg.model.clone(),
        waiting: force.waiting.unwrap_or(s.waiting as f64),
        running: force.running.unwrap_or(s.running as f64),
        kv_usage: force.kv_cache_usage.unwrap_or(s.kv_tokens_used as f64 / cfg.kv_tokens as f64),
        prefilling: c.prefilling,
        max_num_seqs: cfg.max_num_seqs as u64,
        kv_tokens: cfg.kv_tokens,
        prompt_tokens: s.prompt_tokens_total,
        generation_tokens: s.completion_tokens_total,
        requests: s.requests_total,
        completed: s.completed_total,
        ttft: c.ttft.clone(),
        e2e: c.e2e.clone(),
        uptime: app.started.elapsed().as_secs_f64(),
        start_time: app.started_unix,
    }
}

/// `GET /metrics`.
pub async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut mode = app.shared.mode.subscribe();
    if *mode.borrow_and_update() == MetricsMode::Stall {
        let mut shutdown = app.shutdown.clone();
        tokio::select! {
            _ = tokio::time::timeout(MAX_STALL, mode.wait_for(|m| *m != MetricsMode::Stall)) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
    }
    let now = *app.shared.mode.borrow();
    match now {
        MetricsMode::Ok => {
            let page = metrics::render(app.shared.config.engine, &snapshot(&app));
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], page).into_response()
        }
        MetricsMode::Stall => (StatusCode::SERVICE_UNAVAILABLE, "metrics stalled").into_response(),
        MetricsMode::Error => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response(),
        MetricsMode::Garbage => {
            let seed = app.started.elapsed().as_nanos() as u64;
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics::garbage(seed)).into_response()
        }
    }
}

fn json_body<T: for<'de> Deserialize<'de>>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

/// Check forced values: finite and ≥ 0; `kv_cache_usage` at most 1.
pub fn check_force(f: &Force) -> Result<(), String> {
    for (name, v) in [("waiting", f.waiting), ("running", f.running), ("kv_cache_usage", f.kv_cache_usage)] {
        if let Some(v) = v {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} must be a finite number >= 0, got {v}"));
            }
        }
    }
    if f.kv_cache_usage.is_some_and(|v| v > 1.0) {
        return Err("kv_cache_usage is a fraction: at most 1".to_string());
    }
    Ok(())
}

/// `POST /admin/force`: `{"waiting", "running", "kv_cache_usage"}`, each a number or null
/// (missing or null reports the live value). Replaces every forced value.
pub async fn force(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Force>, ApiError> {
    let f: Force = json_body(body)?;
    check_force(&f).map_err(ApiError::bad_request)?;
    app.shared.set_force(f);
    Ok(Json(f))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModeBody {
    mode: MetricsMode,
}

/// `POST /admin/metrics`: `{"mode": "ok" | "stall" | "error" | "garbage"}`.
pub async fn metrics_mode(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let m: ModeBody = json_body(body)?;
    app.shared.set_mode(m.mode);
    Ok(StatusCode::OK)
}

/// `GET /admin/stats`.
pub async fn stats(State(app): State<Arc<App>>) -> Json<SimStats> {
    Json(app.shared.stats())
}

/// `POST /admin/reset`: zero the counters; peaks restart from the live values.
pub async fn reset(State(app): State<Arc<App>>) -> StatusCode {
    app.shared.counters().reset();
    StatusCode::OK
}
