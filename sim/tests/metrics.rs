//! `/metrics` in each engine's names, forced values, the broken-metrics modes and the admin
//! endpoints.

mod common;

use std::time::Duration;

use common::*;
use flowgate_sim::{EngineKind, Force, MetricsMode, SimConfig};
use serde_json::json;

async fn page_of(engine: EngineKind) -> String {
    let sim = start(SimConfig { engine, model: "m-1".into(), ..fast() }).await;
    assert_eq!(post(sim.addr(), "/v1/completions", &completion("01234567", 3)).await.status, 200);
    let r = get(sim.addr(), "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    sim.shutdown().await;
    r.text()
}

/// Every `# TYPE` line names a known type and every sample line is `series value`.
fn assert_well_formed(page: &str) {
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let kind = rest.rsplit(' ').next().unwrap();
            assert!(["gauge", "counter", "histogram"].contains(&kind), "{line}");
        } else if !line.starts_with("# HELP ") {
            let (_, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {line:?}"));
            assert!(value.parse::<f64>().is_ok() || value == "+Inf" || value == "NaN", "{line}");
        }
    }
}

#[tokio::test]
async fn metrics_use_vllm_names() {
    let page = page_of(EngineKind::Vllm).await;
    assert_well_formed(&page);
    let m = "model_name=\"m-1\"";
    assert_eq!(sample(&page, "vllm:num_requests_waiting", m), Some(0.0));
    assert_eq!(sample(&page, "vllm:num_requests_running", m), Some(0.0));
    assert_eq!(sample(&page, "vllm:kv_cache_usage_perc", m), Some(0.0));
    assert_eq!(sample(&page, "vllm:prompt_tokens_total", m), Some(2.0));
    assert_eq!(sample(&page, "vllm:generation_tokens_total", m), Some(3.0));
    assert_eq!(sample(&page, "vllm:request_success_total", "finished_reason=\"length\""), Some(1.0));
    assert_eq!(sample(&page, "vllm:time_to_first_token_seconds_count", m), Some(1.0));
    assert_eq!(sample(&page, "vllm:e2e_request_latency_seconds_bucket", "le=\"+Inf\""), Some(1.0));
    assert!(sample(&page, "vllm:e2e_request_latency_seconds_sum", m).unwrap() > 0.0);
    assert!(page.contains("# TYPE vllm:num_requests_waiting gauge"));
    assert!(page.contains("# HELP vllm:num_requests_waiting "));
    assert!(page.contains("# TYPE vllm:time_to_first_token_seconds histogram"));
    assert!(page.contains("process_resident_memory_bytes "));
    assert!(page.contains("python_gc_objects_collected_total{generation=\"0\"}"));
}

#[tokio::test]
async fn metrics_use_sglang_names() {
    let page = page_of(EngineKind::Sglang).await;
    assert_well_formed(&page);
    let m = "model_name=\"m-1\"";
    assert_eq!(sample(&page, "sglang:num_queue_reqs", m), Some(0.0));
    assert_eq!(sample(&page, "sglang:num_running_reqs", m), Some(0.0));
    assert_eq!(sample(&page, "sglang:token_usage", m), Some(0.0));
    assert_eq!(sample(&page, "sglang:prompt_tokens_total", m), Some(2.0));
    assert_eq!(sample(&page, "sglang:generation_tokens_total", m), Some(3.0));
    assert_eq!(sample(&page, "sglang:time_to_first_token_seconds_count", m), Some(1.0));
    assert!(!page.contains("vllm:"));
}

#[tokio::test]
async fn metrics_use_trtllm_serve_names() {
    let page = page_of(EngineKind::TrtllmServe).await;
    assert_well_formed(&page);
    let m = "model_name=\"m-1\"";
    assert_eq!(sample(&page, "trtllm_num_requests_waiting", m), Some(0.0));
    assert_eq!(sample(&page, "trtllm_num_requests_running", m), Some(0.0));
    assert_eq!(sample(&page, "trtllm_kv_cache_utilization", m), Some(0.0));
}

