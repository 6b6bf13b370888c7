//! The scraper: one task per backend reads its model server's metrics page every
//! `saturation.scrape_interval` and publishes what it found into the engine's backend table.
//!
//! It runs on the server's async runtime, never on a shard, and hands over through the gate's
//! lock-free words (`engine/src/backends.rs`): a good scrape replaces the backend's load word (its
//! sent-since-scrape count restarts at 0) and wakes the shard with the best head if that made room.
//!
//! A scrape fails when the page does not arrive within `scrape_timeout`, is not a 200, is over
//! [`MAX_PAGE_BYTES`], or does not parse ([`read_page`]). Failures alone change nothing; what
//! counts is time: when no good scrape has arrived for `staleness` (also while a scrape hangs),
//! the backend is marked stale and takes nothing until the next good one. Nothing here can stall
//! dispatch or crash the server: every wait is bounded and every page is bounded.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use flowgate_engine::backends::{BackendId, ScrapeReading};
use flowgate_engine::config::SaturationConfig;
use flowgate_engine::runtime::Engine;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ScrapeTarget;
use crate::metrics::Metrics;
use crate::metrics_page::{read_page, PageError, MAX_PAGE_BYTES};

/// Read buffer of a scrape connection.
const READ_BUF_BYTES: usize = 64 << 10;

/// How a scrape ended, as `flowgate_scrapes_total{result}` counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScrapeResult {
    /// A page was read and published.
    Ok,
    /// Connection refused or reset, or a status other than 200.
    Error,
    /// No complete answer within `scrape_timeout`.
    Timeout,
    /// The page was over [`MAX_PAGE_BYTES`].
    TooLarge,
    /// The page did not parse, or a needed series was missing or not a number.
    BadPage,
}

impl ScrapeResult {
    /// Every result, for metric pre-registration.
    pub const ALL: [ScrapeResult; 5] = [
        ScrapeResult::Ok,
        ScrapeResult::Error,
        ScrapeResult::Timeout,
        ScrapeResult::TooLarge,
        ScrapeResult::BadPage,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ScrapeResult::Ok => "ok",
            ScrapeResult::Error => "error",
            ScrapeResult::Timeout => "timeout",
            ScrapeResult::TooLarge => "too_large",
            ScrapeResult::BadPage => "bad_page",
        }
    }
}

/// One kept-alive HTTP/1.1 connection to a backend's metrics host: the request side and the
/// connection's driver, which the scraper polls itself while a scrape runs (no task of its own,
/// so a scrape costs no wake-ups across tasks).
struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    driver: Pin<Box<hyper::client::conn::http1::Connection<TokioIo<tokio::net::TcpStream>, Empty<Bytes>>>>,
}

/// Start the scraper of backend `id` (at `address`, its page at `target`); it stops when `stop` is
/// cancelled (the backend left the set, the scrape rules changed, or shutdown).
pub fn spawn_one(
    engine: Arc<Engine>,
    id: BackendId,
    address: &str,
    target: ScrapeTarget,
    saturation: &SaturationConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    metrics.backends().register_scrape_target(address);
    let scraper = BackendScraper {
        id,
        backend: address.to_string(),
        target,
        engine,
        metrics,
        saturation: saturation.clone(),
        last_good: Instant::now(),
        stale: true,
        stop: stop.clone(),
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = scraper.run() => {}
        }
    })
}

/// One backend's scrape loop.
struct BackendScraper {
    /// The backend in the engine's table.
    id: BackendId,
    /// Its address (the metric label).
    backend: String,
    target: ScrapeTarget,
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    saturation: SaturationConfig,
    /// When the last good scrape arrived (start-up before the first).
    last_good: Instant,
    /// Marked stale in the engine since `last_good` (the engine starts every backend stale).
    stale: bool,
    /// Cancelled when this scraper must stop; a scrape that ends after it counts nothing (the
    /// backend's series may be gone).
    stop: CancellationToken,
}

