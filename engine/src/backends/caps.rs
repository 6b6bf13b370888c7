//! Cluster mode's side of the backend table ([`crate::lease`]): the sync task rewrites each
//! backend's cap (its lease of `max_inflight`) in the occupancy word and its queue share of
//! `queue_depth_threshold` in the load word, by compare-and-swap, so dispatch never sees a torn
//! lease and reads nothing it did not read standalone.

use super::{BackendId, BackendTable, Load, WHOLE_QUEUE};
use crate::lease::{waiting_for_share, CapMode};
use crate::load::COUNT_MAX;
use crate::occupancy::SlotState;
use crate::sync::Ordering;

/// One good sync's grants: per backend, its lease of `max_inflight` (`slots`) and its share of
/// `queue_depth_threshold` (`queue`, metrics detectors only). A capped backend missing from
/// `slots`, or one missing from `queue` while metrics gate, gets 0 until the next grant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Grants<'a> {
    /// `(backend, slots)`, each at most its `max_inflight`.
    pub slots: &'a [(BackendId, u32)],
    /// `(backend, share)`, each at most `queue_depth_threshold`.
    pub queue: &'a [(BackendId, u32)],
}

/// The grant of slot `index` (generation `generation`) in `grants`.
fn find(grants: &[(BackendId, u32)], index: usize, generation: u32) -> Option<u32> {
    grants.iter().find(|(id, _)| id.index as usize == index && id.generation == generation).map(|(_, n)| *n)
}

impl BackendTable {
    /// The cluster cap rule now.
    pub fn cap_mode(&self) -> CapMode {
        self.lease.get()
    }

    /// The queue share `mode` gives a backend with grant `granted`.
    pub(super) fn queue_share(&self, mode: CapMode, granted: Option<u32>) -> u32 {
        match mode {
            CapMode::Standalone => WHOLE_QUEUE,
            _ => mode.cap(self.rules.threshold.load(Ordering::Relaxed), granted).0,
        }
    }

    /// `queue_depth_threshold` when a metrics detector gates dispatch, `None` otherwise.
    pub fn queue_depth_threshold(&self) -> Option<u32> {
        let rules = self.rules();
        rules.metrics.then_some(rules.threshold)
    }

    /// This replica's queue share of `queue_depth_threshold` on slot `i` (`None` standalone).
    pub fn queue_share_of(&self, i: usize) -> Option<u32> {
        let share = self.backends[i].queue_share.load(Ordering::Relaxed);
        (share != WHOLE_QUEUE).then_some(share)
    }

    /// Rewrite every backend's cap and queue share by `mode` (`grants` in leased mode); `true` if
    /// some backend's room grew.
    fn apply_caps(&self, mode: CapMode, grants: Grants<'_>) -> bool {
        let _control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        self.lease.set(mode);
        let threshold = self.rules.threshold.load(Ordering::Relaxed);
        let mut grew = false;
        for (i, b) in self.used().iter().enumerate() {
            let generation = b.load().generation();
            let max = b.configured.load(Ordering::Relaxed);
            let (cap, leased) = mode.cap(max, find(grants.slots, i, generation));
            let changed = b.update_occupancy(|o| {
                let next = o.with_cap(cap, leased);
                (o.state() != SlotState::Free && next != o).then_some(next)
            });
            if let Ok((before, after)) = changed {
                grew |= after.room(true) > before.room(true);
            }
            // The queue share: store it, then rescale the word's waiting count from the last
            // scrape's, read inside the CAS (a scrape that published before our CAS stored its
            // count before its CAS, which our CAS's acquire then sees; one after us looks at the
            // share again and redoes).
            let share = self.queue_share(mode, find(grants.queue, i, generation));
            if b.queue_share.swap(share, Ordering::AcqRel) != share {
                let rescaled = b.load.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
                    let load = Load::from_bits(bits);
                    let waiting = b.waiting.load(Ordering::Relaxed).ceil().min(COUNT_MAX as f64) as u64;
                    (load.generation() == generation)
                        .then(|| load.with_waiting(waiting_for_share(waiting, share, threshold)).bits())
                });
                if let Ok(before) = rescaled {
                    let before = Load::from_bits(before);
                    grew |= b.load().room(threshold) > before.room(threshold);
                }
            }
        }
        grew
    }

    /// Cluster side: this replica's grants from a good sync, valid until `deadline_ns` (engine
    /// clock). Each cap and each share is one CAS on the backend's word. `true` if some
    /// backend's room grew: the caller wakes whoever may now dispatch.
    pub fn grant_leases(&self, grants: Grants<'_>, deadline_ns: u64) -> bool {
        self.apply_caps(CapMode::Leased { deadline_ns }, grants)
    }

    /// Cluster side: local mode (Redis unreachable): every capped backend
    /// `max(1, ⌊max_inflight / replicas⌋)`, every queue share `max(1, ⌊threshold / replicas⌋)`.
    /// `true` if some backend's room grew.
    pub fn local_caps(&self, replicas: u32) -> bool {
        self.apply_caps(CapMode::Local { replicas }, Grants::default())
    }

    /// Cluster side: if leases are on and their deadline is past at `now_ns`, lapse them to local
    /// mode with `replicas` ([`local_caps`](Self::local_caps)); `true` if they lapsed now.
    pub fn lapse_leases(&self, now_ns: u64, replicas: u32) -> bool {
        match self.lease.get() {
            CapMode::Leased { deadline_ns } if now_ns >= deadline_ns => {
                self.local_caps(replicas);
                true
            }
            _ => false,
        }
    }
}
