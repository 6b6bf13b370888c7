//! Reading a model server's token usage from its response body as the body streams past.
//!
//! Envoy's ext_proc hands the response body over in chunks split anywhere (mid-line, mid-UTF-8),
//! and flowgate passes every chunk on at once, so a [`UsageReader`] sees each chunk once, keeps
//! a few hundred bytes of state at most, and answers when the last chunk has arrived:
//!
//! ```
//! use flowgate::usage::{BodyKind, UsageReader, UsageSource};
//! let mut reader = UsageReader::new(BodyKind::from_content_type(Some("text/event-stream")));
//! reader.push(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,");
//! reader.push(b"\"completion_tokens\":3}}\n\ndata: [DONE]\n\n");
//! let usage = reader.finish(Some(120));
//! assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.source), (7, 3, UsageSource::Reported));
//! ```
//!
//! **JSON bodies** (OpenAI and vLLM `chat.completion` and `text_completion`): the `usage` member
//! of the top-level object, `{"prompt_tokens": P, "completion_tokens": C, ...}`. **SSE streams**
//! (`text/event-stream`, `stream_options.include_usage`): the usage of the last event whose data
//! is an object with such a member (vLLM sends it in a last chunk with `"choices": []`, after
//! chunks with `"usage": null`, then `data: [DONE]`, which is not an object and so ignored).
//! Events follow the SSE rules: lines end in LF, CRLF or CR, a blank line ends an event, `:`
//! lines are comments, several `data:` lines of one event are joined by `\n`, other fields are
//! ignored. An event the stream ends in without its blank line still counts.
//!
//! **How, bounded.** Neither the body nor an SSE event is ever buffered, whatever its size: a
//! byte-level scanner follows the JSON structure (nesting depth, strings and their escapes) as
//! the bytes pass, and only two things are copied out: a key of the top-level object while it is
//! read (at most [`MAX_KEY_BYTES`], enough for any spelling of `"usage"`), and the value of a
//! top-level `usage` member (at most [`MAX_USAGE_OBJECT_BYTES`]), which `serde_json` parses once it
//! closes. The position of `usage` in the body does not matter, a `"usage"` inside a string (a
//! message's content) or deeper than the top level is never taken for it, and a usage object
//! over the bound is skipped and counted ([`UsageReader::skipped_usage_objects`]). Work per push is
//! linear in the chunk (string contents are skipped with `memchr`); the only allocation is the
//! usage buffer, once per reader, reused for every event.
//!
//! **Validity.** `prompt_tokens` must be an integer in `0..=`[`MAX_REPORTED_TOKENS`];
//! `completion_tokens` too, or absent (0: the embeddings API reports only prompt tokens). A later
//! `usage` member of the same object replaces an earlier one (as `serde_json` reads duplicates),
//! so a JSON body whose last `usage` is `null` or invalid has none; in a stream, an event without
//! a valid usage leaves the last one standing. The rest of the body is not validated: a usage
//! object complete and well-formed counts even if the body is cut off after it.
//!
//! **No usage** (none sent, garbage, out of range): [`UsageSource::Estimated`], from byte counts
//! at [`ESTIMATED_BYTES_PER_TOKEN`]: completion tokens from the response body, prompt tokens from
//! the request body when its size is known, else 0.

use crate::usage_plain::plain_event;
#[cfg(test)]
use crate::usage_plain::PlainEvent;
use memchr::{memchr2, memchr3};
use serde_json::{Map, Value};

/// The largest `usage` object read, in bytes from `{` to `}`. vLLM's and OpenAI's, with their
/// `prompt_tokens_details` and `completion_tokens_details`, are under 400 bytes; a bigger one is
/// skipped (no usage from it) rather than buffered.
pub const MAX_USAGE_OBJECT_BYTES: usize = 4 << 10;

/// The longest top-level key compared with `usage`, quotes included: 32 bytes hold `"usage"`
/// spelt entirely in `\uXXXX` escapes (5 × 6 + 2), so any longer key is something else.
pub const MAX_KEY_BYTES: usize = 32;

