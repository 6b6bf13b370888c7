//! The seed's scenarios on a simulated model-server pool, run side by side on every implementation.
//!
//! The pool has `slots` slots; a dispatched request holds its permit for `service` (real time:
//! the driver drops the permit when the service time has passed), then frees it. Load comes from
//! workloads that are open-loop (Poisson or bursts), closed-loop (clients that resubmit as soon as
//! their previous request finishes) or one-shot batches. Every run is bounded: arrivals stop at
//! `duration`, then the queue drains for at most `wait_cap + 1 s`, then what is left is cancelled.
//!
//! **Time is compressed.** The aging rule only shows after `0.8·wait_cap` (60 s · 0.8 = 48 s with
//! the defaults), too long for a quick run, so scenarios scale the scoring clock: `wait_cap` and
//! `rate_window` are both set to the scenario's `wait_cap` (1.5 s quick, 4 s full) and the rescore
//! interval keeps its default ratio (wait_cap / 600). Weights and `rate_cap` keep their defaults.
//! The seed baseline scores with the same configuration.
//!
//! **Priority inversions** are judged after the run from exact timestamps: at each dispatch time
//! `t` (submission time + the implementation's queued time), every request submitted at least
//! `INVERSION_GRACE_NS` (1 ms) before `t` and not yet resolved by `t + SAME_PASS_NS` (0.2 ms) is
//! scored with the seed's formula (wait at `t`, its criticality, its
//! workload's exact sliding-window rate at `t`); the dispatch is an inversion when some pending
//! request scores more than `INVERSION_EPS` above it, and a severe one when more than
//! `SEVERE_EPS` (one criticality level) above it.

use crate::baseline::{Decision, Kind, Permit, Queue, Req, SeedScore, Spec};
use crate::driver::{submit, Rng, Tracker};
use crate::plot::{self, CdfLine};
use crate::report::{self, ms, RunInfo, Table};
use crate::stats::{jain, maxmin_shares, Summary};
use flowgate_engine::config::ScoringConfig;
use flowgate_engine::outcome::OtherReason;
use flowgate_engine::Outcome;
use serde::Serialize;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Score gap above which a dispatch counts as a priority inversion (rate-window rounding and the
/// rescore lag stay below it).
pub const INVERSION_EPS: f64 = 0.01;
/// Score gap of one criticality level (`w_crit / 5`): a severe inversion.
pub const SEVERE_EPS: f64 = 0.08;
/// A request counts as pending at a dispatch only if it was submitted at least this long before
/// it: any implementation needs a moment to see a new request (a ring hop, a lock), and a request
/// that arrives while slots are free is dispatched at once anyway.
pub const INVERSION_GRACE_NS: u64 = 1_000_000;
/// Requests resolved within this long after a dispatch count as resolved with it (one dispatch
/// pass): dispatch times are reconstructed as the driver's submit time plus the implementation's
/// queued time, which are a few µs apart, so one pass's dispatches can appear slightly reordered.
pub const SAME_PASS_NS: u64 = 200_000;

/// How a workload offers load.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Load {
    /// Poisson arrivals.
    Open {
        /// Mean arrivals per second.
        rate_per_s: f64,
    },
    /// `count` arrivals at once (shuffled within 1 ms) every `every_ms`.
    Burst {
        /// Period.
        every_ms: u64,
        /// Arrivals per burst.
        count: usize,
    },
    /// `clients` clients, each resubmitting as soon as its previous request is served (or, if
    /// refused, after one service time).
    Closed {
        /// Concurrent clients.
        clients: usize,
    },
    /// `count` arrivals at `at_ms`.
    Once {
        /// When.
        at_ms: u64,
        /// How many.
        count: usize,
    },
}

/// One workload of a scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    /// Id.
    pub name: String,
    /// Criticality 1..=5.
    pub criticality: u8,
    /// Its load.
    pub load: Load,
}

fn w(name: &str, criticality: u8, load: Load) -> Workload {
    Workload { name: name.into(), criticality, load }
}

/// A scenario.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// File-name-safe name.
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Workloads.
    pub workloads: Vec<Workload>,
    /// Pool slots.
    pub slots: u32,
    /// Service time per request, ms.
    pub service_ms: f64,
    /// Arrivals stop after this, seconds.
    pub duration_s: f64,
    /// Most queued requests (0 = unlimited).
    pub max_requests: u64,
    /// Scoring `wait_cap` (= `rate_window`), seconds.
    pub wait_cap_s: f64,
    /// Seed for arrival times.
    pub seed: u64,
}

