//! The cardinality attack, through the ext_proc protocol (a server started in-process on
//! 127.0.0.1:0 as in `protocol.rs`): a flood of distinct workload ids (`CARDINALITY_IDS`, default
//! 80 000; `CARDINALITY_IDS=1000000 cargo test --release -p flowgate --test cardinality` for the
//! full million) keeps tracked workloads and the `fairness_id` label values within `max_tracked`,
//! `/api/v1/workloads` within `max_tracked` per shard, and the process RSS bounded; idle workloads
//! are forgotten after `idle_timeout`.
//!
//! Synchronisation is by real signals only: awaited responses, and engine state or metrics polled
//! until they show the expected state, with a deadline. The attack is the only test in this file,
//! so the RSS figure is its own.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{context, destination_header, http_get, Client, Server, Stream, BACKEND};
use tokio_util::sync::CancellationToken;

/// Longest wait for any single expected event.
const DEADLINE: Duration = Duration::from_secs(30);

/// Open a stream on `client` and send request headers for workload `id`.
async fn open(client: &mut Client, id: &str, criticality: u8) -> Stream {
    Stream::open(client, vec![context(id, criticality)], DEADLINE).await
}

/// Distinct `fairness_id` label values in a `/metrics` rendering.
fn fairness_ids(text: &str) -> HashSet<&str> {
    text.lines()
        .filter_map(|l| {
            let rest = &l[l.find("fairness_id=\"")? + "fairness_id=\"".len()..];
            Some(&rest[..rest.find('"')?])
        })
        .collect()
}

/// Resident set size of this process, bytes (`/proc/self/statm`, 4 KiB pages).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

const MIB: u64 = 1 << 20;

/// Distinct ids the attack sends by default (about a minute in a debug build on 2 cores).
const DEFAULT_CARDINALITY_IDS: usize = 80_000;
const MAX_TRACKED: usize = 1000;
const SHARDS: usize = 2;
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
/// Concurrent streams in the attack, spread over a few connections.
const ATTACKERS: usize = 64;
const CONNECTIONS: usize = 4;
/// Most the process may be resident at any point of the attack (debug build, client included).
const RSS_LIMIT: u64 = 256 * MIB;
/// Most the RSS may grow from the end of the first tenth of the attack to its end: memory must
/// not grow with the number of distinct ids.
const RSS_GROWTH_LIMIT: u64 = 32 * MIB;
/// Longest the whole attack may take, whatever its size.
const ATTACK_DEADLINE: Duration = Duration::from_secs(1800);

fn cardinality_ids() -> usize {
    match std::env::var("CARDINALITY_IDS") {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("CARDINALITY_IDS={v:?} is not a count")),
        Err(_) => DEFAULT_CARDINALITY_IDS,
    }
}

