//! The `cluster:` section: where the shared store is, which pool this replica belongs to, who it
//! is, and how often it syncs. Absent = standalone (nothing below runs).
//!
//! ```yaml
//! cluster:
//!   redis: redis://127.0.0.1:6379   # Redis or Valkey; `redis://[user:pass@]host:port[/db]`
//!   pool: default                    # key namespace: replicas with the same pool share state
//!   replica_id: ""                   # default: hostname-pid
//!   sync_interval: 100ms             # 10ms ..= 10s
//! ```

use std::time::Duration;

use flowgate_engine::config::ConfigError;
use serde::Deserialize;

use crate::config_values::{format_duration, Dur};

/// Shortest `sync_interval` (a round trip to Redis every 10 ms per replica is already a lot).
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_millis(10);
/// Longest `sync_interval` (leases lapse after two of them: longer makes failover slow).
pub const MAX_SYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Longest `pool` name, bytes.
pub const MAX_POOL_BYTES: usize = 64;
/// Longest `replica_id`, bytes.
pub const MAX_REPLICA_ID_BYTES: usize = 128;
/// Longest `redis` URL, bytes.
pub const MAX_REDIS_URL_BYTES: usize = 1024;

/// The validated `cluster:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// `redis://host:port[/db]`.
    pub redis: String,
    /// Key namespace shared by the pool's replicas.
    pub pool: String,
    /// This replica's id (unique in the pool): as written, or `hostname-pid`.
    pub replica_id: String,
    /// How often the sync task runs one round trip.
    pub sync_interval: Duration,
}

/// The section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    redis: String,
    #[serde(default = "default_pool")]
    pool: String,
    #[serde(default)]
    replica_id: String,
    #[serde(default = "default_interval")]
    sync_interval: Dur,
}

fn default_pool() -> String {
    "default".into()
}

fn default_interval() -> Dur {
    Dur(Duration::from_millis(100))
}

/// `hostname-pid`: the default replica id (hostname from the kernel, `flowgate` if unreadable).
pub fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| {
            h.trim().chars().filter(|c| name_char(*c)).take(MAX_REPLICA_ID_BYTES - 12).collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "flowgate".into());
    format!("{host}-{}", std::process::id())
}

/// Characters allowed in a pool name or replica id: they become parts of Redis keys, and `{` `}`
/// would break the pool's hash tag.
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

fn check_name(path: &str, value: &str, max: usize, errors: &mut Vec<ConfigError>) {
    let reason = if value.is_empty() {
        Some("must not be empty".to_string())
    } else if value.len() > max {
        Some(format!("{} bytes, at most {max}", value.len()))
    } else {
        value
            .chars()
            .find(|c| !name_char(*c))
            .map(|c| format!("{c:?} is not allowed (letters, digits, '-', '_', '.', ':')"))
    };
    if let Some(reason) = reason {
        errors.push(ConfigError { path: path.into(), reason });
    }
}

impl RawCluster {
    /// Validate: the section or every `cluster.*: reason` found.
    pub fn validate(self) -> Result<ClusterConfig, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if self.redis.len() > MAX_REDIS_URL_BYTES {
            errors.push(ConfigError {
                path: "cluster.redis".into(),
                reason: format!("{} bytes, at most {MAX_REDIS_URL_BYTES}", self.redis.len()),
            });
        } else if !self.redis.starts_with("redis://") {
            errors.push(ConfigError {
                path: "cluster.redis".into(),
                reason: format!(
                    "{:?} is not a redis://host:port URL (TLS and unix sockets are not supported)",
                    self.redis
                ),
            });
        } else if let Err(e) = redis::Client::open(self.redis.as_str()) {
            errors
                .push(ConfigError { path: "cluster.redis".into(), reason: format!("{:?}: {e}", self.redis) });
        }
        check_name("cluster.pool", &self.pool, MAX_POOL_BYTES, &mut errors);
        let replica_id = if self.replica_id.is_empty() { default_replica_id() } else { self.replica_id };
        check_name("cluster.replica_id", &replica_id, MAX_REPLICA_ID_BYTES, &mut errors);
        let interval = self.sync_interval.0;
        if !(MIN_SYNC_INTERVAL..=MAX_SYNC_INTERVAL).contains(&interval) {
            errors.push(ConfigError {
                path: "cluster.sync_interval".into(),
                reason: format!(
                    "{} is outside {} ..= {}",
                    format_duration(interval),
                    format_duration(MIN_SYNC_INTERVAL),
                    format_duration(MAX_SYNC_INTERVAL)
                ),
            });
        }
        if errors.is_empty() {
            Ok(ClusterConfig { redis: self.redis, pool: self.pool, replica_id, sync_interval: interval })
        } else {
            Err(errors)
        }
    }
}

impl ClusterConfig {
    /// The URL without a password (for logs and `check-config`).
    pub fn redis_redacted(&self) -> String {
        match (self.redis.find("://"), self.redis.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => format!("redis://***@{}", &self.redis[at + 1..]),
            _ => self.redis.clone(),
        }
    }

    /// `, cluster pool P via URL as R every I` for the one-line summary.
    pub fn summary(&self) -> String {
        format!(
            ", cluster pool {} via {} as {} every {}",
            self.pool,
            self.redis_redacted(),
            self.replica_id,
            format_duration(self.sync_interval)
        )
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
