//! The OpenAI-compatible surface: response shapes, deterministic usage, streaming, request
//! errors and per-workload attribution.

mod common;

use common::*;
use flowgate_sim::{SimConfig, StreamUsage};
use serde_json::{json, Value};

#[tokio::test]
async fn completion_reports_deterministic_usage() {
    let sim = start(fast()).await;
    // 10 bytes → ceil(10 / 4) = 3 prompt tokens.
    let r = post(sim.addr(), "/v1/completions", &completion("0123456789", 5)).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "sim-model");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(v["created"].as_u64().unwrap() > 0);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(!v["choices"][0]["text"].as_str().unwrap().is_empty());
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}));
    let s = sim.stats();
    assert_eq!((s.requests_total, s.completed_total), (1, 1));
    assert_eq!((s.prompt_tokens_total, s.completion_tokens_total), (3, 5));
    assert_eq!((s.running, s.waiting, s.kv_tokens_used), (0, 0, 0));
    sim.shutdown().await;
}

#[tokio::test]
async fn missing_max_tokens_uses_the_default_and_prompt_lists_add_up() {
    let sim = start(SimConfig { default_max_tokens: 7, ..fast() }).await;
    let r = post(sim.addr(), "/v1/completions", &json!({"prompt": ["abcd", "efgh", "i"]})).await;
    assert_eq!(r.json()["usage"], json!({"prompt_tokens": 3, "completion_tokens": 7, "total_tokens": 10}));
    let r = post(sim.addr(), "/v1/completions", &json!({"prompt": ""})).await;
    assert_eq!(r.json()["usage"]["prompt_tokens"], 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn chat_completion_usage_counts_messages() {
    let sim = start(fast()).await;
    let body = json!({
        "model": "sim-model",
        "messages": [
            {"role": "system", "content": "12345678"},
            {"role": "user", "content": "abcdefghi"},
        ],
        "max_tokens": 4,
    });
    let r = post(sim.addr(), "/v1/chat/completions", &body).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    // 17 bytes of content → 5 prompt tokens.
    assert_eq!(v["usage"], json!({"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}));
    sim.shutdown().await;
}

fn stream_body(max_tokens: u32, include_usage: Option<bool>) -> Value {
    let mut v = json!({"prompt": "0123456789", "max_tokens": max_tokens, "stream": true});
    if let Some(u) = include_usage {
        v["stream_options"] = json!({"include_usage": u});
    }
    v
}

#[tokio::test]
async fn stream_emits_chunks_then_usage_then_done() {
    let sim = start(SimConfig { tokens_per_chunk: 3, ..fast() }).await;
    let plain = post(sim.addr(), "/v1/completions", &completion("0123456789", 10)).await.json();
    let r = post(sim.addr(), "/v1/completions", &stream_body(10, Some(true))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&r.body);
    // ceil(10 / 3) = 4 token chunks, the usage chunk, [DONE].
    assert_eq!(events.len(), 6, "{events:?}");
    assert_eq!(events[5], "[DONE]");
    let chunks: Vec<Value> = events[..5].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let text: String = chunks[..4].iter().map(|c| c["choices"][0]["text"].as_str().unwrap()).collect();
    assert_eq!(text, plain["choices"][0]["text"].as_str().unwrap());
    for c in &chunks[..3] {
        assert!(c["choices"][0]["finish_reason"].is_null());
        assert!(c["usage"].is_null());
    }
    assert_eq!(chunks[3]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["usage"], plain["usage"]);
    sim.shutdown().await;
}

#[tokio::test]
async fn chat_stream_sends_role_then_content_deltas() {
    let sim = start(fast()).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": true});
    let events = sse_events(&post(sim.addr(), "/v1/chat/completions", &body).await.body);
    assert_eq!(events.len(), 4, "{events:?}");
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let second: Value = serde_json::from_str(&events[1]).unwrap();
    assert!(second["choices"][0]["delta"]["content"].is_string());
    assert_eq!(events[3], "[DONE]");
    sim.shutdown().await;
}

fn has_usage_chunk(events: &[String]) -> bool {
    events.iter().filter(|e| *e != "[DONE]").any(|e| {
        let v: Value = serde_json::from_str(e).unwrap();
        v["choices"] == json!([]) && v["usage"].is_object()
    })
}

#[tokio::test]
async fn stream_usage_only_when_requested() {
    let requested = start(fast()).await;
    let addr = requested.addr();
    let without = sse_events(&post(addr, "/v1/completions", &stream_body(2, None)).await.body);
    assert!(!has_usage_chunk(&without));
    assert_eq!(without.len(), 3);
    let off = sse_events(&post(addr, "/v1/completions", &stream_body(2, Some(false))).await.body);
    assert!(!has_usage_chunk(&off));
    let on = sse_events(&post(addr, "/v1/completions", &stream_body(2, Some(true))).await.body);
    assert!(has_usage_chunk(&on));

    let always = start(SimConfig { stream_usage: StreamUsage::Always, ..fast() }).await;
    let events = sse_events(&post(always.addr(), "/v1/completions", &stream_body(2, None)).await.body);
    assert!(has_usage_chunk(&events));

    let never = start(SimConfig { stream_usage: StreamUsage::Never, ..fast() }).await;
    let events = sse_events(&post(never.addr(), "/v1/completions", &stream_body(2, Some(true))).await.body);
    assert!(!has_usage_chunk(&events));
    for sim in [requested, always, never] {
        sim.shutdown().await;
    }
}

#[tokio::test]
async fn bad_json_is_400() {
    let sim = start(fast()).await;
    let addr = sim.addr();
    for body in [&b"{not json"[..], b"{\"prompt\": 5}", b"{\"max_tokens\": 3}", b""] {
        let r = call(addr, "POST", "/v1/completions", &[], body).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        let v = r.json();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(v["error"]["message"].as_str().unwrap().len() > 5);
    }
    let r = post(addr, "/v1/chat/completions", &json!({"messages": "hello"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(sim.stats().requests_total, 0, "malformed requests are not counted");
    sim.shutdown().await;
}

#[tokio::test]
async fn max_tokens_out_of_range_is_400() {
    let sim = start(fast()).await;
    for max in [json!(0), json!(32769), json!(-3), json!("10")] {
        let r = post(sim.addr(), "/v1/completions", &json!({"prompt": "x", "max_tokens": max})).await;
        assert_eq!(r.status, 400, "max_tokens {max}");
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("max_tokens"));
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn oversized_body_is_413() {
    let sim = start(fast()).await;
    let prompt = "a".repeat(1024 * 1024 + 10);
    let r = post(sim.addr(), "/v1/completions", &completion(&prompt, 1)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"]["code"], 413);
    sim.shutdown().await;
}

#[tokio::test]
async fn per_workload_stats_attribute_tokens() {
    let sim = start(fast()).await;
    let addr = sim.addr();
    let body = completion("01234567", 3).to_string(); // 2 prompt tokens
    let chat = [("x-workload-context", r#"{"workload_id": "chat", "criticality": 4}"#)];
    let batch = [("x-gateway-inference-fairness-id", "batch")];
    for h in [&chat[..], &chat[..], &batch[..], &[]] {
        assert_eq!(call(addr, "POST", "/v1/completions", h, body.as_bytes()).await.status, 200);
    }
    let s = stats(addr).await;
    let w = |id: &str| s.per_workload.get(id).cloned().unwrap_or_else(|| panic!("{id} in {s:?}"));
    assert_eq!((w("chat").requests, w("chat").prompt_tokens, w("chat").completion_tokens), (2, 4, 6));
    assert_eq!((w("batch").requests, w("batch").prompt_tokens, w("batch").completion_tokens), (1, 2, 3));
    assert_eq!(w("default").requests, 1);
    assert_eq!(s.per_workload.len(), 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn health_is_200() {
    let sim = start(fast()).await;
    assert_eq!(get(sim.addr(), "/health").await.status, 200);
    sim.shutdown().await;
}
