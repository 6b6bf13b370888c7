//! The cluster tests' harness: a real `redis-server` on a free loopback port (persistence off),
//! real `flowgate serve` processes (so a replica can be SIGKILLed), a `flowgate-sim` backend that
//! counts its peak concurrency, and closed-loop clients that play Envoy: open an ext_proc stream,
//! wait for the answer, send a dispatched request to the backend for real, close the stream.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowgate::metrics::sample;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{connect, context, destination_header, http_get, immediate, request_headers};
use tokio_stream::wrappers::ReceiverStream;

/// Longest wait for anything polled here.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `redis-server` of the test's own.
pub struct Redis {
    proc: Option<Proc>,
    pub port: u16,
}

impl Redis {
    /// Start one on a free port.
    pub async fn start() -> Redis {
        Self::start_on(free_port()).await
    }

    /// Start one on `port` (a restart reuses the port), answering PING before this returns.
    pub async fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): install it with scripts/redis.sh (Debian's redis-server package)")
            });
        let redis = Redis { proc: Some(Proc(child)), port };
        let start = Instant::now();
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = s.write_all(b"PING\r\n").await;
                let mut buf = [0u8; 7];
                if tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await.is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return redis;
                }
            }
            assert!(start.elapsed() < DEADLINE, "redis-server on port {port} did not answer PING");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL it (no goodbye, nothing saved).
    pub fn kill(&mut self) {
        self.proc.take();
    }

    /// SIGSTOP (`true`) or SIGCONT it: a Redis that accepts nothing and answers nothing.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.proc.as_ref().expect("running").0.id().to_string();
        let status =
            Command::new("kill").args([if frozen { "-STOP" } else { "-CONT" }, &pid]).status().unwrap();
        assert!(status.success());
    }

    /// `INFO commandstats`' line for `command` (e.g. `evalsha`): `calls=…,usec=…,usec_per_call=…`.
    pub async fn command_stats(&self, command: &str) -> Option<String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.ok()?;
        s.write_all(b"INFO commandstats\r\nQUIT\r\n").await.ok()?;
        let mut raw = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw)).await.ok()?.ok()?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let prefix = format!("cmdstat_{command}:");
        text.lines().find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }
}

/// One `flowgate serve` process.
pub struct Replica {
    proc: Option<Proc>,
    pub name: String,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

fn field(line: &str, key: &str) -> Option<SocketAddr> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    line[start..].split_whitespace().next()?.parse().ok()
}

/// A config for a replica over `backend` (`max_inflight` slots): cluster `cluster` (YAML lines
/// under `cluster:`; empty = standalone).
pub fn replica_yaml(backend: SocketAddr, max_inflight: u32, cluster: &str) -> String {
    let mut yaml = format!(
        "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends:\n  - address: {backend}\n    max_inflight: {max_inflight}\nqueue:\n  ttl: 1h\n"
    );
    if !cluster.is_empty() {
        yaml += "cluster:\n";
        for l in cluster.lines() {
            yaml += &format!("  {l}\n");
        }
    }
    yaml
}

