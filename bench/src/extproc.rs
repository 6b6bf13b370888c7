//! `extproc`: open-loop load through the ext_proc gRPC protocol, flowgate against a bare tonic
//! ext_proc server that answers CONTINUE at once (the baseline), so the difference is what flow
//! control adds.
//!
//! Each request is what Envoy does for one HTTP request: open a `Process` stream, send
//! `request_headers` carrying an `x-workload-context` (mixed workload ids and criticalities),
//! await the headers answer — **the measured latency is send → headers answer**, stream opening
//! included — then send `response_headers` with `end_of_stream` (flowgate releases the slot),
//! await its CONTINUE, close the request side and await the end of the stream.
//!
//! Load is open loop: a pacer thread releases request `i` at `start + i/rate` (sleeping, never
//! spinning) to worker `i mod streams`; each worker is one client task with at most one stream
//! open, so a slow answer delays only that worker's next request. Workers share a few HTTP/2
//! connections. Besides send → answer, the scheduled-time → answer latency is recorded too: it
//! includes the client's own lag (pacer oversleep, a busy worker, a busy client runtime), i.e. it
//! does not hide coordinated omission.
//!
//! With free capacity every request must be dispatched: any failed stream, timeout or
//! non-dispatched answer is a broken harness (or server), and the run fails. Slowness never does.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, HttpHeaders, ProcessingRequest, ProcessingResponse, TrailersResponse,
};
use flowgate::config::ServeConfig;
use flowgate::serve::{self, Running};
use flowgate::server::DESTINATION_HEADER;
use flowgate_bench::report::{self, timed_bar, RunInfo, Table};
use flowgate_bench::stats::{Hist, Summary};
use serde::Serialize;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

type Client = ExternalProcessorClient<Channel>;

/// The issue's target: flowgate adds at most this much p99 latency over the bare server.
pub const TARGET_ADDED_P99_US: f64 = 300.0;
/// ... at this offered load ...
pub const TARGET_RATE: f64 = 10_000.0;
/// ... over this many concurrent streams.
pub const TARGET_STREAMS: usize = 256;
/// A server sustains the offered load when it completes at least this share of it ...
pub const SUSTAINED_SHARE: f64 = 0.95;
/// ... and the client sends on schedule: p99 send lag at most this (ms). Past it the client or
/// the machine is saturated and latencies measure its backlog, not the server.
pub const SUSTAINED_LAG_P99_MS: f64 = 1.0;
/// Longest a single request (all of its stream) may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After the load window, requests still waiting for their worker this much longer are skipped
/// (counted, not failures): an overloaded client must not drain a backlog for ever.
const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// The backend of the in-process flowgate: never contacted, only named in answers.
const BACKEND: &str = "127.0.0.1:8000";
/// Distinct workload ids in the mix.
const WORKLOADS: usize = 16;

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Quick mode (CI).
    pub quick: bool,
    /// Offered load, requests/s.
    pub rate: f64,
    /// Concurrent client streams (workers).
    pub streams: usize,
    /// HTTP/2 connections per server the workers share.
    pub connections: usize,
    /// Worker threads of the client runtime.
    pub client_threads: usize,
    /// Measured seconds per server (split over the rounds).
    pub seconds: f64,
    /// Interleaved rounds (baseline and flowgate alternate; histograms merged).
    pub rounds: usize,
    /// Engine shards of the in-process flowgate.
    pub shards: usize,
    /// An external `flowgate serve` to drive instead of an in-process one.
    pub addr: Option<String>,
}

/// One server's figures.
#[derive(Debug, Serialize)]
pub struct TargetResult {
    /// `baseline` (bare tonic ext_proc, CONTINUE at once) or `flowgate`.
    pub target: String,
    /// Offered load, requests/s.
    pub offered_rps: f64,
    /// Completed requests / load window (extended to the last completion).
    pub achieved_rps: f64,
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests completed (dispatched, finished, stream closed cleanly).
    pub completed: u64,
    /// Streams that failed (gRPC or protocol error, timeout).
    pub failed: u64,
    /// Answers that were not a dispatch (immediate responses).
    pub not_dispatched: u64,
    /// Requests never sent: their worker was still busy past the drain grace.
    pub skipped: u64,
    /// Send → headers answer.
    pub latency: Summary,
    /// Scheduled time → headers answer (includes the client's lag).
    pub from_schedule: Summary,
    /// Scheduled time → send: the client's own lag behind the schedule.
    pub send_lag: Summary,
    /// The first failure seen, if any.
    pub first_error: Option<String>,
}