#[tokio::test]
async fn metrics_use_triton_tensorrt_llm_names() {
    let page = page_of(EngineKind::TritonTensorrtLlm).await;
    assert_well_formed(&page);
    for kind in ["waiting", "scheduled", "active", "context"] {
        let label = format!("request_type=\"{kind}\"");
        assert_eq!(sample(&page, "nv_trt_llm_request_metrics", &label), Some(0.0), "{kind}");
    }
    assert_eq!(sample(&page, "nv_trt_llm_request_metrics", "request_type=\"max\""), Some(16.0));
    assert!(page.contains("nv_trt_llm_request_metrics{model=\"m-1\",request_type=\"waiting\""));
    let kv = |kind: &str| {
        sample(&page, "nv_trt_llm_kv_cache_block_metrics", &format!("kv_cache_block_type=\"{kind}\""))
    };
    assert_eq!(kv("fraction"), Some(0.0));
    assert_eq!(kv("used"), Some(0.0));
    assert_eq!(kv("max"), Some(1024.0));
    assert_eq!(kv("free"), Some(1024.0));
}

#[tokio::test]
async fn force_overrides_reported_values() {
    let sim = start(SimConfig { engine: EngineKind::Vllm, ..fast() }).await;
    let addr = sim.addr();
    let r = post(addr, "/admin/force", &json!({"waiting": 7, "running": null, "kv_cache_usage": 0.95})).await;
    assert_eq!(r.status, 200);
    let page = get(addr, "/metrics").await.text();
    let m = "model_name=\"sim-model\"";
    assert_eq!(sample(&page, "vllm:num_requests_waiting", m), Some(7.0));
    assert_eq!(sample(&page, "vllm:num_requests_running", m), Some(0.0), "null reports the live value");
    assert_eq!(sample(&page, "vllm:kv_cache_usage_perc", m), Some(0.95));
    assert_eq!(sim.stats().waiting, 0, "stats stay real");

    sim.force(Force { running: Some(3.0), ..Force::default() });
    let page = get(addr, "/metrics").await.text();
    assert_eq!(sample(&page, "vllm:num_requests_waiting", m), Some(0.0));
    assert_eq!(sample(&page, "vllm:num_requests_running", m), Some(3.0));

    for bad in
        [json!({"waiting": -1}), json!({"kv_cache_usage": 1.5}), json!({"waiting": "x"}), json!({"queue": 1})]
    {
        assert_eq!(post(addr, "/admin/force", &bad).await.status, 400, "{bad}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn stalled_metrics_do_not_answer_until_cleared() {
    let sim = start(fast()).await;
    let addr = sim.addr();
    assert_eq!(post(addr, "/admin/metrics", &json!({"mode": "stall"})).await.status, 200);
    let mut pending = tokio::spawn(async move { request(addr, "GET", "/metrics", &[], b"").await });
    // The client timeout is the signal: no answer within it (the request stays pending).
    let stalled = tokio::time::timeout(Duration::from_millis(300), &mut pending).await;
    assert!(stalled.is_err(), "a stalled /metrics answered: {stalled:?}");
    // Other endpoints keep answering while /metrics stalls.
    assert_eq!(get(addr, "/health").await.status, 200);
    sim.set_metrics_mode(MetricsMode::Ok);
    let r = tokio::time::timeout(DEADLINE, pending).await.expect("answers once cleared").unwrap();
    assert_eq!(r.status, 200);
    assert!(r.text().contains("vllm:num_requests_waiting"));
    sim.shutdown().await;
}

#[tokio::test]
async fn error_and_garbage_modes() {
    let sim = start(fast()).await;
    let addr = sim.addr();
    sim.set_metrics_mode(MetricsMode::Error);
    assert_eq!(get(addr, "/metrics").await.status, 500);
    assert_eq!(post(addr, "/admin/metrics", &json!({"mode": "garbage"})).await.status, 200);
    let r = get(addr, "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(std::str::from_utf8(&r.body).is_err(), "garbage is not a text page");
    assert_eq!(post(addr, "/admin/metrics", &json!({"mode": "ok"})).await.status, 200);
    assert!(get(addr, "/metrics").await.text().contains("vllm:num_requests_running"));
    assert_eq!(post(addr, "/admin/metrics", &json!({"mode": "sideways"})).await.status, 400);
    sim.shutdown().await;
}

#[tokio::test]
async fn reset_zeroes_counters() {
    let sim = start(fast()).await;
    let addr = sim.addr();
    assert_eq!(post(addr, "/v1/completions", &completion("abcd", 2)).await.status, 200);
    assert_eq!(stats(addr).await.completed_total, 1);
    assert_eq!(post(addr, "/admin/reset", &json!({})).await.status, 200);
    let s = stats(addr).await;
    assert_eq!(s, flowgate_sim::SimStats::default());
    let page = get(addr, "/metrics").await.text();
    assert_eq!(sample(&page, "vllm:generation_tokens_total", "model_name"), Some(0.0));
    sim.shutdown().await;
}
