//! The engine loop: continuous batching as vLLM does it.
//!
//! Handlers [`submit`] requests; one scheduler task ([`run`]) owns the waiting queue and the
//! running batch. Each engine step:
//!
//! 1. drops sequences whose client went away (their seat and KV are free for this step);
//! 2. admits waiting sequences first come, first served while a seat (`max_num_seqs`) and KV
//!    room (prompt + completion tokens of `kv_tokens`) are free, stopping at the first that does
//!    not fit;
//! 3. lasts `prefill_us_per_token × prompt tokens admitted` plus `decode_step_ms` when a running
//!    sequence is past prefill, all divided by `speed`;
//! 4. ends with one new token for every running sequence (a new sequence's first token comes
//!    out of its prefill step); finished sequences leave and free their KV.
//!
//! With nothing to run the task waits for an arrival (no timer, no spinning).
//!
//! Handlers learn of progress through a `watch` channel per request holding the number of
//! tokens generated so far: bounded by construction, and the scheduler never waits on a slow
//! client. A dropped receiver means the client left.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::state::Shared;

/// Longest single engine step; longer computed costs are cut to this.
pub const MAX_STEP: Duration = Duration::from_secs(3600);

/// How far behind its schedule the loop may fall before it stops catching up (after a stall
/// of the host, steps restart from now instead of running back to back).
const MAX_LAG: Duration = Duration::from_millis(100);

/// One request handed to the scheduler.
#[derive(Debug)]
pub struct Arrival {
    /// Prompt tokens; ≥ 1.
    pub prompt_tokens: u32,
    /// Tokens to generate; ≥ 1, and `prompt_tokens + max_tokens <= kv_tokens`.
    pub max_tokens: u32,
    /// Key in `per_workload` the request's tokens are counted under.
    pub workload: String,
    /// When the request arrived (for latency histograms).
    pub arrived: Instant,
    /// Tokens generated so far; the scheduler drops it when the request ends.
    pub progress: watch::Sender<u32>,
}

impl Arrival {
    fn kv(&self) -> u64 {
        u64::from(self.prompt_tokens) + u64::from(self.max_tokens)
    }
}

/// Why [`submit`] refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Prompt plus completion exceed the whole KV budget: it could never run (400).
    NeverFits {
        /// Tokens the request needs.
        needed: u64,
        /// The budget.
        kv_tokens: u64,
    },
    /// `max_waiting` requests are already waiting (429).
    QueueFull,
    /// The scheduler has stopped (503).
    ShuttingDown,
}

/// Handle through which handlers reach the scheduler.
#[derive(Clone, Debug)]
pub struct Submitter {
    /// Arrivals to the scheduler. Holds at most `max_waiting` items: each is counted in
    /// `waiting` before it is sent.
    tx: mpsc::Sender<Arrival>,
}

/// The arrival channel: the [`Submitter`] for handlers, the receiver for [`run`].
pub fn channel(shared: &Shared) -> (Submitter, mpsc::Receiver<Arrival>) {
    let (tx, rx) = mpsc::channel(shared.config.max_waiting.max(1));
    (Submitter { tx }, rx)
}

/// Queue a request: counts it, checks the KV budget and the waiting bound, and hands it to the
/// scheduler. The receiver reports tokens generated; it closes early if the simulator stops.
pub fn submit(
    shared: &Shared,
    submitter: &Submitter,
    prompt_tokens: u32,
    max_tokens: u32,
    workload_id: &str,
) -> Result<watch::Receiver<u32>, Refusal> {
    let kv_tokens = shared.config.kv_tokens;
    let needed = u64::from(prompt_tokens) + u64::from(max_tokens);
    let workload = {
        let mut c = shared.counters();
        c.stats.requests_total += 1;
        let key = c.workload_key(workload_id);
        c.add_workload(&key, |w| w.requests += 1);
        if needed > kv_tokens {
            c.stats.rejected_total += 1;
            return Err(Refusal::NeverFits { needed, kv_tokens });
        }
        if c.stats.waiting >= shared.config.max_waiting as u64 {
            c.stats.rejected_total += 1;
            return Err(Refusal::QueueFull);
        }
        c.stats.waiting += 1;
        c.note_peaks();
        key
    };
    let (progress, rx) = watch::channel(0);
    let arrival = Arrival { prompt_tokens, max_tokens, workload, arrived: Instant::now(), progress };
    if submitter.tx.try_send(arrival).is_err() {
        let mut c = shared.counters();
        c.stats.waiting = c.stats.waiting.saturating_sub(1);
        return Err(Refusal::ShuttingDown);
    }
    Ok(rx)
}

