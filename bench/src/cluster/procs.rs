//! The processes of a cluster run: a `redis-server` of the bench's own (loopback, persistence
//! off), one `flowgate-sim` backend and `flowgate serve` replicas. Each is a
//! [`Server`](crate::streams::procs::Server): killed when dropped, so on every path out of the
//! bench, errors included. Every wait polls a real signal (PING, `/metrics`, `/api/v1/backends`)
//! with a deadline.

use super::http::{exchange, get};
use crate::streams::procs::{sim_addr, spawn_listening, start_flowgate, Server};
use flowgate::metrics::sample;
use flowgate_sim::SimStats;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest wait for anything polled here.
pub const DEADLINE: Duration = Duration::from_secs(20);
/// Pause between two polls.
const POLL: Duration = Duration::from_millis(5);
/// A free loopback port (bound, then released).
pub fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `INFO commandstats` totals of one command.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommandStats {
    /// Calls.
    pub calls: u64,
    /// Redis CPU time spent in them, µs.
    pub usec: u64,
}

impl CommandStats {
    /// Parse `calls=…,usec=…,…` (the value of a `cmdstat_<name>:` line).
    pub fn parse(line: &str) -> Option<CommandStats> {
        let field = |name: &str| {
            line.split(',').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
        };
        Some(CommandStats { calls: field("calls")?, usec: field("usec")? })
    }
}

/// A `redis-server` of the bench's own.
pub struct Redis {
    proc: Option<Server>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Redis {
    /// Start one (from `PATH`) on a free port; returns once it answers PING.
    pub async fn start() -> io::Result<Redis> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                io::Error::other(format!("cannot run redis-server ({e}): install it with scripts/redis.sh"))
            })?;
        let redis = Redis {
            proc: Some(Server { child, addr: format!("127.0.0.1:{port}"), metrics_addr: None }),
            port,
        };
        let start = Instant::now();
        while redis.ping().await.is_err() {
            if start.elapsed() > DEADLINE {
                return Err(io::Error::other(format!("redis-server on port {port} did not answer PING")));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(redis)
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL it (no goodbye).
    pub fn kill(&mut self) {
        if let Some(p) = self.proc.take() {
            p.stop();
        }
    }

    /// Send `command` (inline), then QUIT; everything it answered.
    async fn ask(&self, command: &str) -> io::Result<String> {
        let work = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            s.write_all(format!("{command}\r\nQUIT\r\n").as_bytes()).await?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw).await?;
            Ok(String::from_utf8_lossy(&raw).into_owned())
        };
        tokio::time::timeout(DEADLINE, work)
            .await
            .unwrap_or_else(|_| Err(io::Error::other("redis: no answer")))
    }

    /// One PING's round trip.
    pub async fn ping(&self) -> io::Result<Duration> {
        let start = Instant::now();
        let answer = self.ask("PING").await?;
        if answer.starts_with("+PONG") {
            Ok(start.elapsed())
        } else {
            Err(io::Error::other(format!("redis PING: {answer:?}")))
        }
    }

    /// `INFO commandstats` for `command` (zero before its first call).
    pub async fn command_stats(&self, command: &str) -> io::Result<CommandStats> {
        let text = self.ask("INFO commandstats").await?;
        let prefix = format!("cmdstat_{command}:");
        Ok(text.lines().find_map(|l| CommandStats::parse(l.strip_prefix(&prefix)?)).unwrap_or_default())
    }
}

/// The `flowgate-sim` backend, its own process.
pub struct SimProc {
    _proc: Server,
    /// Its HTTP address.
    pub addr: SocketAddr,
}

impl SimProc {
    /// Start `bin` on a free port with `max_num_seqs` (and as many waiting) and `decode_step_ms`.
    pub fn start(bin: &Path, max_num_seqs: usize, decode_step_ms: f64) -> io::Result<SimProc> {
        let mut cmd = Command::new(bin);
        cmd.args(["--listen", "127.0.0.1:0", "--max-num-seqs", &max_num_seqs.to_string()])
            .args([
                "--max-waiting",
                &max_num_seqs.to_string(),
                "--decode-step-ms",
                &decode_step_ms.to_string(),
            ])
            .env("RUST_LOG", "warn");
        let proc = spawn_listening("flowgate-sim", cmd, sim_addr)?;
        let addr = proc.addr.parse().map_err(|e| io::Error::other(format!("flowgate-sim address: {e}")))?;
        Ok(SimProc { _proc: proc, addr })
    }

    /// `GET /admin/stats`.
    pub async fn stats(&self) -> io::Result<SimStats> {
        serde_json::from_str(&get(self.addr, "/admin/stats").await?).map_err(io::Error::other)
    }

    /// `POST /admin/reset`: counters zeroed, peaks restart from the live values.
    pub async fn reset(&self) -> io::Result<()> {
        match exchange(self.addr, "POST", "/admin/reset", &[], "").await? {
            (200, _) => Ok(()),
            (status, body) => Err(io::Error::other(format!("sim reset: {status} {body}"))),
        }
    }
}

/// The binaries a cluster run starts.
#[derive(Clone, Debug)]
pub struct Bins {
    /// `flowgate`.
    pub flowgate: PathBuf,
    /// `flowgate-sim`.
    pub sim: PathBuf,
}

