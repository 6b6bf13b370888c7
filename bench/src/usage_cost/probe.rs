//! Reading the flowgate process from outside: its CPU time per thread (`/proc`, ns resolution) and
//! the tokens its workload API says were charged.

use serde_json::Value;
use std::collections::HashMap;
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest workload API answer read (a few workloads here).
const MAX_ANSWER_BYTES: u64 = 1 << 20;
/// Longest a workload API request may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// Most threads read from one process.
const MAX_THREADS: usize = 4096;

/// CPU time so far of each thread of process `pid`, ns, by thread id: the first field of
/// `/proc/PID/task/TID/schedstat` (time on a CPU, nanoseconds, unlike `stat`'s 10 ms ticks).
pub fn thread_cpu_ns(pid: u32) -> io::Result<HashMap<u32, u64>> {
    let mut by_thread = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))?.take(MAX_THREADS) {
        let entry = entry?;
        let Some(tid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else { continue };
        if let Some(ns) = text.split_whitespace().next().and_then(|f| f.parse::<u64>().ok()) {
            by_thread.insert(tid, ns);
        }
    }
    if by_thread.is_empty() {
        return Err(io::Error::other(format!("/proc/{pid}/task/*/schedstat: nothing readable")));
    }
    Ok(by_thread)
}

/// CPU time so far of the calling thread, ns (`/proc/thread-self/schedstat`).
pub fn own_thread_cpu_ns() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    text.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::other("/proc/thread-self/schedstat: unreadable"))
}

/// CPU ns used between two [`thread_cpu_ns`] readings: threads in both by difference, threads
/// new in `after` whole (threads that exited in between are lost).
pub fn cpu_between_ns(before: &HashMap<u32, u64>, after: &HashMap<u32, u64>) -> u64 {
    after.iter().map(|(tid, ns)| ns.saturating_sub(before.get(tid).copied().unwrap_or(0))).sum()
}

/// `GET /api/v1/workloads` from flowgate's metrics listener at `addr`.
pub async fn workloads(addr: &str) -> io::Result<Value> {
    let fetch = async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET /api/v1/workloads HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.take(MAX_ANSWER_BYTES).read_to_end(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    let answer = tokio::time::timeout(API_TIMEOUT, fetch)
        .await
        .map_err(|_| io::Error::other(format!("workload API at {addr}: no answer in {API_TIMEOUT:?}")))??;
    let text = String::from_utf8_lossy(&answer);
    let bad = |what: &str| io::Error::other(format!("workload API at {addr}: {what}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| bad("no end of the head"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(bad(head.lines().next().unwrap_or_default()));
    }
    serde_json::from_str(body).map_err(|e| bad(&e.to_string()))
}

/// `(prompt_tokens, completion_tokens)` charged to `workload_id` in a workload API answer; zeros
/// for a workload it does not list.
pub fn tokens_of(workloads: &Value, workload_id: &str) -> (u64, u64) {
    let list = workloads.as_array().map_or(&[][..], Vec::as_slice);
    list.iter().find(|w| w["workload_id"] == workload_id).map_or((0, 0), |w| {
        (w["prompt_tokens"].as_u64().unwrap_or(0), w["completion_tokens"].as_u64().unwrap_or(0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_threads_are_read_and_differenced() {
        let before = thread_cpu_ns(std::process::id()).expect("own threads");
        let spun = std::time::Instant::now();
        let mut x = 0u64;
        while spun.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = thread_cpu_ns(std::process::id()).unwrap();
        assert!(cpu_between_ns(&before, &after) >= 10_000_000, "spun 20 ms");
        let old = HashMap::from([(1, 5), (2, 7)]);
        let new = HashMap::from([(1, 9), (3, 4)]);
        assert_eq!(cpu_between_ns(&old, &new), 4 + 4);
    }

    #[test]
    fn tokens_are_found_by_workload() {
        let v = serde_json::json!([
            {"workload_id": "a", "prompt_tokens": 10, "completion_tokens": 3},
            {"workload_id": "b", "prompt_tokens": 0, "completion_tokens": 0}
        ]);
        assert_eq!(tokens_of(&v, "a"), (10, 3));
        assert_eq!(tokens_of(&v, "b"), (0, 0));
        assert_eq!(tokens_of(&v, "c"), (0, 0));
        assert_eq!(tokens_of(&serde_json::json!({}), "a"), (0, 0));
    }
}
