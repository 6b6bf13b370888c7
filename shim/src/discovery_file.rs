//! `discovery.file`'s format: parsing an endpoints file into a desired set
//! ([`parse_endpoints`]). Reading and watching the file is [`crate::discovery_watch`]'s.
//!
//! # The file
//!
//! llm-d's file-discovery shape, a top-level `endpoints:` list, plus our optional fields:
//!
//! ```yaml
//! endpoints:
//!   - name: vllm-0              # optional; names the entry in logs
//!     address: 10.0.0.7         # an IP literal (IPv6 with or without brackets); no hostnames
//!     port: "8000"              # a string or a number, 1..=65535
//!     labels: { zone: a }       # llm-d's; accepted, not used
//!     max_inflight: 16          # ours: default 0 (no cap), like a static backend; at most 1048576
//!     metrics: http://10.0.0.7:8000/metrics   # ours: the default is http://{address}:{port}/metrics
//!     engine: vllm              # ours: vllm | sglang | trtllm-serve | triton-tensorrt-llm
//! ```
//!
//! * **Refused whole** (the last good set is kept, one warning): a file over
//!   [`MAX_DISCOVERY_FILE_BYTES`], one that is not YAML (or holds several documents), whose top
//!   level is not a mapping, or without an `endpoints` list. An empty file and `endpoints:` with
//!   nothing under it are refused too, because that is what a half-written file looks like: write
//!   `endpoints: []` to remove every backend.
//! * **Skipped** (the rest is used; a warning names the entry's index, name and reason): an entry
//!   that is not a mapping, whose address is not an IP or whose port is missing or out of range,
//!   an out-of-range `max_inflight` (0, the default, is no cap: with `saturation.detector:
//!   concurrency` the backend is then logged as unlimited, see `backend_set.rs`), a metrics URL
//!   that is not `http://host[:port]/path`, an unknown engine, a name over
//!   [`MAX_ENDPOINT_NAME_BYTES`], an address (ip:port) an earlier entry already has, and any entry
//!   past [`MAX_BACKENDS`] good ones.
//! * **Unknown keys are tolerated**, in an entry and at the top level, so a file written for llm-d
//!   (which may carry fields of its own) loads as it is. Each one is logged once per file version
//!   at `info`, so a misspelt `max_inflght` shows up in the log without costing the backend.
//!

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use flowgate_engine::config::{MAX_BACKENDS, MAX_BACKEND_INFLIGHT};
use serde_yaml::{Mapping, Value};

use crate::config_values::check_metrics_url;
use crate::discovery::DiscoveredBackend;
use crate::metrics_page::ModelServer;

/// The largest endpoints file read; a bigger one is refused whole.
pub const MAX_DISCOVERY_FILE_BYTES: u64 = 1 << 20;
/// Longest endpoint `name` accepted.
pub const MAX_ENDPOINT_NAME_BYTES: usize = 256;
/// Most skipped entries (and, separately, ignored keys) reported one by one per file version;
/// the rest are counted.
pub const MAX_REPORTED_SKIPS: usize = 64;

/// Why a file gave no set at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileError {
    /// There is no file at the path.
    Missing,
    /// It could not be read.
    Unreadable(String),
    /// It holds more than [`MAX_DISCOVERY_FILE_BYTES`] (its length).
    TooLarge(u64),
    /// It holds nothing (or only comments), or `endpoints:` has nothing under it.
    Empty,
    /// It is not one YAML document.
    NotYaml(String),
    /// It is YAML but not an endpoints file.
    Shape(String),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Missing => f.write_str("no such file"),
            FileError::Unreadable(e) => write!(f, "cannot be read: {e}"),
            FileError::TooLarge(n) => write!(f, "{n} bytes, over the limit of {MAX_DISCOVERY_FILE_BYTES}"),
            FileError::Empty => f.write_str("no endpoints list (write `endpoints: []` for no backends)"),
            FileError::NotYaml(e) => write!(f, "not YAML: {e}"),
            FileError::Shape(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for FileError {}

/// One entry left out of the set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Its index in `endpoints`.
    pub index: usize,
    /// Its name, if it has a usable one.
    pub name: Option<String>,
    /// Why.
    pub reason: String,
}

