//! The `/metrics` page: Prometheus text format 0.0.4 in the real names of each engine, with the
//! kind of surrounding noise the real servers emit (process and GC metrics, `_created` samples,
//! info gauges), so a scraper's parser is exercised. Also the not-a-metrics-page body of
//! [`crate::MetricsMode::Garbage`].

use std::fmt::Write;
use std::time::Duration;

use crate::config::EngineKind;
use crate::histogram::Histogram;

/// Longest a `/metrics` request waits in [`crate::MetricsMode::Stall`] before answering 503.
pub const MAX_STALL: Duration = Duration::from_secs(60);

/// Content type of the metrics page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// KV-cache block size in tokens used for Triton's block metrics.
pub const TRITON_TOKENS_PER_BLOCK: u64 = 64;

/// Size of the garbage body in bytes.
const GARBAGE_BYTES: usize = 512;

/// The values one page reports.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Model name (label value, unescaped).
    pub model: String,
    /// Requests waiting (live or forced).
    pub waiting: f64,
    /// Requests running (live or forced).
    pub running: f64,
    /// KV-cache usage fraction (live or forced).
    pub kv_usage: f64,
    /// Sequences prefilled in the latest step.
    pub prefilling: u64,
    /// The configured `max_num_seqs`.
    pub max_num_seqs: u64,
    /// The configured `kv_tokens`.
    pub kv_tokens: u64,
    /// Prompt tokens prefilled.
    pub prompt_tokens: u64,
    /// Completion tokens generated.
    pub generation_tokens: u64,
    /// Requests received.
    pub requests: u64,
    /// Requests completed.
    pub completed: u64,
    /// Time to first token.
    pub ttft: Histogram,
    /// End-to-end latency.
    pub e2e: Histogram,
    /// Seconds since the simulator started (for `process_*` noise).
    pub uptime: f64,
    /// Unix time the simulator started, in seconds.
    pub start_time: f64,
}

/// A Prometheus sample value: Python's float spelling (`3.0`, `+Inf`, `NaN`).
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v:?}")
    }
}

/// A Triton sample value: integers without a fraction, like the C++ client prints them.
fn int_or_num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        num(v)
    }
}

/// Escape a label value (`\`, `"`, newline).
pub fn escape(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// A page being written; `labels` is the label set every engine metric carries.
struct Page {
    out: String,
    labels: String,
}

impl Page {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.head(name, "gauge", help);
        let _ = writeln!(self.out, "{name}{{{}}} {}", self.labels, num(v));
    }

    /// A counter `name` (ending in `_total`) plus its `_created` sample.
    fn counter(&mut self, name: &str, help: &str, v: u64, created: f64) {
        self.head(name, "counter", help);
        let base = name.strip_suffix("_total").unwrap_or(name);
        let _ = writeln!(self.out, "{name}{{{}}} {}", self.labels, num(v as f64));
        let _ = writeln!(self.out, "{base}_created{{{}}} {}", self.labels, num(created));
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram, created: f64) {
        self.head(name, "histogram", help);
        let l = &self.labels;
        for (le, n) in h.cumulative() {
            let _ = writeln!(self.out, "{name}_bucket{{{l},le=\"{}\"}} {}", num(le), num(n as f64));
        }
        let _ = writeln!(self.out, "{name}_count{{{l}}} {}", num(h.count() as f64));
        let _ = writeln!(self.out, "{name}_sum{{{l}}} {}", num(h.sum()));
        let _ = writeln!(self.out, "{name}_created{{{l}}} {}", num(created));
    }

    /// Python client noise: GC, platform and process metrics.
    fn python_noise(&mut self, s: &Snapshot) {
        self.out.push_str(
            "# HELP python_gc_objects_collected_total Objects collected during gc\n\
             # TYPE python_gc_objects_collected_total counter\n\
             python_gc_objects_collected_total{generation=\"0\"} 12841.0\n\
             python_gc_objects_collected_total{generation=\"1\"} 3290.0\n\
             python_gc_objects_collected_total{generation=\"2\"} 417.0\n\
             # HELP python_gc_collections_total Number of times this generation was collected\n\
             # TYPE python_gc_collections_total counter\n\
             python_gc_collections_total{generation=\"0\"} 1523.0\n\
             python_gc_collections_total{generation=\"1\"} 138.0\n\
             python_gc_collections_total{generation=\"2\"} 9.0\n\
             # HELP python_info Python platform information\n\
             # TYPE python_info gauge\n\
             python_info{implementation=\"CPython\",major=\"3\",minor=\"12\",patchlevel=\"3\",version=\"3.12.3\"} 1.0\n",
        );
        self.process_noise(s);
    }

    fn process_noise(&mut self, s: &Snapshot) {
        let _ = write!(
            self.out,
            "# HELP process_virtual_memory_bytes Virtual memory size in bytes.\n\
             # TYPE process_virtual_memory_bytes gauge\n\
             process_virtual_memory_bytes 4.2305536e+10\n\
             # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
             # TYPE process_resident_memory_bytes gauge\n\
             process_resident_memory_bytes 3.145728e+09\n\
             # HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
             # TYPE process_start_time_seconds gauge\n\
             process_start_time_seconds {}\n\
             # HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
             # TYPE process_cpu_seconds_total counter\n\
             process_cpu_seconds_total {}\n\
             # HELP process_open_fds Number of open file descriptors.\n\
             # TYPE process_open_fds gauge\n\
             process_open_fds 87.0\n",
            num(s.start_time),
            num((s.uptime * 0.37 * 100.0).round() / 100.0),
        );
    }
}

