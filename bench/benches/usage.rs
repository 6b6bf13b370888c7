//! Reading token usage from a streamed response: `flowgate::usage::UsageReader` over a vLLM-shaped
//! chat completion stream (one token delta per SSE event, `"usage":null`, then the usage event
//! and `[DONE]`), pushed one event per chunk as Envoy hands them over, and the same body as one
//! JSON completion.
//!
//! `cargo bench -p flowgate-bench --bench usage -- --warm-up-time 1 --measurement-time 3`
//!
//! Issue #12 budgets usage accounting at ≤ 5 % of the ext_proc path's CPU per streamed request
//! (about 3 ms for 66 messages here), so the reader should stay near 10 µs per 64-event response.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use flowgate::usage::{BodyKind, UsageReader, UsageSource};

/// Events per response, as `flowgate-bench usage-cost` streams them.
const EVENTS: usize = 64;

/// The chunks of one streamed response: `EVENTS - 1` deltas, then the usage event and `[DONE]`.
fn sse_chunks() -> Vec<Vec<u8>> {
    let mut chunks: Vec<Vec<u8>> = (0..EVENTS - 1)
        .map(|i| {
            format!(
                "data: {{\"id\":\"chatcmpl-5f0c2a9d\",\"object\":\"chat.completion.chunk\",\"created\":1764633600,\"model\":\"bench-model\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" tok{i}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
            )
            .into_bytes()
        })
        .collect();
    chunks.push(
        b"data: {\"id\":\"chatcmpl-5f0c2a9d\",\"object\":\"chat.completion.chunk\",\"created\":1764633600,\"model\":\"bench-model\",\"choices\":[],\"usage\":{\"prompt_tokens\":212,\"total_tokens\":275,\"completion_tokens\":63}}\n\ndata: [DONE]\n\n"
            .to_vec(),
    );
    chunks
}

/// A non-streamed completion of about the same size, in 4 KiB chunks.
fn json_chunks() -> Vec<Vec<u8>> {
    let content = " tok".repeat(2500);
    let body = format!(
        "{{\"id\":\"cmpl-1\",\"object\":\"chat.completion\",\"created\":1764633600,\"model\":\"bench-model\",\"choices\":[{{\"index\":0,\"message\":{{\"role\":\"assistant\",\"content\":\"{content}\"}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":212,\"total_tokens\":2712,\"completion_tokens\":2500}}}}"
    );
    body.into_bytes().chunks(4096).map(<[u8]>::to_vec).collect()
}

fn read(kind: BodyKind, chunks: &[Vec<u8>]) -> UsageSource {
    let mut reader = UsageReader::new(kind);
    for chunk in chunks {
        reader.push(black_box(chunk));
    }
    reader.finish(Some(850)).source
}

fn bench_usage(c: &mut Criterion) {
    let mut group = c.benchmark_group("usage");
    for (name, kind, chunks) in
        [("sse_64_events", BodyKind::Sse, sse_chunks()), ("json_10k", BodyKind::Json, json_chunks())]
    {
        assert_eq!(read(kind, &chunks), UsageSource::Reported, "{name}: the usage is found");
        let bytes: usize = chunks.iter().map(Vec::len).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_function(name, |b| b.iter(|| read(kind, black_box(&chunks))));
    }
    group.finish();
}

criterion_group!(benches, bench_usage);
criterion_main!(benches);
