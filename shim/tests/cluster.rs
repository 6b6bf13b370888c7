//! Cluster mode against a real `redis-server` (installed by `scripts/redis.sh`) and real
//! `flowgate serve` processes sharing one `flowgate-sim` backend: the backend's peak concurrency
//! stays within its `max_inflight` while Redis is reachable (standalone replicas oversubscribe
//! it), a workload flooding replica A is seen on replica B, Redis killed under load → local mode
//! (`⌊max_inflight / 3⌋` each) → back, a killed replica's slots go to the others, a Redis that is
//! not there from the start (local state, the whole cap); every request
//! gets exactly one outcome on every replica throughout. Every wait polls a real signal (metrics,
//! the backend and workload APIs) with a deadline.

mod common;
#[path = "cluster_harness/mod.rs"]
mod harness;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use flowgate_sim::{Sim, SimConfig};
use harness::{replica_yaml, Load, Redis, Replica, DEADLINE};

/// The sync interval of every test (ms).
const SYNC_MS: u64 = 50;
/// Tokens per backend request: about 4 decode steps of 5 ms.
const TOKENS: u32 = 4;

async fn sim() -> Sim {
    Sim::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_num_seqs: 256,
        max_waiting: 256,
        decode_step_ms: 5.0,
        ..SimConfig::default()
    })
    .await
    .expect("flowgate-sim starts")
}

fn cluster(redis: &Redis, replica: &str) -> String {
    format!(
        "redis: {}\npool: t{}\nreplica_id: {replica}\nsync_interval: {SYNC_MS}ms",
        redis.url(),
        redis.port
    )
}

async fn replicas(n: usize, backend: SocketAddr, max_inflight: u32, redis: Option<&Redis>) -> Vec<Replica> {
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("r{i}");
        let c = redis.map(|r| cluster(r, &name)).unwrap_or_default();
        out.push(Replica::spawn(&name, &replica_yaml(backend, max_inflight, &c)).await);
    }
    out
}

