//! Fuzz the response usage reader (shim/src/usage.rs): arbitrary bytes, read as a JSON body and as
//! an SSE stream, whole and cut at fuzzer-chosen points. It must never panic, never hold more than
//! `MAX_BUFFERED_BYTES`, read the same however the body is cut, report only counts within
//! `MAX_REPORTED_TOKENS`, estimate exactly `Usage::estimate` otherwise, and agree with a slow
//! reference (the whole body or each event parsed by `serde_json`) wherever that reference can
//! decide: bodies and events that are valid JSON, or that cannot name `usage` at all.
//!
//! Input: a cut count (0..=8) and cut positions (`arbitrary`), then the body.
//! Run from the repository root: `bash scripts/fuzz.sh usage 60`.
#![no_main]

use arbitrary::Unstructured;
use flowgate::usage::{
    BodyKind, usage_counts, Usage, UsageReader, UsageSource, MAX_BUFFERED_BYTES, MAX_REPORTED_TOKENS,
    MAX_USAGE_OBJECT_BYTES,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Most cuts per input.
const MAX_CUTS: usize = 8;

/// The reference's reading of one parsed document: the top-level `usage`'s counts if valid.
/// (The count rules are the reader's own, `usage_counts`: what this target checks is the
/// streaming scan against whole-document parsing.)
fn ref_counts(doc: &Value) -> Option<(u64, u64)> {
    usage_counts(doc.as_object()?.get("usage")?.as_object()?)
}

/// What the reference knows about one document: `Some(counts)` when it can decide.
fn ref_document(data: &[u8]) -> Option<Option<(u64, u64)>> {
    match serde_json::from_slice::<Value>(data) {
        Ok(doc) => Some(ref_counts(&doc)),
        // Cannot name a `usage` key, plainly or escaped: certainly none.
        Err(_) if !contains(data, b"usage") && !data.contains(&b'\\') => Some(None),
        Err(_) => None,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The reference SSE reader: normalise line ends, split lines, build events by the spec; the last
/// event with a valid usage wins. `None` if some event is beyond the reference.
fn ref_sse(data: &[u8]) -> Option<Option<(u64, u64)>> {
    let mut text = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\r' {
            text.push(b'\n');
            if data.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
        } else {
            text.push(data[i]);
        }
        i += 1;
    }
    let mut last = None;
    let mut event: Option<Vec<u8>> = None;
    let dispatch = |event: &mut Option<Vec<u8>>, last: &mut Option<(u64, u64)>| -> Option<()> {
        if let Some(mut d) = event.take() {
            d.pop(); // the last data line's `\n`
            if let Some(c) = ref_document(&d)? {
                *last = Some(c);
            }
        }
        Some(())
    };
    for line in text.split(|&b| b == b'\n') {
        if line.is_empty() {
            dispatch(&mut event, &mut last)?;
            continue;
        }
        if line[0] == b':' {
            continue;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(p) => (&line[..p], &line[p + 1..]),
            None => (line, &line[line.len()..]),
        };
        if field == b"data" {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            let d = event.get_or_insert_with(Vec::new);
            d.extend_from_slice(value);
            d.push(b'\n');
        }
    }
    dispatch(&mut event, &mut last)?;
    Some(last)
}

/// Reads `body` cut at `cuts`, checking the buffer bound after every push.
fn read(kind: BodyKind, body: &[u8], cuts: &[usize], request: Option<u64>) -> (Usage, u64) {
    let mut r = UsageReader::new(kind);
    let mut from = 0;
    for &c in cuts.iter().chain([body.len()].iter()) {
        r.push(&body[from..c]);
        from = c;
        assert!(r.buffered_bytes() <= MAX_BUFFERED_BYTES, "{} bytes held", r.buffered_bytes());
    }
    assert_eq!(r.body_bytes(), body.len() as u64);
    let skipped = r.skipped_usage_objects();
    (r.finish(request), skipped)
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let n = u.int_in_range(0..=MAX_CUTS).unwrap_or(0);
    let mut raw = Vec::with_capacity(n);
    for _ in 0..n {
        raw.push(u.arbitrary::<u16>().unwrap_or(0));
    }
    let with_request = u.arbitrary::<bool>().unwrap_or(false);
    let body = u.take_rest();
    let mut cuts: Vec<usize> = raw.iter().map(|&c| usize::from(c) % (body.len() + 1)).collect();
    cuts.sort_unstable();
    let request = with_request.then_some(body.len() as u64 * 3);

    for kind in [BodyKind::Json, BodyKind::Sse] {
        let whole = read(kind, body, &[], request);
        let split = read(kind, body, &cuts, request);
        assert_eq!(whole, split, "{kind:?} cut at {cuts:?}");
        let (usage, skipped) = whole;
        match usage.source {
            UsageSource::Reported => {
                assert!(
                    usage.prompt_tokens <= MAX_REPORTED_TOKENS
                        && usage.completion_tokens <= MAX_REPORTED_TOKENS
                );
                assert!(contains(body, b"usage") || body.contains(&b'\\'), "{kind:?}: {usage:?}");
            }
            UsageSource::Estimated => assert_eq!(usage, Usage::estimate(body.len() as u64, request)),
        }
        if skipped > 0 {
            assert!(body.len() > MAX_USAGE_OBJECT_BYTES);
        }
        if body.len() > MAX_USAGE_OBJECT_BYTES {
            continue;
        }
        let reference = match kind {
            BodyKind::Json => ref_document(body),
            BodyKind::Sse => ref_sse(body),
        };
        if let Some(counts) = reference {
            let want = match counts {
                Some((prompt_tokens, completion_tokens)) => {
                    Usage { prompt_tokens, completion_tokens, source: UsageSource::Reported }
                }
                None => Usage::estimate(body.len() as u64, request),
            };
            assert_eq!(usage, want, "{kind:?} on {:?}", String::from_utf8_lossy(body));
        }
    }
});
