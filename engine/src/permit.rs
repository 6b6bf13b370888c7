//! A [`Permit`]: one held backend slot, for one dispatched request. Dropping it gives the slot
//! back to the [`Gate`] and releases the workload's active count.

use crate::gate::{Gate, Place};
use crate::registry::WorkloadEntry;
use crate::sync::{AtomicU64, Ordering};
use std::sync::Arc;

/// A held backend slot. Dropping it frees the slot, releases the workload's active count and wakes
/// the best waiting shard. Not `Clone`: one permit, one slot.
pub struct Permit {
    gate: Arc<Gate>,
    /// The backend place this is. Invariant: held (taken, not given back) for the permit's life,
    /// so the backend's slot cannot be freed or rewritten meanwhile.
    place: Place,
    workload: Arc<WorkloadEntry>,
    /// Weighted tokens reserved from the workload's token quota for this request
    /// ([`QuotaState::reserve`](crate::quota::QuotaState::reserve)); settled once, by the charge
    /// (which takes it, leaving 0) or else by the drop (which gives it back).
    reserved_tokens: AtomicU64,
}

impl Permit {
    /// Wrap a slot reserved by [`Gate::try_acquire`] for a request of `workload` that reserved
    /// `reserved_tokens` of its token quota (0 if none).
    pub fn new(gate: Arc<Gate>, place: Place, workload: Arc<WorkloadEntry>, reserved_tokens: u64) -> Self {
        Self { gate, place, workload, reserved_tokens: AtomicU64::new(reserved_tokens) }
    }

    /// Slot index of the chosen backend in the backend table.
    pub fn backend_index(&self) -> usize {
        self.place.backend as usize
    }

    /// `ip:port` of the chosen backend.
    pub fn address(&self) -> &str {
        // SAFETY: the permit holds its place until it drops (the field's invariant).
        unsafe { self.gate.address_held(self.place.backend) }
    }

    /// The workload it was dispatched for.
    pub fn workload_id(&self) -> &str {
        self.workload.id()
    }

    /// Charge the request's usage to its workload (token totals, token rate, VTC counter), now;
    /// returns the weighted cost. Call once, when the usage is known (the response's end).
    pub fn charge(&self, prompt_tokens: u64, completion_tokens: u64) -> u64 {
        let reserved = self.reserved_tokens.swap(0, Ordering::Relaxed);
        self.workload.charge_reserved(
            self.gate.clock().coarse_now_ns(),
            prompt_tokens,
            completion_tokens,
            reserved,
        )
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        // Never charged: its reservation goes back (a request whose usage nobody read).
        self.workload.quota().give_back(self.reserved_tokens.swap(0, Ordering::Relaxed));
        // Last activity needs ms, not ns: the coarse clock spares the caller a clock read.
        self.workload.release(self.gate.clock().coarse_now_ns());
        self.gate.release(self.place);
        // Released, then look: a shard parking this workload at the same time either sees the
        // release or has set the flag we read (both sides fence; see `Shard::settle_head`).
        crate::sync::fence(crate::sync::Ordering::SeqCst);
        let quota = self.workload.quota();
        if quota.parked() {
            self.gate.shard(quota.shard()).wake_for_quota();
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("backend", &self.address()).finish()
    }
}
