//! The allocator's housekeeping: memory a burst of streams used goes back to the OS once the burst
//! is over, without a cost on the request path.
//!
//! mimalloc (the `flowgate` binary's global allocator) returns freed memory lazily: a free range
//! of its arenas is *purged* (handed back with `madvise`) once it has stayed free for its
//! `purge_delay` (1 s), and only when an allocator call on some thread looks for due purges. A
//! server that goes quiet after a burst makes no such call, so its RSS stayed at the burst's peak
//! (`flowgate-bench streams`: 24.8 MiB after 1000 streams closed, against 24.5 MiB while they
//! were open and 11.2 MiB before).
//!
//! So the binary runs [`collect_every`]: every [`COLLECT_INTERVAL`] it calls `mi_collect(false)`,
//! which runs the purges that are due, process-wide (the arenas are shared by every thread), and
//! frees the empty pages of the thread it runs on. A range reused within the purge delay is never
//! purged, so steady traffic purges no more than before; the call itself costs once a second.
//!
//! Not chosen: purging at once (`MIMALLOC_PURGE_DELAY=0`). It returned the memory too, but cost
//! every request: flowgate's CPU per request through Envoy rose from 52–58 to 66–67 µs (plain)
//! and from 116–128 to 143–146 µs (metered) in `flowgate-bench envoy-modes`, two runs each.

// The shim's only unsafe code (shim/Cargo.toml denies it everywhere else): one FFI call.
#![allow(unsafe_code)]

use libmimalloc_sys::mi_collect;
use std::time::Duration;

/// How often [`collect_every`] runs the due purges: memory free for mimalloc's purge delay (1 s)
/// is back with the OS at most this much later.
pub const COLLECT_INTERVAL: Duration = Duration::from_secs(1);

/// Run the allocator's due purges now (process-wide), and free the calling thread's empty pages.
///
/// ```
/// flowgate::allocator::collect(); // harmless, also where mimalloc is not the global allocator
/// ```
pub fn collect() {
    // SAFETY: mi_collect may be called from any thread at any time (mimalloc's API contract): it
    // touches the calling thread's own heap and, under mimalloc's own guard, the shared arenas.
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
