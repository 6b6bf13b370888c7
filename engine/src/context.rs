//! PLACEHOLDER — being written by the context helper. API contract below.
#![allow(missing_docs, unused_variables, dead_code)]
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadContext {
    pub workload_id: Arc<str>,
    pub criticality: u8,
    pub ttl: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DefaultReason { Missing }

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Defaults(u16);

impl WorkloadContext {
    pub fn parse(header: Option<&[u8]>, default_criticality: u8) -> (WorkloadContext, Defaults) { todo!() }
    pub fn from_fairness_id(value: &[u8], default_criticality: u8) -> (WorkloadContext, Defaults) { todo!() }
    pub fn default_workload(default_criticality: u8) -> WorkloadContext { todo!() }
}
