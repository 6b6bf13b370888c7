//! [`ConfigError`]: one refused field of a configuration, and [`UNCAPPED_WARNING`], the one
//! warning's reason. Their own module so that the config and the parts it validates through
//! (`config_check.rs`, quota rules) all import them downwards; re-exported from [`crate::config`].

/// One reason a configuration is refused: the field's path and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending field, e.g. `scoring.wait_cap`.
    pub path: String,
    /// Why it is refused.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Why a backend without a cap (`max_inflight: 0`) under detector `concurrency` is worth a
/// warning: valid (0 = no concurrency cap), but nothing then limits it.
pub const UNCAPPED_WARNING: &str = "0 (no cap) under saturation.detector concurrency: nothing limits this \
     backend, it takes every request at once (set max_inflight, or use detector utilization or both)";
