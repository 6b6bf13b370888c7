//! Saturation from live model-server metrics, against real `flowgate-sim` servers: a forced
//! saturated backend gets nothing, the burst bound between two scrapes, stale → saturated → fresh
//! again, held requests released highest criticality first, least-loaded picking, failed scrapes
//! counted. The simulators' metrics are forced (`Force`), so every decision here follows from
//! what a scrape said, not from timing.

mod common;

use std::time::{Duration, Instant};

use common::{connect, context, destination, http_get, Stream};
use flowgate::config::ServeConfig;
use flowgate::metrics::sample;
use flowgate::serve::{self, Running};
use flowgate_sim::{Force, MetricsMode, Sim, SimConfig};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(10);

async fn sim() -> Sim {
    Sim::start(SimConfig { listen: "127.0.0.1:0".parse().unwrap(), ..SimConfig::default() })
        .await
        .expect("flowgate-sim starts")
}

fn force_waiting(sim: &Sim, waiting: f64) {
    sim.force(Force { waiting: Some(waiting), running: None, kv_cache_usage: None });
}

/// flowgate over `sims` (no concurrency cap), detector `utilization`, plus `saturation` lines.
async fn start(sims: &[&Sim], saturation: &str) -> Running {
    let mut yaml = String::from("listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends:\n");
    for s in sims {
        yaml += &format!("  - address: {}\n    max_inflight: 0\n", s.addr());
    }
    yaml += "saturation:\n  detector: utilization\n";
    for line in saturation.lines() {
        yaml += &format!("  {line}\n");
    }
    let config = ServeConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e:?}"));
    serve::start(config).await.expect("server starts")
}

async fn backends(running: &Running) -> Vec<Value> {
    common::backends(running, DEADLINE).await
}

async fn wait_backends(running: &Running, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    common::wait_backends(running, what, DEADLINE, pred).await
}

