//! Reliability under faults, through the ext_proc protocol (servers started in-process on
//! 127.0.0.1:0 as in `protocol.rs`, or as a real `flowgate serve` process for SIGTERM); the
//! cardinality attack has a file of its own, `cardinality.rs`:
//!
//! * **hung slot holders**: a dispatched stream that never answers holds its slot only until the
//!   stream (or its connection) closes; meanwhile queued requests get `ttl-expired` 503s within
//!   their TTL. The server has no stream idle timeout of its own: in production Envoy's route and
//!   stream timeouts reset the HTTP request, which closes the ext_proc stream;
//! * **shutdown under load**: every queued stream gets its `shutting-down` 503 (in-process
//!   shutdown and a real SIGTERM), streams opened during shutdown end one way or another, none
//!   hangs;
//! * **back-pressure**: a full submission ring refuses at once (`SubmitError::Backpressure`, never
//!   a block), and the server answers a refused submission with a 429 `capacity` at once.
//!
//! Synchronisation is by real signals only: awaited responses, and engine state or metrics polled
//! until they show the expected state, with a deadline. The tests take one lock so that they run
//! one at a time (they are heavy).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    connect, context, destination_header, immediate, request_headers, Client, Server, Stream, BACKEND,
};
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_server::ExternalProcessorServer;
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse;
use flowgate::metrics::Metrics;
use flowgate::server::FlowControl;
use flowgate_engine::config::{BackendConfig, EngineConfig};
use flowgate_engine::runtime::{Engine, Request, SubmitError};
use flowgate_engine::{Outcome, WorkloadContext};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// Longest wait for any single expected event.
const DEADLINE: Duration = Duration::from_secs(30);
/// The tests run one at a time (they are heavy, and the RSS bound is per process).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Open a stream on `client` and send request headers for workload `id`.
async fn open(client: &mut Client, id: &str, criticality: u8) -> Stream {
    Stream::open(client, vec![context(id, criticality)], DEADLINE).await
}

