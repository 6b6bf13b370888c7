//! `flowgate`: the flow-control ext_proc server for Envoy.
//!
//! ```text
//! flowgate serve [--config FILE [--watch-config]] [--listen ADDR] [--metrics-listen ADDR]
//! flowgate check-config FILE
//! ```
//!
//! `SIGHUP` reloads the config file (see `reload.rs`); SIGINT and SIGTERM shut down gracefully.
//! Logs go to stderr; `RUST_LOG` filters them (default `info`; `flowgate=debug` shows every
//! decision).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowgate::config::ServeConfig;
use flowgate::serve;
use flowgate_engine::config::ConfigError;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "flowgate",
    version,
    about = "Workload-aware flow control for LLM inference gateways (Envoy ext_proc)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the ext_proc server (and the metrics listener).
    Serve {
        /// YAML configuration file; without one the embedded default is used.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// ext_proc gRPC listen address (overrides `listen`).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Metrics / health listen address (overrides `metrics_listen`).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<SocketAddr>,
        /// Reload the config file whenever it changes (SIGHUP always reloads it).
        #[arg(long, requires = "config")]
        watch_config: bool,
    },
    /// Validate a configuration file: prints `ok: ...` or one `path: reason` line per error.
    CheckConfig {
        /// The YAML file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Serve { config, listen, metrics_listen, watch_config } => {
            serve_command(config.as_deref(), listen, metrics_listen, watch_config)
        }
    }
}

/// Read and validate a file, as `path: reason` errors.
fn load(file: &Path) -> Result<ServeConfig, Vec<ConfigError>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        vec![ConfigError { path: file.display().to_string(), reason: format!("cannot read: {e}") }]
    })?;
    ServeConfig::from_yaml(&text)
}

fn print_errors(errors: &[ConfigError]) {
    for e in errors {
        eprintln!("{e}");
    }
}

fn check_config(file: &Path) -> ExitCode {
    match load(file) {
        Ok(config) => {
            println!("ok: {}", config.summary());
            for w in config.warnings() {
                eprintln!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_errors(&errors);
            ExitCode::FAILURE
        }
    }
}

fn serve_command(
    file: Option<&Path>,
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    watch_config: bool,
) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();

    let mut config = match file {
        Some(file) => match load(file) {
            Ok(c) => c,
            Err(errors) => {
                print_errors(&errors);
                return ExitCode::FAILURE;
            }
        },
        None => ServeConfig::embedded_default(),
    };
    if let Some(addr) = listen {
        config.listen = addr;
    }
    if let Some(addr) = metrics_listen {
        config.metrics_listen = addr;
    }
    // The core layout: shards pinned to their CPUs (by the engine), the runtime's threads to the
    // CPUs left over, so that neither preempts the other.
    let layout = config.layout();
    let runtime = match flowgate::io_runtime::build(&layout, "flowgate-io") {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        tracing::info!(config = %config.summary(), "starting");
        for w in config.warnings() {
            tracing::warn!(field = %w.path, "{}", w.reason);
        }
        tracing::info!(layout = %layout.describe(), "core layout");
        // Memory a burst used goes back to the OS once the burst is over (shim/src/allocator.rs).
        tokio::spawn(flowgate::allocator::collect_every(flowgate::allocator::COLLECT_INTERVAL));
        // Listen for the stop signals before saying "serving": one sent right after that line
        // must stop the server cleanly, not kill it by the default action.
        let stop = StopSignals::listen();
        let options = serve::ServeOptions {
            config_path: file.map(Path::to_path_buf),
            watch_config,
            listen_override: listen,
            metrics_listen_override: metrics_listen,
        };
        let running = match serve::start_with(config, options).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        stop.wait().await;
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// SIGINT and SIGTERM, listened for from creation on.
struct StopSignals {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    /// Start listening (inside the runtime).
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                (Ok(int), Ok(term)) => StopSignals { signals: Some((int, term)) },
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot watch SIGINT/SIGTERM; only Ctrl-C stops the server");
                    StopSignals { signals: None }
                }
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Until SIGINT or SIGTERM.
    async fn wait(self) {
        #[cfg(unix)]
        if let Some((mut int, mut term)) = self.signals {
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
