//! The deep-queue throughput measurement: `slots` permits are held and `depth` requests kept
//! queued; each round submits `slots` more and drops the held permits, so `slots` heads dispatch
//! out of a queue ~`depth` deep. One driving thread does it all through a [`Tracker`].

use crate::baseline::{Decision, Kind, Spec};
use crate::churn::set_changes_since;
use crate::driver::{submit, Tracker};
use crate::measurement::Measurement;
use crate::report::timed_bar;
use crate::request_mix::request_mix;
use flowgate_engine::Outcome;
use std::time::{Duration, Instant};

/// Dispatch throughput with `slots` permits cycling and ~`depth` requests kept queued.
pub fn deep_queue(kind: Kind, depth: usize, slots: u32, dur: Duration) -> Measurement {
    let spec = Spec { slots, ttl: Duration::from_secs(3600), ..Spec::default() };
    let q = spec.build(kind);
    let reqs = request_mix(kind, "deep", 7);
    let mut i = 0usize;
    let mut next = || {
        i += 1;
        &reqs[i % reqs.len()]
    };
    let mut tracker: Tracker<()> = Tracker::new();
    let mut held: Vec<Decision> = Vec::new();
    for _ in 0..slots {
        held.push(submit(&*q, next()).expect("submitted").wait());
    }
    let bar = timed_bar(&format!("throughput deep-queue {}", kind.label()), dur);
    for _ in 0..depth {
        let t = submit(&*q, next()).expect("submitted");
        if let Some((d, ())) = tracker.insert(t, ()) {
            held.push(d);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while (q.queued() as usize) < depth && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut out = Vec::new();
    let (mut requests, mut rounds, mut depth_sum) = (0u64, 0u64, 0f64);
    let t0 = Instant::now();
    let changes0 = q.set_changes();
    while t0.elapsed() < dur {
        for _ in 0..slots {
            let t = submit(&*q, next()).expect("submitted");
            if let Some((d, ())) = tracker.insert(t, ()) {
                held.push(d);
            }
        }
        depth_sum += q.queued() as f64;
        rounds += 1;
        held.clear(); // frees every slot: the queue dispatches its best `slots` heads
        let mut got = 0;
        let stall = Instant::now() + Duration::from_secs(60);
        while got < slots as usize {
            assert!(Instant::now() < stall, "{}: no dispatch for 60 s with free slots", kind.label());
            tracker.park_until(Instant::now() + Duration::from_millis(10));
            tracker.collect(&mut out);
            for (d, ()) in out.drain(..) {
                if d.outcome == Outcome::Dispatched {
                    got += 1;
                    held.push(d);
                }
            }
        }
        requests += got as u64;
        bar.set_position(t0.elapsed().as_millis() as u64);
    }
    let seconds = t0.elapsed().as_secs_f64();
    let set_changes = set_changes_since(&*q, changes0);
    bar.finish_and_clear();
    tracker.cancel_all();
    held.clear();
    q.shutdown();
    Measurement {
        implementation: kind.label(),
        mode: "deep_queue".into(),
        producers: 1,
        batch: slots as usize,
        mean_depth: Some(depth_sum / rounds.max(1) as f64),
        requests,
        seconds,
        req_per_s: requests as f64 / seconds,
        rounds_req_per_s: Vec::new(),
        producer_cpu_ns: None,
        queue_cpu_ns: None,
        set_changes,
    }
}
