//! One workload's quota state: which rule binds it, its GCRA buckets, and whether its queued
//! requests wait on it (parked).
//!
//! **Buckets (GCRA).** Each rate limit keeps a *theoretical arrival time* `tat`: the bucket holds
//! one minute's allowance ([`QUOTA_WINDOW_NS`]) and is full while `tat ≤ now`. A request costs
//! `60 s / requests_per_minute` of it, a weighted token `60 s / tokens_per_minute`; taking advances
//! `tat` to `max(tat, now) + cost`. A request may go while the bucket has room: requests while
//! `max(tat, now) + interval ≤ now + 60 s`, tokens while `tat < now + 60 s` (their cost is known
//! only afterwards, so the token bucket may end in debt by the requests in flight when it ran out).
//!
//! **Who writes what.** The owning shard binds the rule, counts its queued requests, takes from
//! the request bucket and parks; permits charge the token bucket from any thread (a CAS loop) and
//! read `parked` to know whether releasing a slot should wake the shard. In flight = active −
//! queued, both known to the shard.

use crate::quota_rule::{OnExceed, Quota};
use crate::sync::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// The span a quota counts over: one minute.
pub const QUOTA_WINDOW_NS: u64 = 60_000_000_000;
/// The `rule` value of a workload no rule covers.
const NO_RULE: u32 = u32::MAX;

/// Why a request must wait for its workload's quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Until one of its requests in flight finishes (`max_inflight`).
    Release,
    /// Until this time, ns since the engine epoch (a bucket refills).
    Until(u64),
}

/// What is left of a workload's quota, for `x-ratelimit-remaining-*`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Remaining {
    /// Requests the request bucket still holds (`None`: no request limit).
    pub requests: Option<u64>,
    /// Weighted tokens the token bucket still holds (`None`: no token limit).
    pub tokens: Option<u64>,
}

/// What a decision says about its workload's quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaNote {
    /// Refused for a `reject` quota: the workload may send again after this long, ns.
    Refused {
        /// ns until the quota allows the workload's next request.
        retry_after_ns: u64,
    },
    /// Dispatched under a quota: what is left of it.
    Remaining(Remaining),
}

/// A workload's quota state (see the module docs).
#[derive(Debug)]
pub struct QuotaState {
    /// Index of the binding rule in the owning table's list, or [`NO_RULE`]. Shard-only.
    rule: AtomicU32,
    /// The owning shard's index (where a permit rings when this workload is parked).
    shard: AtomicU32,
    /// Its requests in the owning shard's heap. Shard-only.
    queued: AtomicU32,
    /// GCRA `tat` of `requests_per_minute`, ns. Shard-only.
    request_tat_ns: AtomicU64,
    /// GCRA `tat` of `tokens_per_minute`, ns. Any thread advances it.
    token_tat_ns: AtomicU64,
    /// Quota time per weighted token, ns (f64 bits); 0 when no rule limits tokens.
    ns_per_token: AtomicU64,
    /// Its queued requests wait on the quota (keyed parked). Shard writes, permits read.
    parked: AtomicBool,
}

impl Default for QuotaState {
    fn default() -> Self {
        Self {
            rule: AtomicU32::new(NO_RULE),
            shard: AtomicU32::new(0),
            queued: AtomicU32::new(0),
            request_tat_ns: AtomicU64::new(0),
            token_tat_ns: AtomicU64::new(0),
            ns_per_token: AtomicU64::new(0f64.to_bits()),
            parked: AtomicBool::new(false),
        }
    }
}

fn interval_ns(per_minute: u64) -> u64 {
    QUOTA_WINDOW_NS.div_ceil(per_minute.max(1))
}

