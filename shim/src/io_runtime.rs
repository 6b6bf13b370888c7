//! The server's async runtime, laid out by the core [`Layout`]: `io_threads` workers pinned to the
//! CPUs the shards leave, so the gRPC/HTTP threads and the polling shards never preempt each other.

use flowgate_engine::layout::{pin_current_thread, Layout};
use tokio::runtime::Runtime;

/// A multi-threaded tokio runtime with `layout.io_threads` workers, each (and each blocking-pool
/// thread) pinned to `layout.io_cpus`. A thread that cannot be pinned logs a warning and runs
/// anywhere. A worker about to park collects its allocator heap first
/// ([`crate::allocator::collect`]), so what it freed can go back to the OS while it idles.
///
/// ```
/// let layout = flowgate_engine::layout::Layout::for_this_process(1, 1);
/// let rt = flowgate::io_runtime::build(&layout, "doc-io").unwrap();
/// assert_eq!(rt.block_on(async { 1 + 1 }), 2);
/// ```
pub fn build(layout: &Layout, thread_name: &str) -> std::io::Result<Runtime> {
    let io_cpus = layout.io_cpus.clone();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(layout.io_threads.max(1))
        .thread_name(thread_name)
        .on_thread_start(move || {
            if let Err(e) = pin_current_thread(&io_cpus) {
                tracing::warn!(error = %e, "cannot pin an I/O thread to its CPUs; it runs anywhere");
            }
        })
        // A worker going idle hands what it freed back to the allocator (shim/src/allocator.rs).
        .on_thread_park(crate::allocator::collect)
        .build()
}
