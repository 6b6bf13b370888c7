//! Cluster mode: several replicas share one pool's backend slots and workload rates through
//! Redis (DESIGN.md "Cluster mode"). Nothing here runs on the request path: one background task
//! per replica syncs every `sync_interval` and hands the cluster view to the engine through its
//! lock-free words (leases on the backend table, remote rates on workload entries).
//!
//! * [`config`] — the `cluster:` section.
//! * [`script`] — the keys, the Lua script run once per sync, the request it gets and the parse of
//!   its reply.
//! * [`mode`] — connected / local: the fault state machine and what each sync result does.
//! * [`sync`] — the task: publish, read back, apply, lapse.
//! * [`metrics`] — `flowgate_cluster_*`.

pub mod config;
pub mod metrics;
pub mod mode;
pub mod script;
pub mod sync;
