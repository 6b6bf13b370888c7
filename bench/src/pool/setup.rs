//! The pool under test: heterogeneous `flowgate-sim` servers started in-process (fresh ones for
//! every measurement), and the flowgate configurations compared on it, each built from a YAML
//! string and started in-process like `flowgate serve` would be.

use flowgate::config::ServeConfig;
use flowgate::serve::{self, Running};
use flowgate_sim::{Sim, SimConfig, StreamUsage};
use serde::Serialize;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::runtime::Runtime;

/// The model servers of the pool and the requests sent to them.
#[derive(Clone, Debug, Serialize)]
pub struct PoolSpec {
    /// `--speed` of each server (1.0 = nominal; 0.33 = three times slower).
    pub speeds: Vec<f64>,
    /// `--max-num-seqs` of each server, in the order of `speeds`: its batch size, which differs
    /// with its hardware (a bigger GPU holds more sequences).
    pub max_num_seqs: Vec<usize>,
    /// `--decode-step-ms`.
    pub decode_step_ms: f64,
    /// `--prefill-us-per-token`.
    pub prefill_us_per_token: f64,
    /// `max_tokens` of every request (= its completion tokens).
    pub max_tokens: u32,
    /// Prompt length in bytes (prompt tokens = ceil(bytes / 4)).
    pub prompt_bytes: usize,
}

impl PoolSpec {
    /// Prompt tokens per request, as the sim counts them.
    pub fn prompt_tokens(&self) -> f64 {
        (self.prompt_bytes as f64 / 4.0).ceil().max(1.0)
    }

    /// Completed requests/s of one server at `speed` when always full: every step lasts a decode
    /// step plus the prefill of the `max_num_seqs / max_tokens` sequences admitted per step on
    /// average, and finishes that many.
    pub fn server_capacity(&self, speed: f64, max_num_seqs: usize) -> f64 {
        let per_step = max_num_seqs as f64 / self.max_tokens as f64;
        let step_ms = self.decode_step_ms + per_step * self.prompt_tokens() * self.prefill_us_per_token / 1e3;
        per_step / step_ms * 1e3 * speed
    }

    /// The pool's derived capacity, completed requests/s.
    pub fn capacity(&self) -> f64 {
        self.speeds.iter().zip(&self.max_num_seqs).map(|(&s, &n)| self.server_capacity(s, n)).sum()
    }

    /// A server's KV-cache budget: sized to its batch, so that a full batch reads
    /// [`FULL_BATCH_KV_USE`] (its memory is what bounds the batch, as on a real GPU).
    pub fn kv_tokens(&self, max_num_seqs: usize) -> u64 {
        let per_seq = self.prompt_tokens() + f64::from(self.max_tokens);
        (max_num_seqs as f64 * per_seq / FULL_BATCH_KV_USE).ceil() as u64
    }

    fn sim_config(&self, speed: f64, max_num_seqs: usize) -> SimConfig {
        SimConfig {
            listen: "127.0.0.1:0".parse().expect("valid address"),
            max_num_seqs,
            kv_tokens: self.kv_tokens(max_num_seqs),
            max_waiting: 1024,
            prefill_us_per_token: self.prefill_us_per_token,
            decode_step_ms: self.decode_step_ms,
            speed,
            tokens_per_chunk: 1,
            default_max_tokens: self.max_tokens,
            stream_usage: StreamUsage::Requested,
            ..SimConfig::default()
        }
    }
}

/// The flowgate configurations compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `saturation.detector: concurrency`, each backend's `max_inflight` set by the operator.
    Concurrency,
    /// `detector: utilization`, `max_inflight: 0` (no cap): live metrics only.
    Utilization,
    /// `detector: both`: the operator's `max_inflight` and the live metrics.
    Both,
    /// A FIFO: the concurrency detector and scoring weights wait 1, criticality 0, rate 0.
    Fifo,
}

impl Kind {
    /// Every configuration, in report order.
    pub const ALL: [Kind; 4] = [Kind::Concurrency, Kind::Utilization, Kind::Both, Kind::Fifo];

