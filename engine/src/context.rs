//! Parsing the `X-Workload-Context` request header into a [`WorkloadContext`].
//!
//! The header value is JSON, handed to the engine as raw bytes (Envoy does not promise UTF-8):
//!
//! ```text
//! X-Workload-Context: {"workload_id": "chat-frontend", "criticality": 4, "ttl_ms": 5000}
//! ```
//!
//! Parsing never fails and never panics: whatever is unusable is replaced by a default, and every
//! default applied is reported as a [`DefaultReason`] in the returned [`Defaults`] set, so that
//! metrics can count misbehaving clients. The work done is bounded: a value longer than
//! [`MAX_HEADER_BYTES`] is refused before it is looked at, so parsing allocates at most a few
//! kilobytes whatever the client sends.
//!
//! # Rules
//!
//! Checks run top to bottom; the first row of the "whole header" group that applies ends parsing
//! with the [default workload](WorkloadContext::default_workload) and that single reason.
//!
//! | Input                                                        | Result                               | Reason                  |
//! |--------------------------------------------------------------|--------------------------------------|-------------------------|
//! | **Whole header** (id `default`, default criticality, no TTL) |                                      |                         |
//! | header absent                                                | default workload                     | `Missing`               |
//! | longer than [`MAX_HEADER_BYTES`] (8 KiB)                     | default workload, nothing parsed     | `TooLarge`              |
//! | not valid UTF-8 (anywhere, even inside a JSON string)        | default workload                     | `NotUtf8`               |
//! | not JSON (includes an empty value, lone `\uD800` surrogates, numbers beyond `f64` like `1e400`, nesting deeper than 128) | default workload | `InvalidJson`  |
//! | JSON, but not an object (`[]`, `"s"`, `5`, `null`, …)        | default workload                     | `NotAnObject`           |
//! | no `workload_id` key                                         | default workload                     | `IdMissing`             |
//! | `workload_id` not a string                                   | default workload                     | `IdWrongType`           |
//! | `workload_id` is `""`                                        | default workload                     | `IdEmpty`               |
//! | `workload_id` longer than [`MAX_WORKLOAD_ID_BYTES`] (256) bytes of UTF-8 | default workload         | `IdTooLong`             |
//! | `workload_id` contains a control character ([`char::is_control`], after JSON unescaping) | default workload | `IdControlChars` |
//! | **Criticality** (the id is kept)                             |                                      |                         |
//! | no `criticality` key                                         | default criticality                  | `CriticalityMissing`    |
//! | not a JSON integer (string, bool, `null`, `4.5`, **and `4.0`**, `4e0`, array, …) | default criticality | `CriticalityWrongType` |
//! | an integer outside `1..=5` (`0`, `6`, `-1`, …)               | default criticality                  | `CriticalityOutOfRange` |
//! | **TTL** (the id and criticality are kept)                    |                                      |                         |
//! | no `ttl_ms` key                                              | no TTL (the queue's default applies) | —                       |
//! | `ttl_ms` not a positive integer (`0`, `-5`, `1.5`, `"100"`, `null`, integers above `u64::MAX`, …) | no TTL | `TtlInvalid` |
//! | `ttl_ms` above [`MAX_TTL`] (one hour)                        | TTL of [`MAX_TTL`]                   | `TtlClamped`            |
//!
//! Further details:
//!
//! * An unusable `workload_id` makes the whole header unusable: the request becomes the default
//!   workload with the default criticality and no TTL, and only the id's reason is reported. A
//!   client therefore cannot claim a criticality without naming itself.
//! * Integral floats such as `4.0` are **refused** for `criticality` and `ttl_ms`: both must be
//!   written as JSON integers. (serde_json reads `4.0` and `4e0` as floats, and accepting some
//!   floats but not others would make the contract depend on formatting details.)
//! * Unknown keys are ignored. When a key appears twice, the last occurrence wins.
//! * Ids are taken verbatim: no trimming, no case folding, no Unicode normalisation. Any
//!   non-control Unicode is accepted (`"チャット"`, `"modèle-🚀"`).
//! * A client naming itself `default` joins the default workload.
//! * `default_criticality` is clamped into `1..=5`, so the returned criticality is always valid
//!   even if a caller passes a bad default (the configuration refuses one anyway).
//! * The id of the default workload is a single shared [`Arc<str>`]: the default path does not
//!   allocate.
//!
//! [`WorkloadContext::from_fairness_id`] applies the same id rules to the raw value of Gateway
//! API Inference Extension's `x-gateway-inference-fairness-id` header, used when no context
//! header is present.
//!
//! ```
//! use flowgate_engine::context::{DefaultReason, WorkloadContext};
//! let header = br#"{"workload_id": "chat", "criticality": 5, "ttl_ms": 2000}"#;
//! let (ctx, defaults) = WorkloadContext::parse(Some(header), 3);
//! assert_eq!(&*ctx.workload_id, "chat");
//! assert_eq!(ctx.criticality, 5);
//! assert_eq!(ctx.ttl, Some(std::time::Duration::from_secs(2)));
//! assert!(defaults.is_empty());
//!
//! let (ctx, defaults) = WorkloadContext::parse(Some(br#"{"workload_id": "chat", "criticality": 9}"#), 3);
//! assert_eq!((&*ctx.workload_id, ctx.criticality), ("chat", 3));
//! assert!(defaults.contains(DefaultReason::CriticalityOutOfRange));
//! ```

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{MAX_TTL, MAX_WORKLOAD_ID_BYTES};

