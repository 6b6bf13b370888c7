//! flowgate benchmark harness: baselines that model what flowgate replaces, statistics, and the
//! drivers behind the `flowgate-bench` binary.

pub mod baseline;
pub mod stats;
