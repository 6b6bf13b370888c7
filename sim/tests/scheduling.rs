//! Continuous batching: the seat and KV bounds, the waiting bound, disconnects and the speed
//! divisor.

mod common;

use std::time::Duration;

use common::*;
use flowgate_sim::SimConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Start a background completion request; the task owns the connection.
fn spawn_completion(
    addr: std::net::SocketAddr,
    prompt: &str,
    max_tokens: u32,
) -> tokio::task::JoinHandle<Resp> {
    let body = completion(prompt, max_tokens);
    tokio::spawn(async move { post(addr, "/v1/completions", &body).await })
}

#[tokio::test]
async fn running_never_exceeds_max_num_seqs() {
    let sim = start(SimConfig { max_num_seqs: 4, decode_step_ms: 2.0, ..fast() }).await;
    let addr = sim.addr();
    let tasks: Vec<_> = (0..40).map(|_| spawn_completion(addr, "hello", 10)).collect();
    // While they queue, /metrics shows them waiting and the batch full.
    eventually("waiting requests on /metrics", || async {
        let page = get(addr, "/metrics").await.text();
        let waiting = sample(&page, "vllm:num_requests_waiting", "model_name=\"sim-model\"")?;
        let running = sample(&page, "vllm:num_requests_running", "model_name=\"sim-model\"")?;
        assert!(running <= 4.0, "running {running}");
        (waiting > 0.0 && running == 4.0).then_some(())
    })
    .await;
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    let s = sim.stats();
    assert_eq!(s.max_running_seen, 4);
    assert_eq!(s.completed_total, 40);
    assert!(s.max_in_system_seen > 4, "{s:?}");
    assert_eq!((s.running, s.waiting, s.kv_tokens_used), (0, 0, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn kv_budget_limits_running() {
    // Each request holds 10 prompt + 30 completion = 40 tokens of a 100-token budget.
    let sim = start(SimConfig { kv_tokens: 100, decode_step_ms: 1.0, ..fast() }).await;
    let addr = sim.addr();
    let prompt = "x".repeat(40);
    let tasks: Vec<_> = (0..6).map(|_| spawn_completion(addr, &prompt, 30)).collect();
    let s = stats_until(&sim, "two running, others waiting", |s| s.running == 2 && s.waiting > 0).await;
    assert_eq!(s.kv_tokens_used, 80);
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    let s = sim.stats();
    assert_eq!((s.max_running_seen, s.completed_total, s.kv_tokens_used), (2, 6, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn request_larger_than_the_kv_budget_is_400() {
    let sim = start(SimConfig { kv_tokens: 50, ..fast() }).await;
    let r = post(sim.addr(), "/v1/completions", &completion(&"x".repeat(80), 31)).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("KV"));
    let s = sim.stats();
    assert_eq!((s.requests_total, s.rejected_total), (1, 1));
    sim.shutdown().await;
}

#[tokio::test]
async fn over_max_waiting_is_429() {
    let sim = start(SimConfig { max_num_seqs: 1, max_waiting: 2, decode_step_ms: 2.0, ..fast() }).await;
    let addr = sim.addr();
    let first = spawn_completion(addr, "a", 5000);
    stats_until(&sim, "one running", |s| s.running == 1).await;
    let queued: Vec<_> = (0..2).map(|_| spawn_completion(addr, "b", 5000)).collect();
    stats_until(&sim, "two waiting", |s| s.waiting == 2).await;
    let r = post(addr, "/v1/completions", &completion("c", 1)).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_exceeded");
    assert_eq!(sim.stats().rejected_total, 1);
    for t in queued.into_iter().chain([first]) {
        t.abort();
    }
    stats_until(&sim, "the aborted clients leave", |s| s.running == 0 && s.waiting == 0).await;
    sim.shutdown().await;
}

#[tokio::test]
async fn disconnect_while_waiting_frees_the_seat() {
    let sim = start(SimConfig { max_num_seqs: 1, max_waiting: 1, decode_step_ms: 2.0, ..fast() }).await;
    let addr = sim.addr();
    let long = spawn_completion(addr, "a", 5000);
    stats_until(&sim, "one running", |s| s.running == 1).await;

    let mut waiter = TcpStream::connect(addr).await.unwrap();
    let body = completion("b", 3).to_string();
    waiter.write_all(&raw_request("POST", "/v1/completions", &[], body.as_bytes())).await.unwrap();
    stats_until(&sim, "one waiting", |s| s.waiting == 1).await;
    drop(waiter);
    stats_until(&sim, "the waiting seat freed", |s| s.waiting == 0).await;

    // The queue has room again; and a client leaving mid-run frees the batch for it.
    let next = spawn_completion(addr, "c", 3);
    stats_until(&sim, "the next request waiting", |s| s.waiting == 1).await;
    long.abort();
    assert_eq!(next.await.unwrap().status, 200);
    let s = sim.stats();
    assert_eq!((s.completed_total, s.rejected_total, s.running, s.kv_tokens_used), (1, 0, 0, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn streaming_client_leaving_frees_its_seat() {
    let sim = start(SimConfig { max_num_seqs: 1, decode_step_ms: 2.0, ..fast() }).await;
    let addr = sim.addr();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let body = serde_json::json!({"prompt": "a", "max_tokens": 5000, "stream": true}).to_string();
    s.write_all(&raw_request("POST", "/v1/completions", &[], body.as_bytes())).await.unwrap();
    stats_until(&sim, "the stream running", |s| s.running == 1 && s.completion_tokens_total > 2).await;
    drop(s);
    stats_until(&sim, "the seat freed", |s| s.running == 0 && s.kv_tokens_used == 0).await;
    sim.shutdown().await;
}

async fn latency(config: SimConfig) -> Duration {
    let sim = start(config).await;
    let t = Instant::now();
    assert_eq!(post(sim.addr(), "/v1/completions", &completion("hello", 20)).await.status, 200);
    let d = t.elapsed();
    sim.shutdown().await;
    d
}

#[tokio::test]
async fn speed_scales_latency() {
    let base = SimConfig { decode_step_ms: 2.0, ..fast() };
    let normal = latency(base.clone()).await;
    let slow = latency(SimConfig { speed: 0.25, ..base }).await;
    assert!(slow >= normal * 2, "speed 0.25 took {slow:?}, speed 1 took {normal:?}");
}

#[tokio::test]
async fn prefill_cost_delays_the_first_token() {
    // 4000 prompt tokens at 25 µs each: a 100 ms prefill step before the first token.
    let sim = start(SimConfig { prefill_us_per_token: 25.0, ..fast() }).await;
    let t = Instant::now();
    let r = post(sim.addr(), "/v1/completions", &completion(&"x".repeat(16_000), 1)).await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(100), "{:?}", t.elapsed());
    sim.shutdown().await;
}
