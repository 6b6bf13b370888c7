//! [`ConfigError`]: one refused field of a configuration. Its own module so that the config and
//! the parts it validates through (quota rules) both import it downwards; re-exported from
//! [`crate::config`].

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