impl QuotaState {
    /// Bind rule `index` of the owning table (`quota` is that rule), on shard `shard`. Buckets
    /// keep their state across rebinding (a reload), so a changed limit applies to what was
    /// already spent.
    pub fn bind(&self, index: Option<usize>, quota: Option<&Quota>, shard: usize) {
        debug_assert_eq!(index.is_some(), quota.is_some());
        self.rule.store(index.map_or(NO_RULE, |i| i as u32), Ordering::Relaxed);
        self.shard.store(shard as u32, Ordering::Relaxed);
        let per_token =
            quota.and_then(|q| q.tokens_per_minute).map_or(0.0, |tpm| QUOTA_WINDOW_NS as f64 / tpm as f64);
        self.ns_per_token.store(per_token.to_bits(), Ordering::Relaxed);
    }

    /// Index of the binding rule in the owning table's list.
    #[inline]
    pub fn rule(&self) -> Option<usize> {
        match self.rule.load(Ordering::Relaxed) {
            NO_RULE => None,
            i => Some(i as usize),
        }
    }

    /// The owning shard's index.
    pub fn shard(&self) -> usize {
        self.shard.load(Ordering::Relaxed) as usize
    }

    /// One of its requests entered (`+1`) or left (`-1`) the shard's heap. Shard-only.
    #[inline]
    pub fn count_queued(&self, delta: i32) {
        let q = self.queued.load(Ordering::Relaxed);
        let next = q.checked_add_signed(delta).expect("queued count stays in range");
        self.queued.store(next, Ordering::Relaxed);
    }

    /// Its requests in the shard's heap.
    pub fn queued(&self) -> u64 {
        u64::from(self.queued.load(Ordering::Relaxed))
    }

    /// Whether its queued requests wait on the quota.
    #[inline]
    pub fn parked(&self) -> bool {
        self.parked.load(Ordering::Acquire)
    }

    /// Mark it waiting on the quota, or not. Shard-only.
    pub fn set_parked(&self, parked: bool) {
        self.parked.store(parked, Ordering::Release);
    }

    /// May one more request go under `quota` at `now_ns`? `held` is what `max_inflight` counts:
    /// its requests in flight (dispatch, `queue`), or queued and in flight (admission, `reject`),
    /// this one not included.
    pub fn check(&self, quota: &Quota, held: u64, now_ns: u64) -> Result<(), Wait> {
        let mut until = 0;
        if let Some(rpm) = quota.requests_per_minute {
            let start = self.request_tat_ns.load(Ordering::Relaxed).max(now_ns);
            let end = start + interval_ns(u64::from(rpm));
            if end > now_ns + QUOTA_WINDOW_NS {
                until = end - QUOTA_WINDOW_NS;
            }
        }
        if quota.tokens_per_minute.is_some() {
            let tat = self.token_tat_ns.load(Ordering::Acquire);
            if tat >= now_ns + QUOTA_WINDOW_NS {
                until = until.max(tat - QUOTA_WINDOW_NS + 1);
            }
        }
        if until > 0 {
            return Err(Wait::Until(until));
        }
        match quota.max_inflight {
            Some(max) if held >= u64::from(max) => Err(Wait::Release),
            _ => Ok(()),
        }
    }

    /// Take one request from the request bucket at `now_ns` (after [`check`](Self::check)
    /// allowed it). Shard-only.
    pub fn take(&self, quota: &Quota, now_ns: u64) {
        if let Some(rpm) = quota.requests_per_minute {
            let start = self.request_tat_ns.load(Ordering::Relaxed).max(now_ns);
            self.request_tat_ns.store(start + interval_ns(u64::from(rpm)), Ordering::Relaxed);
        }
    }

    /// Charge `cost` weighted tokens at `now_ns` to the token bucket (any thread; nothing when no
    /// rule limits tokens).
    pub fn charge(&self, cost: u64, now_ns: u64) {
        let per_token = f64::from_bits(self.ns_per_token.load(Ordering::Relaxed));
        if per_token == 0.0 || cost == 0 {
            return;
        }
        let spend = (cost as f64 * per_token).ceil() as u64; // saturates
        let mut tat = self.token_tat_ns.load(Ordering::Relaxed);
        loop {
            let next = tat.max(now_ns).saturating_add(spend);
            match self.token_tat_ns.compare_exchange_weak(tat, next, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(seen) => tat = seen,
            }
        }
    }