fn fresh(b: &Value, waiting: f64) -> bool {
    b["stale"] == false && b["waiting"].as_f64() == Some(waiting)
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn metric(running: &Running, series: &str) -> f64 {
    let text = http_get(running.metrics_addr(), "/metrics", DEADLINE).await.1;
    sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_saturated_backend_gets_nothing() {
    let (a, b) = (sim().await, sim().await);
    force_waiting(&a, 10.0);
    let running = start(&[&a, &b], "scrape_interval: 20ms\nqueue_depth_threshold: 5").await;
    wait_backends(&running, "A saturated, B fresh", |s| {
        s[0]["saturation"].as_f64() >= Some(1.0) && fresh(&s[1], 0.0)
    })
    .await;
    let mut client = connect(running.grpc_addr()).await;
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = Stream::open(&mut client, vec![context(&format!("w{i}"), 3)], DEADLINE).await;
        assert_eq!(destination(&s.next().await), Some(b.addr().to_string()), "request {i}");
        held.push(s);
    }
    let states = backends(&running).await;
    assert_eq!(states[0]["inflight"], 0, "{states:#?}");
    assert_eq!(states[1]["inflight"], 4, "{states:#?}");
    drop(held);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_threshold_minus_waiting_go_between_two_scrapes() {
    let sim = sim().await;
    force_waiting(&sim, 2.0);
    // One scrape at start, the next in 30 s: everything below happens between the two.
    let running = start(&[&sim], "scrape_interval: 30s\nstaleness: 60s\nqueue_depth_threshold: 5").await;
    wait_backends(&running, "first scrape", |s| fresh(&s[0], 2.0)).await;
    let mut client = connect(running.grpc_addr()).await;
    let mut streams = Vec::new();
    let engine = running.engine().clone();
    for i in 0..6u64 {
        streams.push(Stream::open(&mut client, vec![context(&format!("w{i}"), 3)], DEADLINE).await);
        // Each stream's request reaches the engine before the next opens: streams are served by
        // tasks of their own, so without this their arrival order is not the opening order.
        until("the request arrived", || engine.stats().queued + engine.stats().inflight == i + 1).await;
    }
    until("3 dispatched, 3 queued", || engine.stats().queued == 3 && engine.stats().inflight == 3).await;
    let mut dispatched = 0;
    for s in streams.iter_mut().take(3) {
        dispatched += usize::from(destination(&s.next().await).is_some());
    }
    assert_eq!(dispatched, 3, "the first three, in arrival order, went");
    let states = backends(&running).await;
    assert_eq!(states[0]["sent_since_scrape"], 3, "{states:#?}");
    assert!(states[0]["saturation"].as_f64().unwrap() >= 1.0, "{states:#?}");
    assert_eq!(engine.stats().queued, 3, "nothing more went without a new scrape");
    drop(streams);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_metrics_saturate_until_a_good_scrape() {
    let sim = sim().await;
    let running = start(
        &[&sim],
        "scrape_interval: 20ms\nscrape_timeout: 100ms\nstaleness: 150ms\nqueue_depth_threshold: 5",
    )
    .await;
    wait_backends(&running, "fresh", |s| fresh(&s[0], 0.0)).await;
    sim.set_metrics_mode(MetricsMode::Stall);
    let stale = wait_backends(&running, "stale", |s| s[0]["stale"] == true).await;
    assert!(stale[0]["metrics_age_ms"].as_f64().unwrap() >= 150.0, "{stale:#?}");
    assert!(stale[0]["saturation"].as_f64().unwrap() >= 1.0, "{stale:#?}");
    let mut client = connect(running.grpc_addr()).await;
    let mut held = Stream::open(&mut client, vec![context("w", 3)], DEADLINE).await;
    let engine = running.engine().clone();
    until("queued while stale", || engine.stats().queued == 1).await;
    let series = format!("flowgate_scrapes_total{{backend=\"{}\",result=\"timeout\"}}", sim.addr());
    let start = Instant::now();
    while metric(&running, &series).await < 1.0 {
        assert!(start.elapsed() < DEADLINE, "no scrape timed out");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&running, "flowgate_stale_backends").await, 1.0);
    sim.set_metrics_mode(MetricsMode::Ok);
    assert_eq!(destination(&held.next().await), Some(sim.addr().to_string()), "dispatched once fresh");
    wait_backends(&running, "fresh again", |s| s[0]["stale"] == false).await;
    assert_eq!(metric(&running, "flowgate_stale_backends").await, 0.0);
    drop(held);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_go_highest_criticality_first() {
    let sim = sim().await;
    force_waiting(&sim, 5.0);
    let running = start(&[&sim], "scrape_interval: 20ms\nstaleness: 1s\nqueue_depth_threshold: 5").await;
    wait_backends(&running, "saturated", |s| fresh(&s[0], 5.0)).await;
    let mut client = connect(running.grpc_addr()).await;
    // Low criticalities first, so arrival order and priority disagree.
    let order = [1u8, 2, 1, 3, 2, 4, 3, 5, 4, 5];
    let mut tasks = Vec::new();
    for (i, c) in order.into_iter().enumerate() {
        let mut s = Stream::open(&mut client, vec![context(&format!("c{c}-{i}"), c)], DEADLINE).await;
        tasks.push(tokio::spawn(async move {
            let answer = s.next().await;
            assert!(destination(&answer).is_some(), "{answer:?}");
            (Instant::now(), c, s)
        }));
    }
    let engine = running.engine().clone();
    until("all queued", || engine.stats().queued == order.len() as u64).await;
    // Room for one request per scrape from now on.
    force_waiting(&sim, 4.0);
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    done.sort_by_key(|(at, _, _)| *at);
    let got: Vec<u8> = done.iter().map(|(_, c, _)| *c).collect();
    assert_eq!(got, [5, 5, 4, 4, 3, 3, 2, 2, 1, 1], "dispatch order by criticality");
    drop(done);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_backend_is_picked() {
    let (a, b) = (sim().await, sim().await);
    force_waiting(&a, 4.0);
    force_waiting(&b, 1.0);
    let running = start(&[&a, &b], "scrape_interval: 30s\nstaleness: 60s\nqueue_depth_threshold: 10").await;
    wait_backends(&running, "both scraped", |s| fresh(&s[0], 4.0) && fresh(&s[1], 1.0)).await;
    let mut client = connect(running.grpc_addr()).await;
    let mut got = Vec::new();
    let mut held = Vec::new();
    for i in 0..4 {
        let mut s = Stream::open(&mut client, vec![context(&format!("w{i}"), 3)], DEADLINE).await;
        got.push(destination(&s.next().await).unwrap());
        held.push(s);
    }
    // B scores (1 + sent)/10 against A's 4/10: B until they tie, then A (fewer in flight).
    let (a, b) = (a.addr().to_string(), b.addr().to_string());
    assert_eq!(got, [b.clone(), b.clone(), b, a]);
    drop(held);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_pages_are_failed_scrapes() {
    let sim = sim().await;
    let running = start(&[&sim], "scrape_interval: 10ms\nstaleness: 10s").await;
    wait_backends(&running, "fresh", |s| fresh(&s[0], 0.0)).await;
    let series =
        |result: &str| format!("flowgate_scrapes_total{{backend=\"{}\",result=\"{result}\"}}", sim.addr());
    for (mode, result) in [(MetricsMode::Garbage, "bad_page"), (MetricsMode::Error, "error")] {
        sim.set_metrics_mode(mode);
        let start = Instant::now();
        while metric(&running, &series(result)).await < 3.0 {
            assert!(start.elapsed() < DEADLINE, "no {result} scrapes counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Failures alone do not saturate: only staleness does (10 s here).
    let states = backends(&running).await;
    assert_eq!(states[0]["stale"], false, "{states:#?}");
    assert!(metric(&running, &series("ok")).await >= 1.0);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_detector_reads_no_metrics() {
    let running = common::start_server(1, 2, "").await;
    let states = backends(&running).await;
    assert_eq!(states.len(), 1);
    let b = &states[0];
    assert_eq!(b["address"], common::BACKEND);
    assert_eq!(b["source"], "static");
    assert_eq!(b["max_inflight"], 2);
    assert_eq!(b["draining"], false);
    for field in ["waiting", "running", "kv_cache_usage", "metrics_age_ms"] {
        assert!(b[field].is_null(), "{field}: {b}");
    }
    let text = http_get(running.metrics_addr(), "/metrics", DEADLINE).await.1;
    assert!(!text.contains("flowgate_scrapes_total{"), "no scraper runs:\n{text}");
    assert_eq!(sample(&text, "flowgate_stale_backends"), Some(0.0));
    running.shutdown().await;
}

/// A metrics server that closes every connection after one answer (as one closing idle
/// keep-alive connections does): each scrape reopens, none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_closing_its_connections_costs_no_failed_scrape() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let page = "vllm:num_requests_waiting{model_name=\"m\"} 1\nvllm:num_requests_running{model_name=\"m\"} 2\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n";
    let server = tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut filled = 0;
            while !buf[..filled].windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf[filled..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => filled += n,
                }
            }
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{page}", page.len());
            let _ = conn.write_all(answer.as_bytes()).await;
            // Closed a little later, idle, without a `Connection: close` header: the scraper
            // has its page and keeps the connection for the next scrape.
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(3)).await;
                drop(conn);
            });
        }
    });
    let yaml = format!(
        "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends:\n  - address: 10.0.0.9:8000\n    max_inflight: 0\n    metrics: http://{addr}/metrics\nsaturation:\n  detector: utilization\n  scrape_interval: 10ms\n  staleness: 10s\n"
    );
    let running = serve::start(ServeConfig::from_yaml(&yaml).unwrap()).await.expect("server starts");
    let series =
        |result: &str| format!("flowgate_scrapes_total{{backend=\"10.0.0.9:8000\",result=\"{result}\"}}");
    let start = Instant::now();
    while metric(&running, &series("ok")).await < 20.0 {
        assert!(
            start.elapsed() < DEADLINE,
            "scrapes did not succeed: {}",
            http_get(running.metrics_addr(), "/metrics", DEADLINE)
                .await
                .1
                .lines()
                .filter(|l| l.contains("scrapes_total{"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&running, &series("error")).await, 0.0, "a closed connection was counted as a failure");
    let b = backends(&running).await;
    assert!(fresh(&b[0], 1.0), "{b:#?}");
    running.shutdown().await;
    server.abort();
}
