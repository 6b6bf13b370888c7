//! One workload's quota state: which rule binds it, its GCRA buckets, and whether its queued
//! requests wait on it (parked).
//!
//! **Buckets (GCRA).** Each rate limit keeps a *theoretical arrival time* `tat`: the bucket holds
//! one minute's allowance ([`QUOTA_WINDOW_NS`]) and is full while `tat ≤ now`. A request costs
//! `60 s / requests_per_minute` of it, a weighted token `60 s / tokens_per_minute`; taking advances
//! `tat` to `max(tat, now) + cost`. A request may go while the bucket has room: requests while
//! `max(tat, now) + interval ≤ now + 60 s`, tokens while `tat < now + 60 s`.
//!
//! **Token reservations.** A request's token cost is known only when its response ends, so
//! each request taken under a token limit reserves the workload's mean cost so far
//! ([`reserve`](QuotaState::reserve)), and its charge settles the difference
//! ([`settle`](QuotaState::settle): more taken, or the excess given back); a request that never
//! dispatches or is never charged gives its reservation back. Requests in flight then count
//! against the bucket before their costs are known, and the bucket's debt when it runs out is at
//! most one request's cost plus how far the costs in flight stray from the mean (without
//! reservations: the whole cost of every request in flight).
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
/// The newest cost's weight in a workload's mean cost (the reservation per request): the mean
/// follows a change of request sizes within about eight requests.
pub const MEAN_COST_WEIGHT: f64 = 1.0 / 8.0;

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
    /// Weighted tokens per request reserved under a token limit (f64 bits): the mean of the
    /// costs charged so far, the newest weighing [`MEAN_COST_WEIGHT`]; 0 before the first.
    /// Any thread (a charge) updates it.
    mean_cost: AtomicU64,
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
            mean_cost: AtomicU64::new(0f64.to_bits()),
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
        let Some(spend) = self.quota_ns(cost) else { return };
        self.move_token_tat(|tat| tat.max(now_ns).saturating_add(spend));
    }

    /// Take the workload's mean cost from the token bucket at `now_ns` for a request about to
    /// hold a slot (after [`check`](Self::check) allowed it); returns the weighted tokens
    /// reserved, for its [`settle`](Self::settle) or [`give_back`](Self::give_back). 0 when no
    /// rule limits tokens or before the first charge.
    pub fn reserve(&self, now_ns: u64) -> u64 {
        if !self.limits_tokens() {
            return 0;
        }
        let mean = f64::from_bits(self.mean_cost.load(Ordering::Relaxed));
        let reserved = mean.round() as u64; // saturates
        self.charge(reserved, now_ns);
        reserved
    }

    /// A request that reserved `reserved` weighted tokens cost `cost`: take the rest, or give the
    /// excess back, and fold `cost` into the mean (any thread).
    pub fn settle(&self, reserved: u64, cost: u64, now_ns: u64) {
        if !self.limits_tokens() {
            return;
        }
        let _ = self.mean_cost.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
            let mean = f64::from_bits(bits);
            let next = if mean == 0.0 { cost as f64 } else { mean + (cost as f64 - mean) * MEAN_COST_WEIGHT };
            Some(next.to_bits())
        });
        match cost.checked_sub(reserved) {
            Some(more) => self.charge(more, now_ns),
            None => self.give_back(reserved - cost),
        }
    }

    /// Return `tokens` reserved and not spent to the token bucket (any thread): a request that
    /// left the queue without dispatching, or finished without a charge.
    pub fn give_back(&self, tokens: u64) {
        let Some(spend) = self.quota_ns(tokens) else { return };
        // Below `now` the bucket is full either way: every reader takes `max(tat, now)`.
        self.move_token_tat(|tat| tat.saturating_sub(spend));
    }

    /// Whether a rule limits its tokens (the bound rule has a `tokens_per_minute`).
    fn limits_tokens(&self) -> bool {
        f64::from_bits(self.ns_per_token.load(Ordering::Relaxed)) != 0.0
    }

    /// Quota time of `tokens` weighted tokens, ns; `None` when no rule limits tokens or for 0.
    fn quota_ns(&self, tokens: u64) -> Option<u64> {
        if tokens == 0 {
            return None;
        }
        let per_token = f64::from_bits(self.ns_per_token.load(Ordering::Relaxed));
        // `as` saturates: a cost beyond u64 ns is the end of time, not a wrap.
        (per_token != 0.0).then(|| (tokens as f64 * per_token).ceil() as u64)
    }

    /// Move the token bucket's `tat` by `f` (a CAS loop: permits on any thread move it).
    fn move_token_tat(&self, f: impl Fn(u64) -> u64) {
        let mut tat = self.token_tat_ns.load(Ordering::Relaxed);
        loop {
            match self.token_tat_ns.compare_exchange_weak(tat, f(tat), Ordering::Release, Ordering::Relaxed) {
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
    fn requests_in_flight_hold_their_mean_cost_so_the_debt_is_their_spread() {
        let q = quota(None, None, Some(6000)); // 10 ms per token: 6000 in the minute
        let s = QuotaState::default();
        s.bind(Some(0), Some(&q), 0);
        let now = 10 * S;
        // Nothing charged yet: nothing to reserve.
        assert_eq!(s.reserve(now), 0);
        s.settle(0, 1000, now);
        assert_eq!(s.remaining(&q, now).tokens, Some(5000));
        // Five more of the same size go out before any is charged: each holds 1000, so the
        // bucket is empty after them and a sixth waits, rather than six costs landing later.
        let held: Vec<u64> = (0..5).map(|_| s.reserve(now)).collect();
        assert_eq!(held, [1000; 5]);
        assert!(matches!(s.check(&q, 0, now), Err(Wait::Until(_))));
        // They cost 1000, 1200, 800, 1000 and 1000: the bucket ends where their costs put it.
        for (r, cost) in held.into_iter().zip([1000, 1200, 800, 1000, 1000]) {
            s.settle(r, cost, now);
        }
        assert_eq!(s.remaining(&q, now).tokens, Some(0));
        assert_eq!(s.check(&q, 0, now + 10 * S), Ok(()), "10 s later: 1000 tokens back");
    }

    #[test]
    fn an_unspent_reservation_goes_back_whole() {
        let q = quota(None, None, Some(6000));
        let s = QuotaState::default();
        s.bind(Some(0), Some(&q), 0);
        s.settle(0, 600, 0);
        let r = s.reserve(0);
        assert_eq!((r, s.remaining(&q, 0).tokens), (600, Some(4800)));
        s.give_back(r);
        assert_eq!(s.remaining(&q, 0).tokens, Some(5400));
        // A cheaper request than reserved gives the excess back.
        let r = s.reserve(0);
        s.settle(r, 100, 0);
        assert_eq!(s.remaining(&q, 0).tokens, Some(5300));
    }

    #[test]
    fn the_mean_follows_the_costs() {
        let q = quota(None, None, Some(6000));
        let s = QuotaState::default();
        s.bind(Some(0), Some(&q), 0);
        s.settle(0, 100, 0);
        for _ in 0..40 {
            s.settle(0, 900, 0);
        }
        let r = s.reserve(0);
        assert!((890..=900).contains(&r), "mean {r}");
    }

    #[test]
    fn no_token_rule_charges_nothing() {
        let q = quota(Some(1), None, None);
        let s = QuotaState::default();
        s.bind(Some(0), Some(&q), 0);
        s.charge(1 << 30, 0);
        s.settle(0, 1 << 30, 0);
        assert_eq!(s.reserve(0), 0);
        assert_eq!(s.check(&q, 0, 0), Ok(()));
        assert_eq!(s.remaining(&q, 0), Remaining::default());
    }
}
