//! The results the throughput drivers produce and the plots draw: one [`Measurement`] per
//! implementation and mode, one [`ScalingPoint`] per shard count. Plain data, so both
//! `throughput` (which fills them) and `plot` (which draws them) import it from below.

use serde::Serialize;

/// One measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// Implementation.
    pub implementation: String,
    /// `low_load`, `saturation` or `deep_queue`.
    pub mode: String,
    /// Producer threads.
    pub producers: usize,
    /// Requests in flight per producer (submitted before waiting).
    pub batch: usize,
    /// Mean queue depth while measuring (deep queue only).
    pub mean_depth: Option<f64>,
    /// Requests dispatched.
    pub requests: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// Dispatches per second (the median over rounds).
    pub req_per_s: f64,
    /// Dispatches per second of each round.
    pub rounds_req_per_s: Vec<f64>,
    /// Producer threads' CPU per request, ns (free capacity only; the median over rounds).
    pub producer_cpu_ns: Option<f64>,
    /// The rest of the process's CPU per request (the queue: shards or dispatcher), ns.
    pub queue_cpu_ns: Option<f64>,
    /// Backend-set changes made while measuring (a changing backend set only; summed over
    /// rounds, like `requests` and `seconds`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set_changes: Option<SetChanges>,
}

/// One point of the scaling curve.
#[derive(Debug, Serialize)]
pub struct ScalingPoint {
    /// Shards.
    pub shards: usize,
    /// Saturation throughput.
    pub req_per_s: f64,
    /// Low-load throughput (one request at a time).
    pub low_load_req_per_s: f64,
}

/// Counts of a backend-set controller's `set_backends` calls (`baseline::ChurnCounts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SetChanges {
    /// Calls that did what was meant (one backend added and one drained, or, for a steady set, nothing).
    pub calls: u64,
    /// Of those, the ones that left a drained backend still holding requests.
    pub draining: u64,
    /// Calls that did anything else.
    pub unexpected: u64,
}

impl SetChanges {
    /// `self - before`, field by field.
    pub fn since(self, before: SetChanges) -> SetChanges {
        SetChanges {
            calls: self.calls.saturating_sub(before.calls),
            draining: self.draining.saturating_sub(before.draining),
            unexpected: self.unexpected.saturating_sub(before.unexpected),
        }
    }

    /// `self + other`, field by field.
    pub fn plus(self, other: SetChanges) -> SetChanges {
        SetChanges {
            calls: self.calls + other.calls,
            draining: self.draining + other.draining,
            unexpected: self.unexpected + other.unexpected,
        }
    }
}

/// Requests per second `implementation` measured in `mode` (0 when it was not measured).
pub fn req_per_s_of(results: &[Measurement], mode: &str, implementation: &str) -> f64 {
    results.iter().find(|m| m.mode == mode && m.implementation == implementation).map_or(0.0, |m| m.req_per_s)
}
