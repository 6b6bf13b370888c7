//! `discovery.dns`: every A/AAAA record of one name, re-resolved every `refresh`.
//!
//! Each address becomes a backend `ip:port` (`[v6]:port`) with the dns block's `max_inflight` and
//! `engine`, and the metrics page `http://{ip:port}/metrics`. The set is deduplicated and sorted
//! by address, so a server that rotates its answers (round-robin DNS) does not count as a change,
//! and bounded to [`MAX_BACKENDS`] (the lowest addresses are kept, one warning).
//!
//! A failed lookup (an error, an empty answer, or no answer within [`DNS_LOOKUP_TIMEOUT`]) keeps
//! the last set, with one warning per failure streak and one line when lookups work again. So a
//! name that stops resolving (a headless Service scaled to zero answers NXDOMAIN) does **not**
//! drain its backends: they stay until the name resolves to something else.
//!
//! The system resolver is `getaddrinfo` through [`tokio::net::lookup_host`] (A and AAAA records,
//! `/etc/hosts`, the search domains of `/etc/resolv.conf`); it runs on tokio's blocking pool. The
//! [`Resolve`] trait lets a test put its own resolver in its place.

use std::collections::BTreeSet;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use flowgate_engine::config::MAX_BACKENDS;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::discovery::{publish, DiscoveredBackend, DnsDiscovery, SourceEvent, SourceHandle, StatusSender};

/// Longest wait for one lookup; a slower one has failed.
pub const DNS_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Something that turns a name and a port into socket addresses.
pub trait Resolve: Send + Sync + 'static {
    /// Every address of `name`, each with `port`.
    fn resolve(&self, name: &str, port: u16) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
}

/// The system resolver (`getaddrinfo`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    async fn resolve(&self, name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        // getaddrinfo's answer is small; MAX_BACKENDS + 1 is enough to tell "too many".
        Ok(tokio::net::lookup_host((name, port)).await?.take(4 * MAX_BACKENDS).collect())
    }
}

/// Resolve once: the set, or why there is none.
pub async fn resolve_once<R: Resolve>(
    cfg: &DnsDiscovery,
    resolver: &R,
) -> Result<Vec<DiscoveredBackend>, String> {
    match tokio::time::timeout(DNS_LOOKUP_TIMEOUT, resolver.resolve(&cfg.name, cfg.port)).await {
        Err(_) => Err(format!("no answer within {}s", DNS_LOOKUP_TIMEOUT.as_secs())),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(addrs)) if addrs.is_empty() => Err("no addresses".into()),
        Ok(Ok(addrs)) => {
            let unique: BTreeSet<SocketAddr> = addrs.into_iter().collect();
            if unique.len() > MAX_BACKENDS {
                tracing::warn!(name = %cfg.name, addresses = unique.len(),
                    "discovery dns: more addresses than {MAX_BACKENDS} backends; the lowest are kept");
            }
            Ok(unique.into_iter().take(MAX_BACKENDS).map(|a| backend(cfg, a)).collect())
        }
    }
}

fn backend(cfg: &DnsDiscovery, addr: SocketAddr) -> DiscoveredBackend {
    let address = addr.to_string();
    DiscoveredBackend {
        metrics: format!("http://{address}/metrics"),
        address,
        max_inflight: cfg.max_inflight,
        engine: cfg.engine,
        name: None,
    }
}

/// Start resolving `cfg.name` with the system resolver: at once, then every `cfg.refresh`.
pub fn spawn_dns_resolver(
    cfg: DnsDiscovery,
    tx: watch::Sender<Arc<Vec<DiscoveredBackend>>>,
    cancel: CancellationToken,
) -> SourceHandle {
    spawn_dns_resolver_with(cfg, SystemResolver, tx, cancel)
}

/// [`spawn_dns_resolver`] with another resolver.
pub fn spawn_dns_resolver_with<R: Resolve>(
    cfg: DnsDiscovery,
    resolver: R,
    tx: watch::Sender<Arc<Vec<DiscoveredBackend>>>,
    cancel: CancellationToken,
) -> SourceHandle {
    let (status, rx) = StatusSender::new();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(cfg.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing: Option<String> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let result = tokio::select! {
                _ = cancel.cancelled() => return,
                r = resolve_once(&cfg, &resolver) => r,
            };
            match result {
                Ok(set) => {
                    if failing.take().is_some() {
                        tracing::info!(name = %cfg.name, "discovery dns: resolving again");
                    }
                    let backends = set.len();
                    let published = publish(&tx, set);
                    if published {
                        tracing::info!(name = %cfg.name, backends, "discovery dns: new set");
                    }
                    status.report(SourceEvent::Applied { backends, skipped: 0, published });
                }
                Err(reason) => {
                    if failing.is_none() {
                        tracing::warn!(name = %cfg.name, error = %reason,
                            "discovery dns: lookup failed; keeping the last set");
                    }
                    failing = Some(reason.clone());
                    status.report(SourceEvent::Refused(reason));
                }
            }
        }
    });
    SourceHandle { task, status: rx }
}

#[cfg(test)]
#[path = "discovery_dns_tests.rs"]
mod tests;
