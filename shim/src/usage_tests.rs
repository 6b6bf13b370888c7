//! Unit tests of [`super`]: vLLM- and OpenAI-shaped bodies and streams, every split point, line
//! ends, estimates, garbage, bodies and events far over the buffer bounds, decoy `usage` keys, and
//! a property test over `flowgate-sim`'s rendered streams in random chunks.

use super::*;
use flowgate_sim::request::Endpoint;
use flowgate_sim::response::Shape;
use proptest::prelude::*;

/// A vLLM 0.8 `chat.completion` body: usage is not the last member, `content` has escapes and
/// non-ASCII text.
const VLLM_CHAT: &str = r#"{"id":"chatcmpl-9f2c4d0e8b7a4c1b","object":"chat.completion","created":1733164800,"model":"meta-llama/Llama-3.1-8B-Instruct","choices":[{"index":0,"message":{"role":"assistant","reasoning_content":null,"content":"Sure! Here is a \"quote\" and a path C:\\temp — café ☕ 🚀.\n{not: json}","tool_calls":[]},"logprobs":null,"finish_reason":"stop","stop_reason":null}],"usage":{"prompt_tokens":42,"total_tokens":110,"completion_tokens":68,"prompt_tokens_details":null},"prompt_logprobs":null,"kv_transfer_params":null}"#;

/// A vLLM stream with `stream_options.include_usage`: `"usage": null` on every chunk, the usage in
/// a last chunk without choices, then `[DONE]`.
const VLLM_STREAM: &str = concat!(
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1733164800,\"model\":\"m\",",
    "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1733164800,\"model\":\"m\",",
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Héllo \\\"usage\\\": {} 🌍\"},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1733164800,\"model\":\"m\",",
    "\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"total_tokens\":19,\"completion_tokens\":7}}\n\n",
    "data: [DONE]\n\n",
);

fn reported(prompt_tokens: u64, completion_tokens: u64) -> Usage {
    Usage { prompt_tokens, completion_tokens, source: UsageSource::Reported }
}

/// Reads `chunks` in turn, checking the buffer bound after every push.
fn read_chunks<'a>(
    kind: BodyKind,
    chunks: impl IntoIterator<Item = &'a [u8]>,
    request: Option<u64>,
) -> Usage {
    let mut r = UsageReader::new(kind);
    for c in chunks {
        r.push(c);
        assert!(r.buffered_bytes() <= MAX_BUFFERED_BYTES, "{} buffered", r.buffered_bytes());
    }
    r.finish(request)
}

fn read(kind: BodyKind, body: &[u8]) -> Usage {
    read_chunks(kind, [body], None)
}

/// The body cut at each of `cuts` (sorted, within the body).
fn split_at<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut from = 0;
    let mut parts = Vec::new();
    for &c in cuts.iter().chain([body.len()].iter()) {
        parts.push(&body[from..c]);
        from = c;
    }
    parts
}

#[test]
fn a_vllm_chat_completion_reports_its_usage() {
    assert_eq!(read(BodyKind::Json, VLLM_CHAT.as_bytes()), reported(42, 68));
}

#[test]
fn a_vllm_stream_reports_the_usage_of_its_final_chunk() {
    assert_eq!(read(BodyKind::Sse, VLLM_STREAM.as_bytes()), reported(12, 7));
}

#[test]
fn every_split_point_of_a_json_body_gives_the_same_usage() {
    let body = VLLM_CHAT.as_bytes();
    for cut in 0..=body.len() {
        assert_eq!(
            read_chunks(BodyKind::Json, split_at(body, &[cut]), None),
            reported(42, 68),
            "cut at {cut}"
        );
    }
    assert_eq!(read_chunks(BodyKind::Json, body.chunks(1), None), reported(42, 68));
}

#[test]
fn every_split_point_of_a_stream_gives_the_same_usage() {
    let body = VLLM_STREAM.as_bytes();
    for a in 0..=body.len() {
        for b in (a..=body.len()).step_by(7) {
            let got = read_chunks(BodyKind::Sse, split_at(body, &[a, b]), None);
            assert_eq!(got, reported(12, 7), "cuts at {a} and {b}");
        }
    }
    assert_eq!(read_chunks(BodyKind::Sse, body.chunks(1), None), reported(12, 7));
}

#[test]
fn crlf_and_lone_cr_line_ends_delimit_events() {
    for eol in ["\r\n", "\r"] {
        let body = VLLM_STREAM.replace('\n', eol);
        for cut in 0..=body.len() {
            let got = read_chunks(BodyKind::Sse, split_at(body.as_bytes(), &[cut]), None);
            assert_eq!(got, reported(12, 7), "{eol:?}, cut at {cut}");
        }
    }
}

