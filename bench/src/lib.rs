//! flowgate benchmark harness: baselines that model what flowgate replaces, statistics, and the
//! drivers behind the `flowgate-bench` binary.

pub mod baseline;
pub mod child;
pub mod churn;
pub mod cpu;
pub mod deep_queue;
pub mod driver;
pub mod http1;
pub mod latency;
pub mod measurement;
pub mod plot;
pub mod report;
pub mod request_mix;
pub mod scaling_efficiency;
pub mod scenarios;
pub mod stats;
pub mod throughput;