/// A sequence in the running batch.
struct Running {
    /// The request.
    arrival: Arrival,
    /// Tokens generated; `< arrival.max_tokens` while running.
    generated: u32,
}

/// Duration of `seconds / speed`, capped at [`MAX_STEP`].
fn scaled(seconds: f64, speed: f64) -> Duration {
    Duration::try_from_secs_f64(seconds / speed).map_or(MAX_STEP, |d| d.min(MAX_STEP))
}

/// The scheduler task: runs until `shutdown` turns true or every [`Submitter`] is dropped.
/// Dropping the queues on exit closes every request's progress channel.
pub async fn run(
    shared: Arc<Shared>,
    mut arrivals: mpsc::Receiver<Arrival>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cfg = &shared.config;
    let mut waiting: VecDeque<Arrival> = VecDeque::new();
    let mut running: Vec<Running> = Vec::with_capacity(cfg.max_num_seqs.min(1024));
    let mut kv_used: u64 = 0;
    let mut step_start = Instant::now();
    loop {
        if running.is_empty() && waiting.is_empty() {
            tokio::select! {
                a = arrivals.recv() => match a {
                    Some(a) => waiting.push_back(a),
                    None => return,
                },
                _ = shutdown.wait_for(|s| *s) => return,
            }
            step_start = Instant::now();
        }
        while let Ok(a) = arrivals.try_recv() {
            waiting.push_back(a);
        }

        // Clients that left free their place at once.
        let before = waiting.len();
        waiting.retain(|a| !a.progress.is_closed());
        let left_waiting = (before - waiting.len()) as u64;
        running.retain(|r| {
            let gone = r.arrival.progress.is_closed();
            if gone {
                kv_used -= r.arrival.kv();
            }
            !gone
        });

        // Admission, first come first served.
        let decoding = !running.is_empty();
        let mut admitted = 0u64;
        let mut prefill_tokens = 0u64;
        while let Some(front) = waiting.front() {
            if running.len() >= cfg.max_num_seqs || kv_used + front.kv() > cfg.kv_tokens {
                break;
            }
            let Some(a) = waiting.pop_front() else { break };
            kv_used += a.kv();
            prefill_tokens += u64::from(a.prompt_tokens);
            admitted += 1;
            running.push(Running { arrival: a, generated: 0 });
        }
        {
            let mut c = shared.counters();
            let s = &mut c.stats;
            s.waiting = s.waiting.saturating_sub(left_waiting + admitted);
            s.running = running.len() as u64;
            s.kv_tokens_used = kv_used;
            s.prompt_tokens_total += prefill_tokens;
            c.prefilling = admitted;
            let new = running.len() - admitted as usize;
            for r in &running[new..] {
                c.add_workload(&r.arrival.workload, |w| {
                    w.prompt_tokens += u64::from(r.arrival.prompt_tokens)
                });
            }
            c.note_peaks();
        }
        if running.is_empty() {
            continue;
        }

        // The step itself.
        let mut seconds = cfg.prefill_us_per_token * prefill_tokens as f64 / 1e6;
        if decoding {
            seconds += cfg.decode_step_ms / 1e3;
        }
        let cost = scaled(seconds, cfg.speed);
        let now = Instant::now();
        if step_start + MAX_LAG < now {
            step_start = now;
        }
        let end = step_start + cost;
        if cost.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::select! {
                _ = tokio::time::sleep_until(end) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        step_start = end;

        // One token for every running sequence.
        let now = Instant::now();
        let mut c = shared.counters();
        let new = running.len() - admitted as usize;
        for r in &running[new..] {
            c.ttft.observe((now - r.arrival.arrived).as_secs_f64());
        }
        c.stats.completion_tokens_total += running.len() as u64;
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            r.generated += 1;
            r.arrival.progress.send_replace(r.generated);
            c.add_workload(&r.arrival.workload, |w| w.completion_tokens += 1);
            if r.generated >= r.arrival.max_tokens {
                let done = running.swap_remove(i);
                kv_used -= done.arrival.kv();
                c.stats.completed_total += 1;
                c.e2e.observe((now - done.arrival.arrived).as_secs_f64());
            } else {
                i += 1;
            }
        }
        c.stats.running = running.len() as u64;
        c.stats.kv_tokens_used = kv_used;
    }
}