/// The most a [`UsageReader`] ever holds at once ([`UsageReader::buffered_bytes`]).
pub const MAX_BUFFERED_BYTES: usize = MAX_USAGE_OBJECT_BYTES + MAX_KEY_BYTES;

/// The largest token count believed (per field). Above it, the report is garbage and the usage is
/// estimated instead: no model has a context of a billion tokens.
pub const MAX_REPORTED_TOKENS: u64 = 1_000_000_000;

/// Bytes per token for [`UsageSource::Estimated`] usage (rounded up): the usual rule of thumb for
/// English text with BPE tokenizers.
pub const ESTIMATED_BYTES_PER_TOKEN: u64 = 4;

/// What a response body is, which decides how its usage is found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// One JSON document.
    Json,
    /// A server-sent event stream (`text/event-stream`).
    Sse,
}

impl BodyKind {
    /// [`BodyKind::Sse`] for `text/event-stream` (any case, parameters ignored), else
    /// [`BodyKind::Json`], also when the response has no content type.
    pub fn from_content_type(content_type: Option<&str>) -> BodyKind {
        let essence = content_type.and_then(|c| c.split(';').next()).map(str::trim);
        match essence {
            Some(e) if e.eq_ignore_ascii_case("text/event-stream") => BodyKind::Sse,
            _ => BodyKind::Json,
        }
    }
}

/// Where a [`Usage`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsageSource {
    /// The model server's own `usage` object.
    Reported,
    /// Byte counts divided by [`ESTIMATED_BYTES_PER_TOKEN`]: no valid usage was found.
    Estimated,
}

/// The tokens one request cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Reported by the server or estimated.
    pub source: UsageSource,
}

impl Usage {
    /// The estimate for a response of `body_bytes` to a request of `request_bytes` (0 prompt tokens
    /// when unknown).
    pub fn estimate(body_bytes: u64, request_bytes: Option<u64>) -> Usage {
        Usage {
            prompt_tokens: request_bytes.map_or(0, |b| b.div_ceil(ESTIMATED_BYTES_PER_TOKEN)),
            completion_tokens: body_bytes.div_ceil(ESTIMATED_BYTES_PER_TOKEN),
            source: UsageSource::Estimated,
        }
    }
}

/// Reported counts: (prompt, completion).
type Counts = (u64, u64);

/// Reads the usage of one response body, chunk by chunk.
#[derive(Debug)]
pub struct UsageReader {
    kind: BodyKind,
    body_bytes: u64,
    /// The body's scanner (JSON) or the current event's (SSE).
    scan: Scanner,
    /// SSE only: the line being read.
    line: Line,
    /// SSE only: the previous byte was a CR (a following LF belongs to the same line end).
    after_cr: bool,
    /// SSE only: the current event has a `data` field.
    event_has_data: bool,
    /// SSE only: the usage of the last event with a valid one.
    last: Option<Counts>,
}

/// Where an SSE line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Line {
    /// Nothing read yet.
    Start,
    /// In the field name: how many bytes so far, whether they still spell `data`.
    Name { len: u8, data: bool },
    /// In the value of a `data` field: fed to the scanner.
    Data,
    /// A comment or another field: skipped.
    Skip,
}

const DATA: &[u8; 4] = b"data";

impl UsageReader {
    /// A reader for a body of `kind`.
    pub fn new(kind: BodyKind) -> UsageReader {
        UsageReader {
            kind,
            body_bytes: 0,
            scan: Scanner::new(),
            line: Line::Start,
            after_cr: false,
            event_has_data: false,
            last: None,
        }
    }

    /// The next chunk of the body.
    pub fn push(&mut self, chunk: &[u8]) {
        self.body_bytes = self.body_bytes.saturating_add(chunk.len() as u64);
        match self.kind {
            BodyKind::Json => self.scan.push(chunk),
            BodyKind::Sse => self.push_sse(chunk),
        }
    }

