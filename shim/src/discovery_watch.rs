//! `discovery.file`: the endpoints file, read once before serving ([`read_once`]) and then
//! watched ([`spawn_file_watcher`]). Its format is [`crate::discovery_file`]'s.
//!
//! With `watch: true` the file is polled every [`FILE_POLL_INTERVAL`] (250 ms): a `stat` (which
//! follows symlinks) compares length, mtime, inode and device with the last poll; when they moved
//! (or every [`FULL_READ_EVERY_POLLS`] polls, for a same-size rewrite within one mtime tick) the
//! file is read and compared byte for byte with the version last evaluated. A new version is
//! applied once two consecutive polls read the same bytes, so a writer that truncates and
//! rewrites in place is not caught half-way; a change is therefore picked up within about 0.5 s
//! (the target is 1 s).
//!
//! Why polling and not inotify (the `notify` crate): a Kubernetes ConfigMap volume updates by
//! swapping a `..data` symlink to a new directory, so the watched file's inode never changes in
//! place: an inotify watch on the file sees nothing, and one on the directory must be re-armed
//! and filtered for the swap, with per-platform quirks (and no inotify at all on some
//! filesystems). A `stat` every 250 ms of one small file is cheap, bounded, and sees every way a
//! file can change (rename over it, symlink swap, in-place write, delete and recreate) the same
//! way. The poll's file I/O runs on tokio's blocking pool, never on a runtime worker.
//!
//! A file that disappears keeps the last good set (one warning per disappearance); when it comes
//! back it is read like any new version.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::discovery::{publish, DiscoveredBackend, FileDiscovery, SourceEvent, SourceHandle, StatusSender};
use crate::discovery_file::{parse_endpoints, FileError, Parsed, MAX_DISCOVERY_FILE_BYTES};

/// How often a watched file is looked at.
pub const FILE_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A watched file is read at least once every this many polls, even when its metadata did not move.
pub const FULL_READ_EVERY_POLLS: u32 = 8;

/// What identifies one version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let inode = (0, 0);
        Stamp { len: meta.len(), modified: meta.modified().ok(), inode }
    }
}

/// The file as read once: its set, and what the watcher needs to not read it again.
#[derive(Clone, Debug)]
pub struct FileRead {
    /// What the file says.
    pub parsed: Parsed,
    stamp: Stamp,
    content: Vec<u8>,
}

/// Read and parse the file once (before serving starts), logging skipped entries. A missing,
/// unreadable or refused file is an error: the caller decides whether to start anyway.
pub async fn read_once(cfg: &FileDiscovery) -> Result<FileRead, FileError> {
    let path = cfg.path.clone();
    tokio::task::spawn_blocking(move || read_once_blocking(&path))
        .await
        .unwrap_or_else(|e| Err(FileError::Unreadable(format!("reader task failed: {e}"))))
}

/// [`read_once`] for a caller outside the runtime.
pub fn read_once_blocking(path: &Path) -> Result<FileRead, FileError> {
    let (stamp, content) = read_file(path)?;
    let parsed = parse_endpoints(&content)?;
    log_parsed(path, &parsed);
    Ok(FileRead { parsed, stamp, content })
}

/// Stat and read, at most [`MAX_DISCOVERY_FILE_BYTES`] + 1 bytes.
fn read_file(path: &Path) -> Result<(Stamp, Vec<u8>), FileError> {
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => FileError::Missing,
        _ => FileError::Unreadable(e.to_string()),
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let stamp = Stamp::of(&file.metadata().map_err(io)?);
    if stamp.len > MAX_DISCOVERY_FILE_BYTES {
        return Err(FileError::TooLarge(stamp.len));
    }
    let mut content = Vec::with_capacity(stamp.len as usize);
    file.take(MAX_DISCOVERY_FILE_BYTES + 1).read_to_end(&mut content).map_err(io)?;
    if content.len() as u64 > MAX_DISCOVERY_FILE_BYTES {
        return Err(FileError::TooLarge(content.len() as u64));
    }
    Ok((stamp, content))
}

fn log_parsed(path: &Path, parsed: &Parsed) {
    let file = path.display();
    for s in &parsed.skipped {
        tracing::warn!(%file, index = s.index, name = s.name.as_deref().unwrap_or(""), reason = %s.reason,
            "discovery file: endpoint skipped");
    }
    if parsed.skipped_total > parsed.skipped.len() {
        tracing::warn!(%file, more = parsed.skipped_total - parsed.skipped.len(), "discovery file: more endpoints skipped");
    }
    if parsed.ignored_total > 0 {
        tracing::info!(%file, keys = %parsed.ignored.join(", "), total = parsed.ignored_total,
            "discovery file: unknown keys ignored");
    }
}