/// Flowgate minus baseline.
#[derive(Debug, Serialize)]
pub struct Added {
    /// p50 difference, µs.
    pub p50_us: f64,
    /// p99 difference, µs.
    pub p99_us: f64,
    /// p999 difference, µs.
    pub p999_us: f64,
    /// flowgate p99 / baseline p99.
    pub p99_ratio: f64,
}

/// The `extproc` report.
#[derive(Debug, Serialize)]
pub struct ExtprocReport {
    /// Run facts.
    pub run: RunInfo,
    /// `in-process` or the external address driven.
    pub flowgate_server: String,
    /// Offered load, requests/s.
    pub rate: f64,
    /// Concurrent client streams.
    pub streams: usize,
    /// HTTP/2 connections per server.
    pub connections: usize,
    /// Client runtime threads.
    pub client_threads: usize,
    /// Measured seconds per server.
    pub seconds: f64,
    /// Interleaved rounds.
    pub rounds: usize,
    /// Engine shards of the in-process flowgate (0 when external).
    pub shards: usize,
    /// Baseline first, then flowgate.
    pub results: Vec<TargetResult>,
    /// What flowgate adds.
    pub added: Added,
    /// The target on added p99, µs.
    pub target_added_p99_us: f64,
    /// Whether both servers sustained the offered load (achieved ≥ 95 % of offered, p99 send lag
    /// ≤ 1 ms); when not,
    /// the client (or the machine) is the bottleneck and latencies include its backlog.
    pub sustained: bool,
    /// Whether this run met the target (reported, never enforced); `null` when the run is not at
    /// the target's load (≥ 10k rps over ≥ 256 streams) or did not sustain it.
    pub target_met: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// The baseline server.

/// A bare ext_proc server: every message is answered CONTINUE at once (no mutation); the stream
/// closes when the client's side does.
#[derive(Clone, Copy, Debug, Default)]
pub struct ContinueServer;

#[tonic::async_trait]
impl ExternalProcessor for ContinueServer {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: tonic::Request<Streaming<ProcessingRequest>>,
    ) -> Result<tonic::Response<Self::ProcessStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Ok(Some(message)) = inbound.message().await {
                let Some(reply) = continue_reply(&message) else { continue };
                let response = ProcessingResponse { response: Some(reply), ..Default::default() };
                if tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// The CONTINUE answer to `message` (none for an empty message).
pub fn continue_reply(message: &ProcessingRequest) -> Option<Reply> {
    Some(match message.request.as_ref()? {
        Msg::RequestHeaders(_) => Reply::RequestHeaders(HeadersResponse::default()),
        Msg::ResponseHeaders(_) => Reply::ResponseHeaders(HeadersResponse::default()),
        Msg::RequestBody(_) => Reply::RequestBody(BodyResponse::default()),
        Msg::ResponseBody(_) => Reply::ResponseBody(BodyResponse::default()),
        Msg::RequestTrailers(_) => Reply::RequestTrailers(TrailersResponse::default()),
        Msg::ResponseTrailers(_) => Reply::ResponseTrailers(TrailersResponse::default()),
    })
}

// ---------------------------------------------------------------------------------------------
// Servers on their own runtimes.

enum Server {
    Baseline { rt: Runtime, stop: oneshot::Sender<()>, task: tokio::task::JoinHandle<()> },
    Flowgate { rt: Runtime, running: Running },
}

fn server_runtime(name: &str) -> io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().thread_name(name).build()
}

fn start_baseline() -> io::Result<(Server, SocketAddr)> {
    let rt = server_runtime("extproc-baseline")?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = rt.spawn(async move {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        // Like flowgate's server: no cap on streams per connection.
        let served = tonic::transport::Server::builder()
            .max_concurrent_streams(None)
            .add_service(ExternalProcessorServer::new(ContinueServer))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            eprintln!("extproc: baseline server: {e}");
        }
    });
    Ok((Server::Baseline { rt, stop, task }, addr))
}

