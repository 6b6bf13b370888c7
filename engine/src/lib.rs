//! # flowgate-engine
//!
//! Workload-aware admission and priority queueing for LLM inference gateways: a lock-free,
//! thread-per-core engine. Each core pins a [`shard`] holding a max-min [`heap`] of queued requests
//! keyed by cached [`score`]s and a workload table ([`registry`]); requests reach shards over SPSC
//! rings; a gate hands free model-server slots to the best head in the whole engine.
//!
//! The data path reads in one direction:
//! header → [`context`] → [`registry`] → shard hash → ring → [`shard`] heap → gate → outcome → permit.
#![deny(missing_docs)]
#![warn(rust_2018_idioms)]

pub mod backends;
pub mod budget;
pub mod clock;
pub mod config;
mod config_check;
pub mod config_error;
pub mod context;
pub mod doorbell;
pub mod fairness;
pub mod gate;
pub mod heap;
#[cfg(not(flowgate_loom))]
mod inbox;
pub mod layout;
pub mod lease;
pub mod load;
pub mod occupancy;
pub mod outcome;
pub mod permit;
pub mod queued;
pub mod quota;
pub mod quota_rule;
pub mod rate_window;
pub mod registry;
pub mod registry_view;
#[cfg(not(flowgate_loom))]
pub mod ring;
#[cfg(not(flowgate_loom))]
pub mod runtime;
pub mod score;
pub mod shard;
#[cfg(not(flowgate_loom))]
mod shared;
pub mod slot;
pub mod sync;
pub mod tails;
#[cfg(not(flowgate_loom))]
pub mod ticket;
pub mod tokens;
#[cfg(not(flowgate_loom))]
mod worker;

pub use config::EngineConfig;
pub use context::{DefaultReason, WorkloadContext};
pub use outcome::Outcome;
#[cfg(not(flowgate_loom))]
pub use runtime::{Decision, Engine, Permit, Request, SubmitError, Submitter, Ticket};
