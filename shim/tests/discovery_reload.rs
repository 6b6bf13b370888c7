//! `discovery:` changed by a config reload (DESIGN.md: backends are applied live, and discovery is
//! where they come from), in-process: a file source added, an unreadable one refused whole, the
//! file swapped for another (the old one's edits no longer count), a DNS source added and
//! re-pointed, every source removed (their backends drain and leave); a request held on a
//! discovered backend keeps its slot through the swap and is answered once. Waits are on the
//! backend API, with deadlines.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{connect, context, destination, temp_dir, write_atomically, Stream};
use flowgate::discovery_watch::FILE_POLL_INTERVAL;
use flowgate::reload::ReloadOutcome;
use flowgate::serve::{self, Running, ServeOptions};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(10);

/// An endpoints file naming `ip:8000` for each of `ips`, one slot each.
fn endpoints(ips: &[&str]) -> String {
    let mut yaml = String::from("endpoints:\n");
    for (i, ip) in ips.iter().enumerate() {
        yaml += &format!("  - name: pod-{i}\n    address: {ip}\n    port: \"8000\"\n    max_inflight: 1\n");
    }
    yaml
}

/// The config: one static backend, then `discovery` (YAML lines under `discovery:`, or none).
fn config(discovery: &str) -> String {
    let mut yaml = String::from(
        "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends:\n  - address: 10.7.0.1:8000\n    max_inflight: 1\n",
    );
    if !discovery.is_empty() {
        yaml += &format!("discovery:\n{discovery}");
    }
    yaml
}

fn file_source(path: &Path) -> String {
    format!("  file: {{ path: {}, watch: true }}\n", path.display())
}

fn reload(running: &Running, config_path: &Path, text: &str) -> Option<ReloadOutcome> {
    write_atomically(config_path, text);
    running.reload()
}

/// `(address, source, draining)` of every listed backend, sorted.
async fn listed(running: &Running) -> Vec<(String, String, bool)> {
    rows(&common::backends(running, DEADLINE).await)
}

fn rows(b: &[Value]) -> Vec<(String, String, bool)> {
    let mut rows: Vec<_> = b
        .iter()
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            (s("address"), s("source"), v["draining"].as_bool().unwrap_or(false))
        })
        .collect();
    rows.sort();
    rows
}

fn row(address: &str, source: &str, draining: bool) -> (String, String, bool) {
    (address.to_string(), source.to_string(), draining)
}