impl Bins {
    /// Both next to this binary (`target/release/`); an error naming the missing one.
    pub fn beside_me() -> io::Result<Bins> {
        let me = std::env::current_exe()?;
        let bins = Bins { flowgate: me.with_file_name("flowgate"), sim: me.with_file_name("flowgate-sim") };
        for b in [&bins.flowgate, &bins.sim] {
            if !b.is_file() {
                return Err(io::Error::other(format!(
                    "cluster: no {} (cargo build --release -p flowgate -p flowgate-sim)",
                    b.display()
                )));
            }
        }
        Ok(bins)
    }
}

/// A replica's config: `shards: 1`, one backend `backend` of `max_inflight` slots, and with
/// `cluster` (its YAML lines) a `cluster:` section; without, standalone.
pub fn replica_yaml(backend: SocketAddr, max_inflight: u32, cluster: Option<&str>) -> String {
    let mut yaml = format!(
        "shards: 1\nbackends:\n  - address: {backend}\n    max_inflight: {max_inflight}\nqueue:\n  ttl: 1h\n"
    );
    if let Some(lines) = cluster {
        yaml.push_str("cluster:\n");
        for l in lines.lines() {
            yaml.push_str(&format!("  {l}\n"));
        }
    }
    yaml
}

/// The `cluster:` lines of replica `replica_id` of `pool` on `redis`.
pub fn cluster_lines(redis: &Redis, pool: &str, replica_id: &str, sync_interval_ms: u64) -> String {
    format!(
        "redis: {}\npool: {pool}\nreplica_id: {replica_id}\nsync_interval: {sync_interval_ms}ms",
        redis.url()
    )
}

/// One `flowgate serve` process.
pub struct Replica {
    proc: Option<Server>,
    /// Its name in the report (and its config file's).
    pub name: String,
    /// Its ext_proc address.
    pub grpc: SocketAddr,
    /// Its metrics and API address.
    pub metrics: SocketAddr,
}

impl Replica {
    /// Write `yaml` to `dir/<name>.yaml` and start `flowgate serve` on it.
    pub fn start(bin: &Path, dir: &Path, name: &str, yaml: &str) -> io::Result<Replica> {
        let config = dir.join(format!("cluster-{name}.yaml"));
        std::fs::write(&config, yaml)?;
        let proc = start_flowgate(bin, &config, &[])?;
        let _ = std::fs::remove_file(&config);
        let grpc = proc.addr.parse::<SocketAddr>();
        let metrics = proc.metrics_addr.as_deref().map(str::parse::<SocketAddr>);
        match (grpc, metrics) {
            (Ok(grpc), Some(Ok(metrics))) => {
                Ok(Replica { proc: Some(proc), name: name.to_string(), grpc, metrics })
            }
            _ => Err(io::Error::other(format!(
                "{name}: unreadable serving line ({:?}, {:?})",
                proc.addr, proc.metrics_addr
            ))),
        }
    }

    /// Stop it (SIGKILL).
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.stop();
        }
    }

    /// One series of its `/metrics` (`None` when absent).
    pub async fn metric(&self, series: &str) -> io::Result<Option<f64>> {
        Ok(sample(&get(self.metrics, "/metrics").await?, series))
    }

    /// Poll `series` until `pred` holds.
    pub async fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> io::Result<()> {
        let start = Instant::now();
        loop {
            let v = self.metric(series).await?;
            if v.is_some_and(&pred) {
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                return Err(io::Error::other(format!("{}: {series} stayed {v:?}", self.name)));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Connected to Redis and seeing `replicas` replicas.
    pub async fn wait_connected(&self, replicas: u32) -> io::Result<()> {
        self.wait_metric("flowgate_cluster_connected", |v| v == 1.0).await?;
        self.wait_metric("flowgate_cluster_replicas", |v| v == f64::from(replicas)).await
    }

    /// `GET /api/v1/backends`, its first (only) backend.
    pub async fn backend(&self) -> io::Result<serde_json::Value> {
        let all: Vec<serde_json::Value> =
            serde_json::from_str(&get(self.metrics, "/api/v1/backends").await?).map_err(io::Error::other)?;
        all.into_iter().next().ok_or_else(|| io::Error::other(format!("{}: no backend", self.name)))
    }

    /// Poll the backend until `pred` holds.
    pub async fn wait_backend(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> io::Result<()> {
        let start = Instant::now();
        loop {
            let b = self.backend().await?;
            if pred(&b) {
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                return Err(io::Error::other(format!("{}: {what}: backend stayed {b}", self.name)));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `GET /api/v1/workload/{id}/metrics`: its local and remote arrival rates, requests/s.
    pub async fn rates(&self, id: &str) -> io::Result<(f64, f64)> {
        let w: serde_json::Value =
            serde_json::from_str(&get(self.metrics, &format!("/api/v1/workload/{id}/metrics")).await?)
                .map_err(io::Error::other)?;
        match (w["rate_per_s"].as_f64(), w["remote_rate_per_s"].as_f64()) {
            (Some(local), Some(remote)) => Ok((local, remote)),
            _ => Err(io::Error::other(format!("{}: workload {id}: no rates in {w}", self.name))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_stats_parse() {
        let line = "calls=120,usec=37560,usec_per_call=313.00,rejected_calls=0,failed_calls=0";
        assert_eq!(CommandStats::parse(line), Some(CommandStats { calls: 120, usec: 37560 }));
        assert_eq!(CommandStats::parse("usec=1"), None);
    }

    #[test]
    fn replica_configs() {
        let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let alone = replica_yaml(backend, 6, None);
        assert!(alone.contains("max_inflight: 6") && !alone.contains("cluster:"));
        let c = replica_yaml(backend, 6, Some("pool: p\nreplica_id: r0"));
        assert!(c.ends_with("cluster:\n  pool: p\n  replica_id: r0\n"));
    }
}