/// What the watcher saw during the attack.
#[derive(Debug, Default)]
struct Watch {
    samples: u64,
    scrapes: u64,
    max_tracked: usize,
    max_api_workloads: usize,
    max_fairness_ids: usize,
    max_rss: u64,
    /// RSS once a tenth of the ids were sent.
    rss_at_tenth: Option<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cardinality_attack_stays_bounded_and_idle_workloads_are_collected() {
    let ids = cardinality_ids();
    let server = Server::start(
        SHARDS,
        4096,
        &format!(
            "queue:\n  max_requests: 100000\nworkloads:\n  max_tracked: {MAX_TRACKED}\n  idle_timeout: {}ms\n",
            IDLE_TIMEOUT.as_millis()
        ),
    )
    .await;
    let engine = server.engine();
    let rss_start = rss_bytes();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let dispatched = Arc::new(AtomicUsize::new(0));
    let done = CancellationToken::new();

    // The watcher: engine state every 10 ms, `/metrics` and `/api/v1/workloads` every 500 ms.
    let watcher = {
        let (engine, next, done, metrics) = (engine.clone(), next.clone(), done.clone(), server.metrics);
        tokio::spawn(async move {
            let mut w = Watch::default();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut last_scrape = Instant::now();
            loop {
                let stop = tokio::select! {
                    _ = done.cancelled() => true,
                    _ = tick.tick() => false,
                };
                assert!(started.elapsed() < ATTACK_DEADLINE, "the attack took over {ATTACK_DEADLINE:?}");
                let tracked = engine.registry().tracked();
                assert!(tracked <= MAX_TRACKED, "{tracked} workloads tracked (max_tracked {MAX_TRACKED})");
                let rss = rss_bytes();
                assert!(rss <= RSS_LIMIT, "RSS {} MiB over the {} MiB bound", rss / MIB, RSS_LIMIT / MIB);
                if w.rss_at_tenth.is_none() && next.load(Ordering::Relaxed) >= ids / 10 {
                    w.rss_at_tenth = Some(rss);
                }
                w.samples += 1;
                w.max_tracked = w.max_tracked.max(tracked);
                w.max_rss = w.max_rss.max(rss);
                if stop || last_scrape.elapsed() >= Duration::from_millis(500) {
                    last_scrape = Instant::now();
                    let (status, text) = http_get(metrics, "/metrics", DEADLINE).await;
                    assert_eq!(status, 200);
                    let labels = fairness_ids(&text).len();
                    assert!(labels <= MAX_TRACKED + 2, "{labels} fairness_id label values");
                    let (status, body) = http_get(metrics, "/api/v1/workloads", DEADLINE).await;
                    assert_eq!(status, 200);
                    let listed = serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap().len();
                    // Tracked workloads plus the shared overflow entry. The listing reads the
                    // shards' directories one after the other while they forget and admit
                    // workloads (and a sweep frees its places before it takes the entries out of
                    // its directory), so it is only bounded per shard: it must not grow with
                    // the attack, but may briefly exceed max_tracked.
                    assert!(listed <= SHARDS * MAX_TRACKED + 1, "{listed} workloads listed");
                    w.scrapes += 1;
                    w.max_fairness_ids = w.max_fairness_ids.max(labels);
                    w.max_api_workloads = w.max_api_workloads.max(listed);
                }
                if stop {
                    return w;
                }
            }
        })
    };

    // The attack: each stream is a new workload id, dispatched at once; the stream then closes
    // (the HTTP request is over), which releases its slot.
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(server.client().await);
    }
    let mut attackers = tokio::task::JoinSet::new();
    for a in 0..ATTACKERS {
        let mut client = clients[a % CONNECTIONS].clone();
        let (next, dispatched) = (next.clone(), dispatched.clone());
        attackers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ids {
                    return;
                }
                let mut s = open(&mut client, &format!("attacker-{i:07}"), (i % 5) as u8 + 1).await;
                let r = s.next().await;
                assert_eq!(destination_header(&r).as_deref(), Some(BACKEND), "{r:?}");
                dispatched.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(a) = attackers.join_next().await {
        a.unwrap();
    }
    let attack_time = started.elapsed();
    assert_eq!(dispatched.load(Ordering::Relaxed), ids);
    server.wait_metric("flowgate_requests_total{outcome=\"dispatched\"}", ids as f64).await;
    done.cancel();
    let watch = watcher.await.unwrap();
    let rss_end = rss_bytes();
    let tracked_at_end = engine.registry().tracked();

    // Idle workloads are forgotten: within idle_timeout (plus the sweep period and scheduling
    // slack) nothing is tracked, listed or labelled any more but the permanent series.
    let idle_start = Instant::now();
    let (collected_in, labels_after) = loop {
        let (_, text) = http_get(server.metrics, "/metrics", DEADLINE).await;
        let labels: HashSet<String> = fairness_ids(&text).into_iter().map(str::to_string).collect();
        let (_, body) = http_get(server.metrics, "/api/v1/workloads", DEADLINE).await;
        let listed = serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap().len();
        let stats = engine.stats();
        if engine.registry().tracked() == 0 && listed == 0 && labels.len() <= 2 && stats.inflight == 0 {
            break (idle_start.elapsed(), labels);
        }
        assert!(
            idle_start.elapsed() < IDLE_TIMEOUT + DEADLINE,
            "idle workloads not collected: {} tracked, {listed} listed, {} labels, {stats:?}",
            engine.registry().tracked(),
            labels.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expected_labels: HashSet<String> = ["default", "__overflow__"].map(String::from).into();
    assert!(labels_after.is_subset(&expected_labels), "{labels_after:?}");

    let rss_tenth = watch.rss_at_tenth.expect("sampled at a tenth of the attack");
    assert!(
        rss_end.saturating_sub(rss_tenth) <= RSS_GROWTH_LIMIT,
        "RSS grew from {} MiB to {} MiB",
        rss_tenth / MIB,
        rss_end / MIB
    );
    assert!(watch.samples > 0 && watch.scrapes > 0);
    println!(
        "cardinality: {ids} ids in {:.1} s ({:.0} streams/s, {ATTACKERS} concurrent over {CONNECTIONS} connections); \
         max tracked {} / {MAX_TRACKED} ({} samples), max listed {}, max fairness_id labels {} ({} scrapes); \
         RSS start {} MiB, at a tenth {} MiB, max {} MiB, end {} MiB; tracked at end {tracked_at_end}, \
         all collected {:.2} s after the attack (idle_timeout {IDLE_TIMEOUT:?})",
        attack_time.as_secs_f64(),
        ids as f64 / attack_time.as_secs_f64(),
        watch.max_tracked,
        watch.samples,
        watch.max_api_workloads,
        watch.max_fairness_ids,
        watch.scrapes,
        rss_start / MIB,
        rss_tenth / MIB,
        watch.max_rss / MIB,
        rss_end / MIB,
        collected_in.as_secs_f64(),
    );
    server.shutdown().await;
}