async fn wait_rows(running: &Running, what: &str, pred: impl Fn(&[(String, String, bool)]) -> bool) {
    common::wait_backends(running, what, DEADLINE, |b| pred(&rows(b))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_swaps_and_removes_a_discovery_file() {
    let dir = temp_dir("file");
    let (config_path, first, second) = (dir.join("flowgate.yaml"), dir.join("a.yaml"), dir.join("b.yaml"));
    std::fs::write(&config_path, config("")).unwrap();
    let options = ServeOptions { config_path: Some(config_path.clone()), ..Default::default() };
    let parsed = flowgate::reload::read_config(&config_path).unwrap();
    let running = serve::start_with(parsed, options).await.expect("server starts");
    let statics = row("10.7.0.1:8000", "static", false);
    assert_eq!(listed(&running).await, std::slice::from_ref(&statics));

    // Added: the file's backends are in the set when the reload returns.
    write_atomically(&first, &endpoints(&["10.7.1.1"]));
    assert_eq!(
        reload(&running, &config_path, &config(&file_source(&first))),
        Some(ReloadOutcome::Applied { restart_only: vec![] })
    );
    assert_eq!(listed(&running).await, [statics.clone(), row("10.7.1.1:8000", "file", false)]);

    // A request held on the discovered backend (the static one is held first).
    let mut client = connect(running.grpc_addr()).await;
    let mut held = Vec::new();
    for id in ["w1", "w2"] {
        let mut s = Stream::open(&mut client, vec![context(id, 3)], DEADLINE).await;
        let to = destination(&s.next().await).expect("dispatched");
        held.push((s, to));
    }
    let mut on: Vec<&str> = held.iter().map(|(_, to)| to.as_str()).collect();
    on.sort();
    assert_eq!(on, ["10.7.0.1:8000", "10.7.1.1:8000"]);

    // An unreadable file refuses the whole reload: nothing changes.
    let missing = dir.join("missing.yaml");
    match reload(&running, &config_path, &config(&file_source(&missing))) {
        Some(ReloadOutcome::Refused(errors)) => {
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].path, "discovery.file", "{errors:?}");
            assert!(errors[0].reason.contains("missing.yaml"), "{errors:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(listed(&running).await, [statics.clone(), row("10.7.1.1:8000", "file", false)]);

    // Swapped for another file: its backend takes requests; the old one drains under its held
    // request (it keeps its slot: nothing new goes there, and it leaves when the request ends).
    write_atomically(&second, &endpoints(&["10.7.2.1"]));
    assert_eq!(
        reload(&running, &config_path, &config(&file_source(&second))),
        Some(ReloadOutcome::Applied { restart_only: vec![] })
    );
    assert_eq!(
        listed(&running).await,
        [statics.clone(), row("10.7.1.1:8000", "file", true), row("10.7.2.1:8000", "file", false)]
    );
    let mut third = Stream::open(&mut client, vec![context("w3", 3)], DEADLINE).await;
    assert_eq!(destination(&third.next().await).as_deref(), Some("10.7.2.1:8000"));
    let at = held.iter().position(|(_, to)| to == "10.7.1.1:8000").unwrap();
    drop(held.remove(at));
    wait_rows(&running, "the drained backend leaving with its request", |r| {
        r == [statics.clone(), row("10.7.2.1:8000", "file", false)]
    })
    .await;

    // The old file is no longer read: an edit of it never shows, over six of the watcher's poll
    // intervals (a live watcher applies an edit after two equal reads, one interval apart).
    // Then the new file is watched: its edit shows.
    write_atomically(&first, &endpoints(&["10.7.1.9"]));
    let window = Instant::now() + 6 * FILE_POLL_INTERVAL;
    while Instant::now() < window {
        let now = listed(&running).await;
        assert!(!now.iter().any(|(a, ..)| a == "10.7.1.9:8000"), "the replaced file was applied: {now:?}");
    }
    write_atomically(&second, &endpoints(&["10.7.2.1", "10.7.2.2"]));
    wait_rows(&running, "the watched file's edit", |r| r.iter().any(|(a, ..)| a == "10.7.2.2:8000")).await;

    // Removed: its backends drain; the one holding a request stays until it ends.
    assert_eq!(
        reload(&running, &config_path, &config("")),
        Some(ReloadOutcome::Applied { restart_only: vec![] })
    );
    assert_eq!(listed(&running).await, [statics.clone(), row("10.7.2.1:8000", "file", true)]);
    drop(third);
    wait_rows(&running, "only the static backend", |r| r == [statics.clone()]).await;
    drop(held);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_repoints_and_removes_a_dns_source() {
    let dir = temp_dir("dns");
    let config_path = dir.join("flowgate.yaml");
    std::fs::write(&config_path, config("")).unwrap();
    let options = ServeOptions { config_path: Some(config_path.clone()), ..Default::default() };
    let parsed = flowgate::reload::read_config(&config_path).unwrap();
    let running = serve::start_with(parsed, options).await.expect("server starts");
    let dns =
        |port: u16| format!("  dns: {{ name: localhost, port: {port}, refresh: 1s, max_inflight: 2 }}\n");
    let dns_ports = |r: &[(String, String, bool)]| -> Vec<u16> {
        r.iter()
            .filter(|(_, source, draining)| source == "dns" && !draining)
            .map(|(a, ..)| a.parse::<std::net::SocketAddr>().unwrap().port())
            .collect()
    };

    assert_eq!(
        reload(&running, &config_path, &config(&dns(8001))),
        Some(ReloadOutcome::Applied { restart_only: vec![] })
    );
    wait_rows(&running, "localhost:8001 resolved", |r| {
        !dns_ports(r).is_empty() && dns_ports(r).iter().all(|p| *p == 8001)
    })
    .await;

    // Re-pointed: the new port's records replace the old ones once resolved.
    assert_eq!(
        reload(&running, &config_path, &config(&dns(8002))),
        Some(ReloadOutcome::Applied { restart_only: vec![] })
    );
    wait_rows(&running, "localhost:8002 in place of 8001", |r| {
        !dns_ports(r).is_empty()
            && dns_ports(r).iter().all(|p| *p == 8002)
            && !r.iter().any(|(a, ..)| a.ends_with(":8001"))
    })
    .await;

    // Removed: the DNS backends (idle) leave at once.
    assert_eq!(
        reload(&running, &config_path, &config("")),
        Some(ReloadOutcome::Applied { restart_only: vec![] })
    );
    assert_eq!(listed(&running).await, [row("10.7.0.1:8000", "static", false)]);
    running.shutdown().await;
}
