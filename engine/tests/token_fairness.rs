//! Token accounting and token-aware fairness at the shard, with a fake clock: `rate_unit: tokens`
//! and `fairness: vtc` (DESIGN.md "Cost: tokens, token-aware fairness, quotas").
//!
//! A dispatched request is charged its usage through its workload entry (what the permit does
//! when the response ends) and released; the shard's rescore pass then rekeys by the new counters.

use flowgate_engine::budget::QueueBudget;
use flowgate_engine::config::{EngineConfig, Fairness, RateUnit};
use flowgate_engine::registry::hash_workload_id;
use flowgate_engine::shard::{Admission, Arrival, Done, Shard};
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

const MS: u64 = 1_000_000;

fn shard(config: &EngineConfig) -> Shard<u64> {
    let budget = Arc::new(QueueBudget::new(config.queue.max_requests, config.queue.max_bytes));
    Shard::new(config, 0, 1, budget, Arc::new(AtomicUsize::new(0)))
}

fn submit(shard: &mut Shard<u64>, workload: &str, id: u64, now_ns: u64) {
    let arrival = Arrival {
        workload_id: Arc::from(workload),
        hash: hash_workload_id(workload),
        criticality: 3,
        ttl: None,
        bytes: 0,
        arrived_ns: now_ns,
        completion: id,
    };
    let mut refused: Vec<Done<u64>> = Vec::new();
    assert!(matches!(shard.enqueue(arrival, now_ns, &mut |d| refused.push(d)), Admission::Queued(_)));
    assert!(refused.is_empty());
}

/// Two workloads of equal criticality, both backlogged, one slot: `heavy`'s requests cost ten
/// times `light`'s. Serve `rounds` requests one at a time (each charged when it finishes, then a
/// rescore pass) and return the weighted tokens served per workload.
fn serve_backlog(config: &EngineConfig, rounds: usize) -> HashMap<String, u64> {
    let mut s = shard(config);
    let mut now = 0;
    let mut id = 0;
    // Keep both backlogged: 20 requests each queued, topped up as they leave.
    let mut queued: HashMap<&str, usize> = HashMap::new();
    let mut served: HashMap<String, u64> = HashMap::new();
    for _ in 0..rounds {
        for w in ["heavy", "light"] {
            while queued.get(w).copied().unwrap_or(0) < 20 {
                submit(&mut s, w, id, now);
                id += 1;
                *queued.entry(w).or_default() += 1;
            }
        }
        let done = s.dispatch_next(now).expect("backlogged");
        let name = done.workload.id().to_string();
        *queued.get_mut(name.as_str()).unwrap() -= 1;
        // heavy: 1000 prompt + 500 output tokens (2000 weighted); light: a tenth of that.
        let (prompt, completion) = if name == "heavy" { (1000, 500) } else { (100, 50) };
        now += 10 * MS;
        let cost = done.workload.charge(now, prompt, completion);
        done.workload.release(now);
        *served.entry(name).or_default() += cost;
        s.rescore(now, &mut |_| panic!("nothing expires"));
    }
    served
}

/// `fairness` and `rate_unit` with the default caps (`vtc_cap` 20 000 weighted tokens), but for a
/// token `rate_cap` of 10 000 weighted tokens/s.
fn fairness_config(fairness: Fairness, rate_unit: RateUnit) -> EngineConfig {
    let mut c = EngineConfig::default();
    c.scoring.fairness = fairness;
    c.scoring.rate_unit = rate_unit;
    if rate_unit == RateUnit::Tokens {
        c.scoring.rate_cap_per_s = 10_000.0;
    }
    c
}

#[test]
fn vtc_serves_backlogged_workloads_weighted_tokens_within_2x() {
    let served = serve_backlog(&fairness_config(Fairness::Vtc, RateUnit::Requests), 400);
    let (heavy, light) = (served["heavy"] as f64, served["light"] as f64);
    eprintln!("vtc: weighted tokens served {served:?}, heavy/light {:.2}", heavy / light);
    assert!(heavy / light < 2.0 && light / heavy < 2.0, "vtc: heavy {heavy} light {light}");
}

#[test]
fn request_rate_fairness_lets_the_heavy_workload_take_about_ten_times_the_tokens() {
    let served = serve_backlog(&fairness_config(Fairness::Rate, RateUnit::Requests), 400);
    let ratio = served["heavy"] as f64 / served["light"] as f64;
    eprintln!("rate by requests: weighted tokens served {served:?}, heavy/light {ratio:.2}");
    assert!(ratio > 5.0, "requests alternate, so tokens follow request sizes: {served:?}");
}

#[test]
fn token_rate_penalises_the_workload_charged_more_tokens() {
    let served = serve_backlog(&fairness_config(Fairness::Rate, RateUnit::Tokens), 400);
    let ratio = served["heavy"] as f64 / served["light"] as f64;
    let by_requests = serve_backlog(&fairness_config(Fairness::Rate, RateUnit::Requests), 400);
    let by_requests = by_requests["heavy"] as f64 / by_requests["light"] as f64;
    eprintln!("rate by tokens: heavy/light {ratio:.2} (by requests {by_requests:.2})");
    assert!(ratio < by_requests / 2.0, "tokens {ratio:.2} vs requests {by_requests:.2}");
}

#[test]
fn a_workload_becoming_active_is_lifted_to_the_active_floor() {
    let mut s = shard(&fairness_config(Fairness::Vtc, RateUnit::Requests));
    // `busy` is served 50 requests of 100 weighted tokens while `late` is idle.
    for i in 0..50 {
        submit(&mut s, "busy", i, i * MS);
        let done = s.dispatch_next(i * MS).unwrap();
        done.workload.charge(i * MS, 100, 0);
        done.workload.release(i * MS);
    }
    submit(&mut s, "busy", 100, 60 * MS);
    s.rescore(60 * MS, &mut |_| {});
    // Idle time banks nothing: `late` starts at busy's counter, not at 0.
    submit(&mut s, "late", 101, 61 * MS);
    let busy = s.table().get("busy").unwrap().served();
    let late = s.table().get("late").unwrap().served();
    assert_eq!(busy, 5000);
    assert_eq!(late, busy, "lifted to the floor");
}

#[test]
fn usage_shows_in_the_workload_snapshot() {
    let mut s = shard(&EngineConfig::default());
    submit(&mut s, "chat", 1, 0);
    let done = s.dispatch_next(MS).unwrap();
    assert_eq!(done.workload.charge(2 * MS, 30, 7), 44);
    done.workload.release(2 * MS);
    let snap = s.table().get("chat").unwrap().snapshot(3 * MS);
    assert_eq!((snap.prompt_tokens, snap.completion_tokens), (30, 7));
    // 44 weighted tokens over the default 60 s window.
    assert!((snap.token_rate_per_s - 44.0 / 60.0).abs() < 1e-9, "{}", snap.token_rate_per_s);
}

#[test]
fn a_reload_switches_the_penalty_and_rescores() {
    let mut c = fairness_config(Fairness::Rate, RateUnit::Requests);
    let mut s = shard(&c);
    assert_eq!(s.table().penalty(), flowgate_engine::fairness::Penalty::RequestRate);
    c.scoring.fairness = Fairness::Vtc;
    s.reconfigure(&c, 0);
    assert_eq!(s.table().penalty(), flowgate_engine::fairness::Penalty::VtcLag);
}
