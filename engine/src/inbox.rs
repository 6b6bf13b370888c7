//! What a submission ring carries and the consumer end a shard keeps per submitter (the half of
//! `ring.rs` the shards need, so what the threads share does not depend on the submitters).

use crate::permit::Permit;
use crate::shard::Arrival;
use crate::slot::Slot;
use crate::sync::AtomicBool;
use std::sync::Arc;

/// What travels through a ring: the arrival, whose completion is the caller's slot.
pub type Submission = Arrival<Arc<Slot<Permit>>>;

/// A submitter's state shared with the shards.
#[derive(Debug, Default)]
pub struct SubmitterState {
    /// True while a submission is between its shutdown check and its push.
    pub busy: AtomicBool,
}

/// The consumer end a shard keeps per submitter.
pub struct Inbox {
    /// The ring's consumer end.
    pub consumer: rtrb::Consumer<Submission>,
    /// The submitter's busy flag.
    pub state: Arc<SubmitterState>,
}
