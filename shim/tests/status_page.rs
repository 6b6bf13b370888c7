//! The status page against a live server: flowgate in-process over one `flowgate-sim` backend of
//! one slot, one request holding the slot and [`QUEUED`] more queued over ext_proc.
//!
//! `engine_api_counts_requests_queued_over_ext_proc` checks `/api/v1/engine` alone. The browser
//! test loads `/` in headless Chromium (`--dump-dom` after a virtual-time budget of several poll
//! cycles) and reads the rendered DOM; it is `#[ignore]`d because it needs Chromium —
//! `scripts/status-page.sh` installs it and runs it with `--ignored`, failing when it is missing.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{connect, context, destination, http_get, Stream};
use flowgate::config::ServeConfig;
use flowgate::engine_json::EngineJson;
use flowgate::serve::{self, Running};
use flowgate_sim::{Sim, SimConfig};

const DEADLINE: Duration = Duration::from_secs(10);
/// Criticalities of the queued requests, one request each.
const QUEUED: [u8; 3] = [5, 2, 5];
/// Criticality of the request holding the slot.
const HOLDER_CRITICALITY: u8 = 3;
/// Virtual time Chromium runs the page for before dumping it: the first poll at load, then one
/// per second, so at least two polls answer and decision rates are computed.
const VIRTUAL_TIME_MS: u64 = 3_000;
/// Longest one Chromium run may take (real time).
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(60);
/// How often a running Chromium is checked for having exited.
const CHROMIUM_POLL: Duration = Duration::from_millis(20);
/// Where Chromium is unless `CHROMIUM` says otherwise.
const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// A server with its slot held and [`QUEUED`] requests waiting.
struct Loaded {
    running: Running,
    sim: Sim,
    holder: Stream,
    queued: Vec<Stream>,
}

async fn loaded() -> Loaded {
    let sim = Sim::start(SimConfig { listen: "127.0.0.1:0".parse().unwrap(), ..SimConfig::default() })
        .await
        .expect("flowgate-sim starts");
    let yaml = format!(
        "listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends:\n  - address: {}\n    max_inflight: 1\n",
        sim.addr()
    );
    let config = ServeConfig::from_yaml(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e:?}"));
    let running = serve::start(config).await.expect("server starts");
    let mut client = connect(running.grpc_addr()).await;
    let mut holder = Stream::open(&mut client, vec![context("holder", HOLDER_CRITICALITY)], DEADLINE).await;
    assert_eq!(destination(&holder.next().await), Some(sim.addr().to_string()), "the holder is dispatched");
    let mut queued = Vec::new();
    for (i, c) in QUEUED.into_iter().enumerate() {
        queued.push(Stream::open(&mut client, vec![context(&format!("queued-{i}"), c)], DEADLINE).await);
    }
    let want = by_criticality(&QUEUED);
    wait_engine(&running, "all queued", |e| {
        e.queued == QUEUED.len() as u64 && e.queued_by_criticality == want
    })
    .await;
    Loaded { running, sim, holder, queued }
}

fn by_criticality(criticalities: &[u8]) -> [u64; 5] {
    let mut n = [0; 5];
    for c in criticalities {
        n[usize::from(*c) - 1] += 1;
    }
    n
}

