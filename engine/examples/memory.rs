//! Engine memory per queued request and per tracked workload, counted by a global allocator.
//! `cargo run --release -p flowgate-engine --example memory`.

use flowgate_engine::budget::QueueBudget;
use flowgate_engine::config::EngineConfig;
use flowgate_engine::registry::{hash_workload_id, RateWindow, WorkloadTable};
use flowgate_engine::shard::{Arrival, Shard};
use flowgate_engine::slot::Slot;
use flowgate_engine::Permit;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts live heap bytes.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    const N: usize = 1_000_000;
    const WORKLOADS: usize = 100_000;
    let mut config = EngineConfig::default();
    config.queue.max_requests = 0;
    // Ids made up front: the request's own id string is not engine memory.
    let ids: Vec<Arc<str>> = (0..1000).map(|i| Arc::from(format!("workload-{i}"))).collect();
    let hashes: Vec<u64> = ids.iter().map(|id| hash_workload_id(id)).collect();

    // Per queued request: heap entry, slab slot, link, and the completion slot the caller shares.
    let budget = Arc::new(QueueBudget::new(0, 0));
    let before = LIVE.load(Ordering::Relaxed);
    let mut shard: Shard<Arc<Slot<Permit>>> =
        Shard::new(&config, 0, 1, budget, Arc::new(AtomicUsize::new(0)));
    let mut sink = |_| panic!("nothing is refused");
    for i in 0..N {
        let arrival = Arrival {
            workload_id: ids[i % ids.len()].clone(),
            hash: hashes[i % ids.len()],
            criticality: (i % 5 + 1) as u8,
            ttl: None,
            bytes: 0,
            arrived_ns: i as u64,
            completion: Arc::new(Slot::new()),
        };
        shard.enqueue(arrival, i as u64, &mut sink);
    }
    let per_request = (LIVE.load(Ordering::Relaxed) - before) as f64 / N as f64;
    drop(shard);
    let slot = std::mem::size_of::<Slot<Permit>>() + 2 * std::mem::size_of::<usize>();
    println!(
        "per queued request: {per_request:.1} bytes = {:.1} queue (heap entry, slab slot, link, Vec slack) \
         + {slot} completion slot shared with the caller",
        per_request - slot as f64
    );

    // Per tracked workload: table entry, counters, id string, directory entry.
    let names: Vec<String> = (0..WORKLOADS).map(|i| format!("tenant-{i:08}")).collect();
    let name_hashes: Vec<u64> = names.iter().map(|n| hash_workload_id(n)).collect();
    let before = LIVE.load(Ordering::Relaxed);
    config.workloads.max_tracked = WORKLOADS;
    let mut table = WorkloadTable::new(
        &config.workloads,
        RateWindow::new(config.scoring.rate_window),
        Arc::new(AtomicUsize::new(0)),
    );
    for (name, hash) in names.iter().zip(&name_hashes) {
        table.arrive(name, *hash, 3, 0);
    }
    let per_workload = (LIVE.load(Ordering::Relaxed) - before) as f64 / WORKLOADS as f64;
    println!("per tracked workload: {per_workload:.1} bytes (with a {}-byte id)", names[0].len());
}
