//! The allocator's housekeeping: memory a burst of streams used goes back to the OS once the burst
//! is over, without a cost on the request path.
//!
//! mimalloc (the `flowgate` binary's global allocator, v3) returns freed memory lazily, in two
//! steps, and neither happens by itself on a server gone quiet:
//! 1. A page goes back to its arena only on the thread that owns it, and blocks that other
//!    threads freed wait on the page until the owner looks (tokio moves tasks between workers,
//!    so a stream's memory is often freed on another one). An idle worker never looks.
//! 2. The arena *purges* what came back (hands it to the OS with `madvise`) once its purge
//!    deadline passes: set by the first range freed after the last purge, `purge_delay` (1 s)
//!    later, and run only when some allocator call on some thread checks it.
//!
//! So the binary's runtime collects ([`collect`], `mi_collect(false)`) on every worker as it parks
//! (`io_runtime::build`'s `on_thread_park`: step 1 for that thread), and one task collects every
//! [`COLLECT_INTERVAL`] (step 2, process-wide: the arenas are shared), which also wakes a worker
//! that then parks and collects again. After 1000 streams closed, `flowgate-bench streams`
//! measured RSS given back within 5 s: with one I/O worker 88–92 % (none before); with four,
//! 37–46 % with the periodic task alone and 76–87 % with the collection at park.
//!
//! Cost: one collection takes about 1 µs on an idle heap (`cargo bench --bench allocator`), once
//! per park; flowgate's CPU per request through Envoy was unchanged within the runs' spread
//! (`flowgate-bench envoy-modes`, three alternating runs each: plain 62–71 against 63–65 µs,
//! metered 126–143 against 130–147 µs). A range reused before the deadline is not purged.
//!
//! Not chosen: purging at once (`MIMALLOC_PURGE_DELAY=0`). It returned the memory too, but cost
//! every request: flowgate's CPU per request through Envoy rose from 52–58 to 66–67 µs (plain)
//! and from 116–128 to 143–146 µs (metered) in `flowgate-bench envoy-modes`, two runs each.

// The shim's only unsafe code (shim/Cargo.toml denies it everywhere else): one FFI call.
#![allow(unsafe_code)]

use libmimalloc_sys::mi_collect;
use std::time::Duration;

/// How often [`collect_every`] runs the due purges: memory a burst freed is back with the OS
/// about mimalloc's purge delay (1 s) plus this much after the burst.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(1);

/// Collect now: the calling thread's pages that are empty (including blocks other threads freed
/// on them) go back to the arenas, and the arenas' due purges run (process-wide). For a runtime's
/// `on_thread_park` and for [`collect_every`].
///
/// ```
/// flowgate::allocator::collect(); // harmless, also where mimalloc is not the global allocator
/// ```
pub fn collect() {
    // SAFETY: mi_collect may be called from any thread at any time (mimalloc's API contract): it
    // touches the calling thread's own heap (returning at once if the thread has none) and the
    // shared arenas under mimalloc's own try-guard, so it never blocks on another thread.
    unsafe { mi_collect(false) };
}

/// Call [`collect`] every `interval`, for good: a task of the server's runtime, ended with it.
pub async fn collect_every(interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        collect();
    }
}
