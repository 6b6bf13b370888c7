//! The backend set changing under traffic ([`BackendTable::set`]): one controller at a time
//! (reload, discovery) adds, updates, drains and brings back backends while dispatch goes on.

use super::{BackendConfig, BackendId, BackendTable, Load, GENERATIONS};
use crate::occupancy::{Occupancy, SlotState};
use crate::sync::Ordering;

/// What [`BackendTable::set`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendChanges {
    /// Backends written in (new, or back from draining).
    pub added: Vec<BackendId>,
    /// Backends already in the set whose `max_inflight` changed.
    pub updated: Vec<BackendId>,
    /// Backends that left the set (draining, or freed at once when idle).
    pub drained: Vec<String>,
    /// Backends that found no free slot (the table holds `max_backends`).
    pub refused: Vec<String>,
}

impl BackendChanges {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.updated.is_empty() && self.drained.is_empty() && self.refused.is_empty()
    }
}

impl BackendTable {
    /// Controller side: make the set of backends `desired` (deduplicated by address; the first
    /// entry of an address wins). A backend not in it drains; one already in it keeps its slot and
    /// takes the new `max_inflight`; a draining one that is back is `Active` again; a new one is
    /// written into the lowest free slot. The caller wakes whoever may now dispatch.
    pub fn set(&self, desired: &[BackendConfig]) -> BackendChanges {
        let _control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let mut changes = BackendChanges::default();
        let high = self.high.load(Ordering::Acquire);
        // 1. Who is where now (addresses are stable under the lock).
        let mut slot_of: hashbrown::HashMap<String, usize> = hashbrown::HashMap::with_capacity(high);
        for (i, b) in self.backends[..high].iter().enumerate() {
            if b.occupancy().state() != SlotState::Free {
                // SAFETY: under `control`, the only writer's lock.
                let address = b.address.with(|p| unsafe { (*p).clone() });
                slot_of.insert(address, i);
            }
        }
        let mode = self.lease.get();
        let mut wanted: hashbrown::HashMap<&str, u32> = hashbrown::HashMap::with_capacity(desired.len());
        for d in desired {
            wanted.entry(d.address.as_str()).or_insert(d.max_inflight);
        }
        // 2. Drain those that left.
        for (address, &i) in &slot_of {
            if !wanted.contains_key(address.as_str()) {
                let (before, _) =
                    self.backends[i].update_occupancy(|o| Some(o.drained())).expect("drain applies");
                if before.state() == SlotState::Active {
                    changes.drained.push(address.clone());
                }
            }
        }
        // 3. Keep, update, bring back, or write in, in `desired` order.
        let mut next_free = 0usize;
        let mut seen: hashbrown::HashSet<&str> = hashbrown::HashSet::with_capacity(desired.len());
        for d in desired {
            if !seen.insert(d.address.as_str()) {
                continue;
            }
            let max = d.max_inflight;
            if let Some(&i) = slot_of.get(&d.address) {
                let b = &self.backends[i];
                let old_max = b.configured.swap(max, Ordering::Relaxed);
                // A drained slot may have been freed since step 1 (its last request ended). In
                // leased mode it keeps its lease (at most the new max) until the next grant.
                let kept = b.update_occupancy(|o| {
                    (o.state() != SlotState::Free).then(|| {
                        let (cap, leased) = mode.cap(max, o.leased().then_some(o.max()));
                        o.reactivated(max).with_cap(cap, leased)
                    })
                });
                if let Ok((before, _)) = kept {
                    let id = BackendId { index: i as u32, generation: b.load().generation() };
                    if before.state() == SlotState::Draining {
                        changes.added.push(id);
                    } else if old_max != max {
                        changes.updated.push(id);
                    }
                    continue;
                }
            }
            // A new backend: the lowest free slot.
            while next_free < self.backends.len()
                && self.backends[next_free].occupancy().state() != SlotState::Free
            {
                next_free += 1;
            }
            let Some(b) = self.backends.get(next_free) else {
                changes.refused.push(d.address.clone());
                continue;
            };
            let generation = (b.load().generation() + 1) % GENERATIONS;
            // SAFETY: the slot is `Free` (nobody holds a place on it, and nobody can take one until
            // the store below publishes it) and we hold `control`.
            b.address.with_mut(|p| unsafe { d.address.clone_into(&mut *p) });
            b.waiting.store(0.0, Ordering::Relaxed);
            b.running.store(0.0, Ordering::Relaxed);
            b.kv.store(0.0, Ordering::Relaxed);
            b.scraped_ns.store(u64::MAX, Ordering::Relaxed);
            b.configured.store(max, Ordering::Relaxed);
            b.queue_share.store(self.queue_share(mode, None), Ordering::Relaxed);
            b.load.store(Load::never_scraped(generation).bits(), Ordering::Release);
            let (cap, leased) = mode.cap(max, None);
            b.occupancy.store(Occupancy::active(max).with_cap(cap, leased).bits(), Ordering::Release);
            if next_free >= high {
                // Only this (locked) controller writes `high`.
                self.high.store(next_free + 1, Ordering::Release);
            }
            changes.added.push(BackendId { index: next_free as u32, generation });
            next_free += 1;
        }
        let active = self.used().iter().filter(|b| b.occupancy().state() == SlotState::Active).count();
        self.active.store(active as u32, Ordering::Relaxed);
        changes
    }
}
