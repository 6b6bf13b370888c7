//! The core layout: which CPUs the shards are pinned to and which the server's I/O threads get.
//!
//! Shard `i` is pinned to the `i`-th allowed CPU. From [`PIN_IO_FROM_CPUS`] CPUs up, the I/O
//! threads are pinned to the CPUs after the shards' (shards and I/O partition the CPUs, so neither
//! preempts the other); on smaller machines, or when the shards take every CPU, they run on every
//! CPU (the layout says so: shared). A shard parks when it has nothing to do, so on a small machine
//! the CPU it is pinned to is mostly free, and an I/O thread kept off it cannot move when another
//! process wants its one CPU: on this project's 2-CPU machine, `flowgate-bench layouts` measured
//! the ext_proc path beside a busy neighbour with p99 3.8–7.8 ms when the one I/O thread is pinned
//! to the CPU the shard leaves; on an idle machine the layouts were within each other's noise
//! (README, "Core layout").
//!
//! **`auto`** (`shards: 0`, `io_threads: 0`): one shard per [`CORES_PER_SHARD`] allowed CPUs, at
//! least one, and one I/O thread per CPU the shards leave (at least one). An ext_proc request
//! costs the server's gRPC/HTTP/2 I/O several times what it costs the engine, so the I/O threads
//! get most of the CPUs; one shard dispatches far more than one CPU of I/O can feed.

/// Allowed CPUs per shard under `auto`.
pub const CORES_PER_SHARD: usize = 8;
/// From this many allowed CPUs up, the I/O threads are pinned off the shards' CPUs.
pub const PIN_IO_FROM_CPUS: usize = 8;

/// Where the shards and the I/O threads run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The CPUs this process may run on, ascending.
    pub cpus: Vec<usize>,
    /// CPU of each shard (`shard_cpus.len()` is the shard count).
    pub shard_cpus: Vec<usize>,
    /// Number of I/O threads.
    pub io_threads: usize,
    /// CPUs the I/O threads may run on: those no shard is pinned to (from [`PIN_IO_FROM_CPUS`]
    /// CPUs up), or every CPU.
    pub io_cpus: Vec<usize>,
}

impl Layout {
    /// The layout for `shards` and `io_threads` (0 = auto each) on `cpus` (the allowed CPUs; an
    /// empty list is taken as CPU 0).
    ///
    /// ```
    /// use flowgate_engine::layout::Layout;
    /// // A small machine: one shard, one I/O thread that may also use the shard's CPU.
    /// let two = Layout::plan(&[0, 1], 0, 0);
    /// assert_eq!((two.shard_cpus, two.io_threads, two.io_cpus), (vec![0], 1, vec![0, 1]));
    /// // From 8 CPUs: the I/O threads are pinned off the shards' CPUs.
    /// let sixteen: Vec<usize> = (0..16).collect();
    /// let l = Layout::plan(&sixteen, 0, 0);
    /// assert_eq!((l.shard_cpus.len(), l.io_threads, l.io_cpus[0]), (2, 14, 2));
    /// // Asked for more shards than CPUs: they wrap, and I/O shares every CPU.
    /// let l = Layout::plan(&[0, 1], 3, 0);
    /// assert_eq!((l.shard_cpus, l.io_threads, l.io_cpus), (vec![0, 1, 0], 1, vec![0, 1]));
    /// ```
    pub fn plan(cpus: &[usize], shards: usize, io_threads: usize) -> Self {
        let cpus = if cpus.is_empty() { vec![0] } else { cpus.to_vec() };
        let n = cpus.len();
        let shards = if shards == 0 { auto_shards(n) } else { shards };
        let shard_cpus: Vec<usize> = (0..shards).map(|i| cpus[i % n]).collect();
        let free: Vec<usize> = cpus.iter().copied().skip(shards).collect();
        let io_threads = if io_threads == 0 { free.len().max(1) } else { io_threads };
        let io_cpus = if n >= PIN_IO_FROM_CPUS && !free.is_empty() { free } else { cpus.clone() };
        Self { cpus, shard_cpus, io_threads, io_cpus }
    }

    /// The layout on the CPUs this process may run on now ([`allowed_cpus`]).
    pub fn for_this_process(shards: usize, io_threads: usize) -> Self {
        Self::plan(&allowed_cpus(), shards, io_threads)
    }