    /// The usage, once the last chunk has been pushed; `request_bytes` is the request body's size
    /// for an estimate's prompt tokens, if known.
    pub fn finish(mut self, request_bytes: Option<u64>) -> Usage {
        let counts = match self.kind {
            BodyKind::Json => self.scan.found,
            BodyKind::Sse => {
                self.end_event();
                self.last
            }
        };
        match counts {
            Some((prompt_tokens, completion_tokens)) => {
                Usage { prompt_tokens, completion_tokens, source: UsageSource::Reported }
            }
            None => Usage::estimate(self.body_bytes, request_bytes),
        }
    }

    /// Bytes of the body pushed so far.
    pub fn body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Bytes held now: never above [`MAX_BUFFERED_BYTES`].
    pub fn buffered_bytes(&self) -> usize {
        self.scan.usage.len() + usize::from(self.scan.key_len).min(MAX_KEY_BYTES)
    }

    /// How many `usage` objects were over [`MAX_USAGE_OBJECT_BYTES`] and skipped.
    pub fn skipped_usage_objects(&self) -> u64 {
        self.scan.skipped
    }

    fn push_sse(&mut self, mut rest: &[u8]) {
        while let Some((&b, tail)) = rest.split_first() {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                rest = tail;
                continue;
            }
            if b == DATA[0] && self.line == Line::Start && !self.event_has_data {
                if let Some(plain) = plain_event(rest) {
                    // A whole event that cannot carry a usage object: passed over unscanned.
                    // (The scanner is fresh: the last event's end reset it.)
                    rest = &rest[plain.len..];
                    self.after_cr = plain.after_cr;
                    continue;
                }
            }
            match self.line {
                Line::Data | Line::Skip => {
                    // Everything up to the line end at once.
                    let end = memchr2(b'\n', b'\r', rest).unwrap_or(rest.len());
                    if self.line == Line::Data {
                        self.scan.push(&rest[..end]);
                    }
                    rest = &rest[end..];
                    if let Some((&eol, tail)) = rest.split_first() {
                        self.end_line(eol);
                        rest = tail;
                    }
                    continue;
                }
                _ if b == b'\n' || b == b'\r' => self.end_line(b),
                Line::Start if b == b':' => self.line = Line::Skip,
                Line::Start => self.line = Line::Name { len: 1, data: b == DATA[0] },
                Line::Name { len, data } if b == b':' => {
                    self.line = if data && usize::from(len) == DATA.len() {
                        self.start_data_line();
                        Line::Data
                    } else {
                        Line::Skip
                    };
                }
                Line::Name { len, data } => {
                    let i = usize::from(len);
                    let data = data && i < DATA.len() && b == DATA[i];
                    self.line = if data { Line::Name { len: len + 1, data } } else { Line::Skip };
                }
            }
            rest = tail;
        }
    }

    fn end_line(&mut self, eol: u8) {
        self.after_cr = eol == b'\r';
        match self.line {
            Line::Start => self.end_event(),
            // `data` without a colon: a data line with an empty value.
            Line::Name { len, data: true } if usize::from(len) == DATA.len() => self.start_data_line(),
            _ => {}
        }
        self.line = Line::Start;
    }

    fn start_data_line(&mut self) {
        if self.event_has_data {
            self.scan.push(b"\n");
        }
        self.event_has_data = true;
    }

    fn end_event(&mut self) {
        if std::mem::take(&mut self.event_has_data) {
            if let Some(c) = self.scan.found {
                self.last = Some(c);
            }
        }
        self.scan.reset();
    }
}

/// Where the scanner is in the document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the first non-blank byte.
    Start,
    /// Inside the top-level object.
    Object,
    /// The top-level object has closed, or the document is not an object: nothing more to see.
    Done,
}