#[test]
fn a_cr_at_a_chunk_end_and_its_lf_in_the_next_are_one_line_end() {
    // Were they two line ends, the blank line between would end the event before its usage.
    let parts: [&[u8]; 3] = [b"data: {\"usage\":\r", b"\ndata: {\"prompt_tokens\":3}}\r", b"\n\r\n"];
    assert_eq!(read_chunks(BodyKind::Sse, parts, None), reported(3, 0));
}

#[test]
fn the_data_lines_of_one_event_are_joined() {
    let body = "data: {\"usage\":\ndata: {\"prompt_tokens\":5,\ndata:\"completion_tokens\":6}}\n\n";
    assert_eq!(read(BodyKind::Sse, body.as_bytes()), reported(5, 6));
}

#[test]
fn comments_other_fields_and_done_are_ignored() {
    let body = ": keep-alive\nevent: message\nid: 7\nretry: 10\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n\
                : another\ndata: [DONE]\n\n";
    assert_eq!(read(BodyKind::Sse, body.as_bytes()), reported(1, 2));
    // `datum:` and `data2:` are other fields, `data` without a colon is an empty data line.
    let decoys = "datum: {\"usage\":{\"prompt_tokens\":1}}\ndata2: {\"usage\":{\"prompt_tokens\":1}}\n\n";
    assert_eq!(read(BodyKind::Sse, decoys.as_bytes()).source, UsageSource::Estimated);
    let bare = "data\ndata: {\"usage\":{\"prompt_tokens\":4}}\n\n";
    assert_eq!(read(BodyKind::Sse, bare.as_bytes()), reported(4, 0));
}

#[test]
fn the_last_event_with_a_valid_usage_wins() {
    let body = "data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n\
                data: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n\n\
                data: {\"usage\":null}\n\n\
                data: {\"usage\":{\"prompt_tokens\":-1}}\n\n\
                data: [DONE]\n\n";
    assert_eq!(read(BodyKind::Sse, body.as_bytes()), reported(2, 3));
}

#[test]
fn a_final_event_without_its_blank_line_still_counts() {
    let body = "data: {\"usage\":null}\n\ndata: {\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":9}}";
    assert_eq!(read(BodyKind::Sse, body.as_bytes()), reported(8, 9));
}

#[test]
fn a_stream_without_usage_is_estimated_from_its_bytes() {
    let body = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\ndata: [DONE]\n\n";
    let want = Usage::estimate(body.len() as u64, Some(10));
    assert_eq!(read_chunks(BodyKind::Sse, [body.as_bytes()], Some(10)), want);
    assert_eq!((want.prompt_tokens, want.completion_tokens), (3, (body.len() as u64).div_ceil(4)));
}

#[test]
fn estimates_round_up_and_know_no_prompt_without_a_request_size() {
    let e = |body: &[u8], request| read_chunks(BodyKind::Json, [body], request);
    assert_eq!(
        e(b"", None),
        Usage { prompt_tokens: 0, completion_tokens: 0, source: UsageSource::Estimated }
    );
    assert_eq!(e(b"12345", None).completion_tokens, 2);
    assert_eq!(e(b"1234", Some(0)).prompt_tokens, 0);
    assert_eq!(
        e(b"1234", Some(9)),
        Usage { prompt_tokens: 3, completion_tokens: 1, source: UsageSource::Estimated }
    );
    assert_eq!(Usage::estimate(u64::MAX, Some(u64::MAX)).completion_tokens, u64::MAX.div_ceil(4));
}

#[test]
fn a_json_body_without_usage_is_estimated() {
    let body = VLLM_CHAT.replace("\"usage\"", "\"usage_stats\"");
    assert_eq!(read(BodyKind::Json, body.as_bytes()), Usage::estimate(body.len() as u64, None));
    let null = r#"{"id":"x","usage":null}"#;
    assert_eq!(read(BodyKind::Json, null.as_bytes()).source, UsageSource::Estimated);
}

#[test]
fn garbage_is_estimated() {
    let cases: [&[u8]; 9] = [
        b"<html><body>502 Bad Gateway</body></html>",
        b"\xff\xfe\x00{\"usage\":{\"prompt_tokens\":1}}",
        b"[{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}]",
        b"\"usage\":{\"prompt_tokens\":1}",
        b"{\"usage\":{\"prompt_tokens\":1,",
        b"{\"usage\":{\"prompt_tokens\":1 \"completion_tokens\":2}}",
        b"{\"usage\":{\"prompt_tokens\":\"\xff\"}}",
        b"{\"usage\":[1,2]}",
        b"}}}]]]{{{\"\\",
    ];
    for body in cases {
        for kind in [BodyKind::Json, BodyKind::Sse] {
            assert_eq!(read(kind, body), Usage::estimate(body.len() as u64, None), "{kind:?} {body:?}");
        }
    }
}

