//! Live configuration, in-process over real ext_proc streams: a discovery file edited while
//! requests are queued and in flight (added backends take requests at once, removed ones drain
//! and then leave), config reloads that change caps for the next decisions, a bad file refused
//! with serving going on, restart-only fields kept, and 100 reloads under load with every request
//! answered exactly once and no slot leaked; an llm-d endpoints file without our fields served
//! uncapped, an empty pool answering 503 `no-endpoints` until a backend arrives, and DNS
//! backends listed with their source. A held stream is a request in flight (its slot is
//! released when the stream closes). Waits are on answers and on the JSON APIs, with deadlines.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{connect, context, destination, http_get, immediate, temp_dir, write_atomically, Stream};
use flowgate::reload::ReloadOutcome;
use flowgate::serve::{self, Running, ServeOptions};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(10);

fn endpoints(list: &[(&str, u32)]) -> String {
    let mut yaml = String::from("endpoints:\n");
    for (i, (addr, max)) in list.iter().enumerate() {
        let (ip, port) = addr.rsplit_once(':').unwrap();
        yaml +=
            &format!("  - name: pod-{i}\n    address: {ip}\n    port: \"{port}\"\n    max_inflight: {max}\n");
    }
    if list.is_empty() {
        yaml = "endpoints: []\n".into();
    }
    yaml
}

async fn start_file(config: &Path) -> Running {
    let parsed = flowgate::reload::read_config(config).unwrap_or_else(|e| panic!("{e:?}"));
    let options = ServeOptions { config_path: Some(config.to_path_buf()), ..Default::default() };
    serve::start_with(parsed, options).await.expect("server starts")
}

/// A server whose only backends come from a watched endpoints file holding `endpoints_yaml`
/// (config lines `extra` added); the server and the file's path.
async fn serve_discovering(tag: &str, endpoints_yaml: &str, extra: &str) -> (Running, PathBuf) {
    let dir = temp_dir(tag);
    let file = dir.join("endpoints.yaml");
    std::fs::write(&file, endpoints_yaml).unwrap();
    let config = dir.join("flowgate.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends: []\n{extra}discovery:\n  file: {{ path: {}, watch: true }}\n",
            file.display()
        ),
    )
    .unwrap();
    (start_file(&config).await, file)
}

async fn backends(running: &Running) -> Vec<Value> {
    common::backends(running, DEADLINE).await
}

async fn wait_backends(running: &Running, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    common::wait_backends(running, what, DEADLINE, pred).await
}

fn find<'a>(b: &'a [Value], address: &str) -> Option<&'a Value> {
    b.iter().find(|v| v["address"] == address)
}

/// Open a request's stream and return it once the engine has answered it, with its destination.
async fn dispatched(client: &mut common::Client, id: &str) -> (Stream, String) {
    let mut s = Stream::open(client, vec![context(id, 3)], DEADLINE).await;
    let answer = s.next().await;
    let to = destination(&answer).unwrap_or_else(|| panic!("not dispatched: {answer:?}"));
    (s, to)
}

fn metric(text: &str, series: &str) -> f64 {
    flowgate::metrics::sample(text, series).unwrap_or_else(|| panic!("{series} missing"))
}

