//! Checking an [`EngineConfig`]: [`EngineConfig::validate`] names every impossible value with its
//! field path, [`EngineConfig::warnings`] what is valid but likely not meant.

use crate::config::*;
use crate::quota_rule::MAX_QUOTAS;
use std::time::Duration;

impl EngineConfig {
    /// What is valid but likely not meant, `path: reason` like [`validate`](Self::validate)'s
    /// errors: each backend without a cap ([`UNCAPPED_WARNING`]) under detector `concurrency`.
    ///
    /// ```
    /// let mut c = flowgate_engine::config::EngineConfig::default();
    /// c.backends[0].max_inflight = 0;
    /// assert!(c.validate().is_empty());
    /// assert_eq!(c.warnings()[0].path, "backends[0].max_inflight");
    /// ```
    pub fn warnings(&self) -> Vec<ConfigError> {
        if self.saturation.detector.uses_metrics() {
            return Vec::new();
        }
        let uncapped = self.backends.iter().enumerate().filter(|(_, b)| b.max_inflight == 0);
        uncapped
            .map(|(i, _)| ConfigError {
                path: format!("backends[{i}].max_inflight"),
                reason: UNCAPPED_WARNING.into(),
            })
            .collect()
    }

    /// Every problem with this configuration (empty = valid).
    ///
    /// ```
    /// let mut c = flowgate_engine::config::EngineConfig::default();
    /// assert!(c.validate().is_empty());
    /// c.scoring.rescore_interval = std::time::Duration::ZERO;
    /// assert_eq!(c.validate()[0].path, "scoring.rescore_interval");
    /// ```
    pub fn validate(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut bad =
            |path: &str, reason: String| errors.push(ConfigError { path: path.to_string(), reason });
        if self.shards > MAX_SHARDS {
            bad("shards", format!("{} is above the limit of {MAX_SHARDS}", self.shards));
        }
        if self.ring_capacity == 0 || self.ring_capacity > 1 << 20 {
            bad("ring_capacity", "must be between 1 and 1048576".into());
        }
        if self.max_submitters == 0 || self.max_submitters > 65_536 {
            bad("max_submitters", "must be between 1 and 65536".into());
        }
        if self.max_backends == 0 || self.max_backends > MAX_BACKENDS {
            bad("max_backends", format!("must be between 1 and {MAX_BACKENDS}"));
        }
        if self.backends.len() > self.max_backends.clamp(1, MAX_BACKENDS) {
            bad("backends", format!("more than max_backends ({}) backends", self.max_backends));
        }
        for (i, b) in self.backends.iter().enumerate() {
            if b.max_inflight > MAX_BACKEND_INFLIGHT {
                bad(
                    &format!("backends[{i}].max_inflight"),
                    format!("must be at most {MAX_BACKEND_INFLIGHT} (0 = no concurrency cap)"),
                );
            }
            if b.address.parse::<std::net::SocketAddr>().is_err() {
                bad(&format!("backends[{i}].address"), format!("{:?} is not an ip:port", b.address));
            }
        }
        if self.queue.ttl.is_zero() || self.queue.ttl > MAX_TTL {
            bad("queue.ttl", format!("must be above 0 and at most {}s", MAX_TTL.as_secs()));
        }
        let s = &self.scoring;
        for (path, w) in [
            ("scoring.wait_weight", s.wait_weight),
            ("scoring.criticality_weight", s.criticality_weight),
            ("scoring.rate_weight", s.rate_weight),
        ] {
            if !(w.is_finite() && (0.0..=1000.0).contains(&w)) {
                bad(path, format!("{w} must be a finite number between 0 and 1000"));
            }
        }
        if s.wait_cap.is_zero() || s.wait_cap > Duration::from_secs(86_400) {
            bad("scoring.wait_cap", "must be above 0 and at most 24h".into());
        }
        if !(s.rate_cap_per_s.is_finite() && s.rate_cap_per_s > 0.0) {
            bad("scoring.rate_cap", format!("{} must be a positive number", s.rate_cap_per_s));
        }
        if s.rate_window < Duration::from_millis(RATE_BUCKETS as u64)
            || s.rate_window > Duration::from_secs(86_400)
        {
            bad("scoring.rate_window", format!("must be between {RATE_BUCKETS}ms and 24h"));
        }
        if s.rescore_interval.is_zero() || s.rescore_interval > Duration::from_secs(60) {
            bad("scoring.rescore_interval", "must be above 0 and at most 60s".into());
        }
        for (path, w) in [
            ("scoring.input_token_weight", s.input_token_weight),
            ("scoring.output_token_weight", s.output_token_weight),
        ] {
            if !(w.is_finite() && (0.0..=MAX_TOKEN_WEIGHT).contains(&w)) {
                bad(path, format!("{w} must be a finite number between 0 and {MAX_TOKEN_WEIGHT}"));
            }
        }
        if !(s.vtc_cap_tokens.is_finite() && s.vtc_cap_tokens > 0.0) {
            bad("scoring.vtc_cap", format!("{} must be a positive number", s.vtc_cap_tokens));
        }
        let w = &self.workloads;
        if !(1..=5).contains(&w.default_criticality) {
            bad("workloads.default_criticality", "must be between 1 and 5".into());
        }
        if w.idle_timeout.is_zero() {
            bad("workloads.idle_timeout", "must be above 0".into());
        }
        if w.max_tracked == 0 || w.max_tracked > 10_000_000 {
            bad("workloads.max_tracked", "must be between 1 and 10000000".into());
        }
        for (i, cap) in w.caps.iter().enumerate() {
            let body = cap.pattern.strip_suffix('*').unwrap_or(&cap.pattern);
            if cap.pattern.is_empty() || body.contains('*') {
                bad(
                    &format!("workloads.caps[{i}].workload_id"),
                    "must be an exact id or a prefix with one trailing '*'".into(),
                );
            }
            if !(1..=5).contains(&cap.max_criticality) {
                bad(&format!("workloads.caps[{i}].max_criticality"), "must be between 1 and 5".into());
            }
        }
        if w.quotas.len() > MAX_QUOTAS {
            bad("workloads.quotas", format!("at most {MAX_QUOTAS} rules"));
        }
        for e in w.quotas.iter().enumerate().flat_map(|(i, q)| q.validate(i)) {
            bad(&e.path, e.reason);
        }
        if self.spin_before_park > MAX_SPIN_BEFORE_PARK {
            bad("spin_before_park", format!("must be at most {}ms", MAX_SPIN_BEFORE_PARK.as_millis()));
        }
        for (i, c) in self.ceilings.iter().enumerate() {
            if !(c.is_finite() && *c > 0.0 && *c <= 1.0) {
                bad(&format!("ceilings[{i}]"), format!("{c} must be in (0, 1]"));
            }
        }
        let sat = &self.saturation;
        let uncapped = self.backends.iter().position(|b| b.max_inflight == 0);
        if self.ceilings.iter().any(|c| *c < 1.0) {
            if let Some(i) = uncapped.filter(|_| sat.detector.uses_slots()) {
                bad(
                    "ceilings",
                    format!(
                        "ceilings below 1 need every backend to have a max_inflight (backends[{i}] has 0)"
                    ),
                );
            } else if !sat.detector.uses_slots() {
                bad(
                    "ceilings",
                    "ceilings count max_inflight slots, which detector utilization ignores".into(),
                );
            }
        }
        if sat.scrape_interval < MIN_SCRAPE_INTERVAL || sat.scrape_interval > Duration::from_secs(60) {
            bad("saturation.scrape_interval", "must be between 10ms and 60s".into());
        }
        if sat.scrape_timeout.is_zero() || sat.scrape_timeout > Duration::from_secs(60) {
            bad("saturation.scrape_timeout", "must be above 0 and at most 60s".into());
        }
        if sat.staleness.is_zero() || sat.staleness > Duration::from_secs(3600) {
            bad("saturation.staleness", "must be above 0 and at most 1h".into());
        }
        if sat.queue_depth_threshold == 0 || sat.queue_depth_threshold > MAX_QUEUE_DEPTH_THRESHOLD {
            bad(
                "saturation.queue_depth_threshold",
                format!("must be between 1 and {MAX_QUEUE_DEPTH_THRESHOLD}"),
            );
        }
        if !(sat.kv_cache_threshold.is_finite()
            && sat.kv_cache_threshold > 0.0
            && sat.kv_cache_threshold <= 1.0)
        {
            bad("saturation.kv_cache_threshold", format!("{} must be in (0, 1]", sat.kv_cache_threshold));
        }
        errors
    }
}