async fn engine_json(running: &Running) -> EngineJson {
    let (status, body) = http_get(running.metrics_addr(), "/api/v1/engine", DEADLINE).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Poll `/api/v1/engine` until `pred` holds, for at most [`DEADLINE`].
async fn wait_engine(running: &Running, what: &str, pred: impl Fn(&EngineJson) -> bool) -> EngineJson {
    let start = Instant::now();
    loop {
        let e = engine_json(running).await;
        if pred(&e) {
            return e;
        }
        assert!(start.elapsed() < DEADLINE, "{what}: engine stayed {e:#?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Cancel the queued requests (their streams close) and wait until nothing is queued.
async fn release(loaded: &mut Loaded) -> EngineJson {
    loaded.queued.clear();
    wait_engine(&loaded.running, "queue emptied", |e| {
        e.queued == 0
            && e.queued_by_criticality == [0; 5]
            && e.outcomes["evicted_cancelled"] == QUEUED.len() as u64
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_api_counts_requests_queued_over_ext_proc() {
    let mut l = loaded().await;
    let e = engine_json(&l.running).await;
    assert_eq!((e.shards, e.inflight, e.capacity), (1, 1, 1), "{e:#?}");
    assert_eq!(e.queued_by_criticality, [0, 1, 0, 0, 2], "{e:#?}");
    assert_eq!(e.outcomes["dispatched"], 1, "{e:#?}");
    assert_eq!(e.outcomes.len(), flowgate_engine::Outcome::ALL.len(), "{e:#?}");
    // The core layout it runs: its one shard on the first allowed CPU, an I/O thread per other CPU,
    // kept off the shard's CPU only on machines of 8 CPUs or more.
    let layout = e.layout.clone().expect("a server shows its layout");
    let cpus = flowgate_engine::layout::allowed_cpus();
    assert_eq!(layout.cpus, cpus, "{e:#?}");
    assert_eq!(layout.shard_cpus, vec![cpus[0]], "{e:#?}");
    assert_eq!(layout.io_threads, (cpus.len() - 1).max(1), "{e:#?}");
    let pinned = cpus.len() >= flowgate_engine::layout::PIN_IO_FROM_CPUS;
    assert_eq!(layout.io_cpus.contains(&cpus[0]), !pinned, "{e:#?}");
    let e = release(&mut l).await;
    assert_eq!((e.outcomes["dispatched"], e.inflight), (1, 1), "the holder still holds its slot: {e:#?}");
    drop(l.holder);
    l.running.shutdown().await;
    l.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Chromium: run by scripts/status-page.sh"]
async fn browser_renders_queue_backend_workloads_and_decisions() {
    let mut l = loaded().await;
    let url = format!("http://{}/", l.running.metrics_addr());
    let backend = l.sim.addr().to_string();

    let dom = dump_dom(&url).await;
    assert!(banner_hidden(&dom), "error banner shown:\n{dom}");
    assert_eq!(text_after(&dom, r#"id="queued-total""#), QUEUED.len().to_string(), "{dom}");
    for (c, n) in by_criticality(&QUEUED).iter().enumerate() {
        assert_eq!(text_after(&dom, &format!(r#"data-queued-crit="{}""#, c + 1)), n.to_string(), "{dom}");
    }
    assert_eq!(text_after(&dom, r#"id="inflight""#), "1", "{dom}");
    let row = row_of(&dom, &format!(r#"data-backend="{backend}""#));
    assert_eq!(text_after(row, r#"class="address""#), backend, "{row}");
    assert_eq!(text_after(row, r#"class="inflight""#), "1 / 1", "{row}");
    assert_eq!(text_after(row, r#"class="source""#), "static", "{row}");
    let holder = row_of(&dom, r#"data-workload="holder""#);
    assert_eq!(text_after(holder, r#"class="active""#), "1", "{holder}");
    let dispatched = row_of(&dom, r#"data-outcome="dispatched""#);
    assert_eq!(text_after(dispatched, r#"class="total""#), "1", "{dispatched}");
    assert_eq!(
        text_after(dispatched, r#"class="rate""#),
        "0.0",
        "a second poll computed a rate: {dispatched}"
    );

    release(&mut l).await;
    let dom = dump_dom(&url).await;
    assert_eq!(text_after(&dom, r#"id="queued-total""#), "0", "{dom}");
    for c in 1..=5 {
        assert_eq!(text_after(&dom, &format!(r#"data-queued-crit="{c}""#)), "0", "{dom}");
    }
    let cancelled = row_of(&dom, r#"data-outcome="evicted_cancelled""#);
    assert_eq!(text_after(cancelled, r#"class="total""#), QUEUED.len().to_string(), "{cancelled}");
    drop(l.holder);
    l.running.shutdown().await;
    l.sim.shutdown().await;
}

/// Is the error banner hidden?
fn banner_hidden(html: &str) -> bool {
    let at = html.find(r#"id="error""#).expect("the page has an error banner");
    let tag = &html[at..at + html[at..].find('>').expect("tag closes")];
    tag.contains("hidden")
}

/// The text between the end of the tag holding `marker` and the next tag.
fn text_after<'a>(html: &'a str, marker: &str) -> &'a str {
    let at = html.find(marker).unwrap_or_else(|| panic!("{marker} not in:\n{html}"));
    let rest = &html[at..];
    let start = rest.find('>').expect("tag closes") + 1;
    let len = rest[start..].find('<').expect("text ends");
    &rest[start..start + len]
}

/// The table row opened by the tag holding `marker`.
fn row_of<'a>(html: &'a str, marker: &str) -> &'a str {
    let at = html.find(marker).unwrap_or_else(|| panic!("no row {marker} in:\n{html}"));
    let end = html[at..].find("</tr>").expect("row closes");
    &html[at..at + end]
}

/// Load `url` in headless Chromium for [`VIRTUAL_TIME_MS`] of virtual time; the rendered DOM.
async fn dump_dom(url: &str) -> String {
    let url = url.to_string();
    tokio::task::spawn_blocking(move || run_chromium(&url)).await.expect("chromium task")
}

fn run_chromium(url: &str) -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| DEFAULT_CHROMIUM.into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "{chromium} missing: run scripts/status-page.sh, which installs Chromium"
    );
    let dir = scratch_dir();
    let out_path = dir.join("dom.html");
    let err_path = dir.join("stderr.txt");
    let mut child = Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{chromium}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > CHROMIUM_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium still running after {CHROMIUM_DEADLINE:?}");
        }
        std::thread::sleep(CHROMIUM_POLL);
    };
    let dom = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium {status}; stderr:\n{stderr}\nstdout:\n{dom}"
    );
    dom
}

/// A fresh directory for one Chromium run (profile and output).
fn scratch_dir() -> PathBuf {
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("flowgate-status-page-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
