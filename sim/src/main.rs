//! `flowgate-sim`: run the model-server simulator until SIGINT or SIGTERM.
//!
//! Logs go to stderr; `RUST_LOG` filters them (default `info`).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use flowgate_sim::{EngineKind, Sim, SimConfig, StreamUsage};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "flowgate-sim",
    version,
    about = "Model-server simulator (vLLM, SGLang, TensorRT-LLM) for flowgate"
)]
struct Cli {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Server imitated on /metrics: vllm, sglang, trtllm-serve, triton-tensorrt-llm.
    #[arg(long, default_value = "vllm")]
    engine: EngineKind,
    /// Model name echoed in responses and used in metric labels.
    #[arg(long, default_value = "sim-model")]
    model: String,
    /// Most sequences running at once.
    #[arg(long, default_value_t = 16)]
    max_num_seqs: usize,
    /// Most requests waiting; one more is answered 429.
    #[arg(long, default_value_t = 256)]
    max_waiting: usize,
    /// Prefill cost per prompt token, in microseconds.
    #[arg(long, default_value_t = 50.0)]
    prefill_us_per_token: f64,
    /// Cost of one decode step, in milliseconds.
    #[arg(long, default_value_t = 10.0)]
    decode_step_ms: f64,
    /// KV-cache budget in tokens.
    #[arg(long, default_value_t = 65_536)]
    kv_tokens: u64,
    /// Time divisor (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Tokens per streamed chunk.
    #[arg(long, default_value_t = 1)]
    tokens_per_chunk: usize,
    /// Completion length when a request has no max_tokens.
    #[arg(long, default_value_t = 16)]
    default_max_tokens: u32,
    /// When streams end with a usage chunk: requested, always, never.
    #[arg(long, default_value = "requested")]
    stream_usage: StreamUsage,
}

/// SIGINT and SIGTERM handlers, installed before the address is printed so a signal sent as
/// soon as the address is seen is not lost.
#[cfg(unix)]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// Ctrl-C, where there are no Unix signals.
#[cfg(not(unix))]
fn stop_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // A closed stderr must not stop the simulator.
        .log_internal_errors(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = SimConfig {
        listen: cli.listen,
        engine: cli.engine,
        model: cli.model,
        max_num_seqs: cli.max_num_seqs,
        max_waiting: cli.max_waiting,
        prefill_us_per_token: cli.prefill_us_per_token,
        decode_step_ms: cli.decode_step_ms,
        kv_tokens: cli.kv_tokens,
        speed: cli.speed,
        tokens_per_chunk: cli.tokens_per_chunk,
        default_max_tokens: cli.default_max_tokens,
        stream_usage: cli.stream_usage,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flowgate-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let stop = match stop_signal() {
            Ok(stop) => stop,
            Err(e) => {
                eprintln!("flowgate-sim: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let sim = match Sim::start(config).await {
            Ok(sim) => sim,
            Err(e) => {
                eprintln!("flowgate-sim: {e}");
                return ExitCode::from(2);
            }
        };
        // Written without eprintln!: a closed stderr must not stop the simulator.
        let _ = writeln!(std::io::stderr(), "flowgate-sim listening on {}", sim.addr());
        tracing::info!(addr = %sim.addr(), "started");
        stop.await;
        sim.shutdown().await;
        ExitCode::SUCCESS
    })
}