// ---------------------------------------------------------------------------------------------
// Hung slot holders
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_slot_holder_holds_its_slot_only_until_its_stream_closes() {
    let _serial = SERIAL.lock().await;
    const TTL: Duration = Duration::from_millis(300);
    const WAITERS: usize = 8;
    let server = Server::start(1, 1, &format!("queue:\n  ttl: {}ms\n", TTL.as_millis())).await;
    let engine = server.engine();
    let inflight = format!("flowgate_inflight{{backend=\"{BACKEND}\"}}");
    let mut client = server.client().await;

    // A dispatched request whose model server never answers: the stream stays open, silent.
    let mut hung = open(&mut client, "hung", 5).await;
    assert_eq!(destination_header(&hung.next().await).as_deref(), Some(BACKEND));
    let held_since = Instant::now();

    // Requests queued behind it are answered 503 ttl-expired, no sooner than their TTL and
    // not much later, for as long as the slot is held (three rounds: over 3 TTLs in all).
    let mut latencies = Vec::new();
    for round in 0..3 {
        let mut waiters = tokio::task::JoinSet::new();
        for i in 0..WAITERS {
            let mut client = client.clone();
            waiters.spawn(async move {
                let opened = Instant::now();
                let mut s = open(&mut client, &format!("waiter-{round}-{i}"), 3).await;
                let r = s.next().await;
                let waited = opened.elapsed();
                assert_eq!(immediate(&r), Some((503, "ttl-expired".into(), "1".into())), "{r:?}");
                waited
            });
        }
        while let Some(w) = waiters.join_next().await {
            latencies.push(w.unwrap());
        }
    }
    let (min, max) = (*latencies.iter().min().unwrap(), *latencies.iter().max().unwrap());
    assert!(min >= TTL, "expired after {min:?}, before the {TTL:?} TTL");
    assert!(max <= TTL + Duration::from_secs(2), "expired after {max:?} (TTL {TTL:?})");
    // The server has no stream idle timeout of its own: the hung stream still holds the slot.
    let held_for = held_since.elapsed();
    assert!(held_for >= 3 * TTL);
    assert_eq!(engine.stats().inflight, 1);
    server.wait_metric(&inflight, 1.0).await;
    server.wait_metric("flowgate_requests_total{outcome=\"evicted_ttl\"}", (3 * WAITERS) as f64).await;

    // A request queued now, then the hung stream goes away (Envoy's timeout resets it): the slot
    // is freed and the queued request dispatched.
    let mut next = open(&mut client, "next", 3).await;
    server.wait_metric("flowgate_queued_requests", 1.0).await;
    let closed_at = Instant::now();
    drop(hung);
    let r = next.next().await;
    let handed_over = closed_at.elapsed();
    assert_eq!(destination_header(&r).as_deref(), Some(BACKEND), "{r:?}");

    // Same with a whole connection that dies while its stream holds the slot.
    drop(next);
    server.wait_metric(&inflight, 0.0).await;
    let mut lone = server.client().await;
    let mut hung = open(&mut lone, "hung-connection", 5).await;
    assert_eq!(destination_header(&hung.next().await).as_deref(), Some(BACKEND));
    let mut after = open(&mut client, "after", 3).await;
    server.wait_metric("flowgate_queued_requests", 1.0).await;
    drop((hung, lone));
    let r = after.next().await;
    assert_eq!(destination_header(&r).as_deref(), Some(BACKEND), "{r:?}");
    drop(after);
    server.wait_metric(&inflight, 0.0).await;
    println!(
        "hung holder: {} queued requests expired 503 ttl-expired after {:?}..{:?} (TTL {TTL:?}) while the slot \
         stayed held {:?}; closing the hung stream dispatched the next request {:?} later",
        latencies.len(),
        min,
        max,
        held_for,
        handed_over
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Shutdown under load
// ---------------------------------------------------------------------------------------------

/// How a stream opened around shutdown ended.
#[derive(Debug, Default)]
struct Endings {
    dispatched: usize,
    shutting_down: usize,
    /// The server refused or reset the stream (no ext_proc answer: Envoy applies its failure mode).
    refused: usize,
}

/// Open a stream and wait until it ends one way or another (never past the deadline).
async fn open_and_end(mut client: Client, id: String) -> Result<ProcessingResponse, tonic::Status> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(request_headers(vec![context(&id, 3)])).await.unwrap();
    let mut rx = tokio::time::timeout(DEADLINE, client.process(ReceiverStream::new(rx)))
        .await
        .expect("the stream opens or is refused in time")?
        .into_inner();
    let r = tokio::time::timeout(DEADLINE, rx.message()).await.expect("an answer or an end in time");
    drop(tx);
    r?.ok_or_else(|| tonic::Status::unavailable("stream ended without an answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_answers_every_queued_stream() {
    let _serial = SERIAL.lock().await;
    const QUEUED: usize = 1000;
    const LATE: usize = 200;
    let server = Server::start(2, 1, "queue:\n  ttl: 1h\n  max_requests: 100000\n").await;
    let engine = server.engine();
    let client = server.client().await;
    let mut holder_client = client.clone();
    let mut holder = open(&mut holder_client, "holder", 5).await;
    assert_eq!(destination_header(&holder.next().await).as_deref(), Some(BACKEND));

    let mut queued = tokio::task::JoinSet::new();
    for i in 0..QUEUED {
        queued.spawn(open_and_end(client.clone(), format!("queued-{}", i % 50)));
    }
    server.wait_metric("flowgate_queued_requests", QUEUED as f64).await;

    // Shut down while every one of them waits, and keep opening streams meanwhile.
    let started = Instant::now();
    let shutdown = tokio::spawn(server.shutdown());
    let mut late = tokio::task::JoinSet::new();
    for i in 0..LATE {
        late.spawn(open_and_end(client.clone(), format!("late-{i}")));
    }

    let mut answered = 0;
    while let Some(r) = queued.join_next().await {
        let r = r.unwrap().expect("a queued stream is answered, not dropped");
        assert_eq!(immediate(&r), Some((503, "shutting-down".into(), "1".into())), "{r:?}");
        answered += 1;
    }
    let all_answered_in = started.elapsed();
    assert_eq!(answered, QUEUED);
    let mut endings = Endings::default();
    while let Some(r) = late.join_next().await {
        match r.unwrap() {
            Ok(r) if destination_header(&r).is_some() => endings.dispatched += 1,
            Ok(r) => {
                assert_eq!(immediate(&r), Some((503, "shutting-down".into(), "1".into())), "{r:?}");
                endings.shutting_down += 1;
            }
            Err(_) => endings.refused += 1,
        }
    }
    // The holder's slot was granted: its stream is closed by the server (Envoy carries on).
    let end = tokio::time::timeout(DEADLINE, holder.rx.message()).await.expect("the holder's stream closes");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    tokio::time::timeout(DEADLINE, shutdown).await.expect("shutdown finishes").unwrap();
    let shutdown_time = started.elapsed();
    let counts: std::collections::HashMap<Outcome, u64> = engine.outcome_counts().into_iter().collect();
    // The queued ones, plus late ones that were queued before the engine stopped taking work.
    let evicted = counts[&Outcome::EvictedShutdown];
    assert!((QUEUED as u64..=(QUEUED + LATE) as u64).contains(&evicted), "{evicted} evicted by shutdown");
    assert_eq!(engine.stats().queued, 0);
    println!(
        "shutdown under load: {QUEUED} queued streams all answered 503 shutting-down in {:?}; {LATE} streams opened \
         during shutdown: {endings:?}; shutdown done in {shutdown_time:?}",
        all_answered_in
    );
}

/// Kills the child process (by its own id) if the test ends early.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The value of `key=` in a log line.
fn field(line: &str, key: &str) -> Option<SocketAddr> {
    let start = line.find(&format!("{key}="))? + key.len() + 1;
    line[start..].split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_queued_stream_of_a_real_process() {
    let _serial = SERIAL.lock().await;
    const QUEUED: usize = 300;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("flowgate-reliability");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join(format!("sigterm-{}.yaml", std::process::id()));
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 2\nbackends:\n  - address: {BACKEND}\n    max_inflight: 1\nqueue:\n  ttl: 1h\n"
        ),
    )
    .unwrap();
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_flowgate"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (addrs_tx, addrs_rx) = tokio::sync::oneshot::channel();
    let log = std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines();
        let mut addrs_tx = Some(addrs_tx);
        let mut rest = Vec::new();
        for line in lines.by_ref().map_while(Result::ok) {
            if line.contains("flowgate serving") {
                if let Some(tx) = addrs_tx.take() {
                    let _ = tx.send((field(&line, "grpc_addr"), field(&line, "metrics_addr")));
                }
            }
            rest.push(line);
        }
        rest
    });
    let (grpc, metrics) = tokio::time::timeout(DEADLINE, addrs_rx).await.expect("serve started").unwrap();
    let (grpc, metrics) = (grpc.unwrap(), metrics.unwrap());
    let mut client = connect(grpc).await;
    let mut holder = open(&mut client, "holder", 5).await;
    assert_eq!(destination_header(&holder.next().await).as_deref(), Some(BACKEND));
    let mut queued = tokio::task::JoinSet::new();
    for i in 0..QUEUED {
        queued.spawn(open_and_end(client.clone(), format!("queued-{}", i % 20)));
    }
    common::wait_metric(metrics, "flowgate_queued_requests", QUEUED as f64, DEADLINE).await;

    let started = Instant::now();
    let kill =
        std::process::Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(kill.success());
    while let Some(r) = queued.join_next().await {
        let r = r.unwrap().expect("a queued stream is answered, not dropped");
        assert_eq!(immediate(&r), Some((503, "shutting-down".into(), "1".into())), "{r:?}");
    }
    let answered_in = started.elapsed();
    let end = tokio::time::timeout(DEADLINE, holder.rx.message()).await.expect("the holder's stream closes");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < DEADLINE, "serve did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.code(), Some(0));
    let exited_in = started.elapsed();
    let log = log.join().unwrap();
    assert!(log.iter().any(|l| l.contains("SIGTERM received")), "{log:?}");
    println!(
        "SIGTERM: {QUEUED} queued streams of a real process all answered 503 shutting-down in {answered_in:?}; \
         exit 0 after {exited_in:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Back-pressure
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "current_thread")]
async fn a_full_submission_ring_refuses_promptly() {
    let _serial = SERIAL.lock().await;
    const BURST: usize = 10_000;
    const MAX_BURSTS: usize = 20;
    let mut config = EngineConfig {
        shards: 1,
        ring_capacity: 1,
        backends: vec![BackendConfig { address: BACKEND.into(), max_inflight: 1 << 20 }],
        ..Default::default()
    };
    config.queue.max_requests = 0;
    let engine = Engine::start(config).expect("engine starts");

    // Bursts from this one thread (one ring of one place): every submission returns at once,
    // with a ticket or a refusal; until the shard has fallen behind at least once.
    let (mut tickets, mut refused, mut bursts) = (Vec::new(), 0usize, 0usize);
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    while refused == 0 && bursts < MAX_BURSTS {
        bursts += 1;
        for _ in 0..BURST {
            let t0 = Instant::now();
            let r = engine.submit(Request { context: WorkloadContext::default_workload(3), bytes: 0 });
            slowest = slowest.max(t0.elapsed());
            match r {
                Ok(t) => tickets.push(t),
                Err(SubmitError::Backpressure(_)) => refused += 1,
                Err(e @ SubmitError::ShuttingDown(_)) => panic!("{e}"),
            }
        }
    }
    let burst_time = started.elapsed();
    assert!(refused > 0, "{bursts} bursts of {BURST} never found the ring full");
    assert!(slowest < Duration::from_millis(100), "a submission took {slowest:?}");

    // Every accepted request has its one outcome (dispatched: there are slots for all).
    let accepted = tickets.len();
    for t in tickets {
        let d = tokio::time::timeout(DEADLINE, t).await.expect("decided");
        assert_eq!(d.outcome, Outcome::Dispatched);
    }
    let stats = engine.stats();
    assert_eq!((stats.queued, stats.inflight), (0, 0));
    engine.shutdown();
    println!(
        "ring back-pressure: ring_capacity 1, {bursts} burst(s) of {BURST} from one thread in {burst_time:?}: \
         {accepted} accepted (all dispatched), {refused} refused with Backpressure; slowest submit {slowest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_submissions_are_answered_429_capacity_at_once() {
    let _serial = SERIAL.lock().await;
    // An engine that takes a few submitters only, all held by this test: every submission from
    // the server's threads is refused with back-pressure (as from a full ring).
    const SUBMITTERS: usize = 4;
    let config = EngineConfig {
        shards: 1,
        max_submitters: SUBMITTERS,
        backends: vec![BackendConfig { address: BACKEND.into(), max_inflight: 64 }],
        ..Default::default()
    };
    let engine = Arc::new(Engine::start(config).expect("engine starts"));
    let blockers: Vec<_> = (0..SUBMITTERS).map(|_| engine.submitter().expect("a submitter place")).collect();
    let metrics = Arc::new(Metrics::new(1000, 3));
    let stop = CancellationToken::new();
    let service = FlowControl::new(engine.clone(), metrics, stop.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let grpc_stop = stop.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::new(service))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move { grpc_stop.cancelled().await },
            ),
    );
    let client = connect(addr).await;

    const STREAMS: usize = 200;
    let started = Instant::now();
    let mut streams = tokio::task::JoinSet::new();
    for i in 0..STREAMS {
        let client = client.clone();
        streams.spawn(async move {
            let opened = Instant::now();
            let r = open_and_end(client, format!("w{i}")).await.expect("answered");
            (r, opened.elapsed())
        });
    }
    let mut slowest = Duration::ZERO;
    while let Some(r) = streams.join_next().await {
        let (r, took) = r.unwrap();
        assert_eq!(immediate(&r), Some((429, "capacity".into(), "1".into())), "{r:?}");
        slowest = slowest.max(took);
    }
    let all_in = started.elapsed();
    assert!(slowest < Duration::from_secs(2), "a refusal took {slowest:?}");
    let counts: std::collections::HashMap<Outcome, u64> = engine.outcome_counts().into_iter().collect();
    assert_eq!(counts[&Outcome::Dispatched], 0);

    // Once the places are free, the server's threads register and requests are dispatched.
    drop(blockers);
    let r = open_and_end(client.clone(), "after".into()).await.expect("answered");
    assert_eq!(destination_header(&r).as_deref(), Some(BACKEND), "{r:?}");
    stop.cancel();
    tokio::time::timeout(DEADLINE, grpc).await.expect("server stops").unwrap().unwrap();
    engine.shutdown();
    println!(
        "submission back-pressure: {STREAMS} concurrent streams all answered 429 capacity in {all_in:?} \
         (slowest {slowest:?}); dispatching again once a submitter place was free"
    );
}
