//! `flowgate-sim`: a model-server simulator for flowgate's tests, benchmarks and demos.
//!
//! It answers OpenAI-compatible `/v1/completions` and `/v1/chat/completions` requests with
//! deterministic token counts, schedules them with vLLM-style continuous batching (a bounded
//! batch, a KV-cache budget, a bounded FIFO waiting queue) under a simple cost model, and
//! exposes `/metrics` in the real names of vLLM, SGLang, trtllm-serve or Triton TensorRT-LLM.
//! Admin endpoints force reported values and break the metrics endpoint on purpose.
//!
//! * [`config`] — [`SimConfig`] and the bounds.
//! * [`scheduler`] — the engine loop.
//! * [`state`] — counters, [`SimStats`], [`Force`], [`MetricsMode`].
//! * [`request`], [`response`], [`error`] — the OpenAI wire format.
//! * [`metrics`], [`histogram`] — the Prometheus page.
//! * [`http`], [`inference`], [`admin`], [`workload`] — the HTTP surface.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use flowgate_sim::{Sim, SimConfig};
//! let config = SimConfig { listen: "127.0.0.1:0".parse().unwrap(), ..SimConfig::default() };
//! let sim = Sim::start(config).await?;
//! println!("listening on {}", sim.addr());
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

pub mod admin;
pub mod config;
pub mod error;
pub mod histogram;
pub mod http;
pub mod inference;
pub mod metrics;
pub mod request;
pub mod response;
pub mod scheduler;
pub mod state;
pub mod workload;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use config::{EngineKind, SimConfig, StreamUsage};
pub use state::{Force, MetricsMode, SimStats, WorkloadStats};

use crate::http::App;
use crate::state::Shared;

/// Longest [`Sim::shutdown`] waits for open connections to finish before dropping them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A running simulator. Dropping it stops it too (without waiting).
#[derive(Debug)]
pub struct Sim {
    /// The bound address.
    addr: SocketAddr,
    /// Shared with the handlers.
    app: Arc<App>,
    /// Set to true to stop the server and the scheduler.
    stop: watch::Sender<bool>,
    /// The HTTP server task; `None` once shut down.
    server: Option<JoinHandle<()>>,
    /// The scheduler task; `None` once shut down.
    scheduler: Option<JoinHandle<()>>,
}

impl Sim {
    /// Bind `config.listen` (port 0 picks one) and serve in the current tokio runtime. An
    /// invalid configuration is an [`io::ErrorKind::InvalidInput`] error naming the field.
    pub async fn start(config: SimConfig) -> io::Result<Sim> {
        config.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Shared::new(config);
        let (stop, stopped) = watch::channel(false);
        let (submitter, arrivals) = scheduler::channel(&shared);
        let scheduler = tokio::spawn(scheduler::run(shared.clone(), arrivals, stopped.clone()));
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let app = Arc::new(App {
            shared,
            submitter,
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            started_unix,
            shutdown: stopped.clone(),
        });
        let router = http::router(app.clone());
        let mut signal = stopped;
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
                let _ = signal.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                tracing::error!("flowgate-sim server failed: {e}");
            }
        });
        Ok(Sim { addr, app, stop, server: Some(server), scheduler: Some(scheduler) })
    }

    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters and live state (the data of `GET /admin/stats`).
    pub fn stats(&self) -> SimStats {
        self.app.shared.stats()
    }

    /// Replace the values forced onto `/metrics` (as `POST /admin/force`). Unlike the HTTP
    /// endpoint this does not check the values: NaN or negative numbers are reported as given.
    pub fn force(&self, f: Force) {
        self.app.shared.set_force(f);
    }

    /// Change how `/metrics` answers (as `POST /admin/metrics`).
    pub fn set_metrics_mode(&self, m: MetricsMode) {
        self.app.shared.set_mode(m);
    }

    /// Stop: the scheduler ends (requests in flight get 503 or a stream without `[DONE]`),
    /// the listener closes, and open connections get [`SHUTDOWN_GRACE`] to finish.
    pub async fn shutdown(mut self) {
        self.stop.send_replace(true);
        if let Some(s) = self.scheduler.take() {
            let _ = s.await;
        }
        if let Some(mut server) = self.server.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err() {
                server.abort();
            }
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}
