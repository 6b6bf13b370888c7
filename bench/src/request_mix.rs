//! The fixed request mix of the throughput measurements: [`WORKLOADS`] workloads spread evenly
//! over the shards, criticalities 1..=5.

use crate::baseline::{Kind, Req};
use crate::driver::{balanced_ids, Rng};

/// Distinct workloads requests are spread over.
pub const WORKLOADS: usize = 64;

fn shards_of(kind: Kind) -> usize {
    match kind {
        Kind::Flowgate(n) | Kind::FlowgateScraped(n) | Kind::FlowgateChurn(n) | Kind::FlowgateSteady(n) => n,
        _ => 1,
    }
}

/// A fixed mix of requests: workloads spread over the shards, criticalities 1..=5.
pub fn request_mix(kind: Kind, prefix: &str, seed: u64) -> Vec<Req> {
    let ids = balanced_ids(prefix, WORKLOADS, shards_of(kind));
    let mut rng = Rng(seed);
    (0..4096).map(|i| Req::new(&ids[i % ids.len()], 1 + rng.below(5) as u8)).collect()
}
