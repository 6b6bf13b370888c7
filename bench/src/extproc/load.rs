//! The open-loop load generator: a pacer, one worker per stream, and their tallies.
//!
//! Load is open loop: a pacer thread releases request `i` at `start + i/rate` (sleeping, never
//! spinning) to worker `i mod streams`; each worker is one client task with at most one stream
//! open, so a slow answer delays only that worker's next request. Workers share a few HTTP/2
//! connections. Besides send → answer, the scheduled-time → answer latency is recorded too: it
//! includes the client's own lag (pacer oversleep, a busy worker, a busy client runtime), i.e. it
//! does not hide coordinated omission.

use super::client::{one_request, request_headers, response_headers, Client, Failure};
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use flowgate_bench::report::timed_bar;
use flowgate_bench::stats::Hist;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tonic::transport::Endpoint;

/// Longest a single request (all of its stream) may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// After the load window, requests still waiting for their worker this much longer are skipped
/// (counted, not failures): an overloaded client must not drain a backlog for ever.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Requests by fate.
#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) scheduled: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) not_dispatched: u64,
    pub(crate) skipped: u64,
    last_done: Option<Instant>,
    pub(crate) first_error: Option<String>,
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
pub(crate) struct Measured {
    pub(crate) tally: Tally,
    pub(crate) latency: Hist,
    pub(crate) from_schedule: Hist,
    pub(crate) send_lag: Hist,
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

    pub(crate) fn merge(&mut self, o: Measured) {
        self.latency.add(&o.latency);
        self.from_schedule.add(&o.from_schedule);
        self.send_lag.add(&o.send_lag);
        self.tally.merge(o.tally);
    }
}

/// What every request of a phase sends, and what its headers answer must be.
pub(crate) struct Exchange {
    /// The request-headers messages: worker `w` cycles through `headers[w % headers.len()]`.
    pub(crate) headers: Vec<Vec<ProcessingRequest>>,
    /// The response's messages, sent after the headers answer one at a time, each answered
    /// before the next.
    pub(crate) after: Arc<[ProcessingRequest]>,
    /// The headers answer must name a destination (flowgate's dispatch).
    pub(crate) want_destination: bool,
}

impl Exchange {
    /// The `extproc` bench's: per worker 8 requests of the 16-workload mix, a body-less response.
    fn workload_mix(streams: usize, want_destination: bool) -> Exchange {
        Exchange {
            headers: (0..streams).map(|w| (0..8).map(|k| request_headers(w, k)).collect()).collect(),
            after: Arc::new([response_headers()]),
            want_destination,
        }
    }
}

/// One client stream at a time: take scheduled times from `tokens`, run each request.
async fn worker(
    mut client: Client,
    mut tokens: mpsc::UnboundedReceiver<Instant>,
    requests: Vec<ProcessingRequest>,
    after: Arc<[ProcessingRequest]>,
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
            tokio::time::timeout(REQUEST_TIMEOUT, one_request(&mut client, first, &after, want_destination))
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

/// Offer `rate` requests/s of the 16-workload mix for `dur` over `streams` workers sharing
/// `clients` ([`exchange_phase`]).
pub(super) fn phase(
    client_rt: &Runtime,
    clients: &[Client],
    want_destination: bool,
    rate: f64,
    streams: usize,
    dur: Duration,
    label: &str,
) -> (Measured, Duration) {
    let exchange = Exchange::workload_mix(streams, want_destination);
    exchange_phase(client_rt, clients, &exchange, rate, streams, dur, label)
}

/// Offer `rate` requests/s of `exchange` for `dur` over `streams` workers sharing `clients`;
/// returns the tally and the load window (start → max(end of schedule, last completion)).
pub(crate) fn exchange_phase(
    client_rt: &Runtime,
    clients: &[Client],
    exchange: &Exchange,
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
        let requests = exchange.headers[w % exchange.headers.len()].clone();
        let client = clients[w % clients.len()].clone();
        let after = exchange.after.clone();
        let want = exchange.want_destination;
        handles.push(client_rt.spawn(worker(client, rx, requests, after, want, stop_at)));
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

/// `n` clients to `url`, each on its own HTTP/2 connection.
pub(crate) async fn connect(url: String, n: usize) -> Result<Vec<Client>, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url)?.tcp_nodelay(true).connect_timeout(Duration::from_secs(5));
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        // Each connect() is its own HTTP/2 connection.
        clients.push(Client::new(endpoint.connect().await?));
    }
    Ok(clients)
}

/// `addr` as a URL (`http://` unless it has a scheme).
pub(crate) fn url(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    }
}