#[test]
fn usage_inside_strings_is_not_taken_for_the_member() {
    let decoy = r#"{"choices":[{"message":{"content":"the \"usage\": {\"prompt_tokens\": 999, \"completion_tokens\": 999}"}}],"note":"\\","usage":{"prompt_tokens":3,"completion_tokens":4}}"#;
    assert_eq!(read(BodyKind::Json, decoy.as_bytes()), reported(3, 4));
    let only_decoy = r#"{"content":"\"usage\":{\"prompt_tokens\":999}","x":"usage"}"#;
    assert_eq!(read(BodyKind::Json, only_decoy.as_bytes()).source, UsageSource::Estimated);
}

#[test]
fn usage_keys_below_the_top_level_are_ignored() {
    let nested = r#"{"choices":[{"usage":{"prompt_tokens":999}}],"meta":{"usage":{"prompt_tokens":999}},"usage":{"prompt_tokens":5,"completion_tokens":6},"after":{"usage":{"prompt_tokens":1}}}"#;
    assert_eq!(read(BodyKind::Json, nested.as_bytes()), reported(5, 6));
    // A string value "usage" at the top level is a value, not a key.
    let value = r#"{"kind":"usage","x":{"prompt_tokens":1}}"#;
    assert_eq!(read(BodyKind::Json, value.as_bytes()).source, UsageSource::Estimated);
}

#[test]
fn an_escaped_usage_key_is_still_usage() {
    let body = r#"{"us\u0061ge":{"prompt_tokens":2,"completion_tokens":1}}"#;
    assert_eq!(read(BodyKind::Json, body.as_bytes()), reported(2, 1));
    let all = r#"{"\u0075\u0073\u0061\u0067\u0065":{"prompt_tokens":7}}"#;
    assert_eq!(read(BodyKind::Json, all.as_bytes()), reported(7, 0));
    let longer = r#"{"\u0075\u0073\u0061\u0067\u0065\u0073":{"prompt_tokens":7}}"#;
    assert_eq!(read(BodyKind::Json, longer.as_bytes()).source, UsageSource::Estimated);
}

#[test]
fn a_later_usage_member_replaces_an_earlier_one() {
    let twice = r#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"usage":{"prompt_tokens":2,"completion_tokens":2}}"#;
    assert_eq!(read(BodyKind::Json, twice.as_bytes()), reported(2, 2));
    let then_null = r#"{"usage":{"prompt_tokens":1,"completion_tokens":1},"usage":null}"#;
    assert_eq!(read(BodyKind::Json, then_null.as_bytes()).source, UsageSource::Estimated);
}

