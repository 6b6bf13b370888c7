//! What the `flowgate` binary's allocator housekeeping costs (`shim/src/allocator.rs`): one
//! `mi_collect(false)` as an I/O worker parks, on a heap shaped like a worker's after serving
//! streams, with mimalloc as the global allocator as in the binary.
//!
//! `cargo bench -p flowgate-bench --bench allocator -- --warm-up-time 1 --measurement-time 3`
//!
//! - `collect/idle heap`: nothing freed since the last collection (a park in steady traffic).
//! - `collect/after 64 streams freed`: 64 streams' worth of blocks (sizes as a stream's task,
//!   codec buffers and answers: 64 B to 4 KiB) allocated and freed, then one collection.

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Block sizes of one stream, bytes.
const STREAM_BLOCKS: [usize; 6] = [64, 256, 664, 1024, 1024, 4096];
/// Streams whose blocks a worker frees between two parks, in the second case.
const STREAMS: usize = 64;
/// Long-lived blocks the heap holds throughout (other streams still open).
const LIVE: usize = 1000;

fn blocks(streams: usize) -> Vec<Vec<u8>> {
    (0..streams).flat_map(|_| STREAM_BLOCKS.iter().map(|&n| vec![1u8; n])).collect()
}

fn bench(c: &mut Criterion) {
    let live = blocks(LIVE);
    let mut g = c.benchmark_group("collect");
    g.bench_function("idle heap", |b| b.iter(flowgate::allocator::collect));
    g.bench_function("after 64 streams freed", |b| {
        b.iter_batched(
            || blocks(STREAMS),
            |freed| {
                drop(black_box(freed));
                flowgate::allocator::collect();
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
    drop(black_box(live));
}

criterion_group!(benches, bench);
criterion_main!(benches);