/// What a file says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The good entries, sorted by address.
    pub backends: Vec<DiscoveredBackend>,
    /// The first [`MAX_REPORTED_SKIPS`] skipped entries, in file order.
    pub skipped: Vec<Skipped>,
    /// How many entries were skipped in all.
    pub skipped_total: usize,
    /// The first [`MAX_REPORTED_SKIPS`] ignored keys, as paths (`endpoints[2].zone`, `kind`).
    pub ignored: Vec<String>,
    /// How many keys were ignored in all.
    pub ignored_total: usize,
}

/// Parse an endpoints file (see the module docs for the rules). Never panics.
pub fn parse_endpoints(bytes: &[u8]) -> Result<Parsed, FileError> {
    if bytes.len() as u64 > MAX_DISCOVERY_FILE_BYTES {
        return Err(FileError::TooLarge(bytes.len() as u64));
    }
    let doc: Value = serde_yaml::from_slice(bytes).map_err(|e| FileError::NotYaml(e.to_string()))?;
    let top = match doc {
        Value::Null => return Err(FileError::Empty),
        Value::Mapping(m) => m,
        other => return Err(FileError::Shape(format!("the top level is {}, not a mapping", kind(&other)))),
    };
    let mut parsed = Parsed::default();
    let mut endpoints = None;
    for (key, value) in top {
        match key.as_str() {
            Some("endpoints") => endpoints = Some(value),
            _ => parsed.ignore(key_path("", &key)),
        }
    }
    let entries = match endpoints {
        None | Some(Value::Null) => return Err(FileError::Empty),
        Some(Value::Sequence(s)) => s,
        Some(other) => return Err(FileError::Shape(format!("endpoints is {}, not a list", kind(&other)))),
    };
    // address → index of the entry that has it.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, entry) in entries.into_iter().enumerate() {
        let (name, result) = parse_entry(index, entry, &mut parsed);
        let reason = match result {
            Ok(_) if parsed.backends.len() >= MAX_BACKENDS => {
                format!("over the limit of {MAX_BACKENDS} backends")
            }
            Ok(b) => match seen.get(&b.address) {
                Some(first) => format!("address {} is also endpoints[{first}]'s", b.address),
                None => {
                    seen.insert(b.address.clone(), index);
                    parsed.backends.push(b);
                    continue;
                }
            },
            Err(reason) => reason,
        };
        parsed.skip(Skipped { index, name, reason });
    }
    parsed.backends.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(parsed)
}

impl Parsed {
    fn skip(&mut self, s: Skipped) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_REPORTED_SKIPS {
            self.skipped.push(s);
        }
    }

    fn ignore(&mut self, path: String) {
        self.ignored_total += 1;
        if self.ignored.len() < MAX_REPORTED_SKIPS {
            self.ignored.push(path);
        }
    }
}

