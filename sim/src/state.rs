//! What the HTTP handlers and the scheduler share: counters, live queue sizes, forced values and
//! the metrics mode. One mutex guards the counters; every critical section is a few field
//! updates, never an await.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{SimConfig, MAX_WORKLOADS, OTHER_WORKLOAD};
use crate::histogram::Histogram;

/// Per-workload totals in [`SimStats::per_workload`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    /// Inference requests received (accepted or rejected) for this workload.
    pub requests: u64,
    /// Prompt tokens prefilled for this workload.
    pub prompt_tokens: u64,
    /// Completion tokens generated for this workload.
    pub completion_tokens: u64,
}

/// Counters and live state, as `GET /admin/stats` returns them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Well-formed inference requests received, including rejected ones.
    pub requests_total: u64,
    /// Requests whose every token was generated.
    pub completed_total: u64,
    /// Requests refused for capacity: 429 (waiting queue full) or 400 (can never fit the KV
    /// budget).
    pub rejected_total: u64,
    /// Sequences running now; at most `max_num_seqs`.
    pub running: u64,
    /// Requests waiting for a seat now; at most `max_waiting`.
    pub waiting: u64,
    /// Highest `running` seen since start or reset.
    pub max_running_seen: u64,
    /// Highest `running + waiting` seen since start or reset.
    pub max_in_system_seen: u64,
    /// Prompt tokens prefilled.
    pub prompt_tokens_total: u64,
    /// Completion tokens generated.
    pub completion_tokens_total: u64,
    /// KV tokens reserved by running sequences now; at most `kv_tokens`.
    pub kv_tokens_used: u64,
    /// Totals per workload id; at most [`MAX_WORKLOADS`] ids plus [`OTHER_WORKLOAD`].
    pub per_workload: BTreeMap<String, WorkloadStats>,
}

/// Values `/metrics` reports instead of the live ones; `None` reports the live value.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Force {
    /// Reported number of waiting requests.
    #[serde(default)]
    pub waiting: Option<f64>,
    /// Reported number of running requests.
    #[serde(default)]
    pub running: Option<f64>,
    /// Reported KV-cache usage, as a fraction (0..1).
    #[serde(default)]
    pub kv_cache_usage: Option<f64>,
}

/// How `GET /metrics` answers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetricsMode {
    /// A normal metrics page.
    #[default]
    Ok,
    /// No answer until the mode changes (or [`crate::metrics::MAX_STALL`] passes).
    Stall,
    /// 500.
    Error,
    /// 200 with a body that is not a metrics page.
    Garbage,
}

/// Counters behind [`SimStats`] plus what only `/metrics` shows.
#[derive(Debug, Default)]
pub struct Counters {
    /// The stats as reported; `running`, `waiting` and `kv_tokens_used` are the live values.
    pub stats: SimStats,
    /// Sequences prefilled in the latest engine step (Triton's `context` requests).
    pub prefilling: u64,
    /// Time to first token of completed prefills, in seconds.
    pub ttft: Histogram,
    /// Arrival-to-last-token latency of completed requests, in seconds.
    pub e2e: Histogram,
}

impl Counters {
    /// Raise the peaks to the current live values.
    pub fn note_peaks(&mut self) {
        let s = &mut self.stats;
        s.max_running_seen = s.max_running_seen.max(s.running);
        s.max_in_system_seen = s.max_in_system_seen.max(s.running + s.waiting);
    }

    /// The per-workload entry for `id`, or [`OTHER_WORKLOAD`]'s when the map already holds
    /// [`MAX_WORKLOADS`] other ids. Returns the key used.
    pub fn workload_key(&mut self, id: &str) -> String {
        let map = &mut self.stats.per_workload;
        let known = map.contains_key(id);
        let ids = map.len() - usize::from(map.contains_key(OTHER_WORKLOAD));
        let key = if known || ids < MAX_WORKLOADS { id } else { OTHER_WORKLOAD };
        map.entry(key.to_string()).or_default();
        key.to_string()
    }

    /// Apply `f` to the entry of `key`, re-creating it (within the bound) if a reset removed it.
    pub fn add_workload(&mut self, key: &str, f: impl FnOnce(&mut WorkloadStats)) {
        if let Some(w) = self.stats.per_workload.get_mut(key) {
            return f(w);
        }
        let key = self.workload_key(key);
        if let Some(w) = self.stats.per_workload.get_mut(&key) {
            f(w);
        }
    }

    /// Zero the counters, histograms and per-workload totals; the peaks restart from the live
    /// values; the live values stay.
    pub fn reset(&mut self) {
        let s = &self.stats;
        let (running, waiting, kv) = (s.running, s.waiting, s.kv_tokens_used);
        *self = Counters::default();
        self.stats.running = running;
        self.stats.waiting = waiting;
        self.stats.kv_tokens_used = kv;
        self.note_peaks();
    }
}

/// State shared by every handler and the scheduler.
#[derive(Debug)]
pub struct Shared {
    /// The configuration the simulator started with (validated).
    pub config: SimConfig,
    /// Counters and live values.
    counters: Mutex<Counters>,
    /// Values forced onto `/metrics`.
    force: Mutex<Force>,
    /// The metrics mode; `/metrics` handlers in [`MetricsMode::Stall`] wait on it.
    pub mode: watch::Sender<MetricsMode>,
}

impl Shared {
    /// Fresh state for `config`.
    pub fn new(config: SimConfig) -> Arc<Shared> {
        Arc::new(Shared {
            config,
            counters: Mutex::new(Counters::default()),
            force: Mutex::new(Force::default()),
            mode: watch::Sender::new(MetricsMode::Ok),
        })
    }

    /// Lock the counters (a poisoned lock is taken over: counters stay usable).
    pub fn counters(&self) -> MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the stats.
    pub fn stats(&self) -> SimStats {
        self.counters().stats.clone()
    }

    /// The forced values.
    pub fn force(&self) -> Force {
        *self.force.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace the forced values.
    pub fn set_force(&self, f: Force) {
        *self.force.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    /// Change the metrics mode, waking stalled `/metrics` handlers.
    pub fn set_mode(&self, m: MetricsMode) {
        self.mode.send_replace(m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_ids_beyond_the_bound_share_the_other_key() {
        let mut c = Counters::default();
        for i in 0..MAX_WORKLOADS {
            assert_eq!(c.workload_key(&format!("w{i}")), format!("w{i}"));
        }
        assert_eq!(c.workload_key("one-too-many"), OTHER_WORKLOAD);
        assert_eq!(c.workload_key("another"), OTHER_WORKLOAD);
        assert_eq!(c.workload_key("w7"), "w7");
        assert_eq!(c.stats.per_workload.len(), MAX_WORKLOADS + 1);
    }

    #[test]
    fn reset_keeps_live_values_and_restarts_peaks_from_them() {
        let mut c = Counters::default();
        c.stats.requests_total = 9;
        c.stats.running = 2;
        c.stats.waiting = 1;
        c.stats.max_running_seen = 8;
        c.reset();
        assert_eq!(c.stats.requests_total, 0);
        assert_eq!((c.stats.running, c.stats.waiting), (2, 1));
        assert_eq!((c.stats.max_running_seen, c.stats.max_in_system_seen), (2, 3));
    }
}