impl Scenario {
    fn service(&self) -> Duration {
        Duration::from_secs_f64(self.service_ms / 1e3)
    }

    /// Dispatch capacity, requests/s.
    pub fn capacity_per_s(&self) -> f64 {
        f64::from(self.slots) / (self.service_ms / 1e3)
    }

    /// The scoring configuration (compressed time; see the module docs).
    pub fn scoring(&self) -> ScoringConfig {
        let cap = Duration::from_secs_f64(self.wait_cap_s);
        ScoringConfig {
            wait_cap: cap,
            rate_window: cap,
            rescore_interval: (cap / 600).max(Duration::from_millis(1)),
            ..ScoringConfig::default()
        }
    }

    /// The queue configuration every implementation gets.
    pub fn spec(&self) -> Spec {
        Spec {
            slots: self.slots,
            max_requests: self.max_requests,
            ttl: Duration::from_secs(30),
            scoring: self.scoring(),
        }
    }

    /// Wait after which a criticality-`c` request outranks a fresh criticality-5 one of the same
    /// rate (the aging rule), seconds.
    pub fn aging_threshold_s(&self, c: u8) -> f64 {
        let s = self.scoring();
        (s.criticality_weight * f64::from(5 - c.min(5)) / 5.0) / s.wait_weight * self.wait_cap_s
    }

    /// Demand of workload `i` in requests/s (closed loop: clients / service time).
    fn demand(&self, i: usize) -> f64 {
        match self.workloads[i].load {
            Load::Open { rate_per_s } => rate_per_s,
            Load::Burst { every_ms, count } => count as f64 / (every_ms as f64 / 1e3),
            Load::Closed { clients } => clients as f64 / (self.service_ms / 1e3),
            Load::Once { count, .. } => count as f64 / self.duration_s,
        }
    }

    /// Open-loop arrival times (ns from the start) and workload indices, ascending.
    pub fn schedule(&self) -> Vec<(u64, usize)> {
        let end = (self.duration_s * 1e9) as u64;
        let mut rng = Rng(self.seed);
        let mut out = Vec::new();
        for (i, wl) in self.workloads.iter().enumerate() {
            match wl.load {
                Load::Open { rate_per_s } if rate_per_s > 0.0 => {
                    let mut t = rng.exp(1e9 / rate_per_s);
                    while (t as u64) < end {
                        out.push((t as u64, i));
                        t += rng.exp(1e9 / rate_per_s);
                    }
                }
                Load::Burst { every_ms, count } => {
                    let mut t = 0u64;
                    while t < end {
                        for _ in 0..count {
                            out.push((t + rng.below(1_000_000), i));
                        }
                        t += every_ms * 1_000_000;
                    }
                }
                Load::Once { at_ms, count } => {
                    out.extend(std::iter::repeat_n((at_ms * 1_000_000, i), count));
                }
                _ => {}
            }
        }
        out.sort_by_key(|&(t, i)| (t, i));
        out
    }
}

/// Options of the `scenarios` subcommand.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Quick mode.
    pub quick: bool,
    /// Pool slots.
    pub slots: u32,
    /// Service time, ms.
    pub service_ms: f64,
    /// Shards of the flowgate run.
    pub shards: usize,
    /// Seconds of arrivals per scenario.
    pub duration_s: f64,
    /// Compressed `wait_cap`, seconds.
    pub wait_cap_s: f64,
    /// Only the scenario with this name (all when `None`).
    pub only: Option<String>,
    /// Run the implementations one after another instead of side by side.
    pub sequential: bool,
}

