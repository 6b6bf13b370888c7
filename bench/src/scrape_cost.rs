//! `scrape-cost`: the CPU flowgate spends scraping many backends.
//!
//! `--backends` (100) backends whose metrics pages are the 40 KB two-model vLLM page of
//! `bench/fixtures/`, served by a child process (this binary's hidden `serve-page`), so the
//! page server's CPU is not counted. flowgate runs in-process twice, in the same run: with detector
//! `utilization` (one scraper per backend every `--interval-ms`, each with its own kept-alive
//! connection) and with detector `concurrency` (no scrapers), the baseline. The difference of the
//! process's CPU over the same wall time is what scraping costs, as a share of one core.

use flowgate::config::ServeConfig;
use flowgate::metrics::sample;
use flowgate::serve;
use flowgate_bench::cpu;
use flowgate_bench::report::{self, RunInfo, Table};
use serde::Serialize;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The page every backend serves.
pub const PAGE: &str = include_str!("../fixtures/vllm_two_models.prom");
/// The target: scraping 100 backends every 50 ms costs at most this share of one core.
pub const TARGET_CORE_SHARE: f64 = 0.10;
/// Longest request head the page server reads.
const MAX_REQUEST_HEAD_BYTES: usize = 8 << 10;
/// Warm-up before measuring (connections made, first scrapes done).
const WARM_UP: Duration = Duration::from_millis(500);

/// What to run.
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    /// Quick mode (CI).
    pub quick: bool,
    /// Backends scraped.
    pub backends: usize,
    /// Scrape interval, ms.
    pub interval_ms: u64,
    /// Measured seconds per configuration.
    pub seconds: f64,
}

/// The figures.
#[derive(Debug, Serialize)]
pub struct ScrapeCostReport {
    run: RunInfo,
    options: Options,
    page_bytes: usize,
    /// Good scrapes during the measured window, and failed ones.
    scrapes_ok: f64,
    scrapes_failed: f64,
    /// Process CPU as a share of one core: without scrapers, with them, the difference.
    baseline_core_share: f64,
    scraping_core_share: f64,
    added_core_share: f64,
    /// Added CPU per good scrape (fetch + parse + publish), µs.
    cpu_per_scrape_us: f64,
    target_core_share: f64,
    met: bool,
}

/// The hidden `serve-page` subcommand: serve [`PAGE`] over HTTP/1.1 keep-alive on 127.0.0.1,
/// print `listening ADDR`, and exit when stdin closes (the parent is gone).
pub fn serve_page() -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    std::thread::spawn(|| {
        let _ = io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("listening {}", listener.local_addr()?);
        io::stdout().flush()?;
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
            PAGE.len()
        );
        let response: &'static [u8] =
            Box::leak([head.as_bytes(), PAGE.as_bytes()].concat().into_boxed_slice());
        loop {
            let (mut conn, _) = listener.accept().await?;
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_REQUEST_HEAD_BYTES];
                let mut filled = 0;
                loop {
                    let Ok(n) = conn.read(&mut buf[filled..]).await else { return };
                    if n == 0 {
                        return;
                    }
                    filled += n;
                    // One GET at a time per connection (the scraper never pipelines).
                    if let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                        if conn.write_all(response).await.is_err() {
                            return;
                        }
                    } else if filled == buf.len() {
                        return;
                    }
                }
            });
        }
    })
}

fn config(opts: &Options, page_addr: &str, detector: &str) -> ServeConfig {
    let mut yaml = String::from("listen: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\nshards: 1\nbackends:\n");
    for i in 0..opts.backends {
        // Addresses are never dialled (nothing is dispatched); each page URL is its own.
        yaml += &format!(
            "  - address: 10.99.{}.{}:8000\n    max_inflight: 8\n    metrics: http://{page_addr}/metrics?backend={i}\n",
            i / 250,
            i % 250 + 1
        );
    }
    yaml += &format!(
        "saturation:\n  detector: {detector}\n  scrape_interval: {}ms\n  staleness: 10s\n",
        opts.interval_ms
    );
    ServeConfig::from_yaml(&yaml).map_err(|e| format!("{e:?}")).expect("a valid configuration")
}

