//! Running one scenario on one implementation: the driver loop that submits arrivals, holds
//! permits for the service time, resubmits closed-loop clients and records every request.

use super::{Load, Scenario};
use crate::baseline::{Decision, Kind, Permit, Queue, Req};
use crate::driver::{submit, Tracker};
use flowgate_engine::outcome::OtherReason;
use flowgate_engine::Outcome;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the driver records per request.
#[derive(Clone, Debug)]
pub struct Record {
    /// Workload index.
    pub workload: usize,
    /// Criticality.
    pub criticality: u8,
    /// Submission, ns from the run's start.
    pub submit_ns: u64,
    /// Decision (dispatch or shed), ns from the start; `u64::MAX` if unresolved.
    pub end_ns: u64,
    /// The outcome, if any arrived.
    pub outcome: Option<Outcome>,
}

struct Meta {
    record: usize,
    client: Option<usize>,
}

struct Release {
    at_ns: u64,
    seq: u64,
    client: Option<usize>,
    _permit: Permit,
}

impl PartialEq for Release {
    fn eq(&self, o: &Self) -> bool {
        (self.at_ns, self.seq) == (o.at_ns, o.seq)
    }
}
impl Eq for Release {}
impl PartialOrd for Release {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Release {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at_ns, self.seq).cmp(&(o.at_ns, o.seq))
    }
}

/// The raw outcome of one run.
pub struct RunData {
    /// Implementation.
    pub implementation: String,
    /// Every request.
    pub records: Vec<Record>,
    /// Queue depth samples (every 10 ms).
    pub depth_samples: Vec<u64>,
    /// Requests cancelled at the end of the drain.
    pub unfinished: usize,
}

struct Runner {
    q: Arc<dyn Queue>,
    reqs: Vec<Req>,
    start: Instant,
    tracker: Tracker<Meta>,
    records: Vec<Record>,
    releases: BinaryHeap<Reverse<Release>>,
    resubmits: BinaryHeap<Reverse<(u64, usize)>>,
    clients: Vec<usize>,
    seq: u64,
    end_ns: u64,
    service_ns: u64,
    out: Vec<(Decision, Meta)>,
}

impl Runner {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn submit(&mut self, workload: usize, client: Option<usize>) {
        let record = self.records.len();
        let submit_ns = self.now();
        self.records.push(Record {
            workload,
            criticality: self.reqs[workload].criticality,
            submit_ns,
            end_ns: u64::MAX,
            outcome: None,
        });
        match submit(&*self.q, &self.reqs[workload]) {
            Ok(t) => {
                if let Some((d, meta)) = self.tracker.insert(t, Meta { record, client }) {
                    self.handle(d, meta);
                }
            }
            Err(_) => {
                let r = &mut self.records[record];
                r.end_ns = submit_ns;
                r.outcome = Some(Outcome::RejectedOther(OtherReason::ShuttingDown));
            }
        }
    }

    fn handle(&mut self, d: Decision, meta: Meta) {
        let now = self.now();
        let r = &mut self.records[meta.record];
        r.end_ns = (r.submit_ns + d.queued_ns).min(now);
        r.outcome = Some(d.outcome);
        self.seq += 1;
        match d.permit {
            Some(permit) => self.releases.push(Reverse(Release {
                at_ns: now + self.service_ns,
                seq: self.seq,
                client: meta.client,
                _permit: permit,
            })),
            // Refused: a closed-loop client backs off for one service time.
            None => {
                if let Some(c) = meta.client {
                    self.resubmits.push(Reverse((now + self.service_ns, c)));
                }
            }
        }
    }
}