impl Replica {
    /// Start `flowgate serve` with `yaml`; returns once it logged `flowgate serving`.
    pub async fn spawn(name: &str, yaml: &str) -> Replica {
        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("flowgate-cluster");
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join(format!("{name}-{}-{}.yaml", std::process::id(), free_port()));
        std::fs::write(&config, yaml).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tag = name.to_string();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("flowgate serving") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send((field(&line, "grpc_addr"), field(&line, "metrics_addr")));
                    }
                }
                if line.contains("cluster:") {
                    eprintln!("[{tag}] {line}");
                }
            }
        });
        let (grpc, metrics) = tokio::time::timeout(DEADLINE, rx).await.expect("serve started").unwrap();
        Replica { proc: Some(Proc(child)), name: name.into(), grpc: grpc.unwrap(), metrics: metrics.unwrap() }
    }

    /// SIGKILL it.
    pub fn kill(&mut self) {
        self.proc.take();
    }

    /// One series of its `/metrics`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        sample(&http_get(self.metrics, "/metrics", DEADLINE).await.1, series)
    }

    /// Σ of every `flowgate_requests_total{outcome=…}` series: requests that got an outcome.
    pub async fn outcomes(&self) -> f64 {
        let text = http_get(self.metrics, "/metrics", DEADLINE).await.1;
        text.lines()
            .filter(|l| l.starts_with("flowgate_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Poll `series` until `pred` holds; how long that took.
    pub async fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let v = self.metric(series).await;
            if v.is_some_and(&pred) {
                return start.elapsed();
            }
            assert!(start.elapsed() < DEADLINE, "{}: {series} stayed {v:?}", self.name);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `GET /api/v1/backends`, the first backend.
    pub async fn backend(&self) -> serde_json::Value {
        let (status, body) = http_get(self.metrics, "/api/v1/backends", DEADLINE).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap().remove(0)
    }

    /// Poll the first backend until `pred` holds; how long that took.
    pub async fn wait_backend(&self, what: &str, pred: impl Fn(&serde_json::Value) -> bool) -> Duration {
        let start = Instant::now();
        loop {
            let b = self.backend().await;
            if pred(&b) {
                return start.elapsed();
            }
            assert!(start.elapsed() < DEADLINE, "{}: {what}: backend stayed {b}", self.name);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// `GET /api/v1/workload/{id}/metrics` (`None` if not tracked).
    pub async fn workload(&self, id: &str) -> Option<serde_json::Value> {
        let (status, body) =
            http_get(self.metrics, &format!("/api/v1/workload/{id}/metrics"), DEADLINE).await;
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    /// Wait until it is connected and sees `replicas` replicas.
    pub async fn wait_connected(&self, replicas: u32) {
        self.wait_metric("flowgate_cluster_connected", |v| v == 1.0).await;
        self.wait_metric("flowgate_cluster_replicas", |v| v == f64::from(replicas)).await;
    }

    /// After its load stopped: nothing queued or in flight, and as many outcomes as `sent`.
    pub async fn assert_conserved(&self, sent: u64) {
        self.wait_metric("flowgate_queued_requests", |v| v == 0.0).await;
        let start = Instant::now();
        loop {
            let inflight = self.backend().await["inflight"].as_u64().unwrap();
            if inflight == 0 {
                break;
            }
            assert!(start.elapsed() < DEADLINE, "{}: {inflight} still in flight", self.name);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(self.outcomes().await, sent as f64, "{}: every request exactly one outcome", self.name);
    }
}

/// What one client loop saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Streams opened (each a request).
    pub sent: u64,
    /// Answered with a destination (then sent to the backend).
    pub dispatched: u64,
    /// Answered with an immediate response.
    pub refused: u64,
    /// Stream errors, or a backend request that failed.
    pub errors: u64,
}

impl std::ops::Add for Tally {
    type Output = Tally;
    fn add(self, o: Tally) -> Tally {
        Tally {
            sent: self.sent + o.sent,
            dispatched: self.dispatched + o.dispatched,
            refused: self.refused + o.refused,
            errors: self.errors + o.errors,
        }
    }
}

/// Closed-loop clients against one replica.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<Tally>,
}

/// POST a chat completion of `max_tokens` tokens to the backend; `true` on a 200.
pub async fn infer(backend: SocketAddr, workload: &str, max_tokens: u32) -> bool {
    let body = format!(
        r#"{{"model":"sim","messages":[{{"role":"user","content":"hi"}}],"max_tokens":{max_tokens},"user":"{workload}"}}"#
    );
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let Ok(mut s) = tokio::net::TcpStream::connect(backend).await else { return false };
    if s.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut raw = Vec::new();
    match tokio::time::timeout(DEADLINE, s.read_to_end(&mut raw)).await {
        Ok(Ok(_)) => raw.starts_with(b"HTTP/1.1 200"),
        _ => false,
    }
}

impl Load {
    /// `workers` client loops of `workload` against `replica`, each dispatched request sent to
    /// `backend` for `max_tokens` tokens.
    pub async fn start(
        replica: SocketAddr,
        backend: SocketAddr,
        workload: &str,
        workers: usize,
        max_tokens: u32,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        let client = connect(replica).await;
        for _ in 0..workers {
            let (stop, mut client, workload) = (stop.clone(), client.clone(), workload.to_string());
            tasks.spawn(async move {
                let mut t = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    t.sent += 1;
                    let (tx, rx) = tokio::sync::mpsc::channel(4);
                    let _ = tx.send(request_headers(vec![context(&workload, 3)])).await;
                    let opened =
                        tokio::time::timeout(DEADLINE, client.process(ReceiverStream::new(rx))).await;
                    let Ok(Ok(stream)) = opened else {
                        t.errors += 1;
                        continue;
                    };
                    let mut stream = (tx, stream.into_inner());
                    let answer = match tokio::time::timeout(DEADLINE, stream.1.message()).await {
                        Ok(Ok(Some(a))) => a,
                        _ => {
                            t.errors += 1;
                            continue;
                        }
                    };
                    if destination_header(&answer).is_some() {
                        t.dispatched += 1;
                        if !infer(backend, &workload, max_tokens).await {
                            t.errors += 1;
                        }
                    } else if immediate(&answer).is_some() {
                        t.refused += 1;
                    } else {
                        t.errors += 1;
                    }
                    // Closing the stream ends the request: its slot is released.
                    drop(stream);
                }
                t
            });
        }
        Load { stop, tasks }
    }

    /// Stop the loops and add up what they saw.
    pub async fn stop(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        while let Some(t) = self.tasks.join_next().await {
            total = total + t.unwrap();
        }
        total
    }
}
