//! The ext_proc stream logic (`FlowControl::serve_stream`) against arbitrary message sequences.
//!
//! One input is one ext_proc stream: request headers with arbitrary header names and values
//! (`x-workload-context` as arbitrary bytes in `raw_value` or `value`, or as a well-formed
//! context; GIE's fairness id; forged destination and `x-flowgate-*` headers), request and
//! response bodies, headers and trailers with arbitrary `end_of_stream`, observability-mode and
//! empty messages, and an arbitrary ending: half-close, reset (an error item), the answer side
//! dropped, or staying open until every answer is in. Like Envoy, the driver may wait for a
//! message's answer before sending the next one. Before the stream, the input may take the
//! engine's backend slots (so the request queues, expires or is displaced) and fill its one-place
//! queue.
//!
//! Properties:
//! * no panic;
//! * the answers are, in order, exactly the answers the messages call for: each one the kind
//!   matching its message (CONTINUE), except the first request headers' answer, which is the
//!   flow-control decision; at most one decision; a rejection (`ImmediateResponse`, 429/503 with
//!   a known drop reason) is the last answer; a dispatch names a configured backend and removes
//!   exactly the client's `x-flowgate-*` headers;
//! * when the driver waited for the first request headers' answer on an open stream, the decision
//!   came (exactly one);
//! * once the stream is over (and the slots the input took are given back), the engine has
//!   nothing in flight and nothing queued: the stream's backend slot is always released.
//!
//! The engine (1 shard, 2 slots, 20 ms TTL, a queue of 1) and a current-thread tokio runtime are
//! built once and shared by every input. Run with `scripts/fuzz.sh extproc 60`.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Reply;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    BodyResponse, HeadersResponse, HttpBody, HttpHeaders, HttpTrailers, ProcessingRequest,
    ProcessingResponse, TrailersResponse,
};
use flowgate::metrics::Metrics;
use flowgate::server::{FlowControl, DESTINATION_HEADER, DROP_REASON_HEADER, OWN_HEADER_PREFIX};
use flowgate_engine::config::{BackendConfig, EngineConfig};
use flowgate_engine::runtime::{Engine, Request, Ticket};
use flowgate_engine::WorkloadContext;
use libfuzzer_sys::fuzz_target;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

const BACKENDS: [&str; 2] = ["10.0.0.1:8000", "10.0.0.2:8000"];
const MAX_MESSAGES: usize = 48;
const MAX_HEADERS: usize = 12;
/// How long the driver waits for an answer before giving the slots it took back (so a queued
/// request is decided) — a pacing step, not a synchronisation.
const STEP: Duration = Duration::from_millis(2);
/// Longest wait for anything the server owes.
const DEADLINE: Duration = Duration::from_secs(10);

struct World {
    runtime: tokio::runtime::Runtime,
    engine: Arc<Engine>,
    service: FlowControl,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let mut config = EngineConfig {
        shards: 1,
        backends: BACKENDS
            .iter()
            .map(|a| BackendConfig { address: a.to_string(), max_inflight: 1 })
            .collect(),
        ..Default::default()
    };
    config.queue.max_requests = 1;
    // The longest any request may wait (a context's `ttl_ms` can only shorten it).
    config.queue.ttl = Duration::from_millis(20);
    config.workloads.max_tracked = 16;
    config.workloads.idle_timeout = Duration::from_millis(200);
    let engine = Arc::new(Engine::start(config).expect("engine starts"));
    let metrics = Arc::new(Metrics::new(16, 3));
    let service = FlowControl::new(engine.clone(), metrics, CancellationToken::new());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    World { runtime, engine, service }
});

