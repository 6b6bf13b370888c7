//! CPU time per thread and per process, from `/proc` (utime + stime, in clock ticks of 10 ms).
//!
//! The throughput bench splits each run's CPU into the producers' share and the queue's own
//! (everything else but the measuring thread), per request. On a machine whose producers share
//! the cores with the shards, those two figures bound what more shards can gain: see
//! [`shard_scaling_ceiling`].

/// Linux's `USER_HZ`: the unit of `/proc/*/stat` CPU times.
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds used so far by the calling thread (`None` where `/proc` is missing).
pub fn thread_s() -> Option<f64> {
    read_stat("/proc/thread-self/stat")
}

/// CPU seconds used so far by the whole process, exited threads included.
pub fn process_s() -> Option<f64> {
    read_stat("/proc/self/stat")
}

/// CPU seconds used so far by process `pid`, exited threads included.
pub fn pid_s(pid: u32) -> Option<f64> {
    read_stat(&format!("/proc/{pid}/stat"))
}

/// utime + stime of a `stat` file, in seconds.
pub fn read_stat(path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces or parentheses: fields are counted after the last ')'.
    let fields: Vec<&str> = text.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3 of stat(5), so utime (14) and stime (15) are at 11 and 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_S)
}

/// The most an `shards`-shard engine can gain over one shard when `cores` cores run both the
/// shards and the producers, given the CPU one request costs on each side (`queue_s`, `producer_s`,
/// measured with one shard). A shard is one thread, so one shard is capped at `1 / queue_s`
/// requests/s; all threads share the cores, so any engine is capped at
/// `cores / (queue_s + producer_s)`. Polling counts as CPU on both sides.
///
/// ```
/// use flowgate_bench::cpu::shard_scaling_ceiling;
/// // Equal costs on both sides, 2 cores: one shard already fills a core; nothing to gain.
/// assert_eq!(shard_scaling_ceiling(2, 2, 300e-9, 300e-9), 1.0);
/// // Producers four times cheaper than the queue: 1.6x is the ceiling.
/// assert!((shard_scaling_ceiling(2, 2, 400e-9, 100e-9) - 1.6).abs() < 1e-9);
/// // Plenty of cores: the shards themselves are the limit.
/// assert_eq!(shard_scaling_ceiling(2, 64, 400e-9, 100e-9), 2.0);
/// ```
pub fn shard_scaling_ceiling(shards: usize, cores: usize, queue_s: f64, producer_s: f64) -> f64 {
    let shared = cores as f64 / (queue_s + producer_s);
    (shards as f64 / queue_s).min(shared) / (1.0 / queue_s).min(shared)
}
