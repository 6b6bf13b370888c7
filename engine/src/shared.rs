//! What the shards, submitters, tickets and the engine handle share: one [`Shared`] per engine.

use crate::budget::QueueBudget;
use crate::clock::Clock;
use crate::config::EngineConfig;
use crate::gate::Gate;
use crate::inbox::Inbox;
use crate::outcome::Outcome;
use crate::permit::Permit;
use crate::slot::Slot;
use crate::sync::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Mutex, Ordering};
use crossbeam_queue::ArrayQueue;
use std::sync::Arc;

/// The decision a `Ticket` (`ticket.rs`) resolves to.
pub type Decision = crate::slot::Decision<Permit>;

/// Most cancellations waiting for one shard; past it, a cancelled request is dropped lazily (at
/// its dispatch, expiry or the next rescore pass), still with exactly one outcome.
pub const CANCEL_QUEUE_CAPACITY: usize = 65_536;

/// Most cross-shard displacements waiting for one shard; past it, a newcomer that could only
/// displace in another shard is refused (`RejectedCapacity`).
pub const DISPLACE_QUEUE_CAPACITY: usize = 1024;

/// Outcome counters of one shard, written by that shard only.
#[derive(Debug, Default)]
pub(crate) struct OutcomeCounters(pub(crate) [AtomicU64; Outcome::ALL.len()]);

impl OutcomeCounters {
    pub(crate) fn count(&self, outcome: Outcome) {
        let i = Outcome::ALL.iter().position(|o| *o == outcome).expect("every outcome is listed");
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything the shards, submitters, tickets and the engine handle share.
pub struct Shared {
    /// Unique per engine in this process (keys the per-thread submitters).
    pub(crate) id: u64,
    /// The configuration the engine started with: what the restart-only fields come from.
    pub(crate) config: EngineConfig,
    /// The running configuration, replaced whole by `Engine::reconfigure` (which holds the lock
    /// while it applies one, so reloads never interleave); shards copy it when
    /// `config_generation` moves.
    pub(crate) live: Mutex<Arc<EngineConfig>>,
    /// Bumped (release) after each new `live` is stored; a shard that reads a new value (acquire)
    /// locks `live` and applies it at its next pass.
    pub(crate) config_generation: AtomicU64,
    /// `workloads.default_criticality` of the running configuration, for submitters.
    pub(crate) default_criticality: AtomicU8,
    pub(crate) clock: Clock,
    pub(crate) gate: Arc<Gate>,
    pub(crate) budget: Arc<QueueBudget>,
    /// New submitters' ring ends, per shard; bounded by `max_submitters`.
    pub(crate) registrations: Box<[ArrayQueue<Inbox>]>,
    /// Cancelled requests to drop, per shard.
    pub(crate) cancels: Box<[ArrayQueue<Arc<Slot<Permit>>>]>,
    /// Cross-shard displacements to carry out, per shard: evict the tail if it scores below this.
    pub(crate) displacements: Box<[ArrayQueue<f64>]>,
    /// Set once by [`Engine::shutdown`].
    pub(crate) shutting_down: AtomicBool,
    /// Registered submitters; ≤ `max_submitters`.
    pub(crate) submitters: AtomicUsize,
    pub(crate) outcomes: Box<[OutcomeCounters]>,
    /// The CPU each shard's executor is pinned to.
    pub(crate) shard_cpus: Box<[usize]>,
}

impl Shared {
    /// Number of shards.
    pub(crate) fn shards(&self) -> usize {
        self.registrations.len()
    }

    /// The CPU shard `shard` is pinned to.
    pub(crate) fn shard_cpu(&self, shard: usize) -> usize {
        self.shard_cpus[shard]
    }

    /// A ticket was cancelled while pending: tell its shard to drop the request now.
    pub(crate) fn request_cancel(&self, shard: usize, slot: Arc<Slot<Permit>>) {
        // When the queue is full the request is still marked cancelled and leaves lazily.
        if self.cancels[shard].push(slot).is_ok() {
            self.gate.shard(shard).doorbell.ring();
        }
    }
}
