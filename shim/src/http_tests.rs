//! Tests of [`super`] over a real listener on 127.0.0.1:0.

use super::*;
use crate::view::StaticView;
use flowgate_engine::clock::Clock;
use flowgate_engine::config::WorkloadConfig;
use flowgate_engine::registry::{hash_workload_id, RateWindow, WorkloadTable};
use flowgate_engine::registry_view::RegistryView;
use flowgate_engine::runtime::EngineStats;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running listener; dropping `stop` ends it.
struct Running {
    addr: SocketAddr,
    state: HttpState,
    _stop: tokio::sync::oneshot::Sender<()>,
    _table: Option<WorkloadTable>,
}

async fn start(ids: &[&str]) -> Running {
    let tracked = Arc::new(AtomicUsize::new(0));
    let window = RateWindow::new(Duration::from_secs(60));
    let (registry, table) = if ids.is_empty() {
        (RegistryView::new(vec![], tracked, Clock::new()), None)
    } else {
        let mut table = WorkloadTable::new(&WorkloadConfig::default(), window, tracked.clone());
        for (i, id) in ids.iter().enumerate() {
            for _ in 0..=i {
                table.arrive(id, hash_workload_id(id), 4, 1);
            }
        }
        (RegistryView::new(vec![table.directory()], tracked, Clock::new()), Some(table))
    };
    let view = StaticView {
        registry,
        stats: EngineStats { queued: 2, queued_bytes: 0, inflight: 1, capacity: 8 },
        backends: vec![("127.0.0.1:8000".into(), 1)],
        shard_parks: vec![0],
    };
    let state = HttpState {
        view: Arc::new(view),
        metrics: Arc::new(Metrics::new(100, 3)),
        shutting_down: Arc::new(AtomicBool::new(false)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    Running { addr, state, _stop: stop, _table: table }
}

/// A minimal HTTP/1.1 GET: (status, lower-cased headers, body).
async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n{accept}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_string())
}

#[tokio::test]
async fn healthz_is_ok_until_shutdown() {
    let r = start(&[]).await;
    let (status, _, body) = get(r.addr, "/healthz", None).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    r.state.shutting_down.store(true, Ordering::Release);
    let (status, _, body) = get(r.addr, "/healthz", None).await;
    assert_eq!((status, body.as_str()), (503, "shutting down"));
}

#[tokio::test]
async fn metrics_in_both_formats() {
    let r = start(&["a"]).await;
    let (status, head, body) = get(r.addr, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("# TYPE flowgate_requests_total counter"), "{body}");
    assert!(body.contains("flowgate_queued_requests 2"), "{body}");
    assert!(body.contains("flowgate_inflight{backend=\"127.0.0.1:8000\"} 1"), "{body}");
    assert!(body.contains("flowgate_tracked_workloads 1"), "{body}");
    assert!(!body.contains("# EOF"));
    let (status, head, body) = get(
        r.addr,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("# TYPE flowgate_requests counter"), "{body}");
}

#[tokio::test]
async fn workloads_list_is_json() {
    let r = start(&["chat", "batch"]).await;
    let (status, head, body) = get(r.addr, "/api/v1/workloads", None).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    let list: Vec<WorkloadJson> = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = list.iter().map(|w| w.workload_id.as_str()).collect();
    assert_eq!(ids, ["batch", "chat"]);
    assert_eq!(list[0].total, 2);
    assert_eq!(list[1].total, 1);
    assert_eq!(list[0].criticality, 4);
    assert_eq!(list[0].active, 0);
    assert!(list[0].rate_per_s >= 0.0);
    let raw: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut keys: Vec<&str> = raw[0].as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "active",
            "completion_tokens",
            "criticality",
            "prompt_tokens",
            "rate_per_s",
            "remote_rate_per_s",
            "remote_token_rate_per_s",
            "token_rate_per_s",
            "total",
            "workload_id"
        ]
    );
    assert_eq!((list[0].prompt_tokens, list[0].completion_tokens, list[0].token_rate_per_s), (0, 0, 0.0));
}

#[tokio::test]
async fn empty_registry_lists_nothing() {
    let r = start(&[]).await;
    let (status, _, body) = get(r.addr, "/api/v1/workloads", None).await;
    assert_eq!((status, body.as_str()), (200, "[]"));
}