/// Start watching (when `cfg.watch`; otherwise the task ends at once). `first` is what
/// [`read_once`] gave, if anything: its set is published and that version is not read again.
pub fn spawn_file_watcher(
    cfg: FileDiscovery,
    first: Option<FileRead>,
    tx: watch::Sender<Arc<Vec<DiscoveredBackend>>>,
    cancel: CancellationToken,
) -> SourceHandle {
    let (status, rx) = StatusSender::new();
    let mut poller = Poller {
        path: cfg.path.clone(),
        tx,
        status,
        stamp: first.as_ref().map(|f| f.stamp),
        evaluated: None,
        pending: None,
        polls_since_read: 0,
        trouble: None,
    };
    if let Some(f) = first {
        let backends = f.parsed.backends.len();
        let published = publish(&poller.tx, f.parsed.backends);
        poller.report(SourceEvent::Applied { backends, skipped: f.parsed.skipped_total, published });
        poller.evaluated = Some(f.content);
    }
    let watch = cfg.watch;
    let task = tokio::spawn(async move {
        if !watch {
            return;
        }
        let mut tick = tokio::time::interval(FILE_POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            poller = match tokio::task::spawn_blocking(move || {
                poller.poll();
                poller
            })
            .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "discovery file: poll failed; watcher stopped");
                    return;
                }
            };
        }
    });
    SourceHandle { task, status: rx }
}

/// The watcher's state between polls (moved into the blocking pool for each poll).
struct Poller {
    path: PathBuf,
    tx: watch::Sender<Arc<Vec<DiscoveredBackend>>>,
    status: StatusSender,
    /// Metadata at the last poll.
    stamp: Option<Stamp>,
    /// The bytes last evaluated (applied or refused).
    evaluated: Option<Vec<u8>>,
    /// New bytes seen once, waiting for a second read to confirm them.
    pending: Option<Vec<u8>>,
    polls_since_read: u32,
    /// What is wrong now, if anything (logged once when it starts).
    trouble: Option<FileError>,
}

impl Poller {
    fn report(&self, event: SourceEvent) {
        self.status.report(event);
    }

    /// Log and report why the file gave no set.
    fn refuse(&self, e: &FileError) {
        let file = self.path.display();
        match e {
            FileError::Missing => tracing::warn!(%file, "discovery file: gone; keeping the last good set"),
            e => tracing::warn!(%file, error = %e, "discovery file: refused; keeping the last good set"),
        }
        self.report(match e {
            FileError::Missing => SourceEvent::Missing,
            e => SourceEvent::Refused(e.to_string()),
        });
    }

    /// A problem reaching the file (missing, unreadable, too large): logged once per streak.
    fn trouble(&mut self, e: FileError) {
        if self.trouble.as_ref() != Some(&e) {
            self.refuse(&e);
            self.trouble = Some(e);
        }
    }

    fn poll(&mut self) {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) => {
                self.stamp = None;
                self.pending = None;
                return self.trouble(match e.kind() {
                    std::io::ErrorKind::NotFound => FileError::Missing,
                    _ => FileError::Unreadable(e.to_string()),
                });
            }
        };
        let stamp = Stamp::of(&meta);
        let moved = self.stamp != Some(stamp);
        self.stamp = Some(stamp);
        self.polls_since_read += 1;
        if !moved && self.pending.is_none() && self.polls_since_read < FULL_READ_EVERY_POLLS {
            return;
        }
        self.polls_since_read = 0;
        let content = match read_file(&self.path) {
            Ok((_, c)) => c,
            Err(e) => {
                self.pending = None;
                return self.trouble(e);
            }
        };
        if self.evaluated.as_deref() == Some(&content[..]) {
            self.pending = None;
            if self.trouble.take().is_some() {
                tracing::info!(file = %self.path.display(), "discovery file: readable again, unchanged");
                self.report(SourceEvent::Unchanged);
            }
            return;
        }
        if self.pending.as_deref() != Some(&content[..]) {
            self.pending = Some(content);
            return;
        }
        self.pending = None;
        let result = parse_endpoints(&content);
        self.evaluated = Some(content);
        self.trouble = None;
        match result {
            Ok(parsed) => {
                log_parsed(&self.path, &parsed);
                let (backends, skipped) = (parsed.backends.len(), parsed.skipped_total);
                let published = publish(&self.tx, parsed.backends);
                if published {
                    tracing::info!(file = %self.path.display(), backends, skipped, "discovery file: new set");
                }
                self.report(SourceEvent::Applied { backends, skipped, published });
            }
            // Every refused version is reported once (it is not evaluated again).
            Err(e) => self.refuse(&e),
        }
    }
}