/// Longest `X-Workload-Context` value parsed, in bytes; longer values are refused unread
/// ([`DefaultReason::TooLarge`]).
///
/// 8 KiB leaves room for a maximal id written entirely in `\uXXXX` escapes (at most 6 bytes of
/// JSON per id byte, so 1.5 KiB) plus whitespace and unknown keys, and matches a common proxy
/// limit for a single header line.
///
/// ```
/// use flowgate_engine::context::{DefaultReason, WorkloadContext, MAX_HEADER_BYTES};
/// let huge = vec![b' '; MAX_HEADER_BYTES + 1];
/// let (_, defaults) = WorkloadContext::parse(Some(&huge), 3);
/// assert!(defaults.contains(DefaultReason::TooLarge));
/// ```
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Id of the workload that requests without a usable id belong to.
///
/// ```
/// use flowgate_engine::context::{WorkloadContext, DEFAULT_WORKLOAD_ID};
/// assert_eq!(&*WorkloadContext::default_workload(3).workload_id, DEFAULT_WORKLOAD_ID);
/// ```
pub const DEFAULT_WORKLOAD_ID: &str = "default";

/// Name of the header carrying the workload context (lower case, as HTTP/2 and Envoy spell it).
///
/// ```
/// assert_eq!(flowgate_engine::context::CONTEXT_HEADER, "x-workload-context");
/// ```
pub const CONTEXT_HEADER: &str = "x-workload-context";

/// Name of the Gateway API Inference Extension header whose value is used as the workload id
/// when [`CONTEXT_HEADER`] is absent (see [`WorkloadContext::from_fairness_id`]).
///
/// ```
/// assert_eq!(flowgate_engine::context::FAIRNESS_ID_HEADER, "x-gateway-inference-fairness-id");
/// ```
pub const FAIRNESS_ID_HEADER: &str = "x-gateway-inference-fairness-id";

/// llm-d's name for the same header, read like [`FAIRNESS_ID_HEADER`] when that one is absent.
///
/// ```
/// assert_eq!(flowgate_engine::context::LLM_D_FAIRNESS_ID_HEADER, "x-llm-d-inference-fairness-id");
/// ```
pub const LLM_D_FAIRNESS_ID_HEADER: &str = "x-llm-d-inference-fairness-id";

/// The shared id of the default workload, allocated once per process.
fn default_id() -> Arc<str> {
    static DEFAULT: OnceLock<Arc<str>> = OnceLock::new();
    DEFAULT.get_or_init(|| Arc::from(DEFAULT_WORKLOAD_ID)).clone()
}

/// Who is asking, how much it matters and how long it may wait: what the engine knows about a
/// request's workload.
///
/// Always valid: `workload_id` is non-empty, at most [`MAX_WORKLOAD_ID_BYTES`] bytes and free
/// of control characters; `criticality` is in `1..=5` (5 = most critical); `ttl`, if any, is
/// positive and at most [`MAX_TTL`].
///
/// ```
/// use flowgate_engine::WorkloadContext;
/// let (ctx, _) = WorkloadContext::parse(Some(br#"{"workload_id":"batch","criticality":1}"#), 3);
/// assert_eq!(&*ctx.workload_id, "batch");
/// assert_eq!(ctx.criticality, 1);
/// assert_eq!(ctx.ttl, None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadContext {
    /// The workload's id, or [`DEFAULT_WORKLOAD_ID`].
    pub workload_id: Arc<str>,
    /// Criticality, 1 (least) ..= 5 (most).
    pub criticality: u8,
    /// How long the request may wait in the queue; `None` = the queue's configured TTL.
    pub ttl: Option<Duration>,
}