fn start_flowgate(shards: usize) -> io::Result<(Server, SocketAddr)> {
    let rt = server_runtime("extproc-flowgate")?;
    // One backend with far more slots than requests in flight: capacity is always free.
    let yaml = format!(
        "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: {shards}\nbackends:\n  - address: {BACKEND}\n    max_inflight: 100000\nqueue:\n  max_requests: 100000\n"
    );
    let mut config = ServeConfig::from_yaml(&yaml)
        .map_err(|e| io::Error::other(format!("extproc: flowgate config: {e:?}")))?;
    if let Some(spin) = flowgate_bench::baseline::spin_before_park() {
        config.engine.spin_before_park = spin;
    }
    let running = rt
        .block_on(serve::start(config))
        .map_err(|e| io::Error::other(format!("extproc: flowgate did not start: {e}")))?;
    let addr = running.grpc_addr();
    Ok((Server::Flowgate { rt, running }, addr))
}

impl Server {
    fn stop(self) {
        match self {
            Server::Baseline { rt, stop, task } => {
                let _ = stop.send(());
                let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
                rt.shutdown_timeout(Duration::from_secs(1));
            }
            Server::Flowgate { rt, running } => {
                rt.block_on(running.shutdown());
                rt.shutdown_timeout(Duration::from_secs(1));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The client.

fn header(key: &str, value: &[u8]) -> HeaderValue {
    HeaderValue { key: key.into(), raw_value: value.to_vec(), ..Default::default() }
}

/// The `request_headers` message of request `k` of worker `w`: a mix of 16 workload ids and
/// criticalities 1..=5.
pub fn request_headers(w: usize, k: usize) -> ProcessingRequest {
    let id = (w * 7 + k) % WORKLOADS;
    let criticality = 1 + (w + k) % 5;
    let context = format!(r#"{{"workload_id":"tenant-{id}","criticality":{criticality}}}"#);
    let headers = vec![
        header(":method", b"POST"),
        header(":path", b"/v1/chat/completions"),
        header(":authority", b"llm.local"),
        header("content-type", b"application/json"),
        header("x-workload-context", context.as_bytes()),
    ];
    ProcessingRequest {
        request: Some(Msg::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers }),
            end_of_stream: false,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The `response_headers` message that ends the HTTP response (and frees flowgate's slot).
fn response_headers() -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Msg::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers: vec![header(":status", b"200")] }),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Why a request did not complete.
#[derive(Debug, PartialEq)]
pub enum Failure {
    /// Answered, but not dispatched (an immediate response).
    NotDispatched(String),
    /// The stream failed, timed out or broke the protocol.
    Failed(String),
}

/// Check the headers answer: a `HeadersResponse`, and with `want_destination` one that sets the
/// destination header (flowgate's dispatch).
pub fn classify(answer: &ProcessingResponse, want_destination: bool) -> Result<(), Failure> {
    match &answer.response {
        Some(Reply::RequestHeaders(h)) => {
            if !want_destination {
                return Ok(());
            }
            let sets_destination =
                h.response.as_ref().and_then(|c| c.header_mutation.as_ref()).is_some_and(|m| {
                    m.set_headers.iter().any(|o| {
                        o.header.as_ref().is_some_and(|h| h.key.eq_ignore_ascii_case(DESTINATION_HEADER))
                    })
                });
            if sets_destination {
                Ok(())
            } else {
                Err(Failure::Failed(format!("headers answer without {DESTINATION_HEADER}")))
            }
        }
        Some(Reply::ImmediateResponse(i)) => {
            let status = i.status.as_ref().map_or(0, |s| s.code);
            Err(Failure::NotDispatched(format!("immediate response, status {status}: {}", i.details)))
        }
        other => Err(Failure::Failed(format!("unexpected headers answer: {other:?}"))),
    }
}

/// One request through one stream; when its headers answer came.
async fn one_request(
    client: &mut Client,
    first: ProcessingRequest,
    want_destination: bool,
) -> Result<(Instant, Instant), Failure> {
    let failed = |what: &str, e: &dyn std::fmt::Display| Failure::Failed(format!("{what}: {e}"));
    let (tx, rx) = mpsc::channel(4);
    let sent = Instant::now();
    tx.try_send(first).expect("a fresh channel has room");
    let mut answers =
        client.process(ReceiverStream::new(rx)).await.map_err(|s| failed("open", &s))?.into_inner();
    let answer = answers
        .message()
        .await
        .map_err(|s| failed("headers answer", &s))?
        .ok_or_else(|| Failure::Failed("stream ended before the headers answer".into()))?;
    let answered = Instant::now();
    classify(&answer, want_destination)?;
    tx.send(response_headers()).await.map_err(|_| Failure::Failed("request side closed early".into()))?;
    match answers.message().await {
        Ok(Some(ProcessingResponse { response: Some(Reply::ResponseHeaders(_)), .. })) => {}
        other => return Err(Failure::Failed(format!("response headers answer: {other:?}"))),
    }
    drop(tx);
    match answers.message().await {
        Ok(None) => Ok((sent, answered)),
        other => Err(Failure::Failed(format!("stream end: {other:?}"))),
    }
}

/// Requests by fate.
#[derive(Default)]
struct Tally {
    scheduled: u64,
    completed: u64,
    failed: u64,
    not_dispatched: u64,
    skipped: u64,
    last_done: Option<Instant>,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.scheduled += o.scheduled;
        self.completed += o.completed;
        self.failed += o.failed;
        self.not_dispatched += o.not_dispatched;
        self.skipped += o.skipped;
        self.last_done = self.last_done.max(o.last_done);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// A worker's record: its tally and `(send → answer, schedule → answer, schedule → send)`
/// samples in ns (a plain
/// vector: a histogram per worker would be ~0.5 MB each).
#[derive(Default)]
struct WorkerRecord {
    tally: Tally,
    samples: Vec<(u64, u64, u64)>,
}

/// A phase's (or a server's) figures.
#[derive(Default)]
struct Measured {
    tally: Tally,
    latency: Hist,
    from_schedule: Hist,
    send_lag: Hist,
}

impl Measured {
    fn add_worker(&mut self, w: WorkerRecord) {
        for (latency, from_schedule, send_lag) in w.samples {
            self.latency.record(latency);
            self.from_schedule.record(from_schedule);
            self.send_lag.record(send_lag);
        }
        self.tally.merge(w.tally);
    }

    fn merge(&mut self, o: Measured) {
        self.latency.add(&o.latency);
        self.from_schedule.add(&o.from_schedule);
        self.send_lag.add(&o.send_lag);
        self.tally.merge(o.tally);
    }
}

/// One client stream at a time: take scheduled times from `tokens`, run each request.
async fn worker(
    mut client: Client,
    mut tokens: mpsc::UnboundedReceiver<Instant>,
    requests: Vec<ProcessingRequest>,
    want_destination: bool,
    stop_at: Instant,
) -> WorkerRecord {
    let mut t = Tally::default();
    let mut samples = Vec::new();
    let mut k = 0;
    while let Some(scheduled) = tokens.recv().await {
        t.scheduled += 1;
        if Instant::now() > stop_at {
            t.skipped += 1;
            continue;
        }
        let first = requests[k % requests.len()].clone();
        k += 1;
        let outcome =
            tokio::time::timeout(REQUEST_TIMEOUT, one_request(&mut client, first, want_destination))
                .await
                .unwrap_or_else(|_| Err(Failure::Failed(format!("no answer within {REQUEST_TIMEOUT:?}"))));
        match outcome {
            Ok((sent, answered)) => {
                t.completed += 1;
                samples.push((
                    (answered - sent).as_nanos() as u64,
                    answered.saturating_duration_since(scheduled).as_nanos() as u64,
                    sent.saturating_duration_since(scheduled).as_nanos() as u64,
                ));
                t.last_done = Some(Instant::now());
            }
            Err(f) => {
                let msg = match f {
                    Failure::NotDispatched(m) => {
                        t.not_dispatched += 1;
                        m
                    }
                    Failure::Failed(m) => {
                        t.failed += 1;
                        m
                    }
                };
                t.first_error.get_or_insert(msg);
            }
        }
    }
    WorkerRecord { tally: t, samples }
}

/// The scheduled offset of request `i` at `rate` requests/s.
pub fn schedule(i: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(i as f64 / rate)
}

/// Offer `rate` requests/s for `dur` over `streams` workers sharing `clients`; returns the tally
/// and the load window (start → max(end of schedule, last completion)).
fn phase(
    client_rt: &Runtime,
    clients: &[Client],
    want_destination: bool,
    rate: f64,
    streams: usize,
    dur: Duration,
    label: &str,
) -> (Measured, Duration) {
    let total = (rate * dur.as_secs_f64()).round().max(1.0) as u64;
    let start = Instant::now() + Duration::from_millis(5);
    let end = start + schedule(total, rate);
    let stop_at = end + DRAIN_GRACE;
    let mut senders = Vec::with_capacity(streams);
    let mut handles = Vec::with_capacity(streams);
    for w in 0..streams {
        let (tx, rx) = mpsc::unbounded_channel();
        let requests = (0..8).map(|k| request_headers(w, k)).collect();
        let client = clients[w % clients.len()].clone();
        handles.push(client_rt.spawn(worker(client, rx, requests, want_destination, stop_at)));
        senders.push(tx);
    }
    let bar = timed_bar(label, dur);
    // The pacer: this thread sleeps until each request's time and hands it to its worker.
    for i in 0..total {
        let due = start + schedule(i, rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        if i % 1024 == 0 {
            bar.set_position(start.elapsed().as_millis() as u64);
        }
        let _ = senders[(i % streams as u64) as usize].send(due);
    }
    drop(senders);
    let mut m = Measured::default();
    client_rt.block_on(async {
        for h in handles {
            match h.await {
                Ok(w) => m.add_worker(w),
                Err(e) => {
                    m.tally.failed += 1;
                    m.tally.first_error.get_or_insert(format!("worker task: {e}"));
                }
            }
        }
    });
    bar.finish_and_clear();
    let window = m.tally.last_done.map_or(end, |d| d.max(end)) - start;
    (m, window)
}

async fn connect(url: String, n: usize) -> Result<Vec<Client>, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url)?.tcp_nodelay(true).connect_timeout(Duration::from_secs(5));
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        // Each connect() is its own HTTP/2 connection.
        clients.push(Client::new(endpoint.connect().await?));
    }
    Ok(clients)
}

fn url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Run the `extproc` subcommand.
pub fn run(o: &Options, out_dir: &Path) -> io::Result<ExtprocReport> {
    if !(o.rate.is_finite() && o.rate > 0.0) || o.streams == 0 || o.connections == 0 {
        return Err(io::Error::other("extproc: --rate, --streams and --connections must be positive"));
    }
    let rounds = o.rounds.max(1);
    let per_round = Duration::from_secs_f64(o.seconds / rounds as f64);
    let warmup = Duration::from_secs_f64(if o.quick { 0.2 } else { 1.0 });

    let (baseline, baseline_addr) = start_baseline()?;
    let (flowgate, flowgate_url) = match &o.addr {
        Some(a) => (None, url(a)),
        None => {
            let (s, addr) = start_flowgate(o.shards)?;
            (Some(s), format!("http://{addr}"))
        }
    };
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.client_threads.max(1))
        .enable_all()
        .thread_name("extproc-client")
        .build()?;
    let connected = client_rt.block_on(async {
        let b = connect(format!("http://{baseline_addr}"), o.connections).await?;
        let f = connect(flowgate_url.clone(), o.connections).await?;
        Ok::<_, tonic::transport::Error>((b, f))
    });
    let (baseline_clients, flowgate_clients) = match connected {
        Ok(c) => c,
        Err(e) => {
            baseline.stop();
            if let Some(f) = flowgate {
                f.stop();
            }
            return Err(io::Error::other(format!("extproc: cannot connect: {e} ({flowgate_url})")));
        }
    };
    let targets: [(&str, &[Client], bool); 2] =
        [("baseline", &baseline_clients, false), ("flowgate", &flowgate_clients, true)];

    // Warm up (connections, flowgate's per-thread submitters), then alternate the measurements.
    for (name, clients, want) in targets {
        phase(&client_rt, clients, want, o.rate, o.streams, warmup, &format!("extproc warmup {name}"));
    }
    let mut measured = [Measured::default(), Measured::default()];
    let mut windows = [Duration::ZERO; 2];
    for r in 0..rounds {
        for j in 0..2 {
            let i = (r + j) % 2;
            let (name, clients, want) = targets[i];
            let label = format!("extproc {name} {} rps ×{}", report::si(o.rate), o.streams);
            let (t, w) = phase(&client_rt, clients, want, o.rate, o.streams, per_round, &label);
            measured[i].merge(t);
            windows[i] += w;
        }
    }
    drop((baseline_clients, flowgate_clients));
    client_rt.shutdown_timeout(Duration::from_secs(1));
    baseline.stop();
    if let Some(f) = flowgate {
        f.stop();
    }

    let results: Vec<TargetResult> = ["baseline", "flowgate"]
        .iter()
        .zip(measured)
        .zip(windows)
        .map(|((name, m), w)| TargetResult {
            target: name.to_string(),
            offered_rps: o.rate,
            achieved_rps: if w.is_zero() { 0.0 } else { m.tally.completed as f64 / w.as_secs_f64() },
            scheduled: m.tally.scheduled,
            completed: m.tally.completed,
            failed: m.tally.failed,
            not_dispatched: m.tally.not_dispatched,
            skipped: m.tally.skipped,
            latency: m.latency.summary(),
            from_schedule: m.from_schedule.summary(),
            send_lag: m.send_lag.summary(),
            first_error: m.tally.first_error,
        })
        .collect();
    let sustained = results.iter().all(|r| {
        r.achieved_rps >= SUSTAINED_SHARE * r.offered_rps && r.send_lag.p99_ms <= SUSTAINED_LAG_P99_MS
    });
    let (b, f) = (&results[0].latency, &results[1].latency);
    let added = Added {
        p50_us: (f.p50_ms - b.p50_ms) * 1e3,
        p99_us: (f.p99_ms - b.p99_ms) * 1e3,
        p999_us: (f.p999_ms - b.p999_ms) * 1e3,
        p99_ratio: if b.p99_ms > 0.0 { f.p99_ms / b.p99_ms } else { 0.0 },
    };
    let report = ExtprocReport {
        run: RunInfo::now(o.quick),
        flowgate_server: o.addr.clone().unwrap_or_else(|| "in-process".into()),
        rate: o.rate,
        streams: o.streams,
        connections: o.connections,
        client_threads: o.client_threads.max(1),
        seconds: o.seconds,
        rounds,
        shards: if o.addr.is_some() { 0 } else { o.shards },
        sustained,
        target_met: (sustained && o.rate >= TARGET_RATE && o.streams >= TARGET_STREAMS)
            .then_some(added.p99_us <= TARGET_ADDED_P99_US),
        results,
        added,
        target_added_p99_us: TARGET_ADDED_P99_US,
    };
    report::write_json(out_dir, "extproc", &report)?;
    print_table(&report);

    let broken: Vec<String> = report
        .results
        .iter()
        .filter(|r| r.failed + r.not_dispatched > 0 || r.completed == 0)
        .map(|r| {
            format!(
                "{}: {} failed, {} not dispatched, {} completed (first error: {})",
                r.target,
                r.failed,
                r.not_dispatched,
                r.completed,
                r.first_error.as_deref().unwrap_or("none")
            )
        })
        .collect();
    if !broken.is_empty() {
        return Err(io::Error::other(format!(
            "extproc: every request must complete with free capacity: {}",
            broken.join("; ")
        )));
    }
    Ok(report)
}

fn print_table(r: &ExtprocReport) {
    let us = |v: f64| format!("{:.0}", v * 1e3);
    let mut t = Table::new(&[
        "server",
        "offered/s",
        "achieved/s",
        "completed",
        "failed",
        "skipped",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "max µs",
        "p99 sched→answer µs",
        "p99 send lag µs",
    ]);
    for x in &r.results {
        t.row(vec![
            x.target.clone(),
            report::si(x.offered_rps),
            report::si(x.achieved_rps),
            x.completed.to_string(),
            (x.failed + x.not_dispatched).to_string(),
            x.skipped.to_string(),
            us(x.latency.p50_ms),
            us(x.latency.p99_ms),
            us(x.latency.p999_ms),
            us(x.latency.max_ms),
            us(x.from_schedule.p99_ms),
            us(x.send_lag.p99_ms),
        ]);
    }
    let a = &r.added;
    t.row(vec![
        "added (flowgate − baseline)".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
        format!("{:+.0}", a.p50_us),
        format!("{:+.0}", a.p99_us),
        format!("{:+.0}", a.p999_us),
        String::new(),
        String::new(),
    ]);
    println!(
        "\n== extproc (send → headers answer over loopback gRPC, open loop, {} streams on {} connection(s), flowgate {}) ==\n{}",
        r.streams,
        r.connections,
        r.flowgate_server,
        t.render()
    );
    let verdict = match r.target_met {
        Some(true) => "met".to_string(),
        Some(false) => "missed".to_string(),
        None if r.rate < TARGET_RATE || r.streams < TARGET_STREAMS => {
            format!("not assessed at {} rps over {} streams", report::si(r.rate), r.streams)
        }
        None => format!(
            "not assessed: the offered load was not sustained (achieved < {:.0} % or p99 send lag > {} ms: the client/machine is saturated)",
            SUSTAINED_SHARE * 100.0,
            SUSTAINED_LAG_P99_MS
        ),
    };
    println!(
        "p99 flowgate / baseline: {:.2}x (added {:+.0} µs); target: flowgate adds ≤ {:.0} µs at p99 at {} rps over {} streams: {verdict}",
        a.p99_ratio,
        a.p99_us,
        r.target_added_p99_us,
        report::si(TARGET_RATE),
        TARGET_STREAMS,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::ext_proc::v3::ImmediateResponse;

    #[test]
    fn answers_are_classified() {
        let dispatched = flowgate::server::dispatched(BACKEND, vec![]);
        assert_eq!(classify(&dispatched, true), Ok(()));
        assert_eq!(classify(&dispatched, false), Ok(()));
        let bare =
            ProcessingResponse { response: continue_reply(&request_headers(0, 0)), ..Default::default() };
        assert_eq!(classify(&bare, false), Ok(()));
        assert!(matches!(classify(&bare, true), Err(Failure::Failed(_))));
        let immediate = ProcessingResponse {
            response: Some(Reply::ImmediateResponse(ImmediateResponse::default())),
            ..Default::default()
        };
        assert!(matches!(classify(&immediate, true), Err(Failure::NotDispatched(_))));
        let wrong =
            ProcessingResponse { response: continue_reply(&response_headers()), ..Default::default() };
        assert!(matches!(classify(&wrong, false), Err(Failure::Failed(_))));
    }

    #[test]
    fn request_mix_and_schedule() {
        let mut ids = std::collections::HashSet::new();
        let mut crits = std::collections::HashSet::new();
        for w in 0..8 {
            for k in 0..8 {
                let Some(Msg::RequestHeaders(h)) = request_headers(w, k).request else { panic!() };
                let ctx = h.headers.unwrap().headers.into_iter().find(|h| h.key == "x-workload-context");
                let v: serde_json::Value = serde_json::from_slice(&ctx.unwrap().raw_value).unwrap();
                ids.insert(v["workload_id"].as_str().unwrap().to_string());
                crits.insert(v["criticality"].as_u64().unwrap());
            }
        }
        assert_eq!(ids.len(), WORKLOADS);
        assert_eq!(crits, (1..=5).collect());
        assert_eq!(schedule(0, 10_000.0), Duration::ZERO);
        assert_eq!(schedule(10_000, 10_000.0), Duration::from_secs(1));
        assert_eq!(schedule(3, 4.0), Duration::from_millis(750));
    }

    /// The whole harness at a trickle: both servers, every request completes.
    #[test]
    fn a_small_run_completes_every_request() {
        let dir = std::env::temp_dir().join(format!("flowgate-extproc-test-{}", std::process::id()));
        let o = Options {
            quick: true,
            rate: 400.0,
            streams: 8,
            connections: 2,
            client_threads: 1,
            seconds: 0.3,
            rounds: 1,
            shards: 1,
            addr: None,
        };
        let r = run(&o, &dir).expect("run");
        for x in &r.results {
            assert_eq!((x.failed, x.not_dispatched), (0, 0), "{x:?}");
            assert_eq!(x.completed + x.skipped, x.scheduled, "{x:?}");
            assert!(x.completed > 0);
        }
        assert!(dir.join("extproc.json").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
