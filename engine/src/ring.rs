//! Submission: a [`Submitter`] per producer thread owns one SPSC ring (rtrb) per shard.
//!
//! Registration goes over a bounded crossbeam `ArrayQueue` per shard: the new submitter pushes
//! each shard its ring's consumer end and rings the shard. A submission picks its shard by the hash
//! of the workload id, so a workload's requests and its table entry meet on one shard and the table
//! needs no lock. The cost: one very hot workload is served by one shard (its requests cannot be
//! spread), which is also what keeps its arrival order and its rate exact.
//!
//! Shutdown safety: a producer marks itself `busy` (SeqCst), then checks the engine's
//! `shutting_down` flag, pushes, and clears `busy`. A shard that has seen the flag waits for each
//! submitter's `busy` to clear before its final drain, so a submission either sees the flag and is
//! refused, or lands in a ring the shard drains. Nothing is left in a ring unanswered.

use crate::context::WorkloadContext;
use crate::inbox::{Inbox, Submission, SubmitterState};
use crate::registry::hash_workload_id;
use crate::shard::Arrival;
use crate::shared::Shared;
use crate::slot::Slot;
use crate::sync::{AtomicBool, Ordering};
use crate::ticket::Ticket;
use std::sync::Arc;

/// A request to admit.
#[derive(Clone, Debug)]
pub struct Request {
    /// Who sends it and how critical it is (criticality outside 1..=5 is treated as the default).
    pub context: WorkloadContext,
    /// Body bytes held while it is queued (0 when bodies are not buffered).
    pub bytes: u64,
}

/// Why a request could not be submitted. The request is handed back; nothing was queued.
#[derive(Debug)]
pub enum SubmitError {
    /// The engine is shutting down.
    ShuttingDown(Request),
    /// The ring to its shard is full (the shard is behind), or too many submitters are registered.
    Backpressure(Request),
}

impl std::fmt::Display for SubmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubmitError::ShuttingDown(_) => f.write_str("the engine is shutting down"),
            SubmitError::Backpressure(_) => f.write_str("submission ring full: the shard is behind"),
        }
    }
}

impl std::error::Error for SubmitError {}

/// Why a submitter could not register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// The engine is shutting down.
    ShuttingDown,
    /// `max_submitters` are registered already.
    TooMany,
}

/// Pick the shard for a workload hash (bits 20..52: independent of the bits the tables index by).
#[inline]
pub fn shard_of(hash: u64, shards: usize) -> usize {
    ((((hash >> 20) & 0xffff_ffff) * shards as u64) >> 32) as usize
}

/// Registers with every shard and submits from one thread. Not `Clone` (one ring end per shard
/// per producer); `Send`, so it may move to another thread, but it is meant to stay on one.
pub struct Submitter {
    shared: Arc<Shared>,
    /// One producer end per shard, indexed by shard.
    producers: Box<[rtrb::Producer<Submission>]>,
    state: Arc<SubmitterState>,
}

impl Submitter {
    /// Register a new submitter with every shard of `shared`.
    pub(crate) fn register(shared: Arc<Shared>) -> Result<Submitter, RegisterError> {
        if shared.shutting_down.load(Ordering::SeqCst) {
            return Err(RegisterError::ShuttingDown);
        }
        let limit = shared.config.max_submitters;
        shared
            .submitters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .map_err(|_| RegisterError::TooMany)?;
        let state = Arc::new(SubmitterState::default());
        let mut producers = Vec::with_capacity(shared.shards());
        for shard in 0..shared.shards() {
            let (producer, consumer) = rtrb::RingBuffer::new(shared.config.ring_capacity);
            producers.push(producer);
            let inbox = Inbox { consumer, state: state.clone() };
            // The queue holds max_submitters entries; it can only be full of registrations a shard
            // has not taken yet, i.e. after shutdown stopped the shards.
            let queued = shared.registrations[shard].push(inbox).is_ok();
            shared.gate.shard(shard).doorbell.ring();
            if !queued {
                shared.submitters.fetch_sub(1, Ordering::AcqRel);
                return Err(RegisterError::ShuttingDown);
            }
        }
        let submitter = Submitter { shared, producers: producers.into_boxed_slice(), state };
        // Registered before the flag, or refused: a shard that saw the flag drains the queue after.
        if submitter.shared.shutting_down.load(Ordering::SeqCst) {
            return Err(RegisterError::ShuttingDown);
        }
        Ok(submitter)
    }

    /// Submit `request`; the [`Ticket`] resolves to its one outcome. Never blocks: a full ring is
    /// [`SubmitError::Backpressure`].
    pub fn submit(&mut self, request: Request) -> Result<Ticket, SubmitError> {
        let shared = &*self.shared;
        if !enter(&self.state, &shared.shutting_down) {
            return Err(SubmitError::ShuttingDown(request));
        }
        let hash = hash_workload_id(&request.context.workload_id);
        let shard = shard_of(hash, self.producers.len());
        let slot = Arc::new(Slot::new());
        let ctx = &request.context;
        let criticality = if (1..=5).contains(&ctx.criticality) {
            ctx.criticality
        } else {
            shared.default_criticality.load(Ordering::Relaxed)
        };
        let arrival = Arrival {
            workload_id: ctx.workload_id.clone(),
            hash,
            criticality,
            ttl: ctx.ttl,
            bytes: request.bytes,
            arrived_ns: shared.clock.now_ns(),
            completion: slot.clone(),
        };
        let pushed = self.producers[shard].push(arrival).is_ok();
        leave(&self.state);
        if !pushed {
            return Err(SubmitError::Backpressure(request));
        }
        shared.gate.shard(shard).doorbell.ring();
        Ok(Ticket::new(slot, self.shared.clone(), shard))
    }

    /// The engine this submitter feeds.
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for Submitter {
    fn drop(&mut self) {
        // The shards drop the consumer ends once they are abandoned and drained.
        self.shared.submitters.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitter").field("shards", &self.producers.len()).finish()
    }
}

/// Mark `state` busy and report whether the engine still takes work (the Dekker half of the
/// shutdown protocol; see the module docs).
pub(crate) fn enter(state: &SubmitterState, shutting_down: &AtomicBool) -> bool {
    state.busy.store(true, Ordering::SeqCst);
    if shutting_down.load(Ordering::SeqCst) {
        state.busy.store(false, Ordering::Release);
        return false;
    }
    true
}

/// Clear the busy mark.
pub(crate) fn leave(state: &SubmitterState) {
    state.busy.store(false, Ordering::Release);
}
