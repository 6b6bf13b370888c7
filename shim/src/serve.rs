//! `flowgate serve`: start the engine, the ext_proc gRPC server and the metrics listener; shut
//! them down in order.
//!
//! Shutdown ([`Running::shutdown`]):
//! 1. `/healthz` answers 503 and the gRPC health service NOT_SERVING;
//! 2. the engine shuts down: every queued request gets its `shutting-down` (503) answer, new
//!    submissions are refused the same way;
//! 3. the gRPC server stops accepting and streams already answered close (Envoy carries on with
//!    them without the processor); the server is given [`DRAIN_TIMEOUT`] to flush;
//! 4. the metrics listener stops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use flowgate_engine::config::ConfigError;
use flowgate_engine::runtime::{Engine, StartError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::backend_set::BackendSet;
use crate::coalesce::Coalesced;
use crate::config::ServeConfig;
use crate::discovery_feed::LiveDiscovery;
use crate::ext_proc_service::ExtProcServer;
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::reload::{self, static_members, ReloadOutcome, Reloader};
use crate::served_view::ServedView;
use crate::server::FlowControl;
use crate::view::EngineView;

/// Longest wait for the gRPC and HTTP servers to finish once shutdown has begun.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How often idle workloads' metric series are swept (besides every scrape).
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// The gRPC service name Envoy health-checks.
pub const EXT_PROC_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

/// Why the server did not start.
#[derive(Debug)]
pub enum ServeError {
    /// The configuration is invalid.
    Config(Vec<ConfigError>),
    /// A listener could not be bound.
    Bind {
        /// Which listener (`listen` or `metrics_listen`).
        what: &'static str,
        /// Its address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The engine did not start.
    Engine(String),
    /// The TLS configuration was refused by the gRPC server.
    Tls(String),
    /// A discovery source could not be read at start.
    Discovery(String),
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServeError::Config(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
            ServeError::Bind { what, addr, source } => {
                write!(f, "{what}: cannot listen on {addr}: {source}")
            }
            ServeError::Engine(e) => write!(f, "engine: {e}"),
            ServeError::Discovery(e) => f.write_str(e),
            ServeError::Tls(e) => write!(f, "tls: {e}"),
        }
    }
}

impl std::error::Error for ServeError {}

/// How `serve` was started beyond its config.
#[derive(Clone, Debug, Default)]
pub struct ServeOptions {
    /// The config file, when there is one: `SIGHUP` reloads it.
    pub config_path: Option<std::path::PathBuf>,
    /// Reload the config file whenever it changes (`--watch-config`).
    pub watch_config: bool,
    /// `--listen`, applied to every reloaded file too.
    pub listen_override: Option<SocketAddr>,
    /// `--metrics-listen`, likewise.
    pub metrics_listen_override: Option<SocketAddr>,
}

/// A running server.
pub struct Running {
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    shutting_down: Arc<AtomicBool>,
    health: HealthReporter,
    stop_grpc: CancellationToken,
    stop_http: CancellationToken,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    http: JoinHandle<std::io::Result<()>>,
    sweeper: JoinHandle<()>,
    /// Static and discovered backends; owns the scrapers.
    backends: Arc<BackendSet>,
    /// Reloads the config file (when serving one).
    reloader: Option<Arc<Reloader>>,
    /// The discovery sources (a reload may replace them).
    discovery: Arc<LiveDiscovery>,
    /// Stops the reload and discovery tasks.
    stop_tasks: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("grpc_addr", &self.grpc_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

/// An error and its sources, `outer: inner: ...`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { what, addr, source })
}

/// Validate `config`, bind both listeners, start the engine and serve. Must be called inside a
/// multi-threaded tokio runtime.
pub async fn start(config: ServeConfig) -> Result<Running, ServeError> {
    start_with(config, ServeOptions::default()).await
}

/// [`start`], reloading `options.config_path` on `SIGHUP` (and on change with `watch_config`).
pub async fn start_with(config: ServeConfig, options: ServeOptions) -> Result<Running, ServeError> {
    let errors = config.validate();
    if !errors.is_empty() {
        return Err(ServeError::Config(errors));
    }
    // The PEM files were checked by `validate`; read them once more for the server to use.
    let tls = match &config.tls {
        Some(tls) => Some(tls.load().map_err(ServeError::Config)?),
        None => None,
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        crate::tls::install_crypto_provider();
        builder = builder.tls_config(tls.server_config()).map_err(|e| ServeError::Tls(error_chain(&e)))?;
    }
    // Bind first: a taken port should not cost an engine start.
    let grpc_listener = bind("listen", config.listen).await?;
    let http_listener = bind("metrics_listen", config.metrics_listen).await?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| ServeError::Bind {
        what: "listen",
        addr: config.listen,
        source,
    })?;
    let metrics_addr = http_listener.local_addr().map_err(|source| ServeError::Bind {
        what: "metrics_listen",
        addr: config.metrics_listen,
        source,
    })?;

    let engine_config = config.engine.clone();
    let engine = tokio::task::spawn_blocking(move || Engine::start(engine_config))
        .await
        .map_err(|e| ServeError::Engine(e.to_string()))?
        .map_err(|e| match e {
            StartError::Config(errors) => ServeError::Config(errors),
            StartError::Executor(e) => ServeError::Engine(format!("shard executor failed to start: {e}")),
        })?;
    let engine = Arc::new(engine);
    let mut metrics =
        Metrics::new(config.engine.workloads.max_tracked, config.engine.workloads.default_criticality);
    let cluster_metrics = config.cluster.as_ref().map(|_| metrics.register_cluster());
    let metrics = Arc::new(metrics);
    let backends = BackendSet::new(
        engine.clone(),
        metrics.clone(),
        static_members(&config),
        config.engine.saturation.clone(),
    );
    let stop_tasks = CancellationToken::new();
    let mut tasks = Vec::new();
    // Before the first connection is accepted: the discovery file's backends are in the set.
    let discovery =
        match LiveDiscovery::start(config.discovery.as_ref(), backends.clone(), stop_tasks.clone()).await {
            Ok(live) => Arc::new(live),
            Err(e) => {
                stop_tasks.cancel();
                backends.shutdown().await;
                let engine = engine.clone();
                let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
                return Err(ServeError::Discovery(e));
            }
        };
    if let (Some(cluster), Some(cluster_metrics)) = (&config.cluster, cluster_metrics) {
        // Before the first connection: leases of 0 until the first sync (cluster/sync.rs).
        tasks.extend(crate::cluster::sync::start(
            cluster,
            engine.clone(),
            cluster_metrics,
            stop_tasks.clone(),
        ));
    }
    let shutting_down = Arc::new(AtomicBool::new(false));
    let stop_grpc = CancellationToken::new();
    let stop_http = CancellationToken::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status(EXT_PROC_SERVICE, ServingStatus::Serving).await;
    health.set_service_status("", ServingStatus::Serving).await;

    let service = FlowControl::new(engine.clone(), metrics.clone(), stop_grpc.clone());
    let reload_service = service.clone();
    // Every connection's writes are gathered per scheduler pass (coalesce.rs), beneath TLS.
    let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true)).map(|c| c.map(Coalesced::new));
    let grpc_stop = stop_grpc.clone();
    let grpc = tokio::spawn(
        builder
            // Queued requests hold their streams: do not cap streams per connection (Envoy
            // multiplexes every request of a cluster over few connections).
            .max_concurrent_streams(None)
            .http2_max_pending_accept_reset_streams(Some(16_384))
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_service(health_service)
            .add_service(ExtProcServer::new(service))
            .serve_with_incoming_shutdown(incoming, async move { grpc_stop.cancelled().await }),
    );

    let view: Arc<dyn EngineView> =
        Arc::new(ServedView { engine: engine.clone(), backends: backends.clone(), layout: config.layout() });
    let state =
        HttpState { view: view.clone(), metrics: metrics.clone(), shutting_down: shutting_down.clone() };
    let http_stop = stop_http.clone();
    let http = tokio::spawn(http::serve(http_listener, state, async move { http_stop.cancelled().await }));

    let overrides = (options.listen_override, options.metrics_listen_override);
    let reloader = options.config_path.map(|path| {
        let r = Reloader::new(path, config.clone(), backends.clone(), reload_service, metrics.clone())
            .with_discovery(discovery.clone());
        Arc::new(r.with_overrides(overrides.0, overrides.1))
    });
    tasks.push(tokio::spawn(reload::on_sighup(reload::hangups(), reloader.clone(), stop_tasks.clone())));
    if let Some(r) = &reloader {
        if options.watch_config {
            tasks.push(tokio::spawn(reload::watch(r.clone(), stop_tasks.clone())));
        }
    }

    let sweep_metrics = metrics.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sweep_metrics.sweep_with(view.as_ref());
        }
    });

    tracing::info!(
        %grpc_addr,
        %metrics_addr,
        tls = tls.is_some(),
        mtls = tls.as_ref().is_some_and(|t| t.mtls()),
        shards = engine.shards(),
        detector = config.engine.saturation.detector.name(),
        scrapers = backends.scrapers(),
        reload = reloader.as_ref().map(|r| r.path().display().to_string()),
        "flowgate serving"
    );
    Ok(Running {
        grpc_addr,
        metrics_addr,
        engine,
        metrics,
        shutting_down,
        health,
        stop_grpc,
        stop_http,
        grpc,
        http,
        sweeper,
        backends,
        reloader,
        discovery,
        stop_tasks,
        tasks,
    })
}

