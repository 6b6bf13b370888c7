//! The HTTP surface: the router and the state every handler shares.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::MAX_BODY_BYTES;
use crate::scheduler::Submitter;
use crate::state::Shared;
use crate::{admin, inference};

/// What every handler reaches.
#[derive(Debug)]
pub struct App {
    /// Counters, forced values, metrics mode and the configuration.
    pub shared: Arc<Shared>,
    /// The way to the scheduler.
    pub submitter: Submitter,
    /// Number of the next response id; increases by one per accepted request.
    pub next_id: AtomicU64,
    /// When the simulator started.
    pub started: Instant,
    /// Unix time the simulator started, in seconds.
    pub started_unix: f64,
    /// Turns true when the simulator stops; stalled `/metrics` requests then answer 503.
    pub shutdown: watch::Receiver<bool>,
}

/// The router: inference, metrics, admin and health endpoints. Bodies are limited to
/// [`MAX_BODY_BYTES`].
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/completions", post(inference::completions))
        .route("/v1/chat/completions", post(inference::chat))
        .route("/metrics", get(admin::metrics))
        .route("/admin/force", post(admin::force))
        .route("/admin/metrics", post(admin::metrics_mode))
        .route("/admin/stats", get(admin::stats))
        .route("/admin/reset", post(admin::reset))
        .route("/health", get(|| async { StatusCode::OK }))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(app)
}
