//! How much CPU an idle engine burns: start one (default shards), let it sit, read the process's
//! CPU time from /proc. `cargo run --release -p flowgate-engine --example idle_cpu [seconds]`.

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
    let engine = Engine::start(EngineConfig::default()).expect("engine starts");
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
}
