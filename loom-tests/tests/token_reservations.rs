//! Token reservations (`engine/src/quota.rs` `reserve`, `settle`, `give_back`): the shard
//! reserves a request's mean cost from its workload's token bucket while permits on other
//! threads settle their charges against what they reserved and give unspent reservations back.
//! All three move one word (`token_tat_ns`) by CAS loops, so none of their moves is lost however
//! they interleave: the bucket ends exactly where the same moves made one after another put it.
#![cfg(flowgate_loom)]

use flowgate_engine::quota::{QuotaState, QUOTA_WINDOW_NS};
use flowgate_engine::quota_rule::{OnExceed, Quota};
use flowgate_loom_tests::model;
use loom::thread;
use std::sync::Arc;

/// One weighted token is 1 ns of quota time: `QUOTA_WINDOW_NS` tokens per minute.
fn quota() -> Quota {
    Quota {
        pattern: "a".into(),
        max_inflight: None,
        requests_per_minute: None,
        tokens_per_minute: Some(QUOTA_WINDOW_NS),
        on_exceed: OnExceed::Queue,
    }
}

/// Weighted tokens taken from the bucket at time 0.
fn spent(state: &QuotaState, quota: &Quota) -> u64 {
    QUOTA_WINDOW_NS - state.remaining(quota, 0).tokens.expect("a token limit")
}

#[test]
fn reservations_settlements_and_give_backs_never_lose_a_move() {
    model(|| {
        let quota = quota();
        let state = Arc::new(QuotaState::default());
        state.bind(Some(0), Some(&quota), 0);
        // Earlier requests: 1000 tokens spent, a mean cost of 100 to reserve.
        state.settle(0, 100, 0);
        state.charge(900, 0);
        assert_eq!(spent(&state, &quota), 1000);

        // A permit that reserved 100 and cost 300 settles; another gives its 100 back.
        let settling = state.clone();
        let a = thread::spawn(move || settling.settle(100, 300, 0));
        let giving = state.clone();
        let b = thread::spawn(move || giving.give_back(100));
        // Meanwhile the shard reserves for the next request (the mean it reads may include
        // the settling charge or not).
        let reserved = state.reserve(0);
        a.join().unwrap();
        b.join().unwrap();

        assert!(reserved == 100 || reserved == 125, "reserved {reserved}");
        assert_eq!(spent(&state, &quota), 1000 + 200 - 100 + reserved);
    });
}
