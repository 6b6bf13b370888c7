//! What happens to a request: exactly one [`Outcome`] per submitted request, always.

/// Why a request was refused before it was queued, other than capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OtherReason {
    /// The engine is shutting down and takes no new work.
    ShuttingDown,
    /// No backend exists that could ever serve it.
    NoEndpoints,
    /// Its TTL had already run out when it reached its shard.
    ExpiredOnArrival,
}

/// The single fate of a submitted request.
///
/// "Rejected" means it never entered a queue; "Evicted" means it was queued and then left
/// without being dispatched.
///
/// ```
/// use flowgate_engine::Outcome;
/// assert_eq!(Outcome::EvictedDisplaced.http_status(), Some(429));
/// assert_eq!(Outcome::EvictedTtl.drop_reason(), Some("ttl-expired"));
/// assert_eq!(Outcome::Dispatched.drop_reason(), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Given a model-server slot.
    Dispatched,
    /// Refused at admission: the queue was full and it did not outscore the worst queued request.
    RejectedCapacity,
    /// Refused at admission for another reason.
    RejectedOther(OtherReason),
    /// Waited past its TTL.
    EvictedTtl,
    /// Its caller gave up (ticket dropped, stream closed).
    EvictedCancelled,
    /// A better request took its place in a full queue.
    EvictedDisplaced,
    /// The engine shut down while it was queued.
    EvictedShutdown,
}

impl Outcome {
    /// Every outcome, for metrics that must pre-register one series each.
    pub const ALL: [Outcome; 9] = [
        Outcome::Dispatched,
        Outcome::RejectedCapacity,
        Outcome::RejectedOther(OtherReason::ShuttingDown),
        Outcome::RejectedOther(OtherReason::NoEndpoints),
        Outcome::RejectedOther(OtherReason::ExpiredOnArrival),
        Outcome::EvictedTtl,
        Outcome::EvictedCancelled,
        Outcome::EvictedDisplaced,
        Outcome::EvictedShutdown,
    ];

    /// A short, stable label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Dispatched => "dispatched",
            Outcome::RejectedCapacity => "rejected_capacity",
            Outcome::RejectedOther(OtherReason::ShuttingDown) => "rejected_shutting_down",
            Outcome::RejectedOther(OtherReason::NoEndpoints) => "rejected_no_endpoints",
            Outcome::RejectedOther(OtherReason::ExpiredOnArrival) => "rejected_expired",
            Outcome::EvictedTtl => "evicted_ttl",
            Outcome::EvictedCancelled => "evicted_cancelled",
            Outcome::EvictedDisplaced => "evicted_displaced",
            Outcome::EvictedShutdown => "evicted_shutdown",
        }
    }

    /// The `x-flowgate-drop-reason` value for a request that was not dispatched.
    pub fn drop_reason(self) -> Option<&'static str> {
        match self {
            Outcome::Dispatched | Outcome::EvictedCancelled => None,
            Outcome::RejectedCapacity => Some("capacity"),
            Outcome::EvictedDisplaced => Some("displaced"),
            Outcome::EvictedTtl | Outcome::RejectedOther(OtherReason::ExpiredOnArrival) => {
                Some("ttl-expired")
            }
            Outcome::EvictedShutdown | Outcome::RejectedOther(OtherReason::ShuttingDown) => {
                Some("shutting-down")
            }
            Outcome::RejectedOther(OtherReason::NoEndpoints) => Some("no-endpoints"),
        }
    }

    /// The HTTP status an immediate response carries: 429 for capacity and displacement, 503
    /// otherwise; `None` for dispatched and cancelled requests (nobody to answer).
    pub fn http_status(self) -> Option<u16> {
        match self {
            Outcome::Dispatched | Outcome::EvictedCancelled => None,
            Outcome::RejectedCapacity | Outcome::EvictedDisplaced => Some(429),
            _ => Some(503),
        }
    }
}