/// One entry: its name (for the report) and the backend or every reason it is bad.
fn parse_entry(
    index: usize,
    entry: Value,
    parsed: &mut Parsed,
) -> (Option<String>, Result<DiscoveredBackend, String>) {
    let map: Mapping = match entry {
        Value::Mapping(m) => m,
        other => return (None, Err(format!("is {}, not a mapping", kind(&other)))),
    };
    let mut reasons: Vec<String> = Vec::new();
    let (mut name, mut ip, mut port, mut max_inflight, mut metrics, mut engine) =
        (None, None, None, 0u32, None, ModelServer::default());
    let mut reported_name = None;
    for (key, value) in &map {
        match key.as_str() {
            Some("name") => match value {
                Value::String(s) if s.len() <= MAX_ENDPOINT_NAME_BYTES => {
                    name = Some(s.clone());
                    reported_name = Some(s.clone());
                }
                Value::String(s) => {
                    reasons.push(format!("name: longer than {MAX_ENDPOINT_NAME_BYTES} bytes"));
                    reported_name = Some(format!("{}…", truncate(s, 64)));
                }
                other => reasons.push(format!("name: is {}, not a string", kind(other))),
            },
            Some("address") => match read_ip(value) {
                Ok(a) => ip = Some(a),
                Err(e) => reasons.push(format!("address: {e}")),
            },
            Some("port") => match read_port(value) {
                Ok(p) => port = Some(p),
                Err(e) => reasons.push(format!("port: {e}")),
            },
            Some("labels") => {}
            Some("max_inflight") => match read_max_inflight(value) {
                Ok(m) => max_inflight = m,
                Err(e) => reasons.push(format!("max_inflight: {e}")),
            },
            Some("metrics") => match value {
                Value::String(s) => match check_metrics_url(s) {
                    Ok(()) => metrics = Some(s.clone()),
                    Err(e) => reasons.push(format!("metrics: {e}")),
                },
                other => reasons.push(format!("metrics: is {}, not a URL string", kind(other))),
            },
            Some("engine") => match value.as_str().map(str::parse::<ModelServer>) {
                Some(Ok(e)) => engine = e,
                Some(Err(e)) => reasons.push(format!("engine: {e}")),
                None => reasons.push(format!("engine: is {}, not a string", kind(value))),
            },
            _ => parsed.ignore(key_path(&format!("endpoints[{index}]"), key)),
        }
    }
    if !map.contains_key("address") {
        reasons.push("address: missing".into());
    }
    if !map.contains_key("port") {
        reasons.push("port: missing".into());
    }
    if !reasons.is_empty() {
        return (reported_name, Err(reasons.join("; ")));
    }
    let (Some(ip), Some(port)) = (ip, port) else {
        return (reported_name, Err("address or port missing".into()));
    };
    let address = SocketAddr::new(ip, port).to_string();
    let metrics = metrics.unwrap_or_else(|| format!("http://{address}/metrics"));
    (reported_name, Ok(DiscoveredBackend { address, max_inflight, metrics, engine, name }))
}

/// An IP literal; IPv6 may be written in brackets.
fn read_ip(value: &Value) -> Result<IpAddr, String> {
    let Value::String(s) = value else {
        return Err(format!("is {}, not an IP address string", kind(value)));
    };
    let bare = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(s);
    bare.parse::<IpAddr>().map_err(|_| {
        format!(
            "{:?} is not an IP address (hostnames are not resolved here, use discovery.dns, \
             and the port goes in `port`)",
            truncate(s, 64)
        )
    })
}

/// 1..=65535, as a number or a string of digits.
fn read_port(value: &Value) -> Result<u16, String> {
    let n = match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) if !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse().ok()
        }
        _ => None,
    };
    match n {
        Some(p @ 1..=65535) => Ok(p as u16),
        _ => Err(format!("{} is not a port (1 to 65535)", show(value))),
    }
}

fn read_max_inflight(value: &Value) -> Result<u32, String> {
    match value.as_u64() {
        Some(n) if n <= u64::from(MAX_BACKEND_INFLIGHT) => Ok(n as u32),
        _ => Err(format!("{} is not a whole number from 0 to {MAX_BACKEND_INFLIGHT}", show(value))),
    }
}

/// `parent.key` for a key of any YAML type.
fn key_path(parent: &str, key: &Value) -> String {
    let key = match key.as_str() {
        Some(s) => truncate(s, 64).to_string(),
        None => show(key),
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

/// A short rendering of a value for a message.
fn show(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{:?}", truncate(s, 64)),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => kind(other).to_string(),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// At most `max` bytes of `s`, cut on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
#[path = "discovery_file_tests.rs"]
mod tests;