/// Run flowgate with `config` for the measured window: (CPU share of one core, ok scrapes, failed).
async fn measure(config: ServeConfig, seconds: f64) -> io::Result<(f64, f64, f64)> {
    let running = serve::start(config).await.map_err(|e| io::Error::other(e.to_string()))?;
    tokio::time::sleep(WARM_UP).await;
    let scrapes = |text: &str| -> (f64, f64) {
        let (mut ok, mut failed) = (0.0, 0.0);
        for line in text.lines().filter(|l| l.starts_with("flowgate_scrapes_total{")) {
            let v: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            if line.contains("result=\"ok\"") {
                ok += v;
            } else {
                failed += v;
            }
        }
        (ok, failed)
    };
    let before = scrapes(&running.metrics().render(running.engine().as_ref(), false));
    let cpu0 = cpu::process_s().unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let cpu1 = cpu::process_s().unwrap_or(0.0);
    let text = running.metrics().render(running.engine().as_ref(), false);
    let after = scrapes(&text);
    debug_assert!(sample(&text, "flowgate_stale_backends").is_some());
    running.shutdown().await;
    Ok(((cpu1 - cpu0) / seconds, after.0 - before.0, after.1 - before.1))
}

/// Run the `scrape-cost` subcommand; writes `scrape_cost.json`, prints a table.
pub fn run(opts: &Options, out_dir: &Path) -> io::Result<ScrapeCostReport> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("serve-page")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    let page_addr = line.trim().strip_prefix("listening ").map(str::to_string);
    let result = (|| {
        let page_addr = page_addr.ok_or_else(|| io::Error::other(format!("serve-page said {line:?}")))?;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
        runtime.block_on(async {
            let (base, _, _) = measure(config(opts, &page_addr, "concurrency"), opts.seconds).await?;
            let (with, ok, failed) = measure(config(opts, &page_addr, "utilization"), opts.seconds).await?;
            Ok::<_, io::Error>((base, with, ok, failed))
        })
    })();
    let _ = child.kill();
    let _ = child.wait();
    let (base, with, ok, failed) = result?;
    if ok == 0.0 {
        return Err(io::Error::other("no scrape succeeded: the harness is broken"));
    }
    let added = (with - base).max(0.0);
    let report = ScrapeCostReport {
        run: RunInfo::now(opts.quick),
        options: opts.clone(),
        page_bytes: PAGE.len(),
        scrapes_ok: ok,
        scrapes_failed: failed,
        baseline_core_share: base,
        scraping_core_share: with,
        added_core_share: added,
        cpu_per_scrape_us: added * opts.seconds / ok * 1e6,
        target_core_share: TARGET_CORE_SHARE,
        met: added <= TARGET_CORE_SHARE,
    };
    report::write_json(out_dir, "scrape_cost", &report)?;
    let mut t = Table::new(&[
        "backends",
        "interval",
        "page",
        "scrapes/s",
        "CPU no scrapers",
        "CPU scraping",
        "added",
        "per scrape",
        "target ≤ 10%",
    ]);
    t.row(vec![
        opts.backends.to_string(),
        format!("{} ms", opts.interval_ms),
        format!("{:.1} KB", PAGE.len() as f64 / 1e3),
        format!("{:.0} (failed {failed:.0})", ok / opts.seconds),
        format!("{:.1} %", base * 100.0),
        format!("{:.1} %", with * 100.0),
        format!("{:.1} % of a core", added * 100.0),
        format!("{:.0} µs", report.cpu_per_scrape_us),
        if report.met { "yes" } else { "no" }.into(),
    ]);
    println!("\n== scrape cost (flowgate process CPU, same run) ==\n{}", t.render());
    Ok(report)
}