fn vllm(s: &Snapshot, p: &mut Page) {
    p.python_noise(s);
    let created = s.start_time;
    p.head("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig");
    let _ = writeln!(
        p.out,
        "vllm:cache_config_info{{block_size=\"16\",cache_dtype=\"auto\",engine=\"0\",gpu_memory_utilization=\"0.9\",num_gpu_blocks=\"{}\"}} 1.0",
        s.kv_tokens.div_ceil(16)
    );
    p.gauge("vllm:num_requests_running", "Number of requests in model execution batches.", s.running);
    p.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", s.waiting);
    p.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", s.kv_usage);
    p.counter("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.", 0, created);
    p.counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.", s.prompt_tokens, created);
    p.counter(
        "vllm:generation_tokens_total",
        "Number of generation tokens processed.",
        s.generation_tokens,
        created,
    );
    p.head("vllm:request_success_total", "counter", "Count of successfully processed requests.");
    for (reason, n) in [("stop", 0), ("length", s.completed), ("abort", 0)] {
        let _ = writeln!(
            p.out,
            "vllm:request_success_total{{{},finished_reason=\"{reason}\"}} {}",
            p.labels,
            num(n as f64)
        );
    }
    p.histogram(
        "vllm:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &s.ttft,
        created,
    );
    p.histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        &s.e2e,
        created,
    );
}

fn sglang(s: &Snapshot, p: &mut Page) {
    p.python_noise(s);
    let created = s.start_time;
    p.gauge("sglang:num_running_reqs", "The number of running requests.", s.running);
    p.gauge(
        "sglang:num_used_tokens",
        "The number of used tokens.",
        (s.kv_usage * s.kv_tokens as f64).round(),
    );
    p.gauge("sglang:token_usage", "The token usage.", s.kv_usage);
    p.gauge("sglang:gen_throughput", "The generation throughput (token/s).", 0.0);
    p.gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", s.waiting);
    p.gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", 0.0);
    p.counter("sglang:prompt_tokens_total", "Number of prefill tokens processed.", s.prompt_tokens, created);
    p.counter(
        "sglang:generation_tokens_total",
        "Number of generation tokens processed.",
        s.generation_tokens,
        created,
    );
    p.counter("sglang:num_requests_total", "Number of requests processed.", s.requests, created);
    p.histogram(
        "sglang:time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &s.ttft,
        created,
    );
    p.histogram(
        "sglang:e2e_request_latency_seconds",
        "Histogram of End-to-end request latency in seconds",
        &s.e2e,
        created,
    );
}

fn trtllm(s: &Snapshot, p: &mut Page) {
    p.process_noise(s);
    let created = s.start_time;
    p.gauge("trtllm_num_requests_running", "Number of requests currently running.", s.running);
    p.gauge("trtllm_num_requests_waiting", "Number of requests waiting to be scheduled.", s.waiting);
    p.gauge("trtllm_kv_cache_utilization", "Fraction of KV-cache blocks in use.", s.kv_usage);
    p.counter(
        "trtllm_request_success_total",
        "Count of successfully processed requests.",
        s.completed,
        created,
    );
    p.histogram(
        "trtllm_time_to_first_token_seconds",
        "Histogram of time to first token in seconds.",
        &s.ttft,
        created,
    );
    p.histogram(
        "trtllm_e2e_request_latency_seconds",
        "Histogram of end to end request latency in seconds.",
        &s.e2e,
        created,
    );
}

