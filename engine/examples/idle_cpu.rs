//! How much CPU an idle engine burns: start one (default shards), let it sit, read the process's
//! CPU time from /proc; then the same under sparse traffic (one request per millisecond, each
//! followed by up to `spin_before_park` of polling).
//! `cargo run --release -p flowgate-engine --example idle_cpu [seconds] [spin_before_park_us]`.

use flowgate_engine::{Engine, EngineConfig, Outcome, Request, WorkloadContext};
use std::time::{Duration, Instant};

/// User + system CPU time of this process, in clock ticks (1/100 s on Linux).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th fields.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn main() {
    let seconds: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut config = EngineConfig::default();
    if let Some(us) = std::env::args().nth(2).and_then(|s| s.parse().ok()) {
        config.spin_before_park = Duration::from_micros(us);
    }
    let engine = Engine::start(config).expect("engine starts");
    // Some work first, so the shards have been through a busy period and then fall idle.
    for i in 0..1000 {
        let ctx = WorkloadContext { workload_id: format!("w{i}").into(), criticality: 3, ttl: None };
        let d = engine.submit(Request { context: ctx, bytes: 0 }).unwrap().wait();
        assert_eq!(d.outcome, Outcome::Dispatched);
    }
    let (t0, c0) = (Instant::now(), cpu_ticks());
    std::thread::sleep(Duration::from_secs(seconds));
    let (elapsed, used) = (t0.elapsed().as_secs_f64(), (cpu_ticks() - c0) as f64 / 100.0);
    println!(
        "idle engine, {} shards: {:.3} s CPU in {:.1} s = {:.2}% of one core",
        engine.shards(),
        used,
        elapsed,
        100.0 * used / elapsed
    );
    // Wake latency from idle: one submission to a sleeping shard, end to end.
    let t = Instant::now();
    let d =
        engine.submit(Request { context: WorkloadContext::default_workload(3), bytes: 0 }).unwrap().wait();
    println!("first request after the idle period: {:?} ({:?})", t.elapsed(), d.outcome);
    // Sparse traffic: one request per ms, spread over the shards by workload.
    let (t0, c0) = (Instant::now(), cpu_ticks());
    let mut latencies = Vec::new();
    let mut next = t0;
    let mut i = 0u64;
    while t0.elapsed() < Duration::from_secs(seconds) {
        next += Duration::from_millis(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        i += 1;
        let ctx = WorkloadContext { workload_id: format!("w{}", i % 64).into(), criticality: 3, ttl: None };
        let t = Instant::now();
        let d = engine.submit(Request { context: ctx, bytes: 0 }).unwrap().wait();
        latencies.push(t.elapsed());
        assert_eq!(d.outcome, Outcome::Dispatched);
    }
    let (elapsed, used) = (t0.elapsed().as_secs_f64(), (cpu_ticks() - c0) as f64 / 100.0);
    latencies.sort();
    println!(
        "sparse traffic, {} requests at 1 per ms: {:.2}% of one core (caller included), p50 {:?}, p99 {:?}",
        latencies.len(),
        100.0 * used / elapsed,
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100]
    );
}