/// The six scenarios for `opts`.
pub fn all(opts: &Options) -> Vec<Scenario> {
    let base = Scenario {
        name: String::new(),
        description: String::new(),
        workloads: Vec::new(),
        slots: opts.slots,
        service_ms: opts.service_ms,
        duration_s: opts.duration_s,
        max_requests: 0,
        wait_cap_s: opts.wait_cap_s,
        seed: 1,
    };
    let c = base.capacity_per_s();
    let slots = opts.slots as usize;
    let burst = ((0.3 * c * 0.1).round() as usize).max(1);
    vec![
        Scenario {
            name: "basic_priority".into(),
            description: format!(
                "bursts of {burst} each of criticality 1/3/5 every 100 ms (0.9 of capacity): higher criticality waits less"
            ),
            workloads: vec![
                w("batch", 1, Load::Burst { every_ms: 100, count: burst }),
                w("standard", 3, Load::Burst { every_ms: 100, count: burst }),
                w("interactive", 5, Load::Burst { every_ms: 100, count: burst }),
            ],
            seed: 11,
            ..base.clone()
        },
        Scenario {
            name: "wait_boost".into(),
            description: format!(
                "{} closed-loop criticality-5 clients keep the pool saturated; {slots} criticality-1 requests arrive at 100 ms: they must get through by aging, not wait forever",
                2 * slots
            ),
            workloads: vec![
                w("premium", 5, Load::Closed { clients: 2 * slots }),
                w("background", 1, Load::Once { at_ms: 100, count: slots }),
            ],
            seed: 12,
            ..base.clone()
        },
        Scenario {
            name: "rate_fairness".into(),
            description: "a flood of 50 concurrent requests from workload A vs single requests from workload B, equal criticality: B is not starved".into(),
            workloads: vec![w("flood", 4, Load::Closed { clients: 50 }), w("single", 4, Load::Closed { clients: 1 })],
            seed: 13,
            ..base.clone()
        },
        Scenario {
            name: "mixed_30_50_20".into(),
            description: "the seed's mixed test: 30 low (crit 1), 50 medium (crit 3), 20 high (crit 5) concurrent clients".into(),
            workloads: vec![
                w("low", 1, Load::Closed { clients: 30 }),
                w("medium", 3, Load::Closed { clients: 50 }),
                w("high", 5, Load::Closed { clients: 20 }),
            ],
            seed: 14,
            ..base.clone()
        },
        Scenario {
            name: "starvation".into(),
            description: format!(
                "sustained high-criticality load ({0} crit-5 + {0} crit-4 closed-loop clients) with crit-1 and crit-2 trickles: their waits stay bounded by the aging rule",
                slots * 3 / 2
            ),
            workloads: vec![
                w("premium", 5, Load::Closed { clients: slots * 3 / 2 }),
                w("gold", 4, Load::Closed { clients: slots * 3 / 2 }),
                w("batch", 1, Load::Open { rate_per_s: 0.0125 * c }),
                w("bulk", 2, Load::Open { rate_per_s: 0.0125 * c }),
            ],
            seed: 15,
            ..base.clone()
        },
        Scenario {
            name: "overload".into(),
            description: format!(
                "offered load 2x capacity, criticality 1..5 in equal parts, queue bounded at {}: the queue stays bounded and the lowest criticality is shed first",
                8 * slots
            ),
            workloads: (1..=5u8).map(|k| w(&format!("crit{k}"), k, Load::Open { rate_per_s: 0.4 * c })).collect(),
            max_requests: 8 * slots as u64,
            seed: 16,
            ..base
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Running one scenario on one implementation.

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
        while next_arrival < schedule.len() && schedule[next_arrival].0 <= now {
            if arriving {
                r.submit(schedule[next_arrival].1, None);
            }
            next_arrival += 1;
        }
        while let Some(&Reverse((at, c))) = r.resubmits.peek() {
            if at > now {
                break;
            }
            r.resubmits.pop();
            if arriving {
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

// ---------------------------------------------------------------------------------------------
// Analysis.

/// Per-class (criticality or workload) results.
#[derive(Clone, Debug, Serialize)]
pub struct ClassStats {
    /// Class label.
    pub label: String,
    /// Criticality.
    pub criticality: u8,
    /// Requests submitted.
    pub submitted: u64,
    /// Requests dispatched.
    pub dispatched: u64,
    /// Requests shed, by outcome label.
    pub shed: BTreeMap<String, u64>,
    /// Shed / submitted.
    pub shed_fraction: f64,
    /// Dispatches per second over the arrival period.
    pub throughput_per_s: f64,
    /// Wait (submit → dispatched) of dispatched requests.
    pub wait: Summary,
    #[serde(skip)]
    waits_ns: Vec<u64>,
}

/// Jain's index over equal-criticality workloads.
#[derive(Clone, Debug, Serialize)]
pub struct Fairness {
    /// The workloads compared.
    pub workloads: Vec<String>,
    /// Each workload's throughput divided by its max-min fair share of the group's throughput.
    pub normalized_throughput: Vec<f64>,
    /// Jain's index of `normalized_throughput`.
    pub jain: f64,
}

/// A scenario's target, checked for the report (never a failure).
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What.
    pub name: String,
    /// Measured (human-readable).
    pub value: String,
    /// Whether it holds in this run.
    pub pass: bool,
}

/// The analysed result of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Implementation.
    pub implementation: String,
    /// Per criticality.
    pub per_criticality: Vec<ClassStats>,
    /// Per workload.
    pub per_workload: Vec<ClassStats>,
    /// Dispatches judged.
    pub dispatches: u64,
    /// Priority inversions (gap > `INVERSION_EPS`).
    pub inversions: u64,
    /// Severe inversions (gap > one criticality level).
    pub severe_inversions: u64,
    /// Jain's index between equal-criticality workloads, when there are some.
    pub fairness: Vec<Fairness>,
    /// Largest sampled queue depth.
    pub max_queue_depth: u64,
    /// Mean sampled queue depth.
    pub mean_queue_depth: f64,
    /// Requests cancelled unresolved at the end of the drain.
    pub unfinished: usize,
    /// The scenario's targets.
    pub checks: Vec<Check>,
}

fn class_stats(label: String, criticality: u8, records: &[&Record], duration_s: f64) -> ClassStats {
    let end_ns = (duration_s * 1e9) as u64;
    let mut shed: BTreeMap<String, u64> = BTreeMap::new();
    let mut waits = Vec::new();
    let mut in_window = 0u64;
    for r in records {
        match r.outcome {
            Some(Outcome::Dispatched) => {
                waits.push(r.end_ns - r.submit_ns);
                in_window += u64::from(r.end_ns < end_ns);
            }
            Some(o) => *shed.entry(o.label().to_string()).or_default() += 1,
            None => *shed.entry("unfinished".into()).or_default() += 1,
        }
    }
    let submitted = records.len() as u64;
    let shed_total: u64 = shed.iter().filter(|(k, _)| *k != "unfinished").map(|(_, v)| v).sum();
    let wait = Summary::of_ns(&mut waits);
    ClassStats {
        label,
        criticality,
        submitted,
        dispatched: waits.len() as u64,
        shed,
        shed_fraction: if submitted == 0 { 0.0 } else { shed_total as f64 / submitted as f64 },
        throughput_per_s: in_window as f64 / duration_s,
        wait,
        waits_ns: waits,
    }
}

/// Count priority inversions (see the module docs); returns (dispatches, inversions, severe).
pub fn count_inversions(records: &[Record], workloads: usize, scoring: &ScoringConfig) -> (u64, u64, u64) {
    let score = SeedScore::new(scoring);
    let window_ns = scoring.rate_window.as_nanos() as u64;
    let window_s = scoring.rate_window.as_secs_f64();
    let mut arrivals: Vec<Vec<u64>> = vec![Vec::new(); workloads];
    for r in records {
        arrivals[r.workload].push(r.submit_ns);
    }
    for a in &mut arrivals {
        a.sort_unstable();
    }
    let rate = |w: usize, t: u64| {
        let a = &arrivals[w];
        let hi = a.partition_point(|&x| x <= t);
        let lo = a.partition_point(|&x| x + window_ns <= t);
        (hi - lo) as f64 / window_s
    };
    let mut by_submit: Vec<usize> = (0..records.len()).collect();
    by_submit.sort_by_key(|&i| records[i].submit_ns);
    let mut by_end: Vec<usize> = (0..records.len()).filter(|&i| records[i].end_ns != u64::MAX).collect();
    by_end.sort_by_key(|&i| records[i].end_ns);
    let dispatches: Vec<usize> =
        by_end.iter().copied().filter(|&i| records[i].outcome == Some(Outcome::Dispatched)).collect();
    let mut pending: Vec<BTreeSet<(u64, usize)>> = vec![BTreeSet::new(); workloads];
    let (mut ai, mut ri) = (0, 0);
    let (mut inversions, mut severe) = (0, 0);
    for &d in &dispatches {
        let t = records[d].end_ns;
        while ai < by_submit.len() && records[by_submit[ai]].submit_ns + INVERSION_GRACE_NS <= t {
            let r = &records[by_submit[ai]];
            if r.end_ns > t + SAME_PASS_NS {
                pending[r.workload].insert((r.submit_ns, by_submit[ai]));
            }
            ai += 1;
        }
        while ri < by_end.len() && records[by_end[ri]].end_ns <= t + SAME_PASS_NS {
            let r = &records[by_end[ri]];
            pending[r.workload].remove(&(r.submit_ns, by_end[ri]));
            ri += 1;
        }
        let rd = &records[d];
        let mine = score.score((t - rd.submit_ns) as f64 / 1e9, rd.criticality, rate(rd.workload, t));
        // Within a workload (one criticality, one rate) the oldest pending request scores best.
        let best = pending
            .iter()
            .enumerate()
            .filter_map(|(wl, set)| set.first().map(|&(s, i)| (wl, s, records[i].criticality)))
            .map(|(wl, s, c)| score.score((t - s) as f64 / 1e9, c, rate(wl, t)))
            .fold(f64::NEG_INFINITY, f64::max);
        if best > mine + INVERSION_EPS {
            inversions += 1;
        }
        if best > mine + SEVERE_EPS {
            severe += 1;
        }
    }
    (dispatches.len() as u64, inversions, severe)
}

/// Analyse one run of `sc`.
pub fn analyse(sc: &Scenario, data: &RunData) -> RunResult {
    let mut crits: Vec<u8> = sc.workloads.iter().map(|w| w.criticality).collect();
    crits.sort_unstable();
    crits.dedup();
    let per_criticality: Vec<ClassStats> = crits
        .iter()
        .map(|&c| {
            let recs: Vec<&Record> = data.records.iter().filter(|r| r.criticality == c).collect();
            class_stats(format!("crit {c}"), c, &recs, sc.duration_s)
        })
        .collect();
    let per_workload: Vec<ClassStats> = sc
        .workloads
        .iter()
        .enumerate()
        .map(|(i, wl)| {
            let recs: Vec<&Record> = data.records.iter().filter(|r| r.workload == i).collect();
            class_stats(wl.name.clone(), wl.criticality, &recs, sc.duration_s)
        })
        .collect();
    let (dispatches, inversions, severe_inversions) =
        count_inversions(&data.records, sc.workloads.len(), &sc.scoring());
    let mut fairness = Vec::new();
    for &c in &crits {
        let group: Vec<usize> =
            (0..sc.workloads.len()).filter(|&i| sc.workloads[i].criticality == c).collect();
        if group.len() < 2 {
            continue;
        }
        let got: Vec<f64> = group.iter().map(|&i| per_workload[i].throughput_per_s).collect();
        let demands: Vec<f64> = group.iter().map(|&i| sc.demand(i)).collect();
        let shares = maxmin_shares(got.iter().sum(), &demands);
        let normalized: Vec<f64> =
            got.iter().zip(&shares).map(|(g, s)| if *s > 0.0 { g / s } else { 1.0 }).collect();
        fairness.push(Fairness {
            workloads: group.iter().map(|&i| sc.workloads[i].name.clone()).collect(),
            jain: jain(&normalized),
            normalized_throughput: normalized,
        });
    }
    let max_queue_depth = data.depth_samples.iter().copied().max().unwrap_or(0);
    let mean_queue_depth =
        data.depth_samples.iter().sum::<u64>() as f64 / data.depth_samples.len().max(1) as f64;
    let mut result = RunResult {
        implementation: data.implementation.clone(),
        per_criticality,
        per_workload,
        dispatches,
        inversions,
        severe_inversions,
        fairness,
        max_queue_depth,
        mean_queue_depth,
        unfinished: data.unfinished,
        checks: Vec::new(),
    };
    result.checks = checks(sc, &result);
    result
}

fn crit(r: &RunResult, c: u8) -> Option<&ClassStats> {
    r.per_criticality.iter().find(|s| s.criticality == c)
}

/// The scenario's targets for one run.
fn checks(sc: &Scenario, r: &RunResult) -> Vec<Check> {
    let mut out = Vec::new();
    let mut check = |name: String, value: String, pass: bool| out.push(Check { name, value, pass });
    let max_ms = |c: u8| crit(r, c).map_or(0.0, |s| s.wait.max_ms);
    let all_served = |c: u8| crit(r, c).is_some_and(|s| s.dispatched == s.submitted);
    match sc.name.as_str() {
        "basic_priority" => {
            let p50 = |c: u8| crit(r, c).map_or(0.0, |s| s.wait.p50_ms);
            check(
                "p50 wait: crit 5 < crit 3 < crit 1, each by ≥ 20%".into(),
                format!("{} < {} < {} ms", ms(p50(5)), ms(p50(3)), ms(p50(1))),
                p50(5) <= 0.8 * p50(3) && p50(3) <= 0.8 * p50(1),
            );
        }
        "wait_boost" | "starvation" => {
            for c in [1u8, 2] {
                if crit(r, c).is_none() {
                    continue;
                }
                // Aging threshold against a fresh crit-5, plus the wait of the crit-5 it must beat
                // and one service time; a quarter of wait_cap of slack for the rescore lag and rates.
                let high = crit(r, 5).map_or(0.0, |s| s.wait.p99_ms);
                let bound = sc.aging_threshold_s(c) * 1e3 + high + sc.service_ms + 0.25 * sc.wait_cap_s * 1e3;
                check(
                    format!("crit {c}: all served, max wait ≤ aging bound"),
                    format!("max {} ms, bound {} ms, served {}", ms(max_ms(c)), ms(bound), all_served(c)),
                    all_served(c) && max_ms(c) <= bound,
                );
            }
        }
        "rate_fairness" => {
            for f in &r.fairness {
                check(
                    format!("Jain's index {} ≥ 0.95", f.workloads.join("/")),
                    format!("{:.3}", f.jain),
                    f.jain >= 0.95,
                );
            }
        }
        "mixed_30_50_20" => {
            let (p5, p1) =
                (crit(r, 5).map_or(0.0, |s| s.wait.p99_ms), crit(r, 1).map_or(0.0, |s| s.wait.p99_ms));
            check(
                "p99 wait crit 5 ≤ p99 crit 1 / 5".into(),
                format!("{} vs {} ms ({:.1}x)", ms(p5), ms(p1), p1 / p5.max(1e-9)),
                p5 * 5.0 <= p1,
            );
        }
        "overload" => {
            // The engine documents a cross-shard displacement overshoot of at most one per shard.
            let slack = match r.implementation.strip_prefix("flowgate-").and_then(|s| s.strip_suffix("sh")) {
                Some(n) => n.parse::<u64>().unwrap_or(0),
                None => 0,
            };
            check(
                format!("queue bounded at {} (+{slack}: one per shard)", sc.max_requests),
                format!("max sampled depth {}", r.max_queue_depth),
                r.max_queue_depth <= sc.max_requests + slack,
            );
            let fr: Vec<f64> = (1..=5).map(|c| crit(r, c).map_or(0.0, |s| s.shed_fraction)).collect();
            let monotone = fr.windows(2).all(|w| w[1] <= w[0] + 0.02);
            check(
                "lowest criticality shed first (shed fraction falls with criticality)".into(),
                fr.iter().map(|f| format!("{:.0}%", f * 100.0)).collect::<Vec<_>>().join(" / "),
                monotone && fr[4] < fr[0],
            );
        }
        _ => {}
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The subcommand.

/// One scenario's report.
#[derive(Debug, Serialize)]
pub struct ScenarioReport {
    /// The scenario.
    pub scenario: Scenario,
    /// Pool capacity, requests/s.
    pub capacity_per_s: f64,
    /// One per implementation.
    pub results: Vec<RunResult>,
    /// The CDF plot.
    pub svg: String,
}

/// The `scenarios` report.
#[derive(Debug, Serialize)]
pub struct ScenariosReport {
    /// Run facts.
    pub run: RunInfo,
    /// Options.
    pub options: Options,
    /// How inversions are judged.
    pub inversion_rule: String,
    /// Per scenario.
    pub scenarios: Vec<ScenarioReport>,
}

/// Run the `scenarios` subcommand.
pub fn run(opts: &Options, out_dir: &Path) -> std::io::Result<ScenariosReport> {
    let kinds = [Kind::Flowgate(opts.shards), Kind::Seed, Kind::Fifo];
    let mut reports = Vec::new();
    std::fs::create_dir_all(out_dir)?;
    for sc in all(opts) {
        if opts.only.as_deref().is_some_and(|o| o != sc.name) {
            continue;
        }
        let runs = if opts.sequential { kinds.len() } else { 1 } as f64;
        let bar = report::timed_bar(
            &format!("scenario {}", sc.name),
            Duration::from_secs_f64((sc.duration_s + 0.5) * runs),
        );
        let stop = AtomicBool::new(false);
        // Side by side (quick mode: the load is light, a few hundred requests/s, each run on its own
        // driver thread with the same arrival schedule) or one after another.
        let groups: Vec<Vec<Kind>> =
            if opts.sequential { kinds.iter().map(|&k| vec![k]).collect() } else { vec![kinds.to_vec()] };
        let t0 = Instant::now();
        let mut datas: Vec<RunData> = Vec::new();
        for group in groups {
            datas.extend(std::thread::scope(|s| {
                let (sc, stop) = (&sc, &stop);
                let handles: Vec<_> = group.iter().map(|&k| s.spawn(move || run_one(sc, k, stop))).collect();
                while !handles.iter().all(|h| h.is_finished()) {
                    std::thread::sleep(Duration::from_millis(50));
                    bar.set_position(t0.elapsed().as_millis() as u64);
                }
                handles.into_iter().map(|h| h.join().expect("scenario run")).collect::<Vec<_>>()
            }));
        }
        bar.finish_and_clear();
        let results: Vec<RunResult> = datas.iter().map(|d| analyse(&sc, d)).collect();
        let svg = out_dir.join(format!("scenario-{}.svg", sc.name));
        let panels: Vec<(String, Vec<CdfLine>)> = results
            .iter()
            .map(|r| {
                let lines = r
                    .per_criticality
                    .iter()
                    .map(|c| CdfLine {
                        label: c.label.clone(),
                        criticality: c.criticality,
                        waits_ns: c.waits_ns.clone(),
                    })
                    .collect();
                (r.implementation.clone(), lines)
            })
            .collect();
        plot::cdf_panels(&svg, &format!("{}: wait CDF per criticality", sc.name), &panels)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let rep = ScenarioReport {
            capacity_per_s: sc.capacity_per_s(),
            scenario: sc,
            results,
            svg: svg.display().to_string(),
        };
        print!("{}", render(&rep));
        reports.push(rep);
    }
    let report = ScenariosReport {
        run: RunInfo::now(opts.quick),
        options: opts.clone(),
        inversion_rule: format!(
            "at each dispatch, some request submitted at least {} ms earlier and still pending 0.2 ms later scored more than {INVERSION_EPS} (severe: {SEVERE_EPS}) above the dispatched one by the seed formula with exact sliding-window rates",
            INVERSION_GRACE_NS as f64 / 1e6
        ),
        scenarios: reports,
    };
    report::write_json(out_dir, "scenarios", &report)?;
    Ok(report)
}

/// The stdout summary of one scenario.
pub fn render(rep: &ScenarioReport) -> String {
    let sc = &rep.scenario;
    let mut s = format!(
        "\n== scenario {}: {} ==\n   pool {} slots × {} ms ({:.0} req/s), wait_cap {} s, {} s of arrivals\n",
        sc.name, sc.description, sc.slots, sc.service_ms, rep.capacity_per_s, sc.wait_cap_s, sc.duration_s
    );
    let mut t = Table::new(&[
        "implementation",
        "class",
        "submitted",
        "dispatched",
        "shed",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
    ]);
    for r in &rep.results {
        let classes =
            if sc.workloads.len() > r.per_criticality.len() { &r.per_workload } else { &r.per_criticality };
        for c in classes {
            let shed: u64 = c.shed.iter().filter(|(k, _)| *k != "unfinished").map(|(_, v)| v).sum();
            let label = if std::ptr::eq(classes, &r.per_workload) {
                format!("{} (crit {})", c.label, c.criticality)
            } else {
                c.label.clone()
            };
            t.row(vec![
                r.implementation.clone(),
                label,
                c.submitted.to_string(),
                c.dispatched.to_string(),
                shed.to_string(),
                ms(c.wait.p50_ms),
                ms(c.wait.p95_ms),
                ms(c.wait.p99_ms),
                ms(c.wait.max_ms),
            ]);
        }
    }
    s.push_str(&t.render());
    let mut t =
        Table::new(&["implementation", "inversions", "severe", "jain", "max depth", "unfinished", "checks"]);
    for r in &rep.results {
        let jain = r.fairness.iter().map(|f| format!("{:.3}", f.jain)).collect::<Vec<_>>().join(",");
        let checks = r
            .checks
            .iter()
            .map(|c| format!("{} {}: {}", if c.pass { "PASS" } else { "MISS" }, c.name, c.value))
            .collect::<Vec<_>>()
            .join("; ");
        t.row(vec![
            r.implementation.clone(),
            format!("{}/{}", r.inversions, r.dispatches),
            r.severe_inversions.to_string(),
            if jain.is_empty() { "-".into() } else { jain },
            r.max_queue_depth.to_string(),
            r.unfinished.to_string(),
            checks,
        ]);
    }
    s.push_str(&t.render());
    s.push_str(&format!("   plot: {}\n", rep.svg));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(workload: usize, criticality: u8, submit_ms: u64, end_ms: u64) -> Record {
        Record {
            workload,
            criticality,
            submit_ns: submit_ms * 1_000_000,
            end_ns: end_ms * 1_000_000,
            outcome: Some(Outcome::Dispatched),
        }
    }

    #[test]
    fn inversions_are_judged_at_dispatch_time() {
        let scoring = ScoringConfig::default();
        // Workload 0 is crit 1, workload 1 crit 5. Both arrive at 0.
        // In order (crit 5 first): no inversion.
        let good = vec![rec(1, 5, 0, 10), rec(0, 1, 0, 20)];
        assert_eq!(count_inversions(&good, 2, &scoring), (2, 0, 0));
        // Crit 1 dispatched while crit 5 waits: a severe inversion.
        let bad = vec![rec(0, 1, 0, 10), rec(1, 5, 0, 20)];
        assert_eq!(count_inversions(&bad, 2, &scoring), (2, 1, 1));
        // A crit-5 request submitted after the crit-1 dispatch does not count against it, nor one
        // submitted within the grace period before it.
        let later = vec![rec(0, 1, 0, 10), rec(1, 5, 11, 20)];
        assert_eq!(count_inversions(&later, 2, &scoring), (2, 0, 0));
        let racing = vec![Record { submit_ns: 9_500_000, ..rec(1, 5, 0, 20) }, rec(0, 1, 0, 10)];
        assert_eq!(count_inversions(&racing, 2, &scoring), (2, 0, 0));
        // Dispatched in the same instant (or the same pass): not an inversion.
        let same = vec![rec(0, 1, 0, 10), rec(1, 5, 0, 10)];
        assert_eq!(count_inversions(&same, 2, &scoring), (2, 0, 0));
        let pass = vec![rec(0, 1, 0, 10), Record { end_ns: 10_100_000, ..rec(1, 5, 0, 0) }];
        assert_eq!(count_inversions(&pass, 2, &scoring), (2, 0, 0));
        // An unresolved (or shed later) crit-5 request counts as pending.
        let mut shed = rec(1, 5, 0, 0);
        shed.end_ns = u64::MAX;
        shed.outcome = None;
        assert_eq!(count_inversions(&[rec(0, 1, 0, 10), shed], 2, &scoring), (1, 1, 1));
    }

    #[test]
    fn aging_lets_an_old_request_through_without_an_inversion() {
        let scoring = ScoringConfig::default();
        // A crit-1 request that waited 50 s beats a fresh crit-5 (0.08 + 0.333 > 0.4).
        let recs = vec![rec(0, 1, 0, 50_000), rec(1, 5, 49_990, 50_010)];
        assert_eq!(count_inversions(&recs, 2, &scoring).1, 0);
        // ...but not after 40 s (0.08 + 0.267 < 0.4).
        let recs = vec![rec(0, 1, 0, 40_000), rec(1, 5, 39_990, 40_010)];
        assert_eq!(count_inversions(&recs, 2, &scoring).1, 1);
    }

    #[test]
    fn schedules_are_deterministic_and_bounded() {
        let opts = Options {
            quick: true,
            slots: 8,
            service_ms: 20.0,
            shards: 2,
            duration_s: 1.0,
            wait_cap_s: 1.0,
            only: None,
            sequential: false,
        };
        let scs = all(&opts);
        assert_eq!(scs.len(), 6);
        for sc in &scs {
            let a = sc.schedule();
            assert_eq!(a, sc.schedule());
            assert!(a.windows(2).all(|w| w[0].0 <= w[1].0));
            assert!(a.iter().all(|&(t, _)| t < 1_000_000_000 + 1_000_000));
        }
        let overload = scs.iter().find(|s| s.name == "overload").unwrap();
        let n = overload.schedule().len() as f64;
        assert!((n - 800.0).abs() < 150.0, "2x of 400 req/s for 1 s: {n}");
        assert!((overload.aging_threshold_s(1) - 0.8).abs() < 1e-9);
    }

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
