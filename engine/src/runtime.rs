//! PLACEHOLDER — the running engine's API (being written). Signatures are the contract.
#![allow(missing_docs, unused_variables, dead_code)]
use crate::config::{BackendConfig, ConfigError, EngineConfig};
use crate::context::WorkloadContext;
use crate::outcome::Outcome;
use crate::registry::RegistryView;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A request to admit.
#[derive(Clone, Debug)]
pub struct Request {
    pub context: WorkloadContext,
    /// Body bytes held while queued (0 when bodies are not buffered).
    pub bytes: u64,
}

#[derive(Debug)]
pub enum StartError { Config(Vec<ConfigError>), Executor(String) }

#[derive(Debug)]
pub enum SubmitError { ShuttingDown(Request), Backpressure(Request) }

pub struct Engine;
pub struct Ticket;
pub struct Permit;

#[derive(Debug)]
pub struct Decision {
    pub outcome: Outcome,
    /// Some exactly when outcome == Dispatched.
    pub permit: Option<Permit>,
    /// Time spent queued, ns.
    pub queued_ns: u64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct EngineStats { pub queued: u64, pub queued_bytes: u64, pub inflight: u64, pub capacity: u64 }

impl Engine {
    pub fn start(config: EngineConfig) -> Result<Engine, StartError> { todo!() }
    /// Submit from any thread (a per-thread submitter is registered on first use).
    pub fn submit(&self, request: Request) -> Result<Ticket, SubmitError> { todo!() }
    pub fn registry(&self) -> RegistryView { todo!() }
    pub fn stats(&self) -> EngineStats { todo!() }
    pub fn backends(&self) -> &[BackendConfig] { todo!() }
    /// In-flight requests per backend, same order as `backends()`.
    pub fn inflight_per_backend(&self) -> Vec<u32> { todo!() }
    /// Stop intake, answer everything queued with its shutdown outcome, join the shards. Idempotent.
    pub fn shutdown(&self) { todo!() }
}

impl Ticket {
    /// Cancel now (EvictedCancelled if still queued). Dropping the ticket does the same.
    pub fn cancel(self) { todo!() }
    /// Block the calling thread until the decision (for non-async callers).
    pub fn wait(self) -> Decision { todo!() }
}

impl Future for Ticket {
    type Output = Decision;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Decision> { todo!() }
}

impl Permit {
    /// Index into `Engine::backends()`.
    pub fn backend_index(&self) -> usize { todo!() }
    /// The chosen backend's `ip:port`.
    pub fn address(&self) -> &str { todo!() }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("Permit") }
}