/// What comes next in the top-level object (depth 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Member {
    /// A key (after `{` or `,`).
    Key,
    /// The `:` after a key.
    Colon,
    /// The value.
    Value,
    /// A `,` or the closing `}`.
    Next,
}

/// Whether the usage value is being copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Capture {
    Off,
    /// Copying into `usage` until the depth is back to 1.
    On,
    /// Over [`MAX_USAGE_OBJECT_BYTES`]: following the structure to its end without copying.
    Skipping,
}

/// Follows one JSON document byte by byte and extracts the top-level `usage` member's counts.
#[derive(Debug)]
struct Scanner {
    phase: Phase,
    /// Open containers; 1 inside the top-level object. Brackets are not matched by kind.
    depth: u32,
    in_string: bool,
    escaped: bool,
    member: Member,
    /// Copying the current string, a top-level key, into `key`.
    in_key: bool,
    key: [u8; MAX_KEY_BYTES],
    /// Bytes in `key`; `MAX_KEY_BYTES + 1` once the key is too long to be `usage`.
    key_len: u8,
    /// The current member's key is `usage`.
    usage_member: bool,
    capture: Capture,
    usage: Vec<u8>,
    /// The last `usage` member's counts, `None` if it was not valid.
    found: Option<Counts>,
    skipped: u64,
}

impl Scanner {
    fn new() -> Scanner {
        Scanner {
            phase: Phase::Start,
            depth: 0,
            in_string: false,
            escaped: false,
            member: Member::Key,
            in_key: false,
            key: [0; MAX_KEY_BYTES],
            key_len: 0,
            usage_member: false,
            capture: Capture::Off,
            usage: Vec::new(),
            found: None,
            skipped: 0,
        }
    }

    /// Back to the start of a new document, keeping the usage buffer's memory and the skip count.
    fn reset(&mut self) {
        let mut usage = std::mem::take(&mut self.usage);
        usage.clear();
        let skipped = self.skipped;
        *self = Scanner { usage, skipped, ..Scanner::new() };
    }

    fn push(&mut self, mut rest: &[u8]) {
        while !rest.is_empty() {
            match self.phase {
                Phase::Done => return,
                Phase::Start => {
                    let b = rest[0];
                    rest = &rest[1..];
                    if b == b'{' {
                        self.phase = Phase::Object;
                        self.depth = 1;
                        self.member = Member::Key;
                    } else if !is_blank(b) {
                        self.phase = Phase::Done;
                    }
                }
                Phase::Object if self.in_string && !self.in_key && self.capture != Capture::On => {
                    // String contents nobody copies: jump to the next quote or backslash.
                    let from = usize::from(std::mem::take(&mut self.escaped));
                    match rest.get(from..).and_then(|r| memchr2(b'"', b'\\', r)) {
                        Some(i) => {
                            self.string_byte(rest[from + i]);
                            rest = &rest[from + i + 1..];
                        }
                        None => rest = &[],
                    }
                }
                Phase::Object if !self.in_string && self.capture != Capture::On && self.depth > 1 => {
                    // Deep inside a value nobody copies: only quotes and brackets matter. The
                    // second search stops at the first's find, so the whole is linear.
                    let open = memchr3(b'"', b'{', b'[', rest);
                    let close = memchr2(b'}', b']', &rest[..open.unwrap_or(rest.len())]);
                    match close.or(open) {
                        Some(i) => {
                            self.structural(rest[i]);
                            rest = &rest[i + 1..];
                        }
                        None => rest = &[],
                    }
                }
                Phase::Object => {
                    let b = rest[0];
                    rest = &rest[1..];
                    if self.capture == Capture::On {
                        self.copy(b);
                    }
                    if self.in_string {
                        self.string_byte(b);
                    } else {
                        self.structural(b);
                    }
                }
            }
        }
    }

