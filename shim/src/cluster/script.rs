//! The sync's one round trip: the keys, the Lua script (`sync.lua`), the [`Report`] a replica
//! sends and the [`View`] it gets back.
//!
//! Keys of pool `P` (one hash tag, `{P}`, so a pool lives in one Redis Cluster slot and the
//! script may touch all of it):
//!
//! | key | type | written by | content |
//! |---|---|---|---|
//! | `flowgate:{P}:replicas` | sorted set | every replica, its own member | member = replica id, score = when it expires (ms) |
//! | `flowgate:{P}:r:<id>` | hash | replica `<id>` only | `b:<addr>` = `"held demand"` of its slots, `b:q:<addr>` = the same of its queue share, `w:<workload>` = `"requests/s tokens/s"`, `t` = last sync (ms) |
//!
//! Both expire `ttl` after the replica's last sync (PEXPIRE), so a dead replica's lease and rates
//! leave by themselves.
//!
//! The reply is outside input (a store anyone on the network path may answer for):
//! [`parse_reply`] checks its shape and every number and never panics; a bad reply is a failed
//! sync, nothing of it applied.

use std::sync::Arc;

use flowgate_engine::backends::BackendId;
use redis::Value;

/// The script (see its header for the lease rule).
pub const SYNC_LUA: &str = include_str!("sync.lua");
/// Workloads published per sync, at most (the highest rates first).
pub const MAX_PUBLISHED_WORKLOADS: usize = 512;
/// Backends published per sync, at most (capped or metrics-gated ones; the rest get no lease:
/// 0 slots, no queue share). Each gives one or two budgets.
pub const MAX_PUBLISHED_BACKENDS: usize = 256;
/// Replicas of one pool the script reads, at most.
pub const MAX_REPLICAS: u32 = 256;
/// Largest rate (requests/s or tokens/s) taken from a reply; anything above is a bad reply.
pub const MAX_RATE: f64 = 1e12;
/// Longest workload id published, bytes (longer ids are not shared).
pub const MAX_WORKLOAD_ID_BYTES: usize = 256;

/// The keys of one replica of one pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// `flowgate:{pool}:replicas`.
    pub replicas: String,
    /// `flowgate:{pool}:r:` (a replica's hash is this + its id).
    pub prefix: String,
    /// This replica's hash.
    pub own: String,
}

impl Keys {
    /// Keys of replica `replica` in pool `pool` (both validated: no `{`, `}`, spaces).
    ///
    /// ```
    /// let k = flowgate::cluster::script::Keys::new("gpu", "gw-1");
    /// assert_eq!((k.replicas.as_str(), k.own.as_str()), ("flowgate:{gpu}:replicas", "flowgate:{gpu}:r:gw-1"));
    /// ```
    pub fn new(pool: &str, replica: &str) -> Keys {
        let prefix = format!("flowgate:{{{pool}}}:r:");
        Keys { replicas: format!("flowgate:{{{pool}}}:replicas"), own: format!("{prefix}{replica}"), prefix }
    }
}

/// Which of a backend's budgets a [`BackendReport`] shares. The script shares both the same way
/// (max-min fair by demand, each grant fitting in what the others hold).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    /// Its `max_inflight` slots (a capped backend).
    Slots,
    /// Its `queue_depth_threshold`: what all replicas together may send between scrapes (a
    /// metrics detector); "in flight" is then this replica's sent-since-scrape.
    Queue,
}

/// One budget of one backend as this replica sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendReport {
    /// Its slot (the lease goes back to it).
    pub id: BackendId,
    /// Which budget.
    pub budget: Budget,
    /// `ip:port`: how replicas name the same backend.
    pub address: String,
    /// The budget: `max_inflight` or `queue_depth_threshold` (> 0).
    pub max: u32,
    /// What this replica uses of it now: requests on it, or sent since its last scrape.
    pub inflight: u32,
    /// What this replica may use until it applies the reply (its lease or local share).
    pub cap: u32,
    /// What it would use: in flight (or sent) plus queued here, at most `max`.
    pub demand: u32,
}

impl BackendReport {
    /// The name replicas share this budget under: `ip:port`, or `q:ip:port` for a queue share.
    pub fn key(&self) -> String {
        match self.budget {
            Budget::Slots => self.address.clone(),
            Budget::Queue => format!("q:{}", self.address),
        }
    }
}

/// One workload's local rates.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadReport {
    /// Workload id.
    pub id: Arc<str>,
    /// Arrivals/s on this replica.
    pub requests_per_s: f64,
    /// Weighted tokens/s on this replica.
    pub tokens_per_s: f64,
}

/// What one sync publishes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// At most [`MAX_PUBLISHED_BACKENDS`].
    pub backends: Vec<BackendReport>,
    /// At most [`MAX_PUBLISHED_WORKLOADS`].
    pub workloads: Vec<WorkloadReport>,
    /// This replica runs in local mode: the grant will not be applied, so it holds only its cap
    /// (and what is in flight).
    pub local: bool,
    /// Replicas to count as present though not seen (just after an outage; 0 otherwise).
    pub expected: u32,
}

/// What one sync returns.
#[derive(Clone, Debug, PartialEq)]
pub struct View {
    /// Live replicas of the pool, this one included (≥ 1).
    pub replicas: u32,
    /// This replica's lease per reported [`Budget::Slots`] (≤ its `max_inflight`), in report order.
    pub leases: Vec<(BackendId, u32)>,
    /// This replica's share per reported [`Budget::Queue`] (≤ `queue_depth_threshold`).
    pub queue_shares: Vec<(BackendId, u32)>,
    /// The other replicas' rates of each reported workload: (id, requests/s, tokens/s).
    pub remote: Vec<(Arc<str>, f64, f64)>,
}