    /// The name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Concurrency => "concurrency",
            Kind::Utilization => "utilization",
            Kind::Both => "both",
            Kind::Fifo => "fifo",
        }
    }

    /// Parse a name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    fn detector(self) -> &'static str {
        match self {
            Kind::Concurrency | Kind::Fifo => "concurrency",
            Kind::Utilization => "utilization",
            Kind::Both => "both",
        }
    }
}

/// KV-cache use of a server whose batch is full (= the default `kv_cache_threshold`).
pub const FULL_BATCH_KV_USE: f64 = 0.8;

/// Saturation settings shared by every configuration (the DESIGN's defaults).
pub const SATURATION: &str = "  scrape_interval: 50ms\n  scrape_timeout: 1s\n  queue_depth_threshold: 5\n  kv_cache_threshold: 0.8\n  staleness: 200ms\n";

/// flowgate's YAML for configuration `kind` over `backends`.
pub fn yaml(kind: Kind, backends: &[SocketAddr], max_inflight: u32, ttl: Duration) -> String {
    let cap = if kind == Kind::Utilization { 0 } else { max_inflight };
    let mut y = String::from("listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends:\n");
    for b in backends {
        y.push_str(&format!("  - address: {b}\n    max_inflight: {cap}\n    engine: vllm\n"));
    }
    y.push_str(&format!("queue:\n  max_requests: 100000\n  ttl: {}ms\n", ttl.as_millis()));
    if kind == Kind::Fifo {
        y.push_str("scoring:\n  wait_weight: 1.0\n  criticality_weight: 0.0\n  rate_weight: 0.0\n");
    }
    y.push_str(&format!("saturation:\n  detector: {}\n{SATURATION}", kind.detector()));
    y
}

/// A fresh pool and the flowgate in front of it, each on its own runtime.
pub struct Setup {
    /// flowgate's YAML.
    pub yaml: String,
    sim_rt: Runtime,
    sims: Vec<Sim>,
    flowgate_rt: Runtime,
    running: Running,
}

impl Setup {
    /// Start the sims of `spec`, then flowgate configured as `kind` over them.
    pub fn start(spec: &PoolSpec, kind: Kind, max_inflight: u32, ttl: Duration) -> io::Result<Setup> {
        let sim_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("pool-sims")
            .build()?;
        let sims = sim_rt.block_on(async {
            let mut sims = Vec::new();
            for (&speed, &seqs) in spec.speeds.iter().zip(&spec.max_num_seqs) {
                sims.push(Sim::start(spec.sim_config(speed, seqs)).await?);
            }
            Ok::<_, io::Error>(sims)
        })?;
        let addrs: Vec<SocketAddr> = sims.iter().map(Sim::addr).collect();
        let text = yaml(kind, &addrs, max_inflight, ttl);
        let mut config = ServeConfig::from_yaml(&text).map_err(|e| {
            io::Error::other(format!("pool: flowgate config for {}: {e:?}\n{text}", kind.name()))
        })?;
        if let Some(spin) = flowgate_bench::baseline::spin_before_park() {
            config.engine.spin_before_park = spin;
        }
        let flowgate_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("pool-flowgate")
            .build()?;
        let running = flowgate_rt
            .block_on(serve::start(config))
            .map_err(|e| io::Error::other(format!("pool: flowgate ({}) did not start: {e}", kind.name())))?;
        Ok(Setup { yaml: text, sim_rt, sims, flowgate_rt, running })
    }

    /// flowgate's ext_proc address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.running.grpc_addr()
    }

    /// Per sim, in pool order: requests completed and the most it held at once (running +
    /// waiting), from its own counters.
    pub fn sim_counts(&self) -> Vec<(u64, u64)> {
        self.sims
            .iter()
            .map(|s| {
                let st = s.stats();
                (st.completed_total, st.max_in_system_seen)
            })
            .collect()
    }

    /// Stop flowgate, then the sims.
    pub fn stop(self) {
        let Setup { sim_rt, sims, flowgate_rt, running, .. } = self;
        flowgate_rt.block_on(running.shutdown());
        flowgate_rt.shutdown_timeout(Duration::from_secs(1));
        sim_rt.block_on(async {
            for s in sims {
                s.shutdown().await;
            }
        });
        sim_rt.shutdown_timeout(Duration::from_secs(1));
    }
}