/// Why a default replaced (part of) what the client sent. See the [module docs](self) for when
/// each applies.
///
/// ```
/// use flowgate_engine::DefaultReason;
/// assert_eq!(DefaultReason::IdTooLong.label(), "id_too_long");
/// assert_eq!(DefaultReason::ALL.len(), 15);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum DefaultReason {
    /// No header at all.
    Missing,
    /// The header value is longer than [`MAX_HEADER_BYTES`]; it was not parsed.
    TooLarge,
    /// The header value (or fairness id) is not valid UTF-8.
    NotUtf8,
    /// The header value is not valid JSON.
    InvalidJson,
    /// The header value is JSON but not an object.
    NotAnObject,
    /// The object has no `workload_id`.
    IdMissing,
    /// `workload_id` is not a string.
    IdWrongType,
    /// The id is empty.
    IdEmpty,
    /// The id is longer than [`MAX_WORKLOAD_ID_BYTES`] bytes.
    IdTooLong,
    /// The id contains a control character ([`char::is_control`]).
    IdControlChars,
    /// No criticality was given; the default was used.
    CriticalityMissing,
    /// `criticality` is not a JSON integer.
    CriticalityWrongType,
    /// `criticality` is an integer outside `1..=5`.
    CriticalityOutOfRange,
    /// `ttl_ms` is not a positive integer; it was ignored.
    TtlInvalid,
    /// `ttl_ms` is above [`MAX_TTL`]; it was lowered to it.
    TtlClamped,
}

impl DefaultReason {
    /// Every reason, in declaration order, for metrics that pre-register one series each.
    ///
    /// ```
    /// use flowgate_engine::DefaultReason;
    /// assert_eq!(DefaultReason::ALL[0], DefaultReason::Missing);
    /// ```
    pub const ALL: [DefaultReason; 15] = [
        DefaultReason::Missing,
        DefaultReason::TooLarge,
        DefaultReason::NotUtf8,
        DefaultReason::InvalidJson,
        DefaultReason::NotAnObject,
        DefaultReason::IdMissing,
        DefaultReason::IdWrongType,
        DefaultReason::IdEmpty,
        DefaultReason::IdTooLong,
        DefaultReason::IdControlChars,
        DefaultReason::CriticalityMissing,
        DefaultReason::CriticalityWrongType,
        DefaultReason::CriticalityOutOfRange,
        DefaultReason::TtlInvalid,
        DefaultReason::TtlClamped,
    ];

    /// A short, stable, snake_case label for metrics and logs.
    ///
    /// ```
    /// use flowgate_engine::DefaultReason;
    /// assert_eq!(DefaultReason::Missing.label(), "missing");
    /// assert_eq!(DefaultReason::CriticalityOutOfRange.label(), "criticality_out_of_range");
    /// ```
    pub fn label(self) -> &'static str {
        match self {
            DefaultReason::Missing => "missing",
            DefaultReason::TooLarge => "too_large",
            DefaultReason::NotUtf8 => "not_utf8",
            DefaultReason::InvalidJson => "invalid_json",
            DefaultReason::NotAnObject => "not_an_object",
            DefaultReason::IdMissing => "id_missing",
            DefaultReason::IdWrongType => "id_wrong_type",
            DefaultReason::IdEmpty => "id_empty",
            DefaultReason::IdTooLong => "id_too_long",
            DefaultReason::IdControlChars => "id_control_chars",
            DefaultReason::CriticalityMissing => "criticality_missing",
            DefaultReason::CriticalityWrongType => "criticality_wrong_type",
            DefaultReason::CriticalityOutOfRange => "criticality_out_of_range",
            DefaultReason::TtlInvalid => "ttl_invalid",
            DefaultReason::TtlClamped => "ttl_clamped",
        }
    }

    /// This reason's bit in a [`Defaults`] set.
    const fn bit(self) -> u16 {
        1 << (self as u8)
    }
}