/// Why a reply was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadReply {
    /// Not an array of the expected length.
    Shape(String),
    /// An element of the wrong type or out of range.
    Element(usize, String),
}

impl std::fmt::Display for BadReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadReply::Shape(s) => write!(f, "bad reply: {s}"),
            BadReply::Element(i, s) => write!(f, "bad reply element {i}: {s}"),
        }
    }
}

impl Report {
    /// The script's arguments after the fixed four (see `sync.lua`).
    fn args(&self) -> Vec<String> {
        let mut a = Vec::with_capacity(2 + self.backends.len() * 5 + self.workloads.len() * 3);
        a.push(self.backends.len().to_string());
        for b in &self.backends {
            a.push(b.key());
            a.extend([b.max, b.inflight, b.cap, b.demand].map(|n| n.to_string()));
        }
        a.push(self.workloads.len().to_string());
        for w in &self.workloads {
            a.push(w.id.to_string());
            a.push(format_rate(w.requests_per_s));
            a.push(format_rate(w.tokens_per_s));
        }
        a
    }

    /// One invocation of `script` for replica `replica` with `keys`, its keys living `ttl_ms`.
    pub fn invocation<'a>(
        &self,
        script: &'a redis::Script,
        keys: &Keys,
        replica: &str,
        ttl_ms: u64,
    ) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(&keys.replicas).key(&keys.own);
        let local = if self.local { "1" } else { "0" };
        inv.arg(replica).arg(ttl_ms).arg(&keys.prefix).arg(MAX_REPLICAS).arg(local).arg(self.expected);
        for a in self.args() {
            inv.arg(a);
        }
        inv
    }
}

/// A rate as the script stores it: fixed-point, finite, non-negative.
fn format_rate(v: f64) -> String {
    let v = if v.is_finite() && v > 0.0 { v.min(MAX_RATE) } else { 0.0 };
    format!("{v:.6}")
}

fn int(v: &Value, i: usize) -> Result<i64, BadReply> {
    match v {
        Value::Int(n) => Ok(*n),
        other => Err(BadReply::Element(i, format!("expected an integer, got {}", kind(other)))),
    }
}

fn rate(v: &Value, i: usize) -> Result<f64, BadReply> {
    let text = match v {
        Value::BulkString(b) => {
            std::str::from_utf8(b).map_err(|_| BadReply::Element(i, "not UTF-8".into()))?
        }
        Value::SimpleString(s) => s.as_str(),
        Value::Int(n) => return Ok(*n as f64).and_then(|r| check_rate(r, i)),
        other => return Err(BadReply::Element(i, format!("expected a rate, got {}", kind(other)))),
    };
    let r: f64 = text.parse().map_err(|_| BadReply::Element(i, format!("{:.40?} is not a number", text)))?;
    check_rate(r, i)
}

fn check_rate(r: f64, i: usize) -> Result<f64, BadReply> {
    if r.is_finite() && (0.0..=MAX_RATE).contains(&r) {
        Ok(r)
    } else {
        Err(BadReply::Element(i, format!("rate {r} outside 0 ..= {MAX_RATE}")))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) => "a status",
        Value::Okay => "OK",
        Value::ServerError(_) => "an error",
        _ => "another type",
    }
}

/// Read the script's reply to `report`: `{replicas, lease × backends, (requests/s, tokens/s) ×
/// workloads}`. Every lease must be in `0 ..= max` of its budget, `replicas` in
/// `1 ..= MAX_REPLICAS`, every rate in `0 ..= MAX_RATE`; anything else is refused whole.
pub fn parse_reply(reply: &Value, report: &Report) -> Result<View, BadReply> {
    let Value::Array(items) = reply else {
        return Err(BadReply::Shape(format!("expected an array, got {}", kind(reply))));
    };
    let (nb, nw) = (report.backends.len(), report.workloads.len());
    let expected = 1 + nb + 2 * nw;
    if items.len() != expected {
        return Err(BadReply::Shape(format!("{} elements, expected {expected}", items.len())));
    }
    let replicas = int(&items[0], 0)?;
    if !(1..=i64::from(MAX_REPLICAS)).contains(&replicas) {
        return Err(BadReply::Element(0, format!("{replicas} replicas, expected 1 ..= {MAX_REPLICAS}")));
    }
    let (mut leases, mut queue_shares) = (Vec::with_capacity(nb), Vec::new());
    for (k, b) in report.backends.iter().enumerate() {
        let i = 1 + k;
        let lease = int(&items[i], i)?;
        if !(0..=i64::from(b.max)).contains(&lease) {
            return Err(BadReply::Element(
                i,
                format!("lease {lease} of {} outside 0 ..= {}", b.key(), b.max),
            ));
        }
        match b.budget {
            Budget::Slots => leases.push((b.id, lease as u32)),
            Budget::Queue => queue_shares.push((b.id, lease as u32)),
        }
    }
    let mut remote = Vec::with_capacity(nw);
    for (k, w) in report.workloads.iter().enumerate() {
        let i = 1 + nb + 2 * k;
        remote.push((w.id.clone(), rate(&items[i], i)?, rate(&items[i + 1], i + 1)?));
    }
    Ok(View { replicas: replicas as u32, leases, queue_shares, remote })
}

#[cfg(test)]
#[path = "script_tests.rs"]
mod tests;
