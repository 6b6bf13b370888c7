//! `POST /v1/completions` and `POST /v1/chat/completions`: parse, queue at the scheduler, then
//! answer with the whole response or stream it as server-sent events.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::error::ApiError;
use crate::http::App;
use crate::request::{parse, Endpoint, Inference};
use crate::response::Shape;
use crate::scheduler::{submit, Refusal};
use crate::workload::workload_id;

/// Events buffered between a stream's producer task and the connection.
pub const STREAM_CHANNEL_CAPACITY: usize = 16;

/// `POST /v1/completions`.
pub async fn completions(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(app, Endpoint::Completions, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/chat/completions`.
pub async fn chat(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(app, Endpoint::Chat, headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

fn refusal(r: Refusal) -> ApiError {
    match r {
        Refusal::NeverFits { needed, kv_tokens } => ApiError::bad_request(format!(
            "prompt plus max_tokens need {needed} tokens of KV cache; the budget is {kv_tokens}"
        )),
        Refusal::QueueFull => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too many requests waiting"),
        Refusal::ShuttingDown => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the simulator is stopping"),
    }
}

fn stopped() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the simulator stopped before the request finished")
}

async fn serve(
    app: Arc<App>,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let cfg = &app.shared.config;
    let req = parse(endpoint, &body, cfg.default_max_tokens)?;
    let workload = workload_id(&headers);
    let mut progress =
        submit(&app.shared, &app.submitter, req.prompt_tokens, req.max_tokens, &workload).map_err(refusal)?;
    let shape = Shape::new(endpoint, app.next_id.fetch_add(1, Ordering::Relaxed), &cfg.model);
    if !req.stream {
        // Dropping this future (client gone) drops `progress`: the scheduler frees the seat.
        let done = progress.wait_for(|g| *g >= req.max_tokens).await.is_ok();
        if !done {
            return Err(stopped());
        }
        return Ok(Json(shape.full(req.prompt_tokens, req.max_tokens)).into_response());
    }
    let (tx, rx) = mpsc::channel(STREAM_CHANNEL_CAPACITY);
    let chunk = u32::try_from(cfg.tokens_per_chunk).unwrap_or(u32::MAX);
    let usage = cfg.stream_usage.include(req.include_usage);
    tokio::spawn(produce(shape, req, chunk, usage, progress, tx));
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-cache"));
    Ok(response)
}

fn event(v: &serde_json::Value) -> Result<Bytes, Infallible> {
    Ok(Bytes::from(format!("data: {v}\n\n")))
}

/// Write the stream of one request: a chunk per `chunk` tokens as they are generated, then the
/// usage chunk if `usage`, then `[DONE]`. Stops at once if the client goes away (the scheduler
/// then sees `progress` closed) and ends without `[DONE]` if the simulator stops.
async fn produce(
    shape: Shape,
    req: Inference,
    chunk: u32,
    usage: bool,
    mut progress: watch::Receiver<u32>,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
) {
    let max = req.max_tokens;
    let mut sent = 0u32;
    while sent < max {
        let want = sent.saturating_add(chunk).min(max);
        let generated = tokio::select! {
            r = progress.wait_for(|g| *g >= want) => match r {
                Ok(g) => *g,
                Err(_) => return,
            },
            _ = tx.closed() => return,
        };
        while sent < generated {
            let to = sent.saturating_add(chunk).min(max);
            if to > generated {
                break;
            }
            if tx.send(event(&shape.chunk(sent, to, to == max, usage))).await.is_err() {
                return;
            }
            sent = to;
        }
    }
    drop(progress);
    if usage && tx.send(event(&shape.usage_chunk(req.prompt_tokens, max))).await.is_err() {
        return;
    }
    let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
}
