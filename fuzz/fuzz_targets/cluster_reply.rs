//! Fuzz the cluster sync's reply parser (`shim/src/cluster/script.rs`): the reply comes from a
//! store on the network, so for an arbitrary Redis value and an arbitrary report, `parse_reply`
//! must never panic, and an `Ok` view must hold exactly the report's backends and workloads in
//! order, leases and queue shares within each budget's `max`, `replicas` in `1..=MAX_REPLICAS`, and
//! finite rates in `0..=MAX_RATE`.
//!
//! Run from the repository root: `bash scripts/fuzz.sh cluster_reply 60`.
#![no_main]

use arbitrary::Arbitrary;
use flowgate::cluster::script::{
    parse_reply, BackendReport, Budget, Report, WorkloadReport, MAX_RATE, MAX_REPLICAS,
};
use flowgate_engine::backends::BackendId;
use libfuzzer_sys::fuzz_target;
use redis::Value;

/// A Redis value of the kinds a script reply can hold, nested a little.
#[derive(Arbitrary, Debug)]
enum V {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Text(String),
    Array(Vec<V>),
    Ok,
}

fn value(v: V, depth: u8) -> Value {
    match v {
        V::Nil => Value::Nil,
        V::Int(n) => Value::Int(n),
        V::Bulk(b) => Value::BulkString(b),
        V::Text(s) => Value::SimpleString(s),
        V::Array(items) if depth < 3 => Value::Array(items.into_iter().map(|i| value(i, depth + 1)).collect()),
        V::Array(_) => Value::Nil,
        V::Ok => Value::Okay,
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    backends: Vec<u32>,
    workloads: u8,
    reply: V,
}

fuzz_target!(|input: Input| {
    let report = Report {
        backends: input
            .backends
            .iter()
            .take(16)
            .enumerate()
            .map(|(i, &max)| BackendReport {
                id: BackendId { index: i as u32, generation: 0 },
                // Odd maxima: a queue share; even ones: slots.
                budget: if max % 2 == 1 { Budget::Queue } else { Budget::Slots },
                address: format!("10.0.0.{i}:8000"),
                max,
                inflight: 0,
                cap: 0,
                demand: 0,
            })
            .collect(),
        workloads: (0..input.workloads % 16)
            .map(|i| WorkloadReport { id: format!("w{i}").into(), requests_per_s: 0.0, tokens_per_s: 0.0 })
            .collect(),
        local: false,
        expected: 0,
    };
    let reply = value(input.reply, 0);
    if let Ok(view) = parse_reply(&reply, &report) {
        assert!((1..=MAX_REPLICAS).contains(&view.replicas), "{view:?}");
        for budget in [Budget::Slots, Budget::Queue] {
            let granted = if budget == Budget::Slots { &view.leases } else { &view.queue_shares };
            let asked: Vec<&BackendReport> = report.backends.iter().filter(|b| b.budget == budget).collect();
            assert_eq!(granted.len(), asked.len(), "{view:?}");
            for ((id, lease), b) in granted.iter().zip(asked) {
                assert_eq!(*id, b.id);
                assert!(*lease <= b.max, "{view:?}");
            }
        }
        assert_eq!(view.remote.len(), report.workloads.len());
        for ((id, r, t), w) in view.remote.iter().zip(&report.workloads) {
            assert_eq!(id, &w.id);
            for v in [*r, *t] {
                assert!(v.is_finite() && (0.0..=MAX_RATE).contains(&v), "{view:?}");
            }
        }
    }
});
