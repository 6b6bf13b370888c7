//! Max-min heap micro benchmarks with the engine's real key type and a 64-byte value.
//!
//! Steady state: the heap is pre-filled, then each iteration pushes one item and removes one, so
//! the size stays put. Keys are uniformly random scores, which is the hard case for
//! push+pop_head: the heap keeps the lowest keys ever pushed, so new keys climb to the root and the
//! refill of the root sinks all the way. The `arrivals` case uses the scorer with a moving clock
//! (new requests mostly rank low), which is what a shard sees.
//!
//! `cargo bench -p flowgate-bench --bench heap -- --warm-up-time 1 --measurement-time 3`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use flowgate_bench::driver::Rng;
use flowgate_engine::config::ScoringConfig;
use flowgate_engine::heap::MaxMinHeap;
use flowgate_engine::score::{Key, Scorer};

/// A 64-byte payload; the first 8 bytes hold a random word the rescore pass reads.
type Value = [u64; 8];

/// A key with a uniform score in [0, 1) and the next arrival number.
fn random_key(rng: &mut Rng, seq: &mut u64) -> Key {
    *seq += 1;
    Key { score: rng.unit(), seq: *seq }
}

fn value(rng: &mut Rng) -> Value {
    [rng.next_u64(), 0, 0, 0, 0, 0, 0, 0]
}

fn filled(n: usize, rng: &mut Rng, seq: &mut u64) -> MaxMinHeap<Key, Value> {
    let mut heap = MaxMinHeap::with_capacity(n + 1);
    for _ in 0..n {
        let key = random_key(rng, seq);
        heap.push(key, 64, value(rng));
    }
    heap
}

fn push_pop(c: &mut Criterion) {
    let mut group = c.benchmark_group("heap");
    for n in [1_000, 10_000, 100_000] {
        let (mut rng, mut seq) = (Rng(n as u64), 0);
        let mut heap = filled(n, &mut rng, &mut seq);
        group.bench_with_input(BenchmarkId::new("push+pop_head", n), &n, |b, _| {
            b.iter(|| {
                let key = random_key(&mut rng, &mut seq);
                heap.push(key, 64, [seq; 8]);
                black_box(heap.pop_head())
            })
        });
        let mut heap = filled(n, &mut rng, &mut seq);
        group.bench_with_input(BenchmarkId::new("push+pop_tail", n), &n, |b, _| {
            b.iter(|| {
                let key = random_key(&mut rng, &mut seq);
                heap.push(key, 64, [seq; 8]);
                black_box(heap.pop_tail())
            })
        });
    }

    // Realistic arrivals at 10k: criticality 1..=5, rates 0..10/s, 100 µs between arrivals.
    let scorer = Scorer::new(&ScoringConfig::default());
    let (mut rng, mut now) = (Rng(7), 0u64);
    let mut arrival = |rng: &mut Rng| {
        now += 100_000;
        let (crit, rate) = (1 + (rng.next_u64() % 5) as u8, (rng.next_u64() % 10) as f64);
        scorer.key(now, now, crit, rate, now)
    };
    let mut heap = MaxMinHeap::with_capacity(10_001);
    for _ in 0..10_000 {
        let key = arrival(&mut rng);
        heap.push(key, 64, value(&mut rng));
    }
    group.bench_function(BenchmarkId::new("push+pop_head arrivals", 10_000), |b| {
        b.iter(|| {
            let key = arrival(&mut rng);
            heap.push(key, 64, [0; 8]);
            black_box(heap.pop_head())
        })
    });
    group.finish();
}

fn remove_by_handle(c: &mut Criterion) {
    let n = 10_000;
    let (mut rng, mut seq) = (Rng(3), 0);
    let mut heap = MaxMinHeap::with_capacity(n + 1);
    let mut handles: Vec<_> = (0..n)
        .map(|_| {
            let key = random_key(&mut rng, &mut seq);
            heap.push(key, 64, value(&mut rng))
        })
        .collect();
    c.bench_with_input(BenchmarkId::new("heap/remove by handle", n), &n, |b, _| {
        b.iter(|| {
            // Remove a random live item, push a replacement in its handle's place.
            let i = rng.next_u64() as usize % n;
            black_box(heap.remove(handles[i]).expect("live handle"));
            let key = random_key(&mut rng, &mut seq);
            handles[i] = heap.push(key, 64, [seq; 8]);
        })
    });
}

fn rescore(c: &mut Criterion) {
    let mut group = c.benchmark_group("heap");
    for n in [10_000, 100_000] {
        let (mut rng, mut seq) = (Rng(5), 0);
        let mut heap = filled(n, &mut rng, &mut seq);
        // Keep everything; each pass nudges every score by a value-dependent amount (up to ±1e-3,
        // alternating sign so the keys don't drift), which reorders neighbours.
        let mut sign = 1.0;
        group.bench_with_input(BenchmarkId::new("rescore (rekey_retain keep all)", n), &n, |b, _| {
            b.iter(|| {
                sign = -sign;
                heap.rekey_retain(
                    |v, k| Some(Key { score: k.score + sign * (v[0] % 1000) as f64 * 1e-6, ..k }),
                    |_| unreachable!("keeps all"),
                );
                black_box(heap.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, push_pop, remove_by_handle, rescore);
criterion_main!(benches);
