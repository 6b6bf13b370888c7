//! Core micro benchmarks: scoring, the rescore pass, the shard's enqueue+dispatch at depth, the
//! same push+pop on the seed's design, and the engine's full path and wake latency.
//!
//! `cargo bench -p flowgate-bench --bench core -- --warm-up-time 1 --measurement-time 3`
//!
//! Targets (issues): `score/key` ≤ 20 ns; `rescore/100000` ≤ 2 ms; flowgate ≥ 5× the seed baseline
//! on push+pop at 10k queued (compare `shard/enqueue+dispatch_next/10000` with
//! `seed/push+pop/10000`); a changing backend set costs the gate nothing measurable (compare
//! `gate/acquire+release/churn-N` with `gate/acquire+release/fixed-N`, same run).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flowgate_bench::baseline::{churn_set, EngineQueue, Queue, Req, SeedCore, Spec, CHURN_INTERVAL};
use flowgate_bench::driver::Rng;
use flowgate_engine::budget::QueueBudget;
use flowgate_engine::clock::Clock;
use flowgate_engine::config::{EngineConfig, ScoringConfig, MAX_TTL};
use flowgate_engine::gate::Gate;
use flowgate_engine::registry::hash_workload_id;
use flowgate_engine::ring::shard_of;
use flowgate_engine::score::Scorer;
use flowgate_engine::shard::{Arrival, Shard};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Distinct workloads the queued requests belong to.
const WORKLOADS: usize = 64;

fn criticality(rng: &mut Rng) -> u8 {
    1 + rng.below(5) as u8
}

fn workloads() -> Vec<(Arc<str>, u64)> {
    (0..WORKLOADS)
        .map(|i| {
            let id: Arc<str> = Arc::from(format!("workload-{i}"));
            let h = hash_workload_id(&id);
            (id, h)
        })
        .collect()
}

fn shard_config() -> EngineConfig {
    let mut c = EngineConfig::default();
    c.queue.max_requests = 0;
    c.queue.max_bytes = 0;
    c.queue.ttl = MAX_TTL;
    c
}

fn new_shard(config: &EngineConfig) -> Shard<u32> {
    Shard::new(config, 0, 1, Arc::new(QueueBudget::new(0, 0)), Arc::new(AtomicUsize::new(0)))
}

fn arrival(w: &(Arc<str>, u64), criticality: u8, now: u64, tag: u32) -> Arrival<u32> {
    Arrival {
        workload_id: w.0.clone(),
        hash: w.1,
        criticality,
        ttl: None,
        bytes: 0,
        arrived_ns: now,
        completion: tag,
    }
}

/// A shard holding `n` requests that arrived over the last second before `now`.
fn filled_shard(config: &EngineConfig, n: usize, rng: &mut Rng, ws: &[(Arc<str>, u64)]) -> (Shard<u32>, u64) {
    let mut shard = new_shard(config);
    let step = 1_000_000_000 / n as u64;
    let mut now = 0;
    for i in 0..n {
        now += step;
        let w = &ws[rng.below(ws.len() as u64) as usize];
        shard.enqueue(arrival(w, criticality(rng), now, i as u32), now, &mut |_| {
            unreachable!("unbounded queue")
        });
    }
    (shard, now)
}

fn score(c: &mut Criterion) {
    let s = Scorer::new(&ScoringConfig::default());
    let mut g = c.benchmark_group("score");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("key", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let enq = i.wrapping_mul(7_919) % 120_000_000_000;
            black_box(s.key(
                black_box(enq),
                black_box(120_000_000_000),
                black_box((i % 5) as u8 + 1),
                black_box((i % 300) as f64),
                i,
            ))
        })
    });
    g.finish();
}

fn rescore(c: &mut Criterion) {
    let config = shard_config();
    let ws = workloads();
    let mut g = c.benchmark_group("rescore");
    for n in [10_000usize, 100_000] {
        let mut rng = Rng(n as u64);
        let (mut shard, mut now) = filled_shard(&config, n, &mut rng, &ws);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter(|| {
                // 100 µs of engine time per pass: far from every TTL (an hour).
                now += 100_000;
                shard.rescore(now, &mut |_| unreachable!("nothing expires"));
                black_box(shard.head_key())
            })
        });
        assert_eq!(shard.len(), n);
    }
    g.finish();
}

fn shard_push_pop(c: &mut Criterion) {
    let config = shard_config();
    let ws = workloads();
    let n = 10_000;
    let mut g = c.benchmark_group("shard");
    g.throughput(Throughput::Elements(1));
    let mut rng = Rng(42);
    let (mut shard, mut now) = filled_shard(&config, n, &mut rng, &ws);
    let mut tag = 0u32;
    g.bench_with_input(BenchmarkId::new("enqueue+dispatch_next", n), &n, |b, _| {
        b.iter(|| {
            now += 100;
            tag = tag.wrapping_add(1);
            let w = &ws[rng.below(WORKLOADS as u64) as usize];
            shard.enqueue(arrival(w, criticality(&mut rng), now, tag), now, &mut |_| unreachable!());
            black_box(shard.dispatch_next(now).map(|d| d.completion))
        })
    });
    assert_eq!(shard.len(), n);
    g.finish();
}

