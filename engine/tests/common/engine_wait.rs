//! Helpers of the running-engine tests (`runtime.rs`, `backend_set.rs`), which include this file
//! with `#[path]`: waiting on engine counters with a deadline, and outcome counts.

use flowgate_engine::outcome::Outcome;
use flowgate_engine::Engine;
use std::time::{Duration, Instant};

/// Wait (yielding) until `cond` holds; panics after 10 s.
pub fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// How many requests ended with `outcome` so far.
#[allow(dead_code)]
pub fn count(engine: &Engine, outcome: Outcome) -> u64 {
    engine.outcome_counts().into_iter().find(|(o, _)| *o == outcome).map_or(0, |(_, n)| n)
}