/// Run `workers` loops on every replica for `run`; the tallies, replica order.
async fn load_all(rs: &[Replica], backend: SocketAddr, workers: usize, run: Duration) -> Vec<harness::Tally> {
    let mut loads = Vec::new();
    for r in rs {
        loads.push(Load::start(r.grpc, backend, "chat", workers, TOKENS).await);
    }
    tokio::time::sleep(run).await; // the load's length, not a synchronisation
    let mut tallies = Vec::new();
    for l in loads {
        tallies.push(l.stop().await);
    }
    tallies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_concurrency_stays_within_max_inflight_across_three_replicas() {
    const MAX: u32 = 4;
    let redis = Redis::start().await;
    let backend = sim().await;
    let rs = replicas(3, backend.addr(), MAX, Some(&redis)).await;
    for r in &rs {
        r.wait_connected(3).await;
    }
    let tallies = load_all(&rs, backend.addr(), 8, Duration::from_secs(2)).await;
    let peak = backend.stats().max_in_system_seen;
    let evalsha = redis.command_stats("evalsha").await;
    eprintln!(
        "cluster: peak {peak} of max_inflight {MAX}; per replica {tallies:?}; redis evalsha {evalsha:?}"
    );
    assert!(peak <= u64::from(MAX), "peak concurrency {peak} > max_inflight {MAX}");
    for (r, t) in rs.iter().zip(&tallies) {
        assert_eq!(t.errors, 0, "{}: {t:?}", r.name);
        assert!(t.dispatched > 0, "{}: starved: {t:?}", r.name);
        r.assert_conserved(t.sent).await;
    }

    // The same load on standalone replicas oversubscribes the backend: the check above can fail.
    let alone_backend = sim().await;
    let alone = replicas(3, alone_backend.addr(), MAX, None).await;
    let tallies = load_all(&alone, alone_backend.addr(), 8, Duration::from_secs(1)).await;
    let alone_peak = alone_backend.stats().max_in_system_seen;
    eprintln!("standalone: peak {alone_peak} of max_inflight {MAX}");
    assert!(alone_peak > u64::from(MAX), "uncoordinated replicas should exceed {MAX}, saw {alone_peak}");
    for (r, t) in alone.iter().zip(&tallies) {
        r.assert_conserved(t.sent).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_flooding_replica_a_is_penalised_on_replica_b() {
    let redis = Redis::start().await;
    let backend = sim().await;
    let rs = replicas(2, backend.addr(), 64, Some(&redis)).await;
    for r in &rs {
        r.wait_connected(2).await;
    }
    let (a, b) = (&rs[0], &rs[1]);
    // B knows the workload (one request), A gets the flood.
    let one = Load::start(b.grpc, backend.addr(), "flood", 1, 1).await;
    let flood = Load::start(a.grpc, backend.addr(), "flood", 16, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the flood's length
    let flooded = flood.stop().await;
    let trickle = one.stop().await;
    let stopped = Instant::now();
    // A's and B's cluster rates (local + the other's) converge: within 10% of each other.
    let rate =
        |w: &serde_json::Value| w["rate_per_s"].as_f64().unwrap() + w["remote_rate_per_s"].as_f64().unwrap();
    let (ra, rb) = loop {
        let wa = a.workload("flood").await.expect("A tracks flood");
        let wb = b.workload("flood").await.expect("B tracks flood");
        let (ra, rb) = (rate(&wa), rate(&wb));
        if ra > 0.0 && (ra - rb).abs() <= 0.1 * ra {
            assert!(wb["remote_rate_per_s"].as_f64().unwrap() > wb["rate_per_s"].as_f64().unwrap());
            break (ra, rb);
        }
        assert!(stopped.elapsed() < DEADLINE, "rates did not converge: A {wa}, B {wb}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    eprintln!(
        "rates: A {ra:.2}/s, B {rb:.2}/s ({:.1}%), converged {:?} after the flood; flood {flooded:?}, trickle {trickle:?}",
        100.0 * rb / ra,
        stopped.elapsed()
    );
    a.assert_conserved(flooded.sent).await;
    b.assert_conserved(trickle.sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_goes_local_then_back_without_losing_a_request() {
    const MAX: u32 = 6;
    const DISPATCHED: &str = "flowgate_requests_total{outcome=\"dispatched\"}";
    let mut redis = Redis::start().await;
    let port = redis.port;
    let backend = sim().await;
    let rs = replicas(3, backend.addr(), MAX, Some(&redis)).await;
    for r in &rs {
        r.wait_connected(3).await;
    }
    let mut loads = Vec::new();
    for r in &rs {
        loads.push(Load::start(r.grpc, backend.addr(), "chat", 4, TOKENS).await);
    }
    rs[0].wait_metric(DISPATCHED, |v| v >= 20.0).await;
    let peak_connected = backend.stats().max_in_system_seen;
    assert!(peak_connected <= u64::from(MAX), "connected: peak {peak_connected} > {MAX}");

    // Redis dies: every replica goes local, ⌊6 / 3⌋ = 2 slots each, and keeps serving.
    redis.kill();
    let killed = Instant::now();
    for r in &rs {
        r.wait_metric("flowgate_cluster_connected", |v| v == 0.0).await;
        r.wait_backend("local share", |b| b["lease"] == 2).await;
    }
    let to_local = killed.elapsed();
    for r in &rs {
        // Places taken under a larger lease drain; no new one goes past the local share.
        r.wait_backend("drained to the local share", |b| b["inflight"].as_u64().unwrap() <= 2).await;
    }
    let peak_lapse = backend.stats().max_in_system_seen;
    reset_peak(backend.addr()).await;
    let before = rs[1].metric(DISPATCHED).await.unwrap();
    rs[1].wait_metric(DISPATCHED, |v| v >= before + 10.0).await;
    let peak_local = backend.stats().max_in_system_seen;
    assert!(peak_local <= 3 * 2, "local: peak {peak_local} > 3 replicas x 2");

    // Redis is back (empty): two good syncs each, then shared leases again, never above max.
    reset_peak(backend.addr()).await;
    let _redis = Redis::start_on(port).await;
    let restarted = Instant::now();
    for r in &rs {
        r.wait_connected(3).await;
    }
    let back = restarted.elapsed();
    let after = rs[2].metric(DISPATCHED).await.unwrap();
    rs[2].wait_metric(DISPATCHED, |v| v >= after + 10.0).await;
    let mut tallies = Vec::new();
    for l in loads {
        tallies.push(l.stop().await);
    }
    let peak_back = backend.stats().max_in_system_seen;
    eprintln!(
        "redis kill: all local after {to_local:?}, all back {back:?} after restart; peak connected {peak_connected}, \
         across the lapse {peak_lapse}, local {peak_local}, reconnecting {peak_back} (max_inflight {MAX}); {tallies:?}"
    );
    assert!(peak_back <= u64::from(MAX), "reconnecting: peak {peak_back} > max_inflight {MAX}");
    for (r, t) in rs.iter().zip(&tallies) {
        assert_eq!(t.errors, 0, "{}: {t:?}", r.name);
        r.assert_conserved(t.sent).await;
        let failed = r.metric("flowgate_cluster_syncs_total{result=\"error\"}").await.unwrap()
            + r.metric("flowgate_cluster_syncs_total{result=\"timeout\"}").await.unwrap();
        assert!(failed > 0.0, "{}: failed syncs are counted", r.name);
    }
}

/// `POST /admin/reset` on the simulator: its peaks restart from the live values.
async fn reset_peak(sim: SocketAddr) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(sim).await.unwrap();
    s.write_all(b"POST /admin/reset HTTP/1.1\r\nHost: sim\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_slots_go_to_the_others() {
    const MAX: u32 = 4;
    let redis = Redis::start().await;
    let backend = sim().await;
    let mut rs = replicas(2, backend.addr(), MAX, Some(&redis)).await;
    for r in &rs {
        r.wait_connected(2).await;
    }
    let load_a = Load::start(rs[0].grpc, backend.addr(), "chat", 6, TOKENS).await;
    let load_b = Load::start(rs[1].grpc, backend.addr(), "chat", 6, TOKENS).await;
    // Both busy: the slots are split (each holds some).
    rs[0]
        .wait_backend("a share", |b| b["lease"].as_u64().is_some_and(|l| (1..MAX as u64).contains(&l)))
        .await;
    rs[1].wait_backend("b share", |b| b["lease"].as_u64().is_some_and(|l| l >= 1)).await;
    rs[1].kill();
    let killed = Instant::now();
    rs[0].wait_backend("all slots", |b| b["lease"] == MAX).await;
    let freed = killed.elapsed();
    rs[0].wait_metric("flowgate_cluster_replicas", |v| v == 1.0).await;
    drop(load_b); // its streams died with the process
    let t = load_a.stop().await;
    eprintln!(
        "replica kill: its slots went to the survivor {freed:?} after the kill ({} sync intervals)",
        freed.as_millis() as u64 / SYNC_MS
    );
    assert!(freed < Duration::from_millis(SYNC_MS * 8), "took {freed:?}");
    assert_eq!(t.errors, 0, "{t:?}");
    rs[0].assert_conserved(t.sent).await;
    assert!(backend.stats().max_in_system_seen <= u64::from(MAX));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_syncs_out_and_nothing_stalls() {
    const MAX: u32 = 4;
    const DISPATCHED: &str = "flowgate_requests_total{outcome=\"dispatched\"}";
    let redis = Redis::start().await;
    let backend = sim().await;
    let rs = replicas(2, backend.addr(), MAX, Some(&redis)).await;
    for r in &rs {
        r.wait_connected(2).await;
    }
    let mut loads = Vec::new();
    for r in &rs {
        loads.push(Load::start(r.grpc, backend.addr(), "chat", 4, TOKENS).await);
    }
    rs[0].wait_metric(DISPATCHED, |v| v >= 10.0).await;
    // Redis hangs (SIGSTOP): connections stay open, nothing is answered.
    redis.freeze(true);
    let frozen = Instant::now();
    for r in &rs {
        r.wait_metric("flowgate_cluster_connected", |v| v == 0.0).await;
        r.wait_backend("local share", |b| b["lease"] == 2).await;
    }
    let to_local = frozen.elapsed();
    for r in &rs {
        let before = r.metric(DISPATCHED).await.unwrap();
        r.wait_metric(DISPATCHED, |v| v >= before + 10.0).await;
        r.wait_metric("flowgate_cluster_syncs_total{result=\"timeout\"}", |v| v >= 1.0).await;
    }
    redis.freeze(false);
    let thawed = Instant::now();
    for r in &rs {
        r.wait_connected(2).await;
    }
    let back = thawed.elapsed();
    let mut tallies = Vec::new();
    for l in loads {
        tallies.push(l.stop().await);
    }
    eprintln!("frozen redis: local after {to_local:?}, back {back:?} after thawing; {tallies:?}");
    for (r, t) in rs.iter().zip(&tallies) {
        assert_eq!(t.errors, 0, "{}: {t:?}", r.name);
        r.assert_conserved(t.sent).await;
    }
}

/// A store that is not there from the start: the replica serves on local state (connected 0,
/// the whole `max_inflight` as its share, it is the only replica it has seen), counts its failed
/// syncs, and answers every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_from_the_start_serves_on_local_state() {
    const MAX: u32 = 3;
    const DISPATCHED: &str = "flowgate_requests_total{outcome=\"dispatched\"}";
    let backend = sim().await;
    // A port nothing listens on: every connection attempt is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cluster = format!(
        "redis: redis://127.0.0.1:{closed}\npool: gone\nreplica_id: alone\nsync_interval: {SYNC_MS}ms"
    );
    let r = Replica::spawn("alone", &replica_yaml(backend.addr(), MAX, &cluster)).await;
    r.wait_metric("flowgate_cluster_syncs_total{result=\"error\"}", |v| v >= 2.0).await;
    assert_eq!(r.metric("flowgate_cluster_connected").await, Some(0.0));
    // No good sync ever: its age counts from the start.
    r.wait_metric("flowgate_cluster_sync_age_seconds", |v| v >= 0.2).await;
    r.wait_backend("the whole cap as the local share", |b| b["lease"] == MAX).await;
    let load = Load::start(r.grpc, backend.addr(), "chat", 4, TOKENS).await;
    r.wait_metric(DISPATCHED, |v| v >= 20.0).await;
    let t = load.stop().await;
    assert_eq!((t.errors, t.refused), (0, 0), "{t:?}");
    assert!(backend.stats().max_in_system_seen <= u64::from(MAX), "peak above max_inflight");
    r.assert_conserved(t.sent).await;
    assert_eq!(r.metric("flowgate_cluster_connected").await, Some(0.0));
}

/// Open `n` ext_proc streams of workload `chat` on `replica`, request headers sent, answers
/// unread: they stay open (dispatched or queued) until dropped.
async fn hold(replica: &Replica, n: usize) -> Vec<impl Sized> {
    let client = common::connect(replica.grpc).await;
    let mut held = Vec::new();
    for _ in 0..n {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(common::request_headers(vec![common::context("chat", 3)])).await.unwrap();
        let stream = client.clone().process(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap();
        held.push((tx, stream.into_inner()));
    }
    held
}

/// Σ dispatched over `rs`.
async fn dispatched(rs: &[Replica]) -> f64 {
    let mut total = 0.0;
    for r in rs {
        total += r.metric("flowgate_requests_total{outcome=\"dispatched\"}").await.unwrap_or(0.0);
    }
    total
}

/// Poll until Σ dispatched over `rs` reaches `n`.
async fn wait_dispatched(rs: &[Replica], n: f64) {
    let start = Instant::now();
    while dispatched(rs).await < n {
        assert!(start.elapsed() < DEADLINE, "Σ dispatched stayed {} < {n}", dispatched(rs).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_shares_keep_the_burst_bound_across_three_replicas() {
    // Metrics gate, threshold 6, the server's queue forced empty: one scrape lets 6 through in
    // all. With the scrapes then stalled, nothing resets the sent counts: Σ dispatched over the
    // three replicas must stop at 6 (standalone, each replica sends 6: 18).
    const THRESHOLD: u32 = 6;
    let saturation = format!(
        "saturation:\n  detector: utilization\n  queue_depth_threshold: {THRESHOLD}\n  scrape_interval: 20ms\n  staleness: 1h\n"
    );
    let run = |rs: Vec<Replica>, backend: Sim, expected: f64| async move {
        backend.force(flowgate_sim::Force {
            waiting: Some(0.0),
            running: Some(0.0),
            kv_cache_usage: Some(0.0),
        });
        for r in &rs {
            r.wait_backend("scraped", |b| b["stale"] == false).await;
        }
        backend.set_metrics_mode(flowgate_sim::MetricsMode::Stall);
        let mut held = Vec::new();
        for r in &rs {
            held.push(hold(r, 8).await);
        }
        wait_dispatched(&rs, expected).await;
        // Ten sync intervals of rebalancing by demand: nothing more may go.
        tokio::time::sleep(Duration::from_millis(10 * SYNC_MS)).await; // the observation window
        let total = dispatched(&rs).await;
        backend.set_metrics_mode(flowgate_sim::MetricsMode::Ok);
        wait_dispatched(&rs, 24.0).await; // scrapes again: everything queued goes
        drop(held);
        for r in &rs {
            r.assert_conserved(8).await;
        }
        total
    };

    let redis = Redis::start().await;
    let backend = sim().await;
    let mut rs = Vec::new();
    for i in 0..3 {
        let name = format!("q{i}");
        let yaml = replica_yaml(backend.addr(), 0, &cluster(&redis, &name)) + &saturation;
        rs.push(Replica::spawn(&name, &yaml).await);
    }
    for r in &rs {
        r.wait_connected(3).await;
        r.wait_backend("queue share", |b| b["queue_share"] == 2).await;
    }
    let total = run(rs, backend, f64::from(THRESHOLD)).await;
    eprintln!("cluster: Σ dispatched between two scrapes {total} of threshold {THRESHOLD}");
    assert_eq!(total, f64::from(THRESHOLD), "the pool-wide burst bound");

    let backend = sim().await;
    let mut alone = Vec::new();
    for i in 0..3 {
        let yaml = replica_yaml(backend.addr(), 0, "") + &saturation;
        alone.push(Replica::spawn(&format!("s{i}"), &yaml).await);
    }
    let total = run(alone, backend, f64::from(3 * THRESHOLD)).await;
    eprintln!("standalone: Σ dispatched between two scrapes {total}");
    assert_eq!(total, f64::from(3 * THRESHOLD), "uncoordinated replicas each send the whole room");
}
