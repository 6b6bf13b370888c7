//! flowgate: an Envoy ext_proc server in front of the flowgate flow-control engine.
//!
//! * [`config`] — the YAML configuration file; [`config_values`] — its scalar values (durations,
//!   sizes, listen addresses, metrics URLs), shared with discovery.
//! * [`discovery`] — backends found at run time: the sources' interface and the `discovery:` section.
//! * [`discovery_file`] — the endpoints file's format; [`discovery_watch`] reads and watches it.
//! * [`discovery_dns`] — backends from a name's A/AAAA records.
//! * [`server`] — the ext_proc service: one stream per request, answered when the engine decides.
//! * [`serve`] — starting and stopping the gRPC server, the engine and the metrics listener;
//!   [`io_runtime`] — its async runtime, pinned by the core layout.
//! * [`http`] — the metrics listener: `/metrics`, `/healthz`, the workload API.
//! * [`engine_json`] — `GET /api/v1/engine`: the engine's totals.
//! * [`status_page`] — `GET /`: the HTML status page.
//! * [`metrics`] — Prometheus metrics.
//! * [`backend_metrics`] — the saturation detector's metrics.
//! * [`scrape`] — one scraper per backend: its metrics page into the engine's backend table.
//! * [`metrics_page`] — reading a model server's Prometheus page (queue, running, KV use).
//! * [`view`] — what the metrics listener reads from the engine; [`served_view`] — the running
//!   server's.
//! * [`reload`] — `SIGHUP` and `--watch-config`: the config file reloaded live.
//! * [`backend_set`] — static and discovered backends, merged into the engine's table; scrapers follow.
//! * [`tls`] — TLS and mTLS on the ext_proc listener: the `tls:` section and its PEM files.
//! * [`cluster`] — cluster mode: replicas sharing one pool through Redis.
#![warn(missing_docs, rust_2018_idioms)]

pub mod allocator;
pub mod answers;
pub mod backend_metrics;
pub mod backend_set;
pub mod cluster;
pub mod coalesce;
pub mod config;
mod config_raw;
pub mod config_values;
pub mod discovery;
pub mod discovery_dns;
pub mod discovery_feed;
pub mod discovery_file;
pub mod discovery_watch;
pub mod engine_json;
pub mod ext_proc_service;
pub mod http;
pub mod io_runtime;
pub mod metrics;
pub mod metrics_page;
pub mod reload;
pub mod scrape;
pub mod serve;
pub mod served_view;
pub mod server;
pub mod status_page;
pub mod tls;
pub mod usage;
pub mod usage_meter;
mod usage_plain;
pub mod view;