#[derive(Arbitrary, Debug)]
enum Header {
    /// `x-workload-context` with arbitrary bytes, in `raw_value` or (lossily) in `value`.
    Context {
        raw: bool,
        bytes: Vec<u8>,
    },
    /// A well-formed context.
    Valid {
        id: u8,
        criticality: u8,
        ttl_ms: Option<u16>,
    },
    FairnessId(Vec<u8>),
    Destination(Vec<u8>),
    /// `x-flowgate-<suffix>`, in any letter case.
    Own {
        suffix: String,
        upper: bool,
        value: Vec<u8>,
    },
    /// A name sharing the first `len` bytes of `x-flowgate-`, then anything.
    NearOwn {
        len: u8,
        rest: String,
        value: Vec<u8>,
    },
    Other {
        name: String,
        value: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
enum Kind {
    RequestHeaders {
        headers: Vec<Header>,
        end_of_stream: bool,
    },
    RequestBody {
        len: u8,
        end_of_stream: bool,
    },
    RequestTrailers,
    ResponseHeaders {
        end_of_stream: bool,
    },
    ResponseBody {
        len: u8,
        end_of_stream: bool,
    },
    ResponseTrailers,
    /// A message with no request in it.
    Empty,
}

#[derive(Arbitrary, Debug)]
struct Message {
    kind: Kind,
    /// Observability mode: the server must not answer.
    silent: bool,
    /// Wait for this message's answer before sending the next (what Envoy does).
    wait: bool,
}

#[derive(Arbitrary, Debug)]
enum End {
    /// End of the request stream (half-close).
    Close,
    /// The stream fails (reset).
    Reset,
    /// The answer side goes away first.
    DropAnswers,
    /// Stay open until every answer owed is in, then half-close.
    Linger,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Backend slots taken before the stream (0..=2).
    holders: u8,
    /// A request of this criticality queued before the stream (fills the queue of 1).
    filler: Option<u8>,
    /// Give the slots back just before this message.
    release_at: Option<u8>,
    messages: Vec<Message>,
    end: End,
}

/// What an answer must be.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Decision,
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

fn header(key: &str, raw: Vec<u8>) -> HeaderValue {
    HeaderValue { key: key.into(), raw_value: raw, ..Default::default() }
}

fn build_header(h: &Header) -> HeaderValue {
    match h {
        Header::Context { raw: true, bytes } => header("x-workload-context", bytes.clone()),
        Header::Context { raw: false, bytes } => HeaderValue {
            key: "x-workload-context".into(),
            value: String::from_utf8_lossy(bytes).into_owned(),
            ..Default::default()
        },
        Header::Valid { id, criticality, ttl_ms } => {
            let ttl = ttl_ms.map(|t| format!(r#","ttl_ms":{t}"#)).unwrap_or_default();
            let json = format!(r#"{{"workload_id":"w{}","criticality":{}{ttl}}}"#, id % 8, criticality % 7);
            header("X-Workload-Context", json.into_bytes())
        }
        Header::FairnessId(v) => header("x-gateway-inference-fairness-id", v.clone()),
        Header::Destination(v) => header(DESTINATION_HEADER, v.clone()),
        Header::Own { suffix, upper, value } => {
            let name = format!("{OWN_HEADER_PREFIX}{suffix}");
            header(&if *upper { name.to_ascii_uppercase() } else { name }, value.clone())
        }
        Header::NearOwn { len, rest, value } => {
            let prefix = &OWN_HEADER_PREFIX[..usize::from(*len) % (OWN_HEADER_PREFIX.len() + 1)];
            header(&format!("{prefix}{rest}"), value.clone())
        }
        Header::Other { name, value } => header(name, value.clone()),
    }
}

fn build(m: &Message) -> ProcessingRequest {
    let body = |len: u8, end_of_stream| HttpBody {
        body: vec![b'x'; usize::from(len)],
        end_of_stream,
        ..Default::default()
    };
    let request = match &m.kind {
        Kind::RequestHeaders { headers, end_of_stream } => Some(Msg::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: headers.iter().take(MAX_HEADERS).map(build_header).collect(),
            }),
            end_of_stream: *end_of_stream,
            ..Default::default()
        })),
        Kind::RequestBody { len, end_of_stream } => Some(Msg::RequestBody(body(*len, *end_of_stream))),
        Kind::RequestTrailers => Some(Msg::RequestTrailers(HttpTrailers::default())),
        Kind::ResponseHeaders { end_of_stream } => Some(Msg::ResponseHeaders(HttpHeaders {
            headers: Some(HeaderMap { headers: vec![header(":status", b"200".to_vec())] }),
            end_of_stream: *end_of_stream,
            ..Default::default()
        })),
        Kind::ResponseBody { len, end_of_stream } => Some(Msg::ResponseBody(body(*len, *end_of_stream))),
        Kind::ResponseTrailers => Some(Msg::ResponseTrailers(HttpTrailers::default())),
        Kind::Empty => None,
    };
    ProcessingRequest { request, observability_mode: m.silent, ..Default::default() }
}

/// Does `m` end the HTTP response (which releases a dispatched request's slot)?
fn ends_response(m: &Message) -> bool {
    matches!(
        m.kind,
        Kind::ResponseHeaders { end_of_stream: true }
            | Kind::ResponseBody { end_of_stream: true, .. }
            | Kind::ResponseTrailers
    )
}

/// The answers `messages` call for, in order (the model).
fn expected(messages: &[&Message]) -> Vec<Expect> {
    let mut decided = false;
    let mut out = Vec::new();
    for m in messages {
        let e = match m.kind {
            Kind::RequestHeaders { .. } if !decided => {
                decided = true;
                Expect::Decision
            }
            Kind::RequestHeaders { .. } => Expect::RequestHeaders,
            Kind::RequestBody { .. } => Expect::RequestBody,
            Kind::RequestTrailers => Expect::RequestTrailers,
            Kind::ResponseHeaders { .. } => Expect::ResponseHeaders,
            Kind::ResponseBody { .. } => Expect::ResponseBody,
            Kind::ResponseTrailers => Expect::ResponseTrailers,
            Kind::Empty => continue,
        };
        if !m.silent {
            out.push(e);
        }
    }
    out
}

/// The `x-flowgate-*` header names of the first request headers, as the server must remove them.
fn own_headers(messages: &[&Message]) -> Vec<String> {
    let Some(headers) = messages.iter().find_map(|m| match &m.kind {
        Kind::RequestHeaders { headers, .. } => Some(headers),
        _ => None,
    }) else {
        return Vec::new();
    };
    let mut own: Vec<String> = headers
        .iter()
        .take(MAX_HEADERS)
        .map(build_header)
        .map(|h| h.key.to_ascii_lowercase())
        .filter(|k| k.starts_with(OWN_HEADER_PREFIX))
        .collect();
    own.sort();
    own.dedup();
    own
}

/// Check one answer against what it must be; returns whether it was a rejection.
fn check_answer(r: &ProcessingResponse, expect: Expect, own: &[String]) -> bool {
    let continue_headers = HeadersResponse::default();
    match (expect, &r.response) {
        (Expect::Decision, Some(Reply::RequestHeaders(h))) => {
            let common = h.response.as_ref().expect("a dispatch carries a common response");
            assert!(common.clear_route_cache, "{r:?}");
            let m = common.header_mutation.as_ref().expect("a dispatch sets headers");
            assert_eq!(m.set_headers.len(), 1, "{r:?}");
            let set = m.set_headers[0].header.as_ref().unwrap();
            assert_eq!(set.key, DESTINATION_HEADER);
            let address = std::str::from_utf8(&set.raw_value).unwrap();
            assert!(BACKENDS.contains(&address), "dispatched to {address:?}");
            assert_eq!(m.remove_headers, own, "client x-flowgate-* headers not all removed");
            assert!(r.dynamic_metadata.is_some(), "{r:?}");
            false
        }
        (Expect::Decision, Some(Reply::ImmediateResponse(i))) => {
            let status = i.status.expect("a status").code;
            let reason = i
                .headers
                .as_ref()
                .and_then(|h| {
                    h.set_headers.iter().find(|o| o.header.as_ref().unwrap().key == DROP_REASON_HEADER)
                })
                .map(|o| String::from_utf8(o.header.as_ref().unwrap().raw_value.clone()).unwrap())
                .expect("a drop reason");
            let ok = matches!(
                (status, reason.as_str()),
                (429, "capacity" | "displaced") | (503, "ttl-expired" | "shutting-down" | "no-endpoints")
            );
            assert!(ok, "rejected with {status} {reason}");
            true
        }
        (Expect::RequestHeaders, Some(Reply::RequestHeaders(h))) => {
            assert_eq!(*h, continue_headers);
            false
        }
        (Expect::RequestBody, Some(Reply::RequestBody(b))) => {
            assert_eq!(*b, BodyResponse::default());
            false
        }
        (Expect::RequestTrailers, Some(Reply::RequestTrailers(t))) => {
            assert_eq!(*t, TrailersResponse::default());
            false
        }
        (Expect::ResponseHeaders, Some(Reply::ResponseHeaders(h))) => {
            assert_eq!(*h, continue_headers);
            false
        }
        (Expect::ResponseBody, Some(Reply::ResponseBody(b))) => {
            assert_eq!(*b, BodyResponse::default());
            false
        }
        (Expect::ResponseTrailers, Some(Reply::ResponseTrailers(t))) => {
            assert_eq!(*t, TrailersResponse::default());
            false
        }
        (e, got) => panic!("expected {e:?}, got {got:?}"),
    }
}

/// Receive answers until `want` are in or the server closes the stream; gives the slots back
/// after the first idle step (so a queued request is decided). Returns false once closed.
async fn collect(
    rx: &mut mpsc::Receiver<Result<ProcessingResponse, Status>>,
    answers: &mut Vec<ProcessingResponse>,
    want: usize,
    held: &mut Vec<Ticket>,
    permits: &mut Vec<flowgate_engine::Permit>,
) -> bool {
    let start = Instant::now();
    while answers.len() < want {
        match tokio::time::timeout(STEP, rx.recv()).await {
            Ok(Some(r)) => answers.push(r.expect("the server never sends an error item")),
            Ok(None) => return false,
            Err(_) => {
                permits.clear();
                held.clear();
                assert!(
                    start.elapsed() < DEADLINE,
                    "no answer in {DEADLINE:?} ({} of {want})",
                    answers.len()
                );
            }
        }
    }
    true
}

async fn run(world: &World, input: &Input) {
    let engine = &world.engine;
    // Take backend slots and queue a filler, as other requests would.
    // (A holder is granted a slot, unless the shard was slower to pick it up than the TTL.)
    let mut permits = Vec::new();
    for _ in 0..input.holders % 3 {
        let context = WorkloadContext::default_workload(3);
        let ticket = engine.submit(Request { context, bytes: 0 }).expect("submit");
        let decision = tokio::time::timeout(DEADLINE, ticket).await.expect("holder decided");
        permits.extend(decision.permit);
    }
    let mut held = Vec::new();
    if let Some(c) = input.filler {
        let context = WorkloadContext::default_workload(c % 5 + 1);
        held.push(engine.submit(Request { context, bytes: 0 }).expect("submit"));
    }

    let messages: Vec<&Message> = input.messages.iter().take(MAX_MESSAGES).collect();
    let (in_tx, in_rx) = mpsc::channel::<Result<ProcessingRequest, Status>>(MAX_MESSAGES + 1);
    let (out_tx, out_rx) = mpsc::channel(8);
    let server = world.service.serve_stream(ReceiverStream::new(in_rx), out_tx);
    let driver = async {
        let mut rx = Some(out_rx);
        let mut answers = Vec::new();
        let mut open = true;
        let mut decision_awaited = false;
        for (i, m) in messages.iter().enumerate() {
            if input.release_at.map(usize::from) == Some(i) {
                permits.clear();
                held.clear();
            }
            if in_tx.send(Ok(build(m))).await.is_err() {
                break; // the server has closed the stream
            }
            let want = expected(&messages[..=i]);
            if m.wait && open && !m.silent && !matches!(m.kind, Kind::Empty) {
                let rx = rx.as_mut().unwrap();
                open = collect(rx, &mut answers, want.len(), &mut held, &mut permits).await;
                if open && want.last() == Some(&Expect::Decision) {
                    decision_awaited = true;
                }
                // A dispatched request's slot is free once the answer to its response's end is
                // in (exact when nothing else may hold a slot but the holders left).
                let dispatched =
                    answers.first().is_some_and(|r| matches!(r.response, Some(Reply::RequestHeaders(_))))
                        && want.first() == Some(&Expect::Decision);
                if open && dispatched && ends_response(m) && held.is_empty() {
                    let inflight = world.engine.stats().inflight;
                    assert_eq!(
                        inflight,
                        permits.len() as u64,
                        "the slot is still held after the response ended"
                    );
                }
            }
        }
        match input.end {
            End::Close => {}
            End::Reset => {
                let _ = in_tx.send(Err(Status::cancelled("reset"))).await;
            }
            End::DropAnswers => rx = None,
            End::Linger => {
                if let (true, Some(rx)) = (open, rx.as_mut()) {
                    let want = expected(&messages);
                    if collect(rx, &mut answers, want.len(), &mut held, &mut permits).await
                        && want.contains(&Expect::Decision)
                    {
                        decision_awaited = true;
                    }
                }
            }
        }
        drop(in_tx);
        // Whatever else the server sends until it ends the stream.
        if let Some(rx) = rx.as_mut() {
            while let Some(r) = tokio::time::timeout(DEADLINE, rx.recv()).await.expect("the stream ends") {
                answers.push(r.expect("the server never sends an error item"));
            }
        }
        (answers, decision_awaited)
    };
    let ((), (answers, decision_awaited)) =
        tokio::time::timeout(DEADLINE, async { tokio::join!(server, driver) })
            .await
            .expect("the stream ends");

    // The answers are a prefix of what the messages call for, each of the matching kind.
    let want = expected(&messages);
    let own = own_headers(&messages);
    assert!(answers.len() <= want.len(), "{} answers for {} owed", answers.len(), want.len());
    for (i, (r, e)) in answers.iter().zip(&want).enumerate() {
        if check_answer(r, *e, &own) {
            assert_eq!(i + 1, answers.len(), "answers after a rejection");
        }
    }
    let decisions = answers.iter().zip(&want).filter(|(_, e)| **e == Expect::Decision).count();
    assert!(decisions <= 1);
    if decision_awaited {
        assert_eq!(decisions, 1, "the decision was awaited on an open stream but never came");
    }
    drop((permits, held));
    if *TRACE {
        let summary: Vec<String> = answers.iter().map(summarize).collect();
        eprintln!("extproc: {} message(s) sent, answers: {summary:?}", messages.len());
    }
}

/// `FLOWGATE_FUZZ_TRACE=1`: print each input's answers (to see what a seed exercises).
static TRACE: LazyLock<bool> = LazyLock::new(|| std::env::var_os("FLOWGATE_FUZZ_TRACE").is_some());

fn summarize(r: &ProcessingResponse) -> String {
    match &r.response {
        Some(Reply::RequestHeaders(h)) if h.response.is_some() => "dispatched".into(),
        Some(Reply::ImmediateResponse(i)) => format!("immediate {}", i.details),
        Some(other) => format!("{other:?}").split('(').next().unwrap_or_default().to_string(),
        None => "empty".into(),
    }
}

fuzz_target!(|input: Input| {
    let world = &*WORLD;
    world.runtime.block_on(run(world, &input));
    // Every slot is released and nothing is left queued once the stream is over (a cancelled
    // request leaves the shard's queue asynchronously: poll, bounded).
    let start = Instant::now();
    loop {
        let stats = world.engine.stats();
        if stats.inflight == 0 && stats.queued == 0 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "after the stream: {stats:?}");
        std::thread::yield_now();
    }
});
