//! Child processes of the bench: none outlives it.

use std::io;
use std::process::Command;

/// Make `cmd`'s child get `SIGKILL` when the thread that spawns it (this process's main thread)
/// ends, so no child outlives the bench, even one killed by a signal.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl(2), which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