/// Run `sc` on `kind`; `stop` aborts early.
pub fn run_one(sc: &Scenario, kind: Kind, stop: &AtomicBool) -> RunData {
    let q = sc.spec().build(kind);
    let reqs: Vec<Req> = sc
        .workloads
        .iter()
        .map(|wl| Req { workload: Arc::from(wl.name.as_str()), criticality: wl.criticality, ttl: None })
        .collect();
    let clients: Vec<usize> = sc
        .workloads
        .iter()
        .enumerate()
        .flat_map(|(i, wl)| match wl.load {
            Load::Closed { clients } => vec![i; clients],
            _ => Vec::new(),
        })
        .collect();
    let schedule = sc.schedule();
    let end_ns = (sc.duration_s * 1e9) as u64;
    let drain_ns = end_ns + ((sc.wait_cap_s + 1.0) * 1e9) as u64;
    let mut r = Runner {
        q: q.clone(),
        reqs,
        start: Instant::now(),
        tracker: Tracker::new(),
        records: Vec::with_capacity(schedule.len() + 1024),
        releases: BinaryHeap::new(),
        resubmits: (0..clients.len()).map(|c| Reverse((0, c))).collect(),
        clients,
        seq: 0,
        end_ns,
        service_ns: sc.service().as_nanos() as u64,
        out: Vec::new(),
    };
    let mut next_arrival = 0usize;
    let mut depth_samples = Vec::new();
    let mut next_sample = 0u64;
    let mut unfinished = 0;
    loop {
        let now = r.now();
        let arriving = now < r.end_ns && !stop.load(Ordering::Relaxed);
        // An arrival counts by its scheduled time, not by when this loop got to it: a runner that
        // fell behind (a loaded machine) still submits everything scheduled before the end.
        let stopped = stop.load(Ordering::Relaxed);
        while next_arrival < schedule.len() && schedule[next_arrival].0 <= now {
            if schedule[next_arrival].0 < r.end_ns && !stopped {
                r.submit(schedule[next_arrival].1, None);
            }
            next_arrival += 1;
        }
        while let Some(&Reverse((at, c))) = r.resubmits.peek() {
            if at > now {
                break;
            }
            r.resubmits.pop();
            if at < r.end_ns && !stopped {
                r.submit(r.clients[c], Some(c));
            }
        }
        r.tracker.collect(&mut r.out);
        for (d, meta) in std::mem::take(&mut r.out) {
            r.handle(d, meta);
        }
        while r.releases.peek().is_some_and(|Reverse(rel)| rel.at_ns <= now) {
            let Reverse(rel) = r.releases.pop().expect("peeked");
            let client = rel.client;
            drop(rel); // frees the slot
            if let Some(c) = client {
                r.resubmits.push(Reverse((now, c)));
            }
        }
        if now >= next_sample {
            depth_samples.push(r.q.queued());
            next_sample = now + 10_000_000;
        }
        let done = !arriving && r.tracker.pending() == 0 && r.releases.is_empty();
        if done {
            break;
        }
        if now >= drain_ns || stop.load(Ordering::Relaxed) {
            unfinished = r.tracker.cancel_all();
            break;
        }
        let mut wake = next_sample.min(drain_ns);
        if arriving {
            if let Some(&(t, _)) = schedule.get(next_arrival) {
                wake = wake.min(t);
            }
            if let Some(&Reverse((t, _))) = r.resubmits.peek() {
                wake = wake.min(t);
            }
            wake = wake.min(r.end_ns);
        }
        if let Some(Reverse(rel)) = r.releases.peek() {
            wake = wake.min(rel.at_ns);
        }
        r.tracker.park_until(r.start + Duration::from_nanos(wake));
    }
    r.releases.clear();
    let records = std::mem::take(&mut r.records);
    drop(r);
    q.shutdown();
    RunData { implementation: kind.label(), records, depth_samples, unfinished }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenarios::{all, analyse, Options};

    #[test]
    fn a_short_scenario_runs_on_every_implementation() {
        let opts = Options {
            quick: true,
            slots: 4,
            service_ms: 2.0,
            shards: 2,
            duration_s: 0.3,
            wait_cap_s: 0.5,
            only: None,
            sequential: false,
        };
        let sc = all(&opts).into_iter().find(|s| s.name == "overload").unwrap();
        let stop = AtomicBool::new(false);
        for kind in [Kind::Flowgate(2), Kind::Seed, Kind::Fifo] {
            let data = run_one(&sc, kind, &stop);
            let r = analyse(&sc, &data);
            let submitted: u64 = r.per_criticality.iter().map(|c| c.submitted).sum();
            assert_eq!(submitted as usize, sc.schedule().len(), "{kind:?}");
            // Every request has exactly one outcome (or was cancelled at the end).
            let resolved: u64 =
                r.per_criticality.iter().map(|c| c.dispatched + c.shed.values().sum::<u64>()).sum();
            assert_eq!(resolved, submitted, "{kind:?}");
            assert!(r.dispatches > 0);
        }
    }
}