#[tokio::test]
async fn one_workload_and_unknown_ids() {
    let r = start(&["team/a", "chat"]).await;
    let (status, _, body) = get(r.addr, "/api/v1/workload/chat/metrics", None).await;
    assert_eq!(status, 200);
    let w: WorkloadJson = serde_json::from_str(&body).unwrap();
    assert_eq!((w.workload_id.as_str(), w.total), ("chat", 2));
    let (status, _, body) = get(r.addr, "/api/v1/workload/team%2Fa/metrics", None).await;
    assert_eq!(status, 200, "{body}");
    let w: WorkloadJson = serde_json::from_str(&body).unwrap();
    assert_eq!(w.workload_id, "team/a");
    let (status, head, body) = get(r.addr, "/api/v1/workload/nobody/metrics", None).await;
    assert_eq!(status, 404);
    assert!(head.contains("content-type: application/json"), "{head}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["error"], "unknown workload");
    assert_eq!(e["workload_id"], "nobody");
}

#[tokio::test]
async fn unknown_routes_are_404() {
    let r = start(&[]).await;
    assert_eq!(get(r.addr, "/nothing", None).await.0, 404);
    assert_eq!(get(r.addr, "/api/v1/workload/", None).await.0, 404);
}

#[tokio::test]
async fn status_page_is_self_contained_html_polling_the_api() {
    let r = start(&[]).await;
    let (status, head, body) = get(r.addr, "/", None).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(body.starts_with("<!DOCTYPE html>"), "{body}");
    assert_eq!(body, crate::status_page::STATUS_HTML);
    for path in crate::status_page::POLLED_PATHS {
        assert!(body.contains(&format!("\"{path}\"")), "page does not poll {path}");
    }
    assert!(body.contains("setInterval(poll, POLL_MS)") && body.contains("const POLL_MS = 1000;"));
    let lower = body.to_ascii_lowercase();
    for external in
        ["http://", "https://", "src=\"//", "href=\"//", "src='//", "href='//", "<link", "@import"]
    {
        assert!(!lower.contains(external), "the page loads something from elsewhere: {external}");
    }
    assert!(!lower.contains("<script src"), "scripts are inline");
    assert!(!lower.contains("innerhtml"), "data is written with textContent only");
}

#[tokio::test]
async fn status_page_figures_are_blank_until_the_script_fills_them() {
    let page = crate::status_page::STATUS_HTML;
    assert!(page.contains(r#"<span id="queued-total">–</span>"#));
    for c in 1..=crate::metrics::CRITICALITIES {
        assert!(page.contains(&format!(r#"<span data-queued-crit="{c}">–</span>"#)), "criticality {c}");
    }
    for tbody in ["backends", "workloads", "decisions"] {
        assert!(page.contains(&format!(r#"<tbody id="{tbody}"></tbody>"#)), "{tbody}");
    }
}

#[tokio::test]
async fn engine_totals_from_a_static_view() {
    let r = start(&[]).await;
    let held = [r.state.metrics.enqueue(&Arc::from("a"), 5), r.state.metrics.enqueue(&Arc::from("b"), 5)];
    let low = r.state.metrics.enqueue(&Arc::from("a"), 1);
    let (status, head, body) = get(r.addr, "/api/v1/engine", None).await;
    assert_eq!(status, 200);
    assert!(head.contains("content-type: application/json"), "{head}");
    let e: crate::engine_json::EngineJson = serde_json::from_str(&body).unwrap();
    assert_eq!((e.shards, e.queued, e.inflight, e.capacity), (1, 2, 1, 8), "{body}");
    assert_eq!(e.queued_by_criticality, [1, 0, 0, 0, 2], "{body}");
    let labels: Vec<&str> = e.outcomes.keys().map(String::as_str).collect();
    let mut expected: Vec<&str> = flowgate_engine::Outcome::ALL.iter().map(|o| o.label()).collect();
    expected.sort_unstable();
    assert_eq!(labels, expected);
    assert!(e.outcomes.values().all(|n| *n == 0), "{body}");
    let raw: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(raw.as_object().unwrap().len(), 6, "{body}");
    low.finish(flowgate_engine::Outcome::Dispatched, Duration::ZERO);
    drop(held);
    let (_, _, body) = get(r.addr, "/api/v1/engine", None).await;
    let e: crate::engine_json::EngineJson = serde_json::from_str(&body).unwrap();
    assert_eq!(e.queued_by_criticality, [0; 5], "finished and dropped requests leave the count");
}