impl Running {
    /// Where the ext_proc gRPC server listens.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// Where the metrics listener listens.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The backend set (static and discovered backends).
    pub fn backends(&self) -> &Arc<BackendSet> {
        &self.backends
    }

    /// Reload the config file now, as `SIGHUP` does (`None` without a config file).
    pub fn reload(&self) -> Option<ReloadOutcome> {
        self.reloader.as_ref().map(|r| r.reload())
    }

    /// Shut down gracefully (see the module docs).
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.shutting_down.store(true, Ordering::Release);
        self.health.set_service_status(EXT_PROC_SERVICE, ServingStatus::NotServing).await;
        self.health.set_service_status("", ServingStatus::NotServing).await;
        // Joining the shards blocks: keep it off the async workers.
        let engine = self.engine.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || engine.shutdown()).await {
            tracing::error!(error = %e, "engine shutdown failed");
        }
        self.stop_grpc.cancel();
        match tokio::time::timeout(DRAIN_TIMEOUT, self.grpc).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => tracing::warn!("gRPC streams still open after {DRAIN_TIMEOUT:?}; closing"),
        }
        self.stop_http.cancel();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.http).await.is_err() {
            tracing::warn!("metrics listener still busy after {DRAIN_TIMEOUT:?}; closing");
        }
        self.sweeper.abort();
        self.stop_tasks.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.discovery.join().await;
        self.backends.shutdown().await;
        // The engine is already shut down; its last handle may drop anywhere.
        tracing::info!("shut down");
    }
}
