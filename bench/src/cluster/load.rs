//! Closed-loop ext_proc clients against one replica, playing Envoy: open a stream with a
//! workload's `request_headers`, await the answer and, when dispatched, optionally send a real
//! completion to the simulator *while the slot is held* (so the simulator's peak concurrency is
//! what flowgate let through), then release the slot and close the stream. Without a backend
//! request it is the bare dispatch + release round of `extproc`'s client.

use crate::extproc::client::{request_headers_with, request_holding, response_headers, Client, Failure};
use crate::extproc::load::{connect, url};
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Longest one request (its whole stream, backend request included) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the loops of one [`Load`] saw.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Requests dispatched and completed (backend request included, when there is one).
    pub completed: u64,
    /// Answered with an immediate response.
    pub refused: u64,
    /// A stream error, a timeout or a failed backend request.
    pub failed: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.completed += o.completed;
        self.refused += o.refused;
        self.failed += o.failed;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// The backend request each dispatched request makes while it holds its slot.
#[derive(Clone, Copy, Debug)]
pub struct Upstream {
    /// The simulator.
    pub sim: SocketAddr,
    /// Completion tokens asked for (one decode step each).
    pub max_tokens: u32,
}

/// A running set of closed-loop workers.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<Tally>,
    started: Instant,
}

/// `{"workload_id": workload, "criticality": 3}` as a `request_headers` message.
pub fn workload_headers(workload: &str) -> ProcessingRequest {
    request_headers_with(&format!(r#"{{"workload_id":"{workload}","criticality":3}}"#), &[])
}

/// `POST /v1/completions` of `max_tokens` tokens for `workload`; `Ok` on a 200.
async fn complete(up: Upstream, workload: &str) -> Result<(), String> {
    let body = format!(r#"{{"model":"sim-model","prompt":"hi","max_tokens":{}}}"#, up.max_tokens);
    let ctx = format!(r#"{{"workload_id":"{workload}"}}"#);
    match super::http::exchange(up.sim, "POST", "/v1/completions", &[("x-workload-context", &ctx)], &body)
        .await
    {
        Ok((200, _)) => Ok(()),
        Ok((status, body)) => Err(format!("backend answered {status}: {body}")),
        Err(e) => Err(format!("backend request: {e}")),
    }
}

/// One worker: requests of `workload` back to back until `stop`.
async fn worker(
    mut client: Client,
    workload: String,
    upstream: Option<Upstream>,
    stop: Arc<AtomicBool>,
) -> Tally {
    let first = workload_headers(&workload);
    let mut t = Tally::default();
    while !stop.load(Ordering::Relaxed) {
        let hold = async || match upstream {
            Some(up) => complete(up, &workload).await,
            None => Ok(()),
        };
        let outcome = tokio::time::timeout(
            REQUEST_TIMEOUT,
            request_holding(&mut client, first.clone(), &[response_headers()], true, hold),
        )
        .await
        .unwrap_or_else(|_| Err(Failure::Failed(format!("no answer within {REQUEST_TIMEOUT:?}"))));
        match outcome {
            Ok(_) => t.completed += 1,
            Err(Failure::NotDispatched(m)) => {
                t.refused += 1;
                t.first_error.get_or_insert(m);
            }
            Err(Failure::Failed(m)) => {
                t.failed += 1;
                t.first_error.get_or_insert(m);
            }
        }
    }
    t
}

impl Load {
    /// `workers` loops of `workload` against the replica at `grpc`, over `connections` HTTP/2
    /// connections, each dispatched request making `upstream`'s backend request when given.
    pub async fn start(
        grpc: SocketAddr,
        connections: usize,
        workers: usize,
        workload: &str,
        upstream: Option<Upstream>,
    ) -> io::Result<Load> {
        let clients = connect(url(&grpc.to_string()), connections.max(1))
            .await
            .map_err(|e| io::Error::other(format!("connect {grpc}: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for w in 0..workers {
            tasks.spawn(worker(
                clients[w % clients.len()].clone(),
                workload.to_string(),
                upstream,
                stop.clone(),
            ));
        }
        Ok(Load { stop, tasks, started: Instant::now() })
    }

    /// Stop the loops (each finishes its request); their tally and how long they ran.
    pub async fn stop(mut self) -> (Tally, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        while let Some(t) = self.tasks.join_next().await {
            match t {
                Ok(t) => total.merge(t),
                Err(e) => {
                    total.failed += 1;
                    total.first_error.get_or_insert(format!("worker task: {e}"));
                }
            }
        }
        (total, self.started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request as Msg;

    #[test]
    fn the_workload_is_in_the_context_header() {
        let Some(Msg::RequestHeaders(h)) = workload_headers("flood").request else { panic!("headers") };
        let ctx = h.headers.unwrap().headers.into_iter().find(|h| h.key == "x-workload-context").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&ctx.raw_value).unwrap();
        assert_eq!(v["workload_id"], "flood");
    }

    #[test]
    fn tallies_merge() {
        let mut a = Tally { completed: 2, ..Tally::default() };
        a.merge(Tally { completed: 1, failed: 1, first_error: Some("x".into()), ..Tally::default() });
        assert_eq!((a.completed, a.failed, a.first_error.as_deref()), (3, 1, Some("x")));
    }
}
