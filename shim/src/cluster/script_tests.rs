//! Unit tests of [`super`]: the arguments' layout and every refusal of [`parse_reply`].

use super::*;

fn report() -> Report {
    Report {
        backends: vec![
            BackendReport {
                id: BackendId { index: 0, generation: 1 },
                budget: Budget::Slots,
                address: "10.0.0.1:8000".into(),
                max: 4,
                inflight: 1,
                cap: 2,
                demand: 3,
            },
            BackendReport {
                id: BackendId { index: 2, generation: 0 },
                budget: Budget::Queue,
                address: "10.0.0.2:8000".into(),
                max: 8,
                inflight: 0,
                cap: 0,
                demand: 0,
            },
        ],
        workloads: vec![WorkloadReport { id: "chat".into(), requests_per_s: 1.5, tokens_per_s: f64::NAN }],
        local: false,
        expected: 0,
    }
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

#[test]
fn args_follow_the_scripts_layout() {
    assert_eq!(
        report().args(),
        vec![
            "2",
            "10.0.0.1:8000",
            "4",
            "1",
            "2",
            "3",
            "q:10.0.0.2:8000",
            "8",
            "0",
            "0",
            "0",
            "1",
            "chat",
            "1.500000",
            "0.000000"
        ]
    );
}

#[test]
fn a_good_reply_gives_leases_shares_and_rates_in_report_order() {
    let reply =
        Value::Array(vec![Value::Int(3), Value::Int(2), Value::Int(8), bulk("12.5"), bulk("0.000000")]);
    let view = parse_reply(&reply, &report()).unwrap();
    assert_eq!(view.replicas, 3);
    assert_eq!(view.leases, vec![(BackendId { index: 0, generation: 1 }, 2)]);
    assert_eq!(view.queue_shares, vec![(BackendId { index: 2, generation: 0 }, 8)]);
    assert_eq!(view.remote, vec![(Arc::from("chat"), 12.5, 0.0)]);
}

#[test]
fn bad_replies_are_refused_whole() {
    let r = report();
    let good = vec![Value::Int(3), Value::Int(2), Value::Int(8), bulk("12.5"), bulk("0")];
    let with = |i: usize, v: Value| {
        let mut items = good.clone();
        items[i] = v;
        parse_reply(&Value::Array(items), &r)
    };
    assert!(matches!(parse_reply(&Value::Nil, &r), Err(BadReply::Shape(_))));
    assert!(matches!(parse_reply(&Value::Array(good[..4].to_vec()), &r), Err(BadReply::Shape(_))));
    assert!(matches!(with(0, Value::Int(0)), Err(BadReply::Element(0, _))));
    assert!(matches!(with(0, Value::Int(100_000)), Err(BadReply::Element(0, _))));
    assert!(matches!(with(1, Value::Int(5)), Err(BadReply::Element(1, _))), "lease above max_inflight");
    assert!(matches!(with(2, Value::Int(-1)), Err(BadReply::Element(2, _))));
    assert!(matches!(with(2, bulk("3")), Err(BadReply::Element(2, _))));
    assert!(matches!(with(3, bulk("nan")), Err(BadReply::Element(3, _))));
    assert!(matches!(with(3, bulk("inf")), Err(BadReply::Element(3, _))));
    assert!(matches!(with(4, bulk("-1")), Err(BadReply::Element(4, _))));
    assert!(matches!(with(4, bulk("1e300")), Err(BadReply::Element(4, _))));
    assert!(matches!(with(4, Value::BulkString(vec![0xff])), Err(BadReply::Element(4, _))));
    assert!(matches!(with(3, Value::Array(vec![])), Err(BadReply::Element(3, _))));
    assert!(matches!(with(2, Value::Int(9)), Err(BadReply::Element(2, _))), "share above the threshold");
    assert!(with(3, Value::Int(7)).is_ok(), "an integral rate is a rate");
}

#[test]
fn rates_are_fixed_point_and_clean() {
    assert_eq!(format_rate(f64::INFINITY), "0.000000");
    assert_eq!(format_rate(-2.0), "0.000000");
    assert_eq!(format_rate(1e300), format!("{MAX_RATE:.6}"));
}