    /// A byte inside a string (after its opening quote).
    fn string_byte(&mut self, b: u8) {
        if self.in_key {
            let len = usize::from(self.key_len);
            if len < MAX_KEY_BYTES {
                self.key[len] = b;
            }
            self.key_len = (len + 1).min(MAX_KEY_BYTES + 1) as u8;
        }
        if self.escaped {
            self.escaped = false;
        } else if b == b'\\' {
            self.escaped = true;
        } else if b == b'"' {
            self.in_string = false;
            if std::mem::take(&mut self.in_key) {
                self.usage_member = self.key_is_usage();
                self.key_len = 0;
            }
        }
    }

    /// A byte outside strings.
    fn structural(&mut self, b: u8) {
        let top = self.depth == 1;
        match b {
            b'"' => {
                self.in_string = true;
                if top && self.member == Member::Key {
                    self.in_key = true;
                    self.key[0] = b'"';
                    self.key_len = 1;
                    self.member = Member::Colon;
                } else if top && self.member == Member::Value {
                    self.value_starts(b);
                }
            }
            b'{' | b'[' => {
                if top && self.member == Member::Value {
                    self.value_starts(b);
                }
                self.depth = self.depth.saturating_add(1);
            }
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 1 {
                    self.value_ends();
                } else if self.depth == 0 {
                    self.phase = Phase::Done;
                }
            }
            b':' if top && self.member == Member::Colon => self.member = Member::Value,
            b',' if top => self.member = Member::Key,
            _ if is_blank(b) => {}
            _ if top && self.member == Member::Value => self.value_starts(b),
            _ => {}
        }
    }

    /// The first byte of a top-level member's value.
    fn value_starts(&mut self, b: u8) {
        self.member = Member::Next;
        if std::mem::take(&mut self.usage_member) {
            self.found = None;
            if b == b'{' {
                self.capture = Capture::On;
                self.usage.clear();
                self.copy(b);
            }
        }
    }

    /// A top-level member's container value has closed.
    fn value_ends(&mut self) {
        match std::mem::replace(&mut self.capture, Capture::Off) {
            Capture::On => {
                self.found = parse_usage(&self.usage);
                self.usage.clear();
            }
            Capture::Skipping | Capture::Off => {}
        }
    }

    fn copy(&mut self, b: u8) {
        if self.usage.len() < MAX_USAGE_OBJECT_BYTES {
            if self.usage.capacity() == 0 {
                self.usage.reserve_exact(MAX_USAGE_OBJECT_BYTES);
            }
            self.usage.push(b);
        } else {
            self.usage.clear();
            self.capture = Capture::Skipping;
            self.skipped += 1;
        }
    }

    fn key_is_usage(&self) -> bool {
        let len = usize::from(self.key_len);
        let Some(key) = self.key.get(..len) else { return false };
        key == b"\"usage\""
            || (key.contains(&b'\\') && serde_json::from_slice::<String>(key).is_ok_and(|k| k == "usage"))
    }
}

/// JSON's blanks.
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The counts of a complete `usage` object, if valid.
fn parse_usage(raw: &[u8]) -> Option<Counts> {
    let usage: Map<String, Value> = serde_json::from_slice(raw).ok()?;
    usage_counts(&usage)
}

/// `(prompt_tokens, completion_tokens)` of a parsed `usage` object, if valid: integers within
/// [`MAX_REPORTED_TOKENS`], `prompt_tokens` required, a missing `completion_tokens` 0.
///
/// ```
/// let usage = serde_json::json!({"prompt_tokens": 3, "completion_tokens": 7});
/// assert_eq!(flowgate::usage::usage_counts(usage.as_object().unwrap()), Some((3, 7)));
/// ```
pub fn usage_counts(usage: &Map<String, Value>) -> Option<(u64, u64)> {
    let count = |v: &Value| v.as_u64().filter(|&n| n <= MAX_REPORTED_TOKENS);
    let prompt = count(usage.get("prompt_tokens")?)?;
    let completion = match usage.get("completion_tokens") {
        None => 0,
        Some(v) => count(v)?,
    };
    Some((prompt, completion))
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;
