//! Unit tests of [`super`] with a scripted resolver: sets are deduplicated and sorted, a failed
//! lookup keeps the last set, and only a changed set is published.

use super::*;
use std::str::FromStr;
use std::sync::Mutex;

use crate::discovery::SourceStatus;
use crate::metrics_page::ModelServer;

/// Answers from a script, one per lookup; the last answer repeats.
struct Scripted(Mutex<(usize, Vec<Answer>)>);

/// Addresses (port 0), or an error message.
type Answer = Result<Vec<SocketAddr>, String>;

impl Scripted {
    fn new(answers: Vec<Answer>) -> Scripted {
        Scripted(Mutex::new((0, answers)))
    }
}

impl Resolve for Scripted {
    async fn resolve(&self, _: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let mut guard = self.0.lock().unwrap();
        let (next, answers) = &mut *guard;
        let answer = answers[(*next).min(answers.len() - 1)].clone();
        *next += 1;
        let with_port = |mut a: SocketAddr| {
            a.set_port(port);
            a
        };
        answer.map(|v| v.into_iter().map(with_port).collect()).map_err(io::Error::other)
    }
}

fn addrs(list: &[&str]) -> Answer {
    Ok(list.iter().map(|a| std::net::IpAddr::from_str(a).map(|ip| SocketAddr::new(ip, 0)).unwrap()).collect())
}

fn fail() -> Answer {
    Err("no such host".into())
}

fn cfg() -> DnsDiscovery {
    DnsDiscovery {
        name: "vllm.test".into(),
        port: 8000,
        refresh: Duration::from_secs(5),
        max_inflight: 8,
        engine: ModelServer::Sglang,
    }
}

/// Wait for the next status report.
async fn next(status: &mut watch::Receiver<SourceStatus>) -> SourceEvent {
    status.changed().await.expect("the source is running");
    status.borrow_and_update().last.clone()
}

fn set_of(rx: &watch::Receiver<Arc<Vec<DiscoveredBackend>>>) -> Vec<String> {
    rx.borrow().iter().map(|b| b.address.clone()).collect()
}

#[tokio::test]
async fn every_address_becomes_a_backend_once_sorted_with_the_blocks_settings() {
    let r = Scripted::new(vec![addrs(&["10.0.0.9", "::1", "10.0.0.1", "10.0.0.9"])]);
    let set = resolve_once(&cfg(), &r).await.unwrap();
    let got: Vec<_> = set.iter().map(|b| b.address.as_str()).collect();
    assert_eq!(got, ["10.0.0.1:8000", "10.0.0.9:8000", "[::1]:8000"]);
    assert_eq!(set[2].metrics, "http://[::1]:8000/metrics");
    assert!(set.iter().all(|b| b.max_inflight == 8 && b.engine == ModelServer::Sglang && b.name.is_none()));
}

#[tokio::test]
async fn an_empty_answer_is_a_failure() {
    assert_eq!(resolve_once(&cfg(), &Scripted::new(vec![addrs(&[])])).await, Err("no addresses".into()));
}

#[tokio::test(start_paused = true)]
async fn a_failed_lookup_keeps_the_last_set_and_a_new_answer_replaces_it() {
    let r = Scripted::new(vec![
        addrs(&["10.0.0.1", "10.0.0.2"]),
        addrs(&["10.0.0.2", "10.0.0.1"]),
        fail(),
        fail(),
        addrs(&["10.0.0.3"]),
    ]);
    let (tx, mut rx) = watch::channel(Arc::new(Vec::new()));
    let cancel = CancellationToken::new();
    let mut h = spawn_dns_resolver_with(cfg(), r, tx, cancel.clone());
    assert_eq!(next(&mut h.status).await, SourceEvent::Applied { backends: 2, skipped: 0, published: true });
    assert!(rx.has_changed().unwrap());
    rx.mark_unchanged();
    assert_eq!(set_of(&rx), ["10.0.0.1:8000", "10.0.0.2:8000"]);
    // The same addresses in another order are no change.
    assert_eq!(next(&mut h.status).await, SourceEvent::Applied { backends: 2, skipped: 0, published: false });
    assert_eq!(next(&mut h.status).await, SourceEvent::Refused("no such host".into()));
    assert_eq!(next(&mut h.status).await, SourceEvent::Refused("no such host".into()));
    assert!(!rx.has_changed().unwrap());
    assert_eq!(set_of(&rx), ["10.0.0.1:8000", "10.0.0.2:8000"]);
    assert_eq!(next(&mut h.status).await, SourceEvent::Applied { backends: 1, skipped: 0, published: true });
    assert_eq!(set_of(&rx), ["10.0.0.3:8000"]);
    cancel.cancel();
    h.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn lookups_are_spaced_by_refresh() {
    let (tx, _rx) = watch::channel(Arc::new(Vec::new()));
    let cancel = CancellationToken::new();
    let start = tokio::time::Instant::now();
    let mut h = spawn_dns_resolver_with(cfg(), Scripted::new(vec![addrs(&["10.0.0.1"])]), tx, cancel.clone());
    next(&mut h.status).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    next(&mut h.status).await;
    assert_eq!(start.elapsed(), cfg().refresh);
    cancel.cancel();
    h.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_hung_lookup_times_out_as_a_failure() {
    struct Hang;
    impl Resolve for Hang {
        async fn resolve(&self, _: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            std::future::pending().await
        }
    }
    let r = resolve_once(&cfg(), &Hang).await;
    assert_eq!(r, Err(format!("no answer within {}s", DNS_LOOKUP_TIMEOUT.as_secs())));
}