#[test]
fn counts_out_of_range_or_not_integers_are_estimated() {
    let max = MAX_REPORTED_TOKENS;
    let bad = [
        "-1".to_string(),
        "1.0".to_string(),
        "1e3".to_string(),
        "\"5\"".to_string(),
        "null".to_string(),
        "true".to_string(),
        (max + 1).to_string(),
        "18446744073709551616".to_string(),
    ];
    for v in &bad {
        for body in [
            format!(r#"{{"usage":{{"prompt_tokens":{v},"completion_tokens":1}}}}"#),
            format!(r#"{{"usage":{{"prompt_tokens":1,"completion_tokens":{v}}}}}"#),
        ] {
            assert_eq!(read(BodyKind::Json, body.as_bytes()).source, UsageSource::Estimated, "{body}");
        }
    }
    let edge = format!(r#"{{"usage":{{"prompt_tokens":{max},"completion_tokens":0}}}}"#);
    assert_eq!(read(BodyKind::Json, edge.as_bytes()), reported(max, 0));
}

#[test]
fn prompt_tokens_alone_count_as_an_embeddings_usage() {
    let body = r#"{"object":"list","data":[{"object":"embedding","embedding":[0.1,-0.2]}],"usage":{"prompt_tokens":8,"total_tokens":8}}"#;
    assert_eq!(read(BodyKind::Json, body.as_bytes()), reported(8, 0));
    let no_prompt = r#"{"usage":{"completion_tokens":8,"total_tokens":8}}"#;
    assert_eq!(read(BodyKind::Json, no_prompt.as_bytes()).source, UsageSource::Estimated);
}

#[test]
fn a_huge_body_with_usage_at_the_end_is_read_within_the_bounds() {
    let content = "token \\\"usage\\\": {} é ".repeat(500_000); // about 12 MB
    let body = format!(
        r#"{{"id":"x","choices":[{{"message":{{"content":"{content}"}},"nested":[[[{{"a":[1,2,{{"b":"]}}"}}]}}]]]}}],"usage":{{"prompt_tokens":11,"completion_tokens":2999999}}}}"#
    );
    assert!(serde_json::from_str::<Value>(&body).is_ok(), "the test body is JSON");
    assert_eq!(read_chunks(BodyKind::Json, body.as_bytes().chunks(16 << 10), None), reported(11, 2_999_999));
    let front = format!(r#"{{"usage":{{"prompt_tokens":1,"completion_tokens":2}},"content":"{content}"}}"#);
    assert_eq!(read_chunks(BodyKind::Json, front.as_bytes().chunks(1000), None), reported(1, 2));
}

#[test]
fn an_event_of_megabytes_is_read_without_buffering_it() {
    let content = "x".repeat(3 << 20);
    let body = format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{content}\"}}}}],\"usage\":{{\"prompt_tokens\":4,\"completion_tokens\":5}}}}\n\ndata: [DONE]\n\n"
    );
    let mut r = UsageReader::new(BodyKind::Sse);
    for c in body.as_bytes().chunks(4096) {
        r.push(c);
        assert!(r.buffered_bytes() <= MAX_BUFFERED_BYTES);
    }
    assert_eq!(r.finish(None), reported(4, 5));
}

#[test]
fn a_usage_object_over_its_bound_is_skipped_and_counted() {
    let pad = " ".repeat(MAX_USAGE_OBJECT_BYTES);
    let over = format!("data: {{\"usage\":{{\"prompt_tokens\":1,{pad}\"completion_tokens\":2}}}}\n\n");
    let mut r = UsageReader::new(BodyKind::Sse);
    r.push(b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n");
    r.push(over.as_bytes());
    assert_eq!(r.skipped_usage_objects(), 1);
    assert_eq!(r.buffered_bytes(), 0);
    // The earlier event's usage stands.
    assert_eq!(r.finish(None), reported(3, 4));

    let json = format!("{{\"usage\":{{\"prompt_tokens\":1,{pad}\"completion_tokens\":2}}}}");
    let mut r = UsageReader::new(BodyKind::Json);
    r.push(json.as_bytes());
    assert_eq!(r.skipped_usage_objects(), 1);
    assert_eq!(r.finish(None).source, UsageSource::Estimated);
    // Exactly at the bound is still read.
    let fill = " ".repeat(MAX_USAGE_OBJECT_BYTES - r#"{"prompt_tokens":1}"#.len());
    let at = format!("{{\"usage\":{{\"prompt_tokens\":1{fill}}}}}");
    assert_eq!(read(BodyKind::Json, at.as_bytes()), reported(1, 0));
    let fill = " ".repeat(MAX_USAGE_OBJECT_BYTES + 1 - r#"{"prompt_tokens":1}"#.len());
    let over = format!("{{\"usage\":{{\"prompt_tokens\":1{fill}}}}}");
    assert_eq!(read(BodyKind::Json, over.as_bytes()).source, UsageSource::Estimated);
}

#[test]
fn content_type_selects_the_body_kind() {
    let kind = BodyKind::from_content_type;
    assert_eq!(kind(Some("text/event-stream")), BodyKind::Sse);
    assert_eq!(kind(Some(" Text/Event-Stream ; charset=utf-8")), BodyKind::Sse);
    assert_eq!(kind(Some("application/json")), BodyKind::Json);
    assert_eq!(kind(Some("text/event-streams")), BodyKind::Json);
    assert_eq!(kind(Some("")), BodyKind::Json);
    assert_eq!(kind(None), BodyKind::Json);
}

#[test]
fn the_simulators_bodies_report_what_it_served() {
    for endpoint in [Endpoint::Chat, Endpoint::Completions] {
        let shape = Shape::new(endpoint, 3, "sim-model");
        let full = shape.full(17, 9).to_string();
        assert_eq!(read(BodyKind::Json, full.as_bytes()), reported(17, 9));
        let stream = sim_stream(&shape, 17, 9, 4);
        assert_eq!(read_chunks(BodyKind::Sse, stream.as_bytes().chunks(13), None), reported(17, 9));
    }
}

/// `flowgate-sim`'s stream for `completion` tokens in chunks of `per_chunk`, with its usage chunk.
fn sim_stream(shape: &Shape, prompt: u32, completion: u32, per_chunk: u32) -> String {
    let mut out = String::new();
    let mut sent = 0;
    while sent < completion {
        let to = (sent + per_chunk).min(completion);
        out.push_str(&format!("data: {}\n\n", shape.chunk(sent, to, to == completion, true)));
        sent = to;
    }
    out.push_str(&format!("data: {}\n\n", shape.usage_chunk(prompt, completion)));
    out.push_str("data: [DONE]\n\n");
    out
}

proptest! {
    #[test]
    fn random_chunking_of_a_stream_reads_like_one_chunk(
        prompt in 0u32..200_000,
        completion in 0u32..64,
        per_chunk in 1u32..8,
        chat in any::<bool>(),
        crlf in any::<bool>(),
        mut cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
    ) {
        let endpoint = if chat { Endpoint::Chat } else { Endpoint::Completions };
        let shape = Shape::new(endpoint, 1, "m");
        let mut stream = sim_stream(&shape, prompt, completion, per_chunk);
        if crlf {
            stream = stream.replace('\n', "\r\n");
        }
        let body = stream.as_bytes();
        let mut at: Vec<usize> = cuts.drain(..).map(|i| i.index(body.len() + 1)).collect();
        at.sort_unstable();
        let whole = read(BodyKind::Sse, body);
        prop_assert_eq!(whole, reported(prompt.into(), completion.into()));
        prop_assert_eq!(read_chunks(BodyKind::Sse, split_at(body, &at), None), whole);
        let full = shape.full(prompt, completion).to_string();
        let json = full.as_bytes();
        let at: Vec<usize> = at.iter().map(|&i| i.min(json.len())).collect();
        prop_assert_eq!(read_chunks(BodyKind::Json, split_at(json, &at), None), whole);
    }
}

#[test]
fn plain_events_are_only_those_that_cannot_carry_a_usage_object() {
    let plain = |e: &str| plain_event(e.as_bytes());
    let delta = "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}";
    assert_eq!(
        plain(&format!("{delta}\n\nrest")),
        Some(PlainEvent { len: delta.len() + 2, after_cr: false })
    );
    assert_eq!(plain(&format!("{delta}\r\n\r\n")), Some(PlainEvent { len: delta.len() + 3, after_cr: true }));
    assert_eq!(plain(&format!("{delta}\r\r")), Some(PlainEvent { len: delta.len() + 2, after_cr: true }));
    assert_eq!(plain("data: [DONE]\n\n"), Some(PlainEvent { len: 14, after_cr: false }));
    // A `{` after `"usage"`, a backslash anywhere, or an event that may go on: scanned.
    assert_eq!(plain("data: {\"usage\":{\"prompt_tokens\":1}}\n\n"), None);
    assert_eq!(plain("data: {\"usage\" junk : {\"prompt_tokens\":1}}\n\n"), None);
    assert_eq!(plain("data: {\"\\u0075sage\":null}\n\n"), None);
    assert_eq!(plain(&format!("{delta}\ndata: more\n\n")), None);
    assert_eq!(plain(&format!("{delta}\n")), None, "the blank line is in the next chunk");
    assert_eq!(plain(&format!("{delta}\r")), None, "CR LF or CR: not known yet");
    assert_eq!(plain("event: x\n\n"), None);
}

#[test]
fn passing_over_plain_events_reads_what_scanning_them_reads() {
    // The same streams whole (plain events passed over) and a byte at a time (every event
    // scanned: no line end is ever in the chunk with its start).
    let streams = [
        VLLM_STREAM.to_string(),
        VLLM_STREAM.replace('\n', "\r\n"),
        VLLM_STREAM.replace('\n', "\r"),
        "data: {\"usage\":{\"prompt_tokens\":4}}\n\ndata: {\"usage\":null}\n\n".to_string(),
        "data: {\"usage\" junk : {\"prompt_tokens\":4}}\n\ndata: {}\n\n".to_string(),
        "data: {\"a\":1,\n\ndata: \"usage\":{\"prompt_tokens\":2}}\n\n".to_string(),
        "data: {\"a\":1,\r\n\r\n\ndata: {\"usage\":{\"prompt_tokens\":3}}\r\n\r\n".to_string(),
    ];
    for body in &streams {
        let whole = read(BodyKind::Sse, body.as_bytes());
        let bytewise = read_chunks(BodyKind::Sse, body.as_bytes().chunks(1), None);
        assert_eq!(whole, bytewise, "{body:?}");
    }
    assert_eq!(read(BodyKind::Sse, streams[3].as_bytes()), reported(4, 0), "a later null leaves it standing");
}