/// `flowgate_requests_total{outcome="dispatched"}` now.
async fn dispatched_total(running: &Running) -> f64 {
    let (_, text) = http_get(running.metrics_addr(), "/metrics", DEADLINE).await;
    metric(&text, r#"flowgate_requests_total{outcome="dispatched"}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discovery_file_edit_adds_and_drains_without_losing_a_request() {
    let (running, file) =
        serve_discovering("discovery", &endpoints(&[("10.1.0.1:8000", 1), ("10.1.0.2:8000", 1)]), "").await;
    let b = backends(&running).await;
    assert_eq!(b.len(), 2, "the file was read before serving: {b:#?}");
    assert!(b.iter().all(|v| v["source"] == "file"), "{b:#?}");

    let mut client = connect(running.grpc_addr()).await;
    let (first, to_first) = dispatched(&mut client, "w1").await;
    let (second, to_second) = dispatched(&mut client, "w2").await;
    let (on_1, on_2) = if to_first == "10.1.0.1:8000" { (first, second) } else { (second, first) };
    assert_ne!(to_first, to_second);
    let mut queued = Stream::open(&mut client, vec![context("w3", 3)], DEADLINE).await;

    // Remove backend 1, add backend 3: the queued request goes to 3 as soon as the file is seen.
    let edited = Instant::now();
    write_atomically(&file, &endpoints(&[("10.1.0.2:8000", 1), ("10.1.0.3:8000", 1)]));
    let answer = queued.next().await;
    println!("discovery edit in force after {:?}", edited.elapsed());
    assert_eq!(destination(&answer).as_deref(), Some("10.1.0.3:8000"));
    assert!(edited.elapsed() < Duration::from_secs(2), "took {:?}", edited.elapsed());
    let b = backends(&running).await;
    let removed = find(&b, "10.1.0.1:8000").expect("a draining backend stays listed");
    assert_eq!((removed["draining"].as_bool(), removed["inflight"].as_u64()), (Some(true), Some(1)));
    assert_eq!(removed["source"], "file", "a draining backend keeps its source");

    // Every backend is full or draining: a new request waits, and never goes to the draining one.
    let mut waiting = Stream::open(&mut client, vec![context("w4", 3)], DEADLINE).await;
    drop(on_1);
    wait_backends(&running, "the drained backend leaves with its last request", |b| {
        find(b, "10.1.0.1:8000").is_none()
    })
    .await;
    drop(on_2);
    assert_eq!(destination(&waiting.next().await).as_deref(), Some("10.1.0.2:8000"));

    // Exactly one outcome each: 4 dispatched, nothing else, nothing queued.
    assert_eq!(dispatched_total(&running).await, 4.0);
    drop((queued, waiting));
    running.shutdown().await;
}

/// A file in llm-d's own schema (no `max_inflight`) under the default detector: its backends are
/// served uncapped (0 = no concurrency cap), not skipped into a pool with no endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llm_d_file_without_our_fields_serves_its_backends_uncapped() {
    let llm_d =
        "endpoints:\n  - name: pod-a\n    address: 10.2.0.1\n    port: \"8000\"\n    labels: { app: vllm }\n";
    let (running, _) = serve_discovering("llm-d", llm_d, "").await;
    let b = backends(&running).await;
    assert_eq!(b.len(), 1, "{b:#?}");
    assert_eq!((b[0]["address"].as_str(), b[0]["max_inflight"].as_u64()), (Some("10.2.0.1:8000"), Some(0)));
    // Nothing limits it: three requests at once are all dispatched, none waits.
    let mut client = connect(running.grpc_addr()).await;
    let mut held = Vec::new();
    for id in ["u1", "u2", "u3"] {
        let (s, to) = dispatched(&mut client, id).await;
        assert_eq!(to, "10.2.0.1:8000");
        held.push(s);
    }
    let b = backends(&running).await;
    assert_eq!(b[0]["inflight"].as_u64(), Some(3), "{b:#?}");
    assert_eq!(dispatched_total(&running).await, 3.0);
    drop(held);
    running.shutdown().await;
}

/// A pool with no backend answers at once with 503 `no-endpoints` (nothing to wait for), and a
/// backend added to the file then takes the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_pool_answers_503_no_endpoints_until_a_backend_arrives() {
    let (running, file) = serve_discovering("empty-pool", &endpoints(&[]), "queue:\n  ttl: 20s\n").await;
    assert!(backends(&running).await.is_empty());
    let mut client = connect(running.grpc_addr()).await;
    let started = Instant::now();
    let mut s = Stream::open(&mut client, vec![context("lonely", 3)], DEADLINE).await;
    let answer = s.next().await;
    assert_eq!(immediate(&answer), Some((503, "no-endpoints".into(), "20".into())), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "answered only after {:?}", started.elapsed());
    write_atomically(&file, &endpoints(&[("10.3.0.1:8000", 1)]));
    wait_backends(&running, "the new backend", |b| find(b, "10.3.0.1:8000").is_some()).await;
    let (held, to) = dispatched(&mut client, "lonely").await;
    assert_eq!(to, "10.3.0.1:8000");
    assert_eq!(dispatched_total(&running).await, 1.0);
    drop((s, held));
    running.shutdown().await;
}

/// `discovery.dns` through the server: every record of the name is a backend listed with
/// `source` dns and the block's `max_inflight`, beside a static one listed as static.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_backends_are_listed_with_source_dns() {
    let dir = temp_dir("dns");
    let config = dir.join("flowgate.yaml");
    std::fs::write(
        &config,
        "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends:\n  - address: 10.4.0.1:8000\n    max_inflight: 1\ndiscovery:\n  dns: { name: localhost, port: 8001, refresh: 1s, max_inflight: 3 }\n",
    )
    .unwrap();
    let running = start_file(&config).await;
    let b = wait_backends(&running, "localhost's records", |b| b.iter().any(|v| v["source"] == "dns")).await;
    let statics: Vec<&Value> = b.iter().filter(|v| v["source"] == "static").collect();
    assert_eq!(statics.len(), 1, "{b:#?}");
    assert_eq!(statics[0]["address"], "10.4.0.1:8000");
    for v in b.iter().filter(|v| v["source"] == "dns") {
        let addr: std::net::SocketAddr = v["address"].as_str().unwrap().parse().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() == 8001, "{v}");
        assert_eq!(v["max_inflight"].as_u64(), Some(3), "{v}");
    }
    running.shutdown().await;
}

