//! Reading a model server's metrics page: `flowgate::metrics_page::read_page` against the
//! `prometheus-parse` crate on the same 40 KB two-model vLLM page (`bench/fixtures`).
//!
//! `cargo bench -p flowgate-bench --bench scrape -- --warm-up-time 1 --measurement-time 3`
//!
//! Target (issue): `read_page` ≤ 50 µs per page, ideally ~10 µs.
//!
//! `prometheus-parse` matches metric names with `\w+`, which has no `:`, so it finds none of
//! vLLM's `vllm:*` samples. Its run here parses a copy of the page with every `:` in a name made
//! `_` (same length, same lines) and extracts the same three values from that, which is the
//! most favourable setting the crate can be measured in.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use flowgate::metrics_page::{read_page, ModelServer, PageReading};
use prometheus_parse::{Scrape, Value};

/// The page: vLLM's family set for two models, with full histograms.
const PAGE: &str = include_str!("../fixtures/vllm_two_models.prom");

/// What the page says (both parsers must agree on it).
const WANT: PageReading = PageReading { waiting: 8.0, running: 26.0, kv_cache_usage: 0.6875 };

/// The three values through `prometheus-parse`: waiting and running summed, KV use maxed.
fn crate_reading(page: &str, prefix: &str) -> Option<PageReading> {
    let lines = page.lines().map(|l| Ok(l.to_owned()));
    let scrape = Scrape::parse(lines).ok()?;
    let (waiting_name, running_name) =
        (format!("{prefix}num_requests_waiting"), format!("{prefix}num_requests_running"));
    let kv_name = format!("{prefix}kv_cache_usage_perc");
    let mut r = PageReading::default();
    let mut seen = [false; 3];
    for s in &scrape.samples {
        let v = match s.value {
            Value::Gauge(v) | Value::Counter(v) | Value::Untyped(v) => v,
            _ => continue,
        };
        if s.metric == waiting_name {
            r.waiting += v;
            seen[0] = true;
        } else if s.metric == running_name {
            r.running += v;
            seen[1] = true;
        } else if s.metric == kv_name {
            r.kv_cache_usage = r.kv_cache_usage.max(v);
            seen[2] = true;
        }
    }
    seen.iter().all(|&s| s).then_some(r)
}

fn scrape(c: &mut Criterion) {
    let underscored = PAGE.replace("vllm:", "vllm_");
    assert_eq!(underscored.len(), PAGE.len());
    assert_eq!(read_page(ModelServer::Vllm, PAGE.as_bytes()), Ok(WANT));
    assert_eq!(crate_reading(PAGE, "vllm:"), None, "prometheus-parse learnt `:` in names");
    assert_eq!(crate_reading(&underscored, "vllm_"), Some(WANT));
    println!("scrape: vLLM page of {} bytes, {} lines", PAGE.len(), PAGE.lines().count());

    let mut g = c.benchmark_group("scrape");
    g.throughput(Throughput::Bytes(PAGE.len() as u64));
    g.bench_function("read_page/vllm", |b| {
        b.iter(|| read_page(ModelServer::Vllm, black_box(PAGE.as_bytes())))
    });
    g.bench_function("prometheus-parse/vllm_underscored", |b| {
        b.iter(|| crate_reading(black_box(&underscored), "vllm_"))
    });
    g.finish();
}

criterion_group!(benches, scrape);
criterion_main!(benches);