impl BackendScraper {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.saturation.scrape_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The URL was checked by the configuration; one that fails here fails every scrape.
        let uri: Option<hyper::Uri> = self.target.url.parse().ok();
        // Its own connection per backend (even when backends share a metrics host), reopened
        // after any failure: a timed-out request leaves the old one in an unknown state.
        let mut connection: Option<Connection> = None;
        loop {
            self.watching_staleness(tick.tick()).await;
            // What was sent before the request is what the server may have seen; the rest still
            // counts after the answer.
            let sent_before = self.engine.sent_since_scrape(self.id);
            let fetch =
                tokio::time::timeout(self.saturation.scrape_timeout, fetch(&mut connection, uri.as_ref()));
            let result = match self.watching_staleness(fetch).await {
                Err(_) => ScrapeResult::Timeout,
                Ok(Err(result)) => result,
                Ok(Ok(page)) => match read_page(self.target.engine, &page) {
                    Ok(page) => {
                        let reading = ScrapeReading {
                            waiting: page.waiting,
                            running: page.running,
                            kv_cache_usage: page.kv_cache_usage,
                        };
                        self.engine.publish_scrape_since(self.id, reading, sent_before);
                        self.last_good = Instant::now();
                        if self.stale {
                            tracing::info!(backend = %self.backend, "metrics fresh again");
                            self.stale = false;
                        }
                        ScrapeResult::Ok
                    }
                    Err(PageError::TooLarge(_)) => ScrapeResult::TooLarge,
                    Err(e) => {
                        tracing::debug!(backend = %self.backend, error = %e, "metrics page refused");
                        ScrapeResult::BadPage
                    }
                },
            };
            if result != ScrapeResult::Ok {
                connection = None;
            }
            if self.stop.is_cancelled() {
                return;
            }
            self.metrics.backends().count_scrape(&self.backend, result);
        }
    }

    /// Await `f`, marking the backend stale if `staleness` passes without a good scrape meanwhile.
    async fn watching_staleness<F: Future>(&mut self, f: F) -> F::Output {
        tokio::pin!(f);
        loop {
            let stale_at = self.last_good + self.saturation.staleness;
            tokio::select! {
                out = &mut f => return out,
                _ = tokio::time::sleep_until(stale_at), if !self.stale => {
                    self.engine.mark_stale(self.id);
                    self.stale = true;
                    tracing::warn!(
                        backend = %self.backend,
                        staleness = ?self.saturation.staleness,
                        "no good metrics scrape within staleness: the backend counts as saturated"
                    );
                }
            }
        }
    }
}

/// GET the page over `connection` (opened first if there is none or it closed): its body, at
/// most [`MAX_PAGE_BYTES`]. A kept-alive connection the server closed while idle is only seen
/// when used: then the GET is tried once more on a new one.
async fn fetch(connection: &mut Option<Connection>, uri: Option<&hyper::Uri>) -> Result<Bytes, ScrapeResult> {
    let reused = connection.is_some();
    match fetch_once(connection, uri).await {
        Err(_) if reused && connection.is_none() => fetch_once(connection, uri).await,
        out => out,
    }
}

/// One GET over `connection`; on return `connection` is `None` if it ended.
async fn fetch_once(
    connection: &mut Option<Connection>,
    uri: Option<&hyper::Uri>,
) -> Result<Bytes, ScrapeResult> {
    let uri = uri.ok_or(ScrapeResult::Error)?;
    let authority = uri.authority().ok_or(ScrapeResult::Error)?;
    if connection.as_ref().is_none_or(|c| c.sender.is_closed()) {
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::net::TcpStream::connect((authority.host(), port))
            .await
            .map_err(|_| ScrapeResult::Error)?;
        let _ = stream.set_nodelay(true);
        // Read in large slices: a 40 KB page then costs a few read calls, not one per 8 KiB.
        let (sender, driver) = hyper::client::conn::http1::Builder::new()
            .read_buf_exact_size(Some(READ_BUF_BYTES))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|_| ScrapeResult::Error)?;
        *connection = Some(Connection { sender, driver: Box::pin(driver) });
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority.as_str())
        .header(hyper::header::ACCEPT, "text/plain")
        .body(Empty::new())
        .map_err(|_| ScrapeResult::Error)?;
    let Connection { mut sender, driver } = connection.take().ok_or(ScrapeResult::Error)?;
    let mut driver = Some(driver);
    let out = {
        let exchange = async {
            sender.ready().await.map_err(|_| ScrapeResult::Error)?;
            let response = sender.send_request(request).await.map_err(|_| ScrapeResult::Error)?;
            if response.status() != hyper::StatusCode::OK {
                return Err(ScrapeResult::Error);
            }
            match Limited::new(response.into_body(), MAX_PAGE_BYTES).collect().await {
                Ok(body) => Ok(body.to_bytes()),
                Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ScrapeResult::TooLarge),
                Err(_) => Err(ScrapeResult::Error),
            }
        };
        tokio::pin!(exchange);
        let ended = tokio::select! {
            biased;
            out = &mut exchange => Some(out),
            _ = driver.as_mut().expect("set above").as_mut() => None,
        };
        match ended {
            Some(out) => out,
            None => {
                // The connection ended (the peer closed it, or it failed). Drop its driver, which
                // holds the pending answer's sender, then take what the body still has (all of
                // it, or an error: never a wait).
                driver = None;
                exchange.await
            }
        }
    };
    if let Some(driver) = driver {
        *connection = Some(Connection { sender, driver });
    }
    out
}