impl fmt::Display for DefaultReason {
    /// Writes the [label](DefaultReason::label).
    ///
    /// ```
    /// assert_eq!(flowgate_engine::DefaultReason::TtlClamped.to_string(), "ttl_clamped");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The set of [`DefaultReason`]s that applied to one header (a `u16` bitset; `Copy`, no
/// allocation).
///
/// ```
/// use flowgate_engine::context::{DefaultReason, Defaults};
/// let mut d = Defaults::new();
/// assert!(d.is_empty());
/// d.insert(DefaultReason::CriticalityMissing);
/// d.insert(DefaultReason::TtlClamped);
/// assert_eq!(d.len(), 2);
/// assert!(d.contains(DefaultReason::TtlClamped));
/// let labels: Vec<_> = d.iter().map(DefaultReason::label).collect();
/// assert_eq!(labels, ["criticality_missing", "ttl_clamped"]);
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Defaults(u16);

// Every reason must have a bit.
const _: () = assert!(DefaultReason::ALL.len() <= u16::BITS as usize);

impl Defaults {
    /// The empty set: nothing was defaulted.
    ///
    /// ```
    /// assert!(flowgate_engine::context::Defaults::new().is_empty());
    /// ```
    pub const fn new() -> Self {
        Defaults(0)
    }

    /// The set holding only `reason`.
    ///
    /// ```
    /// use flowgate_engine::context::{DefaultReason, Defaults};
    /// assert_eq!(Defaults::only(DefaultReason::Missing).len(), 1);
    /// ```
    pub const fn only(reason: DefaultReason) -> Self {
        Defaults(reason.bit())
    }

    /// Did nothing need a default?
    ///
    /// ```
    /// use flowgate_engine::WorkloadContext;
    /// let (_, d) = WorkloadContext::parse(Some(br#"{"workload_id":"a","criticality":2}"#), 3);
    /// assert!(d.is_empty());
    /// ```
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Is `reason` in the set?
    ///
    /// ```
    /// use flowgate_engine::{DefaultReason, WorkloadContext};
    /// let (_, d) = WorkloadContext::parse(None, 3);
    /// assert!(d.contains(DefaultReason::Missing));
    /// assert!(!d.contains(DefaultReason::InvalidJson));
    /// ```
    pub const fn contains(self, reason: DefaultReason) -> bool {
        self.0 & reason.bit() != 0
    }

    /// Add `reason` to the set (adding it twice changes nothing).
    ///
    /// ```
    /// use flowgate_engine::context::{DefaultReason, Defaults};
    /// let mut d = Defaults::new();
    /// d.insert(DefaultReason::TtlInvalid);
    /// d.insert(DefaultReason::TtlInvalid);
    /// assert_eq!(d.len(), 1);
    /// ```
    pub fn insert(&mut self, reason: DefaultReason) {
        self.0 |= reason.bit();
    }

    /// How many reasons are in the set.
    ///
    /// ```
    /// use flowgate_engine::context::Defaults;
    /// assert_eq!(Defaults::new().len(), 0);
    /// ```
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The reasons in the set, in [`DefaultReason::ALL`] order.
    ///
    /// ```
    /// use flowgate_engine::{DefaultReason, WorkloadContext};
    /// let (_, d) = WorkloadContext::parse(Some(br#"{"workload_id":"a"}"#), 3);
    /// assert_eq!(d.iter().collect::<Vec<_>>(), [DefaultReason::CriticalityMissing]);
    /// ```
    pub fn iter(self) -> impl Iterator<Item = DefaultReason> {
        DefaultReason::ALL.into_iter().filter(move |r| self.contains(*r))
    }

