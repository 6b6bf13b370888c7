//! What the three processes say they did: flowgate's usage counters and workload API, Envoy's
//! ext_proc message counters, the sim's per-workload token counts. These prove each phase is what
//! it claims (metered responses read chunk by chunk and charged; plain ones skipped).

use super::client;
use super::stack::{Stack, LISTENER};
use flowgate::http::WorkloadJson;
use flowgate::metrics::sample;
use flowgate_bench::cpu::read_stat;
use flowgate_sim::SimStats;
use serde::Serialize;
use std::io;

/// flowgate's counter of responses charged the usage they reported.
const USAGE_REPORTED: &str = "flowgate_usage_reported_total";
/// ... and of responses charged an estimate.
const USAGE_ESTIMATED: &str = "flowgate_usage_estimated_total";
/// Envoy's ext_proc counter of messages sent to the processor (under `http.<stat_prefix>.ext_proc.`).
const EXT_PROC_MSGS_SENT: &str = "stream_msgs_sent";

/// Counters read at one moment.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Counters {
    /// `flowgate_usage_reported_total`.
    pub usage_reported: f64,
    /// `flowgate_usage_estimated_total`.
    pub usage_estimated: f64,
    /// Envoy's ext_proc messages sent on the bench listener.
    pub ext_proc_msgs_sent: f64,
    /// CPU seconds used by the flowgate process (`/proc/PID/stat`, 10 ms ticks).
    pub flowgate_cpu_s: f64,
    /// ... by Envoy.
    pub envoy_cpu_s: f64,
    /// ... by the sim.
    pub sim_cpu_s: f64,
    /// Write system calls made by the flowgate process (`syscw` in `/proc/PID/io`: its answers
    /// to Envoy, its metrics page, the shard's wake-ups of the I/O thread).
    pub flowgate_writes: f64,
}

impl Counters {
    /// `self − before`.
    pub fn since(self, before: Counters) -> Counters {
        Counters {
            usage_reported: self.usage_reported - before.usage_reported,
            usage_estimated: self.usage_estimated - before.usage_estimated,
            ext_proc_msgs_sent: self.ext_proc_msgs_sent - before.ext_proc_msgs_sent,
            flowgate_cpu_s: self.flowgate_cpu_s - before.flowgate_cpu_s,
            envoy_cpu_s: self.envoy_cpu_s - before.envoy_cpu_s,
            sim_cpu_s: self.sim_cpu_s - before.sim_cpu_s,
            flowgate_writes: self.flowgate_writes - before.flowgate_writes,
        }
    }
}

/// The value of the Envoy stat `http.ingress_<listener>.ext_proc.<stat>` on an admin `/stats`
/// text page (`name: value` lines).
pub fn envoy_stat(page: &str, listener: &str, stat: &str) -> Option<f64> {
    let name = format!("http.ingress_{listener}.ext_proc.{stat}");
    page.lines().find_map(|l| l.strip_prefix(&name)?.strip_prefix(':')?.trim().parse().ok())
}

fn missing(what: &str) -> io::Error {
    io::Error::other(format!("envoy-modes: {what} missing"))
}

/// CPU seconds used so far by process `pid`.
fn cpu_s(pid: u32, what: &str) -> io::Result<f64> {
    read_stat(&format!("/proc/{pid}/stat")).ok_or_else(|| missing(&format!("/proc/{pid}/stat of {what}")))
}

/// Write system calls made so far by process `pid` (`syscw` in `/proc/PID/io`).
fn writes(pid: u32, what: &str) -> io::Result<f64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))?;
    syscw(&io).ok_or_else(|| missing(&format!("syscw in /proc/{pid}/io of {what}")))
}

/// The `syscw: N` line of a `/proc/PID/io` page.
fn syscw(page: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix("syscw:")?.trim().parse().ok())
}

/// Read all the counters now.
pub async fn counters(stack: &Stack) -> io::Result<Counters> {
    let page = client::get_text(stack.metrics, "/metrics").await?;
    let stats = client::get_text(stack.admin, "/stats?filter=ext_proc").await?;
    Ok(Counters {
        usage_reported: sample(&page, USAGE_REPORTED).ok_or_else(|| missing(USAGE_REPORTED))?,
        usage_estimated: sample(&page, USAGE_ESTIMATED).ok_or_else(|| missing(USAGE_ESTIMATED))?,
        ext_proc_msgs_sent: envoy_stat(&stats, LISTENER, EXT_PROC_MSGS_SENT)
            .ok_or_else(|| missing("envoy ext_proc stream_msgs_sent"))?,
        flowgate_cpu_s: cpu_s(stack.flowgate.pid(), "flowgate")?,
        envoy_cpu_s: cpu_s(stack.envoy.pid(), "envoy")?,
        sim_cpu_s: cpu_s(stack.sim.pid(), "flowgate-sim")?,
        flowgate_writes: writes(stack.flowgate.pid(), "flowgate")?,
    })
}

/// flowgate's workload API.
pub async fn workloads(stack: &Stack) -> io::Result<Vec<WorkloadJson>> {
    let text = client::get_text(stack.metrics, "/api/v1/workloads").await?;
    serde_json::from_str(&text).map_err(|e| io::Error::other(format!("/api/v1/workloads: {e}")))
}

/// The sim's counters.
pub async fn sim_stats(stack: &Stack) -> io::Result<SimStats> {
    let text = client::get_text(stack.sim_addr, "/admin/stats").await?;
    serde_json::from_str(&text).map_err(|e| io::Error::other(format!("sim /admin/stats: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_from_both_pages() {
        let page = "# TYPE flowgate_usage_reported counter\nflowgate_usage_reported_total_other 5\nflowgate_usage_reported_total 12\n";
        assert_eq!(sample(page, USAGE_REPORTED), Some(12.0));
        assert_eq!(sample(page, USAGE_ESTIMATED), None);
        let stats = "http.ingress_bench.ext_proc.stream_msgs_sent: 130\nhttp.ingress_bench.ext_proc.streams_started: 2\n";
        assert_eq!(envoy_stat(stats, "bench", "stream_msgs_sent"), Some(130.0));
        assert_eq!(envoy_stat(stats, "other", "stream_msgs_sent"), None);
        let c = |usage_reported, ext_proc_msgs_sent, flowgate_cpu_s| Counters {
            usage_reported,
            usage_estimated: 1.0,
            ext_proc_msgs_sent,
            flowgate_cpu_s,
            envoy_cpu_s: 2.0,
            sim_cpu_s: 3.0,
            flowgate_writes: 4.0,
        };
        let d = c(5.0, 100.0, 1.5).since(c(2.0, 40.0, 1.0));
        assert_eq!((d.usage_reported, d.usage_estimated, d.ext_proc_msgs_sent), (3.0, 0.0, 60.0));
        assert_eq!((d.flowgate_cpu_s, d.envoy_cpu_s, d.sim_cpu_s), (0.5, 0.0, 0.0));
        assert_eq!(d.flowgate_writes, 0.0);
        assert!(cpu_s(std::process::id(), "self").is_ok());
        assert_eq!(syscw("rchar: 10\nsyscr: 3\nsyscw: 42\nread_bytes: 0\n"), Some(42.0));
        assert_eq!(syscw("syscr: 3\n"), None);
        assert!(writes(std::process::id(), "self").is_ok_and(|w| w > 0.0));
    }
}