    /// Whether the I/O threads share CPUs with shards.
    pub fn io_shares_shard_cpus(&self) -> bool {
        self.io_cpus.iter().any(|c| self.shard_cpus.contains(c))
    }

    /// One line for the log: `2 CPUs: 1 shard on CPU 0; 1 I/O thread on CPU 1`.
    pub fn describe(&self) -> String {
        let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
        let list = |c: &[usize]| c.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        format!(
            "{}: {} on CPU {}; {} on CPU {}{}",
            plural(self.cpus.len(), "CPU"),
            plural(self.shard_cpus.len(), "shard"),
            list(&self.shard_cpus),
            plural(self.io_threads, "I/O thread"),
            list(&self.io_cpus),
            if self.io_shares_shard_cpus() { " (shared with shards)" } else { "" }
        )
    }
}

/// Shards under `auto` on `cpus` allowed CPUs: one per [`CORES_PER_SHARD`], at least one.
pub fn auto_shards(cpus: usize) -> usize {
    (cpus / CORES_PER_SHARD).max(1)
}

/// The CPUs this process may run on, ascending: its main thread's affinity mask (the mask it was
/// started with: pinned I/O threads and shards do not narrow it), or `0..available_parallelism`
/// if the mask cannot be read.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain bits, valid zeroed; sched_getaffinity writes at most
    // `size_of::<cpu_set_t>()` bytes into it, and CPU_ISSET reads within it (i < CPU_SETSIZE).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let main_thread = libc::getpid();
        if libc::sched_getaffinity(main_thread, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            let cpus: Vec<usize> =
                (0..libc::CPU_SETSIZE as usize).filter(|&i| libc::CPU_ISSET(i, &set)).collect();
            if !cpus.is_empty() {
                return cpus;
            }
        }
    }
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

/// Restrict the calling thread to `cpus` (an I/O thread to the layout's `io_cpus`). Errors are
/// the OS's (e.g. a CPU outside the process's mask).
pub fn pin_current_thread(cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: as in `allowed_cpus`; CPU_SET writes within the set for i < CPU_SETSIZE, checked.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus.iter().filter(|&&c| c < libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_and_io_partition_the_cpus_from_eight_up() {
        for n in 1..=64usize {
            let cpus: Vec<usize> = (0..n).collect();
            let l = Layout::plan(&cpus, 0, 0);
            assert!(!l.shard_cpus.is_empty() && l.io_threads >= 1, "{n}: {l:?}");
            assert_eq!(l.shard_cpus.len() + l.io_threads, n.max(2), "{n}: {l:?}");
            if n >= PIN_IO_FROM_CPUS {
                assert!(!l.io_shares_shard_cpus(), "{n}: {l:?}");
                assert_eq!(l.shard_cpus.len() + l.io_cpus.len(), n);
            } else {
                assert_eq!(l.io_cpus, cpus, "{n}: small machines share");
            }
        }
    }

    #[test]
    fn an_affinity_mask_with_gaps_is_followed() {
        let l = Layout::plan(&[2, 5, 7], 1, 0);
        assert_eq!((l.shard_cpus, l.io_cpus, l.io_threads), (vec![2], vec![2, 5, 7], 2));
        let many: Vec<usize> = (0..20).map(|i| i * 2).collect();
        let l = Layout::plan(&many, 1, 0);
        assert_eq!((l.shard_cpus[0], l.io_cpus[0], l.io_threads), (0, 2, 19));
        assert_eq!(Layout::plan(&[], 0, 0).shard_cpus, vec![0]);
    }

    #[test]
    fn explicit_io_threads_are_kept() {
        let l = Layout::plan(&[0, 1, 2, 3], 1, 8);
        assert_eq!((l.io_threads, &l.io_cpus[..]), (8, &[0, 1, 2, 3][..]));
        assert_eq!(
            l.describe(),
            "4 CPUs: 1 shard on CPU 0; 8 I/O threads on CPU 0,1,2,3 (shared with shards)"
        );
    }

    #[test]
    fn this_process_has_at_least_one_cpu() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        assert!(cpus.windows(2).all(|w| w[0] < w[1]));
    }
}
