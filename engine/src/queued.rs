//! A request at its shard: what arrives ([`Arrival`]), what the heap holds while it waits
//! ([`Queued`]), and what leaves with its one outcome ([`Done`]). The shard (`crate::shard`)
//! moves a request from one to the next; these are plain data.

use crate::outcome::Outcome;
use crate::quota::Remaining;
use crate::registry::WorkloadEntry;
use std::sync::Arc;
use std::time::Duration;

/// A request arriving at its shard.
#[derive(Debug)]
pub struct Arrival<C> {
    /// Workload id (already validated by [`crate::context`]).
    pub workload_id: Arc<str>,
    /// `hash_workload_id(workload_id)`, computed once by the submitter.
    pub hash: u64,
    /// Criticality 1..=5, after caps.
    pub criticality: u8,
    /// Per-request TTL; it can only shorten the configured default.
    pub ttl: Option<Duration>,
    /// Body bytes held while queued.
    pub bytes: u64,
    /// When it was submitted, ns since the engine epoch; its wait counts from here.
    pub arrived_ns: u64,
    /// Whoever must hear the outcome.
    pub completion: C,
}

/// A queued request, as the heap holds it.
#[derive(Debug)]
pub struct Queued<C> {
    /// Whoever must hear the outcome.
    pub completion: C,
    /// Its workload's counters; `active` counts this request while it is queued.
    pub workload: Arc<WorkloadEntry>,
    /// Submission time, ns since epoch.
    pub arrived_ns: u64,
    /// Where its wait for aging starts, ns since epoch: its arrival, or when it was last
    /// unparked. Time parked behind its own workload's quota does not age it (else it would come
    /// back ahead of everyone who waited for capacity meanwhile, and the quota would not isolate).
    pub aging_from_ns: u64,
    /// Eviction time for TTL, ns since epoch.
    pub deadline_ns: u64,
    /// Criticality 1..=5.
    pub criticality: u8,
    /// Weighted tokens it reserved from its workload's token quota at admission (a `reject`
    /// quota), 0 if none: handed to its permit at dispatch, given back if it leaves otherwise.
    pub reserved_tokens: u64,
}

/// A request leaving the shard, with its one outcome.
#[derive(Debug)]
pub struct Done<C> {
    /// Whoever must hear the outcome.
    pub completion: C,
    /// What happened.
    pub outcome: Outcome,
    /// Its workload. For `Dispatched`, `active` still counts the request: the caller releases it
    /// when the request finishes; for every other outcome it was already released.
    pub workload: Arc<WorkloadEntry>,
    /// Criticality it was queued with.
    pub criticality: u8,
    /// Time from submission to this outcome, ns.
    pub queued_ns: u64,
    /// Refused for its workload's `reject` quota: the time until the workload may send again, ns.
    pub quota_retry_ns: Option<u64>,
    /// Dispatched under a quota: what is left of it.
    pub remaining: Option<Remaining>,
    /// Dispatched under a token quota: the weighted tokens reserved for it, which its permit's
    /// charge settles (or its drop gives back). 0 for every other outcome.
    pub reserved_tokens: u64,
}