/// `scoring.rate_window` is live (DESIGN.md: "scoring" is applied live): the reload reports no
/// restart-only field, the workload's rate reads the same at once (re-based to the new window),
/// and then follows the 2 s window: it falls to 0 within seconds, where the old 60 s window
/// would have kept it above 0 for a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_rate_window_applies_live() {
    let dir = temp_dir("rate-window");
    let config = dir.join("flowgate.yaml");
    let yaml = |window: &str| {
        format!("listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends:\n  - address: 10.5.0.1:8000\n    max_inflight: 4\nscoring:\n  rate_window: {window}\n")
    };
    std::fs::write(&config, yaml("60s")).unwrap();
    let running = start_file(&config).await;
    let mut client = connect(running.grpc_addr()).await;
    // 30 arrivals in 60 s (0.5/s): one in the 2 s window keeps that rate exactly.
    for _ in 0..30 {
        drop(dispatched(&mut client, "w").await);
    }
    let rate = |running: &Running| {
        let addr = running.metrics_addr();
        async move {
            let (status, body) = http_get(addr, "/api/v1/workloads", DEADLINE).await;
            assert_eq!(status, 200, "{body}");
            let all: Vec<Value> = serde_json::from_str(&body).unwrap();
            let w = all.iter().find(|v| v["workload_id"] == "w").unwrap_or_else(|| panic!("{body}"));
            w["rate_per_s"].as_f64().unwrap()
        }
    };
    let before = rate(&running).await;
    assert!((before - 0.5).abs() < 1e-6, "30 requests over 60 s: {before}");
    write_atomically(&config, &yaml("2s"));
    assert_eq!(running.reload(), Some(ReloadOutcome::Applied { restart_only: vec![] }));
    // The shard re-bases at its next pass; until then the old window still reads the same.
    let after = rate(&running).await;
    assert!((after - before).abs() < 1e-6, "re-based to the same rate: {before} → {after}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rate(&running).await > 0.0 {
        assert!(Instant::now() < deadline, "the rate still counts arrivals over 10 s old: a 60 s window");
        tokio::time::sleep(Duration::from_millis(50)).await; // the poll interval, not a wait for an event
    }
    // New arrivals are measured over the 2 s window: 3 of them read 1.5/s.
    for _ in 0..3 {
        drop(dispatched(&mut client, "w").await);
    }
    let now = rate(&running).await;
    assert!((now - 1.5).abs() < 1e-6, "3 arrivals over a 2 s window: {now}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_next_decisions_and_a_bad_file_is_refused() {
    let dir = temp_dir("reload");
    let config = dir.join("flowgate.yaml");
    let yaml = |max: u32| {
        format!("listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends:\n  - address: 10.2.0.1:8000\n    max_inflight: {max}\n")
    };
    std::fs::write(&config, yaml(1)).unwrap();
    let running = start_file(&config).await;
    let mut client = connect(running.grpc_addr()).await;
    let (held, _) = dispatched(&mut client, "w1").await;
    let mut queued = Stream::open(&mut client, vec![context("w2", 3)], DEADLINE).await;

    // A second slot by reload: the queued request goes at once.
    write_atomically(&config, &yaml(2));
    assert_eq!(running.reload(), Some(ReloadOutcome::Applied { restart_only: vec![] }));
    assert_eq!(destination(&queued.next().await).as_deref(), Some("10.2.0.1:8000"));

    // A bad file is refused whole: the running config (2 slots) keeps serving.
    write_atomically(&config, &format!("{}queue:\n  ttl: 30\n", yaml(9)));
    match running.reload() {
        Some(ReloadOutcome::Refused(errors)) => assert_eq!(errors[0].path, "queue.ttl", "{errors:?}"),
        other => panic!("{other:?}"),
    }
    let b = backends(&running).await;
    assert_eq!(b[0]["max_inflight"], 2, "{b:#?}");
    let (_, text) = http_get(running.metrics_addr(), "/metrics", DEADLINE).await;
    assert_eq!(metric(&text, r#"flowgate_config_reloads_total{result="ok"}"#), 1.0);
    assert_eq!(metric(&text, r#"flowgate_config_reloads_total{result="error"}"#), 1.0);

    // Restart-only fields are reported and kept.
    write_atomically(&config, &yaml(2).replace("shards: 1", "shards: 2"));
    assert_eq!(running.reload(), Some(ReloadOutcome::Applied { restart_only: vec!["shards".into()] }));
    assert_eq!(running.engine().shards(), 1);
    let (grpc, metrics_addr) = (running.grpc_addr(), running.metrics_addr());
    let moved = yaml(2).replace(
        "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\n",
        "listen: 127.0.0.1:1\nmetrics_listen: 127.0.0.1:2\nring_capacity: 64\n",
    );
    write_atomically(&config, &moved);
    let Some(ReloadOutcome::Applied { mut restart_only }) = running.reload() else { panic!("refused") };
    restart_only.sort();
    assert_eq!(restart_only, ["listen", "metrics_listen", "ring_capacity"]);
    // Both listeners stay where they were and keep serving.
    assert_eq!((running.grpc_addr(), running.metrics_addr()), (grpc, metrics_addr));
    assert_eq!(http_get(metrics_addr, "/healthz", DEADLINE).await.0, 200);
    write_atomically(&config, &yaml(2));
    assert!(matches!(running.reload(), Some(ReloadOutcome::Applied { .. })));

    // Caps by reload: `batch-*` may not claim criticality 5 any more (capped count goes up).
    write_atomically(
        &config,
        &format!(
            "{}workloads:\n  caps:\n    - workload_id: \"batch-*\"\n      max_criticality: 2\n",
            yaml(2)
        ),
    );
    assert!(matches!(running.reload(), Some(ReloadOutcome::Applied { .. })));
    drop((held, queued));
    let (_s, _) = {
        let mut s = Stream::open(&mut client, vec![context("batch-1", 5)], DEADLINE).await;
        let a = s.next().await;
        (s, destination(&a).expect("dispatched"))
    };
    let (_, text) = http_get(running.metrics_addr(), "/metrics", DEADLINE).await;
    assert_eq!(metric(&text, "flowgate_criticality_capped_total"), 1.0, "{text}");
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_load_answer_every_request_once_and_leak_no_slot() {
    let dir = temp_dir("reloads");
    let config = dir.join("flowgate.yaml");
    let yaml = |i: usize| {
        format!(
            "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 2\nbackends:\n  - address: 10.3.0.1:8000\n    max_inflight: {}\n  - address: 10.3.0.{}:8000\n    max_inflight: 2\nscoring:\n  criticality_weight: {}\nqueue:\n  max_requests: {}\n",
            1 + i % 3,
            2 + i % 2,
            0.2 + 0.1 * (i % 4) as f64,
            50 + 10 * (i % 5),
        )
    };
    std::fs::write(&config, yaml(0)).unwrap();
    let running = start_file(&config).await;
    let addr = running.grpc_addr();
    // 4 clients, 60 requests each; each request holds its slot for a moment, then closes.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            tokio::spawn(async move {
                let mut client = connect(addr).await;
                let mut answers = 0u64;
                for r in 0..60 {
                    let id = format!("w{c}-{}", r % 7);
                    let mut s =
                        Stream::open(&mut client, vec![context(&id, 1 + (r % 5) as u8)], DEADLINE).await;
                    let a = s.next().await;
                    assert!(destination(&a).is_some() || immediate(&a).is_some(), "{a:?}");
                    answers += 1;
                    tokio::task::yield_now().await;
                }
                answers
            })
        })
        .collect();
    let mut applied = 0;
    for i in 1..=100 {
        write_atomically(&config, &yaml(i));
        let r = running.reload();
        assert!(matches!(r, Some(ReloadOutcome::Applied { .. })), "{r:?}");
        applied += 1;
        tokio::task::yield_now().await;
    }
    let mut answered = 0;
    for c in clients {
        answered += c.await.unwrap();
    }
    assert_eq!((applied, answered), (100, 240));
    // Every stream is closed: nothing in flight, nothing queued, 240 outcomes in all.
    let start = Instant::now();
    loop {
        let stats = running.engine().stats();
        if stats.inflight == 0 && stats.queued == 0 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "left over: {stats:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let outcomes: u64 = running.engine().outcome_counts().iter().map(|(_, n)| n).sum();
    assert_eq!(outcomes, 240);
    let (_, text) = http_get(running.metrics_addr(), "/metrics", DEADLINE).await;
    assert_eq!(metric(&text, r#"flowgate_config_reloads_total{result="ok"}"#), 100.0);
    running.shutdown().await;
}