fn triton(s: &Snapshot, p: &mut Page) {
    let m = escape(&s.model);
    let max_blocks = s.kv_tokens.div_ceil(TRITON_TOKENS_PER_BLOCK);
    let used = (s.kv_usage * max_blocks as f64).round();
    let out = &mut p.out;
    let _ = writeln!(
        out,
        "# HELP nv_inference_request_success Number of successful inference requests, all batch sizes"
    );
    let _ = writeln!(out, "# TYPE nv_inference_request_success counter");
    let _ = writeln!(out, "nv_inference_request_success{{model=\"{m}\",version=\"1\"}} {}", s.completed);
    let _ = writeln!(
        out,
        "# HELP nv_inference_count Number of inferences performed (does not include cached requests)"
    );
    let _ = writeln!(out, "# TYPE nv_inference_count counter");
    let _ = writeln!(out, "nv_inference_count{{model=\"{m}\",version=\"1\"}} {}", s.requests);
    let _ = writeln!(out, "# HELP nv_trt_llm_request_metrics TRT LLM request metrics");
    let _ = writeln!(out, "# TYPE nv_trt_llm_request_metrics gauge");
    for (kind, v) in [
        ("waiting", s.waiting),
        ("scheduled", s.running),
        ("active", s.waiting + s.running),
        ("max", s.max_num_seqs as f64),
        ("context", s.prefilling as f64),
    ] {
        let _ = writeln!(
            out,
            "nv_trt_llm_request_metrics{{model=\"{m}\",request_type=\"{kind}\",version=\"1\"}} {}",
            int_or_num(v)
        );
    }
    let _ = writeln!(out, "# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics");
    let _ = writeln!(out, "# TYPE nv_trt_llm_kv_cache_block_metrics gauge");
    for (kind, v) in [
        ("max", max_blocks as f64),
        ("free", (max_blocks as f64 - used).max(0.0)),
        ("used", used),
        ("tokens_per", TRITON_TOKENS_PER_BLOCK as f64),
        ("fraction", s.kv_usage),
    ] {
        let _ = writeln!(
            out,
            "nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type=\"{kind}\",model=\"{m}\",version=\"1\"}} {}",
            int_or_num(v)
        );
    }
    let _ = writeln!(out, "# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)");
    let _ = writeln!(out, "# TYPE nv_gpu_utilization gauge");
    let _ = writeln!(out, "nv_gpu_utilization{{gpu_uuid=\"GPU-00000000-0000-0000-0000-000000000000\"}} 0.42");
}

/// The metrics page of `engine` for `s`.
pub fn render(engine: EngineKind, s: &Snapshot) -> String {
    let model = escape(&s.model);
    let labels = match engine {
        EngineKind::Vllm => format!("engine=\"0\",model_name=\"{model}\""),
        EngineKind::Sglang => {
            format!("engine_type=\"unified\",model_name=\"{model}\",pp_rank=\"0\",tp_rank=\"0\"")
        }
        EngineKind::TrtllmServe => format!("engine_type=\"trtllm\",model_name=\"{model}\""),
        EngineKind::TritonTensorrtLlm => String::new(),
    };
    let mut p = Page { out: String::with_capacity(8 * 1024), labels };
    match engine {
        EngineKind::Vllm => vllm(s, &mut p),
        EngineKind::Sglang => sglang(s, &mut p),
        EngineKind::TrtllmServe => trtllm(s, &mut p),
        EngineKind::TritonTensorrtLlm => triton(s, &mut p),
    }
    p.out
}

/// A body that is not a metrics page: a truncated metric line, a binary run (not UTF-8) and
/// half an HTML error page. `seed` varies the bytes.
pub fn garbage(seed: u64) -> Vec<u8> {
    let mut out =
        b"# HELP vllm:num_requests_waiting Number of req\nvllm:num_requests_waiting{model_name=\"".to_vec();
    let mut x = seed | 1;
    while out.len() < GARBAGE_BYTES {
        // xorshift64: cheap and good enough for noise.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.extend_from_slice(&[0xff, 0xfe, 0x00]);
    out.extend_from_slice(b"\n<html><body><h1>502 Bad Gat");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_use_python_float_spelling() {
        assert_eq!(num(3.0), "3.0");
        assert_eq!(num(0.95), "0.95");
        assert_eq!(num(f64::INFINITY), "+Inf");
        assert_eq!(int_or_num(7.0), "7");
        assert_eq!(int_or_num(0.5), "0.5");
    }

    #[test]
    fn model_names_are_escaped_in_labels() {
        let s = Snapshot { model: "a\"b\\c".into(), ..Snapshot::default() };
        assert!(render(EngineKind::Vllm, &s).contains(r#"model_name="a\"b\\c""#));
    }

    #[test]
    fn garbage_is_not_utf8() {
        assert!(std::str::from_utf8(&garbage(42)).is_err());
    }
}