fn seed_push_pop(c: &mut Criterion) {
    let ws = workloads();
    let n = 10_000;
    let mut g = c.benchmark_group("seed");
    g.throughput(Throughput::Elements(1));
    let mut rng = Rng(42);
    let core: SeedCore<u32> = SeedCore::new(&ScoringConfig::default());
    for i in 0..n {
        let w = &ws[rng.below(WORKLOADS as u64) as usize];
        core.push(&w.0, criticality(&mut rng), i as u32);
    }
    let mut tag = 0u32;
    g.bench_with_input(BenchmarkId::new("push+pop", n), &n, |b, _| {
        b.iter(|| {
            tag = tag.wrapping_add(1);
            let w = &ws[rng.below(WORKLOADS as u64) as usize];
            core.push(&w.0, criticality(&mut rng), tag);
            black_box(core.pop().map(|i| i.value))
        })
    });
    assert_eq!(core.len(), n);
    g.finish();
}

/// One workload id per shard, so the full-path bench touches every shard.
fn ids_per_shard(shards: usize) -> Vec<Arc<str>> {
    (0..shards)
        .map(|s| {
            let id = (0..).map(|i| format!("w-{i}")).find(|id| shard_of(hash_workload_id(id), shards) == s);
            Arc::from(id.expect("some id lands on every shard"))
        })
        .collect()
}

fn engine_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    let spec = Spec { slots: 1024, ..Spec::default() };
    for shards in [1usize, 2] {
        let q = EngineQueue::start(spec.engine_config(shards)).expect("engine starts");
        let reqs: Vec<Req> = ids_per_shard(shards).iter().map(|w| Req::new(w, 3)).collect();
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("submit->dispatched", format!("{shards}sh")), |b| {
            b.iter(|| {
                i += 1;
                let d = q.submit(&reqs[i % reqs.len()]).expect("submitted").wait();
                black_box(d.outcome)
            })
        });
        q.shutdown();
    }
    // Wake latency: the shard has gone to sleep (nothing to do for 100 µs) when the request lands.
    // Sleeps are not timed, so the wall time is several times the measurement time: keep it short.
    let q = EngineQueue::start(spec.engine_config(1)).expect("engine starts");
    let req = Req::new(&Arc::from("sleeper"), 3);
    g.sample_size(20).measurement_time(Duration::from_secs(1));
    g.bench_function("wake_latency/1sh", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(Duration::from_micros(100));
                let t = Instant::now();
                let d = q.submit(&req).expect("submitted").wait();
                total += t.elapsed();
                black_box(d.outcome);
            }
            total
        })
    });
    q.shutdown();
    g.finish();
}

/// The gate's dispatch step (`try_acquire` + `release`, one place at a time) on a fixed set of one
/// backend and of two, each against the same set whose backends a controller thread rotates every
/// [`CHURN_INTERVAL`] ({A} → {B} → {C} …, as `Kind::FlowgateChurn` does, or {A,B} → {B,C} → …).
/// A one-backend set has no backend for the instant a change swaps it: an acquire that finds no
/// room then tries again (counted, and printed with the changes made).
fn gate_churn(c: &mut Criterion) {
    const SLOTS: u32 = 1024;
    let mut g = c.benchmark_group("gate");
    g.throughput(Throughput::Elements(1));
    for width in [1usize, 2] {
        for churn in [false, true] {
            let config = EngineConfig { backends: churn_set(0, width, SLOTS), ..EngineConfig::default() };
            let gate = Arc::new(Gate::new(&config, 1, Clock::new()));
            let stop = Arc::new(AtomicBool::new(false));
            let changes = Arc::new(AtomicU64::new(0));
            let controller = churn.then(|| {
                let (gate, stop, changes) = (gate.clone(), stop.clone(), changes.clone());
                std::thread::spawn(move || {
                    let sets: Vec<_> = (0..3).map(|k| churn_set(k, width, SLOTS)).collect();
                    let mut step = 0usize;
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(CHURN_INTERVAL);
                        step += 1;
                        let done = gate.set_backends(&sets[step % sets.len()]);
                        assert!(done.refused.is_empty() && done.added.len() == 1 && done.drained.len() == 1);
                        changes.fetch_add(1, Ordering::Relaxed);
                    }
                })
            });
            let name = format!("{}-{width}", if churn { "churn" } else { "fixed" });
            let (started, mut retries) = (Instant::now(), 0u64);
            g.bench_function(BenchmarkId::new("acquire+release", &name), |b| {
                b.iter(|| {
                    let place = loop {
                        match gate.try_acquire(black_box(3)) {
                            Ok(place) => break place,
                            Err(_) => retries += 1,
                        }
                    };
                    gate.release(black_box(place));
                })
            });
            stop.store(true, Ordering::Release);
            if let Some(t) = controller {
                t.join().expect("controller");
                let n = changes.load(Ordering::Relaxed);
                assert!(n > 0, "the backend set never changed");
                eprintln!(
                    "gate/acquire+release/{name}: {n} set changes ({:.0}/s), {retries} acquires retried",
                    n as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, score, rescore, shard_push_pop, seed_push_pop, engine_path, gate_churn);
criterion_main!(benches);