    /// What is left under `quota` at `now_ns`.
    ///
    /// ```
    /// use flowgate_engine::quota::{QuotaState, Remaining};
    /// use flowgate_engine::quota_rule::{OnExceed, Quota};
    /// let q = Quota { pattern: "w".into(), max_inflight: None, requests_per_minute: Some(60),
    ///     tokens_per_minute: Some(6000), on_exceed: OnExceed::Queue };
    /// let s = QuotaState::default();
    /// s.bind(Some(0), Some(&q), 0);
    /// let now = 1_000_000_000;
    /// assert!(s.check(&q, 0, now).is_ok());
    /// s.take(&q, now);
    /// s.charge(600, now);
    /// assert_eq!(s.remaining(&q, now), Remaining { requests: Some(59), tokens: Some(5400) });
    /// ```
    pub fn remaining(&self, quota: &Quota, now_ns: u64) -> Remaining {
        let left = |tat: u64| (now_ns + QUOTA_WINDOW_NS).saturating_sub(tat.max(now_ns));
        let requests = quota
            .requests_per_minute
            .map(|rpm| left(self.request_tat_ns.load(Ordering::Relaxed)) / interval_ns(u64::from(rpm)));
        let tokens = quota.tokens_per_minute.map(|_| {
            let per_token = f64::from_bits(self.ns_per_token.load(Ordering::Relaxed)).max(f64::MIN_POSITIVE);
            (left(self.token_tat_ns.load(Ordering::Acquire)) as f64 / per_token).floor() as u64
        });
        Remaining { requests, tokens }
    }

    /// Whether requests over `quota` wait (rather than being refused).
    pub fn queues(quota: &Quota) -> bool {
        quota.on_exceed == OnExceed::Queue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn quota(max_inflight: Option<u32>, rpm: Option<u32>, tpm: Option<u64>) -> Quota {
        Quota {
            pattern: "w".into(),
            max_inflight,
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            on_exceed: OnExceed::Queue,
        }
    }

    #[test]
    fn a_full_request_bucket_holds_one_minute_then_refills_at_the_rate() {
        let q = quota(None, Some(6), None); // one per 10 s
        let s = QuotaState::default();
        s.bind(Some(0), Some(&q), 0);
        let now = 100 * S;
        for _ in 0..6 {
            assert_eq!(s.check(&q, 0, now), Ok(()));
            s.take(&q, now);
        }
        // Empty: the next fits when one interval has flowed back in.
        assert_eq!(s.check(&q, 0, now), Err(Wait::Until(now + 10 * S)));
        assert_eq!(s.check(&q, 0, now + 10 * S), Ok(()));
        assert_eq!(s.remaining(&q, now).requests, Some(0));
    }

    #[test]
    fn max_inflight_waits_for_a_release() {
        let q = quota(Some(2), None, None);
        let s = QuotaState::default();
        assert_eq!(s.check(&q, 1, 0), Ok(()));
        assert_eq!(s.check(&q, 2, 0), Err(Wait::Release));
    }

    #[test]
    fn the_token_bucket_goes_into_debt_by_the_last_charge_and_waits_it_out() {
        let q = quota(None, None, Some(600)); // 100 ms per token
        let s = QuotaState::default();
        s.bind(Some(0), Some(&q), 0);
        let now = 10 * S;
        assert_eq!(s.check(&q, 0, now), Ok(()));
        s.charge(900, now); // 90 s of quota: 30 s of debt
        let Err(Wait::Until(at)) = s.check(&q, 0, now) else { panic!("in debt") };
        assert_eq!(at, now + 30 * S + 1);
        assert_eq!(s.check(&q, 0, at), Ok(()));
        assert_eq!(s.remaining(&q, now).tokens, Some(0));
    }

    #[test]
    fn no_token_rule_charges_nothing() {
        let q = quota(Some(1), None, None);
        let s = QuotaState::default();
        s.bind(Some(0), Some(&q), 0);
        s.charge(1 << 30, 0);
        assert_eq!(s.check(&q, 0, 0), Ok(()));
        assert_eq!(s.remaining(&q, 0), Remaining::default());
    }
}