    /// The raw bitset: bit `n` is set when `DefaultReason::ALL[n]` is in the set.
    ///
    /// ```
    /// use flowgate_engine::context::{DefaultReason, Defaults};
    /// assert_eq!(Defaults::only(DefaultReason::Missing).bits(), 1);
    /// ```
    pub const fn bits(self) -> u16 {
        self.0
    }
}

impl fmt::Debug for Defaults {
    /// Lists the reasons, e.g. `{CriticalityMissing, TtlClamped}`.
    ///
    /// ```
    /// use flowgate_engine::context::{DefaultReason, Defaults};
    /// assert_eq!(format!("{:?}", Defaults::only(DefaultReason::IdEmpty)), "{IdEmpty}");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Extend<DefaultReason> for Defaults {
    /// Adds every reason.
    ///
    /// ```
    /// use flowgate_engine::context::{DefaultReason, Defaults};
    /// let mut d = Defaults::new();
    /// d.extend([DefaultReason::Missing, DefaultReason::TooLarge]);
    /// assert_eq!(d.len(), 2);
    /// ```
    fn extend<I: IntoIterator<Item = DefaultReason>>(&mut self, reasons: I) {
        for r in reasons {
            self.insert(r);
        }
    }
}

impl FromIterator<DefaultReason> for Defaults {
    /// Collects reasons into a set.
    ///
    /// ```
    /// use flowgate_engine::context::{DefaultReason, Defaults};
    /// let d: Defaults = DefaultReason::ALL.into_iter().collect();
    /// assert_eq!(d.len(), DefaultReason::ALL.len());
    /// ```
    fn from_iter<I: IntoIterator<Item = DefaultReason>>(reasons: I) -> Self {
        let mut d = Defaults::new();
        d.extend(reasons);
        d
    }
}

/// Check a candidate id against the id rules, returning it as an `Arc<str>` or the reason it is
/// refused.
fn check_id(text: &str) -> Result<Arc<str>, DefaultReason> {
    if text.is_empty() {
        return Err(DefaultReason::IdEmpty);
    }
    if text.len() > MAX_WORKLOAD_ID_BYTES {
        return Err(DefaultReason::IdTooLong);
    }
    if text.chars().any(char::is_control) {
        return Err(DefaultReason::IdControlChars);
    }
    if text == DEFAULT_WORKLOAD_ID {
        return Ok(default_id());
    }
    Ok(Arc::from(text))
}

/// Read `criticality` from the header object.
fn criticality(object: &Map<String, Value>) -> Result<u8, DefaultReason> {
    let Some(value) = object.get("criticality") else {
        return Err(DefaultReason::CriticalityMissing);
    };
    // serde_json keeps JSON integers that fit an i64 or u64 as integers; every other number
    // (`4.5`, `4.0`, `4e0`, integers beyond u64) is a float, hence the wrong type. Integers that
    // do not fit an i64 are far outside 1..=5.
    let Value::Number(n) = value else {
        return Err(DefaultReason::CriticalityWrongType);
    };
    if n.is_f64() {
        return Err(DefaultReason::CriticalityWrongType);
    }
    match n.as_i64() {
        Some(c @ 1..=5) => Ok(c as u8),
        _ => Err(DefaultReason::CriticalityOutOfRange),
    }
}

/// Read `ttl_ms` from the header object: `Ok(None)` when absent, `Err` with the value to use
/// and the reason when something had to be changed.
fn ttl(object: &Map<String, Value>) -> Result<Option<Duration>, (Option<Duration>, DefaultReason)> {
    let Some(value) = object.get("ttl_ms") else {
        return Ok(None);
    };
    match value.as_u64() {
        Some(0) | None => Err((None, DefaultReason::TtlInvalid)),
        Some(ms) => {
            let ttl = Duration::from_millis(ms);
            if ttl > MAX_TTL {
                Err((Some(MAX_TTL), DefaultReason::TtlClamped))
            } else {
                Ok(Some(ttl))
            }
        }
    }
}

impl WorkloadContext {
    /// Parse the raw value of the `X-Workload-Context` header (`None` when the request has
    /// none), following the rules in the [module docs](self). Never fails, never panics; the
    /// second value says which defaults were applied and why.
    ///
    /// ```
    /// use flowgate_engine::{DefaultReason, WorkloadContext};
    /// let (ctx, d) = WorkloadContext::parse(Some(b"not json"), 3);
    /// assert_eq!(ctx, WorkloadContext::default_workload(3));
    /// assert_eq!(d.iter().collect::<Vec<_>>(), [DefaultReason::InvalidJson]);
    ///
    /// let (ctx, d) = WorkloadContext::parse(Some(br#"{"workload_id":"a","criticality":2,"ttl_ms":0}"#), 3);
    /// assert_eq!((ctx.criticality, ctx.ttl), (2, None));
    /// assert!(d.contains(DefaultReason::TtlInvalid));
    /// ```
    pub fn parse(header: Option<&[u8]>, default_criticality: u8) -> (WorkloadContext, Defaults) {
        let fallback = |reason| (Self::default_workload(default_criticality), Defaults::only(reason));
        let Some(bytes) = header else {
            return fallback(DefaultReason::Missing);
        };
        if bytes.len() > MAX_HEADER_BYTES {
            return fallback(DefaultReason::TooLarge);
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            return fallback(DefaultReason::NotUtf8);
        };
        // Bounded: at most MAX_HEADER_BYTES of input, and serde_json limits nesting to 128.
        let Ok(value) = serde_json::from_str::<Value>(text) else {
            return fallback(DefaultReason::InvalidJson);
        };
        let Value::Object(object) = value else {
            return fallback(DefaultReason::NotAnObject);
        };
        let workload_id = match object.get("workload_id") {
            None => return fallback(DefaultReason::IdMissing),
            Some(Value::String(id)) => match check_id(id) {
                Ok(id) => id,
                Err(reason) => return fallback(reason),
            },
            Some(_) => return fallback(DefaultReason::IdWrongType),
        };
        let mut defaults = Defaults::new();
        let criticality = criticality(&object).unwrap_or_else(|reason| {
            defaults.insert(reason);
            clamp_criticality(default_criticality)
        });
        let ttl = ttl(&object).unwrap_or_else(|(ttl, reason)| {
            defaults.insert(reason);
            ttl
        });
        (WorkloadContext { workload_id, criticality, ttl }, defaults)
    }

