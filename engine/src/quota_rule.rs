//! Per-workload quotas as configured (`workloads.quotas`): which workloads a rule covers, its
//! limits, and what happens to a request over them.

use crate::config_error::ConfigError;

/// Most quota rules one configuration may hold.
pub const MAX_QUOTAS: usize = 1024;
/// Highest `requests_per_minute` accepted.
pub const MAX_REQUESTS_PER_MINUTE: u32 = 100_000_000;
/// Highest `tokens_per_minute` accepted.
pub const MAX_TOKENS_PER_MINUTE: u64 = 1 << 40;

/// What a request over its workload's quota gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnExceed {
    /// It waits, outside everyone else's way, until the quota allows it (or its TTL ends).
    #[default]
    Queue,
    /// It is refused at once: `RejectedCapacity`, drop reason `quota`, with the time until the
    /// workload may send again.
    Reject,
}

impl OnExceed {
    /// The name the configuration file uses.
    pub fn name(self) -> &'static str {
        match self {
            OnExceed::Queue => "queue",
            OnExceed::Reject => "reject",
        }
    }
}

/// One quota rule. Rates are token buckets holding one minute's allowance, refilled continuously
/// (GCRA): over any interval of `T`, a workload gets at most `limit × (1 + T / 60 s)`, and in the
/// long run exactly `limit` per minute.
#[derive(Clone, Debug, PartialEq)]
pub struct Quota {
    /// An exact id, or a prefix followed by a single trailing `*`.
    pub pattern: String,
    /// Most of its requests holding a backend slot at once.
    pub max_inflight: Option<u32>,
    /// Requests per minute: dispatched (`queue`) or admitted (`reject`).
    pub requests_per_minute: Option<u32>,
    /// Weighted tokens per minute, charged when each request's usage is known.
    pub tokens_per_minute: Option<u64>,
    /// What a request over the quota gets.
    pub on_exceed: OnExceed,
}

impl Quota {
    /// Does `workload_id` fall under this rule?
    ///
    /// ```
    /// use flowgate_engine::quota_rule::{OnExceed, Quota};
    /// let q = Quota { pattern: "team-a*".into(), max_inflight: Some(16), requests_per_minute: None,
    ///     tokens_per_minute: None, on_exceed: OnExceed::Queue };
    /// assert!(q.matches("team-a-batch"));
    /// assert!(!q.matches("team-b"));
    /// ```
    pub fn matches(&self, workload_id: &str) -> bool {
        match self.pattern.strip_suffix('*') {
            Some(prefix) => workload_id.starts_with(prefix),
            None => workload_id == self.pattern,
        }
    }

    /// Whether the rule limits tokens (so its workloads' responses must be read).
    pub fn limits_tokens(&self) -> bool {
        self.tokens_per_minute.is_some()
    }

    /// The errors of rule `index` (paths `workloads.quotas[i].…`).
    pub fn validate(&self, index: usize) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut bad = |field: &str, reason: String| {
            errors.push(ConfigError { path: format!("workloads.quotas[{index}].{field}"), reason })
        };
        let body = self.pattern.strip_suffix('*').unwrap_or(&self.pattern);
        if self.pattern.is_empty() || body.contains('*') {
            bad("workload_id", "must be an exact id or a prefix with one trailing '*'".into());
        }
        if self.max_inflight.is_none()
            && self.requests_per_minute.is_none()
            && self.tokens_per_minute.is_none()
        {
            bad(
                "max_inflight",
                "a quota needs max_inflight, requests_per_minute or tokens_per_minute".into(),
            );
        }
        if self.max_inflight == Some(0) {
            bad("max_inflight", "must be at least 1".into());
        }
        if self.requests_per_minute.is_some_and(|r| r == 0 || r > MAX_REQUESTS_PER_MINUTE) {
            bad("requests_per_minute", format!("must be between 1 and {MAX_REQUESTS_PER_MINUTE}"));
        }
        if self.tokens_per_minute.is_some_and(|t| t == 0 || t > MAX_TOKENS_PER_MINUTE) {
            bad("tokens_per_minute", format!("must be between 1 and {MAX_TOKENS_PER_MINUTE}"));
        }
        errors
    }
}

/// The first rule of `quotas` covering `workload_id`, by index.
///
/// ```
/// use flowgate_engine::quota_rule::{first_match, OnExceed, Quota};
/// let rule = |p: &str| Quota { pattern: p.into(), max_inflight: Some(1), requests_per_minute: None,
///     tokens_per_minute: None, on_exceed: OnExceed::Reject };
/// let quotas = [rule("a-1"), rule("a-*")];
/// assert_eq!(first_match(&quotas, "a-1"), Some(0));
/// assert_eq!(first_match(&quotas, "a-2"), Some(1));
/// assert_eq!(first_match(&quotas, "b"), None);
/// ```
pub fn first_match(quotas: &[Quota], workload_id: &str) -> Option<usize> {
    quotas.iter().position(|q| q.matches(workload_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule() -> Quota {
        Quota {
            pattern: "w".into(),
            max_inflight: None,
            requests_per_minute: Some(60),
            tokens_per_minute: None,
            on_exceed: OnExceed::Queue,
        }
    }

    #[test]
    fn a_rule_needs_a_limit_and_a_pattern() {
        assert!(rule().validate(0).is_empty());
        let none = Quota { requests_per_minute: None, ..rule() };
        assert_eq!(none.validate(3)[0].path, "workloads.quotas[3].max_inflight");
        let star = Quota { pattern: "a*b*".into(), ..rule() };
        assert_eq!(star.validate(0)[0].path, "workloads.quotas[0].workload_id");
        let zero = Quota {
            max_inflight: Some(0),
            requests_per_minute: Some(0),
            tokens_per_minute: Some(0),
            ..rule()
        };
        let paths: Vec<String> = zero.validate(1).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "workloads.quotas[1].max_inflight",
                "workloads.quotas[1].requests_per_minute",
                "workloads.quotas[1].tokens_per_minute"
            ]
        );
    }
}
