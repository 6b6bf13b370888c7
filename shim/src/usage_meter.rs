//! One dispatched request's usage, followed through the ext_proc response messages: which requests
//! have their response read at all, and what Envoy is told for the others.
//!
//! Reading a response body through ext_proc costs a gRPC round trip per chunk (an LLM answer
//! streams hundreds), so only requests whose cost matters to a decision are read: when the score
//! counts tokens (`scoring.rate_unit: tokens`, `scoring.fairness: vtc`). For every other request
//! the request-headers answer carries a mode override ([`ResponseWatch`]) that turns the response
//! body phase off, and the response headers too unless they carry quota headers (Envoy honours it
//! when the filter has `allow_mode_override: true`; without it the messages keep coming and are
//! CONTINUEd like any other). It keeps the response trailers wanted, so that Envoy holds the
//! stream, and flowgate the slot, until the response ends.
//!
//! A metered request's meter sees the response headers (the content type decides JSON or SSE),
//! every body chunk, and ends with the response: at the chunk or trailers carrying the end of
//! stream, or when the stream closes first (a cut response is charged what was read of it). Its
//! usage is then charged to the workload through the permit, once.

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::{
    BodySendMode, HeaderSendMode,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::ProcessingMode;
use flowgate_engine::runtime::Permit;

use crate::metrics::Metrics;
use crate::usage::{BodyKind, Usage, UsageReader, UsageSource};

/// How much of a dispatched request's response flowgate asks Envoy to send it: the mode override
/// of the dispatch answer.
///
/// Envoy (1.37 on, for good in 1.40) closes the ext_proc stream as soon as no phase is left to
/// send, and the slot is freed when the stream closes. So whatever is skipped, the response
/// *trailers* stay wanted: with bodies and trailers both off the stream closed right after the
/// response headers, while the backend still generated (measured through Envoy 1.40 against a
/// 2.4 s stream: `flowgate_inflight` 0 from the first chunk on). With trailers wanted Envoy holds
/// the stream until the response ends, then sends them or (an HTTP/1.1 answer has none) closes
/// it: either frees the slot at the response's end, at no message's cost.
///
/// ```
/// use flowgate::usage_meter::ResponseWatch;
/// assert_eq!(ResponseWatch::of(true, false), ResponseWatch::Metered);
/// assert_eq!(ResponseWatch::of(false, true), ResponseWatch::Headers);
/// let end = ResponseWatch::of(false, false).mode_override().unwrap();
/// assert_eq!((end.response_header_mode, end.response_body_mode, end.response_trailer_mode), (2, 0, 1));
/// assert!(ResponseWatch::Metered.mode_override().is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseWatch {
    /// What the filter is configured to send (headers, every body chunk): the usage is read.
    Metered,
    /// The headers, which carry `x-ratelimit-remaining-*` for a workload with a quota; no body.
    Headers,
    /// No message: only the stream's close, at the response's end, frees the slot. One ext_proc
    /// message per request instead of two, and the response headers reach the client without a
    /// round trip through flowgate.
    End,
}

impl ResponseWatch {
    /// The watch for a request whose usage is read (`read_usage`) or not, and whose response
    /// headers get `x-ratelimit-remaining-*` (`quota_headers`) or not.
    pub fn of(read_usage: bool, quota_headers: bool) -> Self {
        match (read_usage, quota_headers) {
            (true, _) => ResponseWatch::Metered,
            (false, true) => ResponseWatch::Headers,
            (false, false) => ResponseWatch::End,
        }
    }

    /// The mode override of the dispatch answer (`None`: as configured). Request phases are left
    /// as they are; the response body is never asked for without a meter.
    pub fn mode_override(self) -> Option<ProcessingMode> {
        let headers = match self {
            ResponseWatch::Metered => return None,
            ResponseWatch::Headers => HeaderSendMode::Send,
            ResponseWatch::End => HeaderSendMode::Skip,
        };
        Some(ProcessingMode {
            request_header_mode: HeaderSendMode::Default as i32,
            response_header_mode: headers as i32,
            request_body_mode: BodySendMode::None as i32,
            response_body_mode: BodySendMode::None as i32,
            request_trailer_mode: HeaderSendMode::Skip as i32,
            // Wanted, so that Envoy keeps the stream (and flowgate the slot) to the response's end.
            response_trailer_mode: HeaderSendMode::Send as i32,
        })
    }
}

/// One response being read for its usage.
#[derive(Debug)]
pub struct UsageMeter {
    /// The request body's size (its `content-length`), for an estimate's prompt tokens.
    request_bytes: Option<u64>,
    /// Created at the response headers (their content type picks the kind); JSON if the body
    /// comes without them.
    reader: Option<UsageReader>,
}

impl UsageMeter {
    /// A meter for a request whose body is `request_bytes` long, if known.
    pub fn new(request_bytes: Option<u64>) -> Self {
        Self { request_bytes, reader: None }
    }

    /// The response headers arrived, with this content type.
    pub fn headers(&mut self, content_type: Option<&str>) {
        self.reader.get_or_insert_with(|| UsageReader::new(BodyKind::from_content_type(content_type)));
    }

    /// The next response body chunk.
    pub fn body(&mut self, chunk: &[u8]) {
        self.reader.get_or_insert_with(|| UsageReader::new(BodyKind::Json)).push(chunk);
    }

    /// The response is over (or cut off): its usage, reported or estimated.
    pub fn finish(self) -> Usage {
        match self.reader {
            Some(reader) => reader.finish(self.request_bytes),
            None => Usage::estimate(0, self.request_bytes),
        }
    }

    /// [`finish`](Self::finish), charge the usage to `permit`'s workload and count it.
    pub fn charge(self, permit: &Permit, metrics: &Metrics) -> Usage {
        let usage = self.finish();
        permit.charge(usage.prompt_tokens, usage.completion_tokens);
        metrics.count_usage(usage.source == UsageSource::Reported);
        usage
    }
}

/// The `content-length` of a request, if it has a valid one.
///
/// ```
/// assert_eq!(flowgate::usage_meter::content_length(b" 1200"), Some(1200));
/// assert_eq!(flowgate::usage_meter::content_length(b"-1"), None);
/// ```
pub fn content_length(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_sse_response_is_read_by_its_content_type() {
        let mut m = UsageMeter::new(Some(400));
        m.headers(Some("text/event-stream; charset=utf-8"));
        m.body(b"data: {\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,");
        m.body(b"\"completion_tokens\":4}}\n\ndata: [DONE]\n\n");
        let u = m.finish();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.source), (9, 4, UsageSource::Reported));
    }

    #[test]
    fn a_body_without_headers_is_read_as_json() {
        let mut m = UsageMeter::new(None);
        m.body(br#"{"usage":{"prompt_tokens":3,"completion_tokens":2}}"#);
        assert_eq!(m.finish().source, UsageSource::Reported);
    }

    #[test]
    fn a_response_without_a_body_is_estimated_from_the_request() {
        let mut m = UsageMeter::new(Some(401));
        m.headers(Some("application/json"));
        let u = m.finish();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.source), (101, 0, UsageSource::Estimated));
        assert_eq!(UsageMeter::new(None).finish().prompt_tokens, 0);
    }

    #[test]
    fn a_cut_response_is_estimated_from_what_was_read() {
        let mut m = UsageMeter::new(None);
        m.headers(Some("text/event-stream"));
        m.body(&[b'x'; 40]);
        let u = m.finish();
        assert_eq!((u.completion_tokens, u.source), (10, UsageSource::Estimated));
    }
}