    /// Build a context from the raw value of GIE's `x-gateway-inference-fairness-id` header
    /// ([`FAIRNESS_ID_HEADER`]), for requests without an `X-Workload-Context` header.
    ///
    /// The whole value (not trimmed) is the id, under the same rules as `workload_id`: empty,
    /// longer than [`MAX_WORKLOAD_ID_BYTES`], not UTF-8 or holding a control character → the
    /// default workload with that reason. Otherwise the criticality is the default, reported as
    /// [`DefaultReason::CriticalityMissing`], and there is no TTL.
    ///
    /// ```
    /// use flowgate_engine::{DefaultReason, WorkloadContext};
    /// let (ctx, d) = WorkloadContext::from_fairness_id(b"tenant-a", 3);
    /// assert_eq!((&*ctx.workload_id, ctx.criticality, ctx.ttl), ("tenant-a", 3, None));
    /// assert_eq!(d.iter().collect::<Vec<_>>(), [DefaultReason::CriticalityMissing]);
    ///
    /// let (ctx, d) = WorkloadContext::from_fairness_id(b"", 3);
    /// assert_eq!(&*ctx.workload_id, "default");
    /// assert!(d.contains(DefaultReason::IdEmpty));
    /// ```
    pub fn from_fairness_id(value: &[u8], default_criticality: u8) -> (WorkloadContext, Defaults) {
        let fallback = |reason| (Self::default_workload(default_criticality), Defaults::only(reason));
        // Length first: it bounds the work done on anything longer.
        if value.is_empty() {
            return fallback(DefaultReason::IdEmpty);
        }
        if value.len() > MAX_WORKLOAD_ID_BYTES {
            return fallback(DefaultReason::IdTooLong);
        }
        let Ok(text) = std::str::from_utf8(value) else {
            return fallback(DefaultReason::NotUtf8);
        };
        match check_id(text) {
            Ok(workload_id) => (
                WorkloadContext {
                    workload_id,
                    criticality: clamp_criticality(default_criticality),
                    ttl: None,
                },
                Defaults::only(DefaultReason::CriticalityMissing),
            ),
            Err(reason) => fallback(reason),
        }
    }

    /// The default workload: id [`DEFAULT_WORKLOAD_ID`] (a shared `Arc`, no allocation),
    /// `default_criticality` (clamped into `1..=5`) and no TTL.
    ///
    /// ```
    /// use flowgate_engine::WorkloadContext;
    /// let a = WorkloadContext::default_workload(2);
    /// assert_eq!((&*a.workload_id, a.criticality, a.ttl), ("default", 2, None));
    /// let b = WorkloadContext::default_workload(2);
    /// assert!(std::sync::Arc::ptr_eq(&a.workload_id, &b.workload_id));
    /// ```
    pub fn default_workload(default_criticality: u8) -> WorkloadContext {
        WorkloadContext {
            workload_id: default_id(),
            criticality: clamp_criticality(default_criticality),
            ttl: None,
        }
    }
}

/// Keep a caller-supplied default criticality inside `1..=5`.
fn clamp_criticality(c: u8) -> u8 {
    c.clamp(1, 5)
}
