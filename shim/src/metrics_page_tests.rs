//! Unit tests of [`super`]: one real-shaped page per engine, combining series, errors, the corners
//! of the text formats, and a property test that renders random readings into pages.

use super::*;
use proptest::prelude::*;

/// The bench's 40 KB vLLM page: two models (`llama-8b` waits 3, runs 17, KV 0.421875; `qwen-7b`
/// waits 5, runs 9, KV 0.6875), with vLLM's full family set and histograms.
const VLLM_TWO_MODELS: &[u8] = include_bytes!("../../bench/fixtures/vllm_two_models.prom");

const SGLANG_PAGE: &str = r#"# HELP sglang:prompt_tokens_total Number of prefill tokens processed.
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 128934.0
# HELP sglang:generation_tokens_total Number of generation tokens processed.
# TYPE sglang:generation_tokens_total counter
sglang:generation_tokens_total{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 45512.0
# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 12.0
# HELP sglang:num_used_tokens The number of used tokens.
# TYPE sglang:num_used_tokens gauge
sglang:num_used_tokens{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 40215.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 0.28
# HELP sglang:gen_throughput The generation throughput (token/s).
# TYPE sglang:gen_throughput gauge
sglang:gen_throughput{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 355.2
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 4.0
# HELP sglang:cache_hit_rate The prefix cache hit rate.
# TYPE sglang:cache_hit_rate gauge
sglang:cache_hit_rate{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} 0.0
# HELP sglang:spec_accept_length The average acceptance length of speculative decoding.
# TYPE sglang:spec_accept_length gauge
sglang:spec_accept_length{model_name="meta-llama/Llama-3.1-8B-Instruct",tp_rank="0"} NaN
# HELP sglang:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE sglang:time_to_first_token_seconds histogram
sglang:time_to_first_token_seconds_bucket{le="0.1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 120.0
sglang:time_to_first_token_seconds_bucket{le="0.5",model_name="meta-llama/Llama-3.1-8B-Instruct"} 410.0
sglang:time_to_first_token_seconds_bucket{le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 433.0
sglang:time_to_first_token_seconds_sum{model_name="meta-llama/Llama-3.1-8B-Instruct"} 97.3
sglang:time_to_first_token_seconds_count{model_name="meta-llama/Llama-3.1-8B-Instruct"} 433.0
# HELP sglang:e2e_request_latency_seconds Histogram of End-to-end request latency in seconds
# TYPE sglang:e2e_request_latency_seconds histogram
sglang:e2e_request_latency_seconds_bucket{le="1.0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
sglang:e2e_request_latency_seconds_bucket{le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 433.0
sglang:e2e_request_latency_seconds_sum{model_name="meta-llama/Llama-3.1-8B-Instruct"} 2201.9
sglang:e2e_request_latency_seconds_count{model_name="meta-llama/Llama-3.1-8B-Instruct"} 433.0
"#;

const TRTLLM_SERVE_PAGE: &str = r#"# HELP trtllm_request_success_total Count of successfully processed requests.
# TYPE trtllm_request_success_total counter
trtllm_request_success_total{engine_type="trtllm",finished_reason="stop",model_name="Qwen3-8B"} 901.0
trtllm_request_success_total{engine_type="trtllm",finished_reason="length",model_name="Qwen3-8B"} 14.0
# HELP trtllm_e2e_request_latency_seconds Histogram of end to end request latency in seconds.
# TYPE trtllm_e2e_request_latency_seconds histogram
trtllm_e2e_request_latency_seconds_bucket{engine_type="trtllm",le="0.3",model_name="Qwen3-8B"} 3.0
trtllm_e2e_request_latency_seconds_bucket{engine_type="trtllm",le="+Inf",model_name="Qwen3-8B"} 915.0
trtllm_e2e_request_latency_seconds_count{engine_type="trtllm",model_name="Qwen3-8B"} 915.0
trtllm_e2e_request_latency_seconds_sum{engine_type="trtllm",model_name="Qwen3-8B"} 1822.5
# HELP trtllm_kv_cache_hit_rate KV cache hit rate.
# TYPE trtllm_kv_cache_hit_rate gauge
trtllm_kv_cache_hit_rate{engine_type="trtllm",model_name="Qwen3-8B"} NaN
# HELP trtllm_kv_cache_utilization KV cache utilization.
# TYPE trtllm_kv_cache_utilization gauge
trtllm_kv_cache_utilization{engine_type="trtllm",model_name="Qwen3-8B"} 0.515625
# HELP trtllm_num_requests_running Number of running requests.
# TYPE trtllm_num_requests_running gauge
trtllm_num_requests_running{engine_type="trtllm",model_name="Qwen3-8B"} 31.0
# HELP trtllm_num_requests_waiting Number of waiting requests.
# TYPE trtllm_num_requests_waiting gauge
trtllm_num_requests_waiting{engine_type="trtllm",model_name="Qwen3-8B"} 2.0
"#;

const TRITON_PAGE: &str = r#"# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="ensemble",version="1"} 1201
nv_inference_request_success{model="tensorrt_llm",version="1"} 1201
# HELP nv_inference_first_response_histogram_ms Duration from request to first response in milliseconds
# TYPE nv_inference_first_response_histogram_ms histogram
nv_inference_first_response_histogram_ms_count{model="tensorrt_llm",version="1"} 1201
nv_inference_first_response_histogram_ms_sum{model="tensorrt_llm",version="1"} 98122
nv_inference_first_response_histogram_ms_bucket{model="tensorrt_llm",version="1",le="100"} 1100
nv_inference_first_response_histogram_ms_bucket{model="tensorrt_llm",version="1",le="+Inf"} 1201
# HELP nv_inference_queue_summary_us Summary of inference queuing duration in microseconds
# TYPE nv_inference_queue_summary_us summary
nv_inference_queue_summary_us_count{model="tensorrt_llm",version="1"} 1201
nv_inference_queue_summary_us_sum{model="tensorrt_llm",version="1"} 2291
nv_inference_queue_summary_us{model="tensorrt_llm",version="1",quantile="0.5"} NaN
# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 1
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 6
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 512
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 7
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 1
# HELP nv_trt_llm_runtime_memory_metrics TRT LLM runtime memory metrics
# TYPE nv_trt_llm_runtime_memory_metrics gauge
nv_trt_llm_runtime_memory_metrics{memory_type="pinned",model="tensorrt_llm",version="1"} 0
nv_trt_llm_runtime_memory_metrics{memory_type="gpu",model="tensorrt_llm",version="1"} 229141094
# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="tensorrt_llm",version="1"} 0.0625
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per",model="tensorrt_llm",version="1"} 64
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 390
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="free",model="tensorrt_llm",version="1"} 5850
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 6240
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-8d1c1c3e-2f6b-4e1a-9f3e-0d1b5b0f2a11"} 0.83
"#;

fn reading(waiting: f64, running: f64, kv_cache_usage: f64) -> PageReading {
    PageReading { waiting, running, kv_cache_usage }
}

fn vllm(page: &str) -> Result<PageReading, PageError> {
    read_page(ModelServer::Vllm, page.as_bytes())
}

/// A minimal vLLM page with these three value tokens.
fn vllm_page(waiting: &str, running: &str, kv: &str) -> String {
    format!(
        "vllm:num_requests_waiting{{model_name=\"m\"}} {waiting}\n\
         vllm:num_requests_running{{model_name=\"m\"}} {running}\n\
         vllm:kv_cache_usage_perc{{model_name=\"m\"}} {kv}\n"
    )
}

#[test]
fn reads_a_realistic_vllm_page_with_two_models() {
    assert!(VLLM_TWO_MODELS.len() > 30_000, "{} bytes", VLLM_TWO_MODELS.len());
    assert_eq!(read_page(ModelServer::Vllm, VLLM_TWO_MODELS), Ok(reading(8.0, 26.0, 0.6875)));
}

#[test]
fn reads_a_realistic_sglang_page() {
    assert_eq!(read_page(ModelServer::Sglang, SGLANG_PAGE.as_bytes()), Ok(reading(4.0, 12.0, 0.28)));
}

#[test]
fn reads_a_realistic_trtllm_serve_page() {
    let got = read_page(ModelServer::TrtllmServe, TRTLLM_SERVE_PAGE.as_bytes());
    assert_eq!(got, Ok(reading(2.0, 31.0, 0.515625)));
}

#[test]
fn reads_a_realistic_triton_page_by_its_labels() {
    let got = read_page(ModelServer::TritonTensorrtLlm, TRITON_PAGE.as_bytes());
    assert_eq!(got, Ok(reading(1.0, 6.0, 0.0625)));
}

#[test]
fn a_page_of_another_server_misses_the_first_series() {
    assert_eq!(
        read_page(ModelServer::Sglang, VLLM_TWO_MODELS),
        Err(PageError::Missing("sglang:num_queue_reqs"))
    );
    assert_eq!(
        read_page(ModelServer::TritonTensorrtLlm, SGLANG_PAGE.as_bytes()),
        Err(PageError::Missing("nv_trt_llm_request_metrics{request_type=\"waiting\"}"))
    );
}

#[test]
fn sums_waiting_and_running_and_maxes_kv_over_models() {
    let page = "sglang:num_queue_reqs{model_name=\"a\",tp_rank=\"0\"} 2\n\
                sglang:num_queue_reqs{model_name=\"b\",tp_rank=\"0\"} 3.5\n\
                sglang:num_running_reqs{model_name=\"a\",tp_rank=\"0\"} 10\n\
                sglang:num_running_reqs{model_name=\"b\",tp_rank=\"0\"} 1\n\
                sglang:token_usage{model_name=\"a\",tp_rank=\"0\"} 0.75\n\
                sglang:token_usage{model_name=\"b\",tp_rank=\"0\"} 0.25\n";
    assert_eq!(read_page(ModelServer::Sglang, page.as_bytes()), Ok(reading(5.5, 11.0, 0.75)));
}

#[test]
fn triton_sums_over_models_and_skips_other_request_types() {
    let page = "nv_trt_llm_request_metrics{model=\"a\",request_type=\"waiting\",version=\"1\"} 2\n\
                nv_trt_llm_request_metrics{model=\"b\",request_type=\"waiting\",version=\"1\"} 3\n\
                nv_trt_llm_request_metrics{model=\"a\",request_type=\"scheduled\",version=\"1\"} 4\n\
                nv_trt_llm_request_metrics{model=\"b\",request_type=\"scheduled\",version=\"1\"} 5\n\
                nv_trt_llm_request_metrics{model=\"b\",request_type=\"max\",version=\"1\"} NaN\n\
                nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\",model=\"a\"} 0.5\n\
                nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"fraction\",model=\"b\"} 0.125\n\
                nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=\"max\",model=\"b\"} 6240\n";
    assert_eq!(read_page(ModelServer::TritonTensorrtLlm, page.as_bytes()), Ok(reading(5.0, 9.0, 0.5)));
}

#[test]
fn nan_in_an_unrelated_series_is_ignored() {
    let page = format!(
        "vllm:spec_decode_draft_acceptance_rate{{model_name=\"m\"}} NaN\nprocess_x +Inf\n{}",
        vllm_page("1", "2", "0.5")
    );
    assert_eq!(vllm(&page), Ok(reading(1.0, 2.0, 0.5)));
}

#[test]
fn nan_in_a_needed_series_is_a_bad_value() {
    assert_eq!(vllm(&vllm_page("NaN", "2", "0.5")), Err(PageError::BadValue("vllm:num_requests_waiting")));
    assert_eq!(vllm(&vllm_page("1", "2", "nan")), Err(PageError::BadValue("vllm:kv_cache_usage_perc")));
}

#[test]
fn infinite_negative_and_unparsable_needed_values_are_bad_values() {
    for bad in ["+Inf", "-Inf", "Inf", "-1", "-0.5", "1x", "0x10", "", "one"] {
        assert_eq!(
            vllm(&vllm_page("1", bad, "0.5")),
            Err(PageError::BadValue("vllm:num_requests_running")),
            "{bad:?}"
        );
    }
}

#[test]
fn one_bad_sample_spoils_a_summed_series() {
    let page = format!("{}vllm:num_requests_waiting{{model_name=\"n\"}} NaN\n", vllm_page("1", "2", "0.5"));
    assert_eq!(vllm(&page), Err(PageError::BadValue("vllm:num_requests_waiting")));
}

#[test]
fn a_sum_that_overflows_is_a_bad_value() {
    let page =
        format!("{}vllm:num_requests_waiting{{model_name=\"n\"}} 1e308\n", vllm_page("1e308", "2", "0.5"));
    assert_eq!(vllm(&page), Err(PageError::BadValue("vllm:num_requests_waiting")));
}

#[test]
fn kv_use_up_to_the_bound_is_kept_and_above_it_is_a_bad_value() {
    assert_eq!(vllm(&vllm_page("1", "2", "1.5")), Ok(reading(1.0, 2.0, MAX_KV_FRACTION)));
    assert_eq!(vllm(&vllm_page("1", "2", "1.0625")), Ok(reading(1.0, 2.0, 1.0625)));
    assert_eq!(vllm(&vllm_page("1", "2", "1.51")), Err(PageError::BadValue("vllm:kv_cache_usage_perc")));
    assert_eq!(vllm(&vllm_page("1", "2", "87")), Err(PageError::BadValue("vllm:kv_cache_usage_perc")));
}

#[test]
fn value_forms_of_the_formats_parse() {
    assert_eq!(vllm(&vllm_page("1e3", "-0", "+0.25")), Ok(reading(1000.0, 0.0, 0.25)));
    assert_eq!(vllm(&vllm_page("2.5E1", ".5", "5e-1")), Ok(reading(25.0, 0.5, 0.5)));
    let r = vllm(&vllm_page("-0.0", "-0", "-0")).unwrap();
    assert!(
        r.waiting.is_sign_positive() && r.running.is_sign_positive() && r.kv_cache_usage.is_sign_positive()
    );
}

#[test]
fn a_missing_needed_series_is_named() {
    let page = "vllm:num_requests_waiting 1\nvllm:kv_cache_usage_perc 0.5\n";
    assert_eq!(vllm(page), Err(PageError::Missing("vllm:num_requests_running")));
    let page = "vllm:num_requests_waiting 1\nvllm:num_requests_running 0.5\n";
    assert_eq!(vllm(page), Err(PageError::Missing("vllm:kv_cache_usage_perc")));
}

#[test]
fn a_missing_series_is_reported_before_a_later_bad_one() {
    let page = "vllm:num_requests_running 1\nvllm:kv_cache_usage_perc NaN\n";
    assert_eq!(vllm(page), Err(PageError::Missing("vllm:num_requests_waiting")));
}

#[test]
fn vllm_falls_back_to_gpu_cache_usage_when_kv_cache_usage_is_absent() {
    let page = "vllm:num_requests_waiting{model_name=\"m\"} 1\n\
                vllm:num_requests_running{model_name=\"m\"} 2\n\
                vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.375\n\
                vllm:gpu_cache_usage_perc{model_name=\"n\"} 0.125\n";
    assert_eq!(vllm(page), Ok(reading(1.0, 2.0, 0.375)));
    let bad = page.replace("0.375", "NaN");
    assert_eq!(vllm(&bad), Err(PageError::BadValue("vllm:gpu_cache_usage_perc")));
}

#[test]
fn vllm_prefers_kv_cache_usage_and_then_ignores_gpu_cache_usage() {
    let page = format!(
        "vllm:gpu_cache_usage_perc 0.9\nvllm:gpu_cache_usage_perc NaN\n{}",
        vllm_page("1", "2", "0.5")
    );
    assert_eq!(vllm(&page), Ok(reading(1.0, 2.0, 0.5)));
}

#[test]
fn other_servers_have_no_gpu_cache_fallback() {
    let page = "sglang:num_queue_reqs 1\nsglang:num_running_reqs 1\nvllm:gpu_cache_usage_perc 0.5\n";
    assert_eq!(
        read_page(ModelServer::Sglang, page.as_bytes()),
        Err(PageError::Missing("sglang:token_usage"))
    );
}

#[test]
fn escaped_label_values_with_braces_and_commas_parse() {
    let page = r#"vllm:num_requests_waiting{model_name="a}b,c=\"d\"{",path="C:\\x\\",note="l1\nl2"} 4
vllm:num_requests_running{ model_name = "} 99" , tp_rank="0", } 3
vllm:kv_cache_usage_perc{model_name="x\\"} 0.5
"#;
    assert_eq!(vllm(page), Ok(reading(4.0, 3.0, 0.5)));
}

#[test]
fn triton_label_filter_compares_the_whole_value() {
    let page = r#"nv_trt_llm_request_metrics{request_type="waiting",model="a"} 1
nv_trt_llm_request_metrics{request_type="\"waiting\"",model="a"} 100
nv_trt_llm_request_metrics{model="request_type=\"waiting\"",request_type="max"} 100
nv_trt_llm_request_metrics{request_type="waiting_x"} 100
nv_trt_llm_request_metrics{xrequest_type="waiting"} 100
nv_trt_llm_request_metrics{request_type="scheduled"} 2
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"} 0.5
"#;
    let got = read_page(ModelServer::TritonTensorrtLlm, page.as_bytes());
    assert_eq!(got, Ok(reading(1.0, 2.0, 0.5)));
}

#[test]
fn timestamps_after_the_value_are_accepted() {
    let page = "vllm:num_requests_waiting{model_name=\"m\"} 1 1764581254123\n\
                vllm:num_requests_running 2\t1764581254.5\n\
                vllm:kv_cache_usage_perc{model_name=\"m\"}   0.5   -12  \n";
    assert_eq!(vllm(page), Ok(reading(1.0, 2.0, 0.5)));
}

#[test]
fn openmetrics_exemplars_and_eof_are_accepted() {
    let page = "# TYPE vllm:num_requests_waiting gauge\n\
                vllm:num_requests_waiting{model_name=\"m\"} 1 # {trace_id=\"KOO5S4vxi0o\"} 0.67\n\
                vllm:num_requests_running 2 1764581254.5 # {trace_id=\"a b\"} 1.0 1764581254.0\n\
                vllm:kv_cache_usage_perc 0.5\n\
                # EOF\n\
                vllm:num_requests_waiting 100\n";
    assert_eq!(vllm(page), Ok(reading(1.0, 2.0, 0.5)));
}

#[test]
fn crlf_line_endings_and_leading_blanks_are_accepted() {
    let page = "# HELP vllm:num_requests_waiting x\r\n\r\n  vllm:num_requests_waiting 1\r\n\
                \tvllm:num_requests_running{model_name=\"m\"} 2\r\nvllm:kv_cache_usage_perc 0.5";
    assert_eq!(vllm(page), Ok(reading(1.0, 2.0, 0.5)));
}

#[test]
fn families_out_of_order_and_interleaved_are_read() {
    let page = "vllm:kv_cache_usage_perc{model_name=\"a\"} 0.25\n\
                vllm:num_requests_running{model_name=\"a\"} 1\n\
                process_open_fds 12\n\
                vllm:num_requests_waiting{model_name=\"b\"} 7\n\
                vllm:kv_cache_usage_perc{model_name=\"b\"} 0.5\n\
                # TYPE vllm:num_requests_running gauge\n\
                vllm:num_requests_running{model_name=\"b\"} 2\n\
                vllm:num_requests_waiting{model_name=\"a\"} 1\n";
    assert_eq!(vllm(page), Ok(reading(8.0, 3.0, 0.5)));
}

#[test]
fn a_name_that_extends_a_wanted_name_is_another_family() {
    let page = format!(
        "vllm:num_requests_waiting_total 100\nvllm:num_requests_waiting_by_reason{{reason=\"x\"}} 100\n\
         vllm:num_requests_waiting:x NaN\nvllm:kv_cache_usage_percent 9\n{}",
        vllm_page("1", "2", "0.5")
    );
    assert_eq!(vllm(&page), Ok(reading(1.0, 2.0, 0.5)));
}

#[test]
fn a_name_that_is_a_prefix_of_a_wanted_name_is_another_family() {
    let page = "vllm:num_requests_waitin 1\nvllm:num_requests_running 2\nvllm:kv_cache_usage_perc 0.5\n";
    assert_eq!(vllm(page), Err(PageError::Missing("vllm:num_requests_waiting")));
}

#[test]
fn a_wanted_name_inside_a_comment_or_label_is_not_a_sample() {
    let page = "# HELP vllm:num_requests_waiting 5\n# vllm:num_requests_waiting 5\n\
                foo{x=\"vllm:num_requests_waiting 5\"} 1\nvllm:num_requests_running 2\nvllm:kv_cache_usage_perc 0.5\n";
    assert_eq!(vllm(page), Err(PageError::Missing("vllm:num_requests_waiting")));
}

#[test]
fn an_empty_or_comment_only_page_is_garbage() {
    assert_eq!(vllm(""), Err(PageError::Garbage));
    assert_eq!(vllm("\n\r\n  \n"), Err(PageError::Garbage));
    assert_eq!(vllm("# HELP a b\n# TYPE a gauge\n# EOF\n"), Err(PageError::Garbage));
}

#[test]
fn binary_garbage_is_garbage() {
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    for server in ModelServer::ALL {
        assert_eq!(read_page(server, &bytes), Err(PageError::Garbage), "{server}");
    }
    assert_eq!(vllm("<html><body>502 Bad Gateway</body></html>\n"), Err(PageError::Garbage));
}

#[test]
fn a_wanted_line_that_is_not_utf8_is_garbage_and_other_lines_may_be_anything() {
    let mut page = b"vllm:num_requests_waiting{model_name=\"\xff\"} 1\n".to_vec();
    page.extend_from_slice(vllm_page("1", "2", "0.5").as_bytes());
    assert_eq!(read_page(ModelServer::Vllm, &page), Err(PageError::Garbage));
    let mut page = b"other{model_name=\"\xff\xfe\"} 1\n\x00\x01\x02\n".to_vec();
    page.extend_from_slice(vllm_page("1", "2", "0.5").as_bytes());
    assert_eq!(read_page(ModelServer::Vllm, &page), Ok(reading(1.0, 2.0, 0.5)));
}

#[test]
fn a_malformed_wanted_line_is_garbage() {
    for line in [
        "vllm:num_requests_running{model_name=\"m\" 2",
        "vllm:num_requests_running{model_name=\"m} 2",
        "vllm:num_requests_running{model_name=m} 2",
        "vllm:num_requests_running{model_name} 2",
        "vllm:num_requests_running{=\"m\"} 2",
        "vllm:num_requests_running{a=\"1\" b=\"2\"} 2",
        "vllm:num_requests_running{a=\"1\\",
        "vllm:num_requests_running.x 2",
        "vllm:num_requests_running 2 soon",
        "vllm:num_requests_running 2 12 13",
    ] {
        let page = format!("{line}\n{}", vllm_page("1", "2", "0.5"));
        assert_eq!(vllm(&page), Err(PageError::Garbage), "{line:?}");
    }
}

#[test]
fn a_page_over_the_limit_is_too_large_and_one_at_it_is_read() {
    let mut page = vllm_page("1", "2", "0.5").into_bytes();
    page.resize(MAX_PAGE_BYTES, b'\n');
    assert_eq!(read_page(ModelServer::Vllm, &page), Ok(reading(1.0, 2.0, 0.5)));
    page.push(b'\n');
    assert_eq!(read_page(ModelServer::Vllm, &page), Err(PageError::TooLarge(MAX_PAGE_BYTES + 1)));
}

#[test]
fn model_server_names_round_trip_through_from_str_and_serde() {
    let names = ["vllm", "sglang", "trtllm-serve", "triton-tensorrt-llm"];
    for (server, name) in ModelServer::ALL.into_iter().zip(names) {
        assert_eq!(server.name(), name);
        assert_eq!(name.parse::<ModelServer>(), Ok(server));
        assert_eq!(serde_yaml::from_str::<ModelServer>(name).unwrap(), server);
    }
    assert_eq!(ModelServer::default(), ModelServer::Vllm);
    let err = "tgi".parse::<ModelServer>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown model server \"tgi\" (expected one of vllm, sglang, trtllm-serve, triton-tensorrt-llm)"
    );
    assert!(serde_yaml::from_str::<ModelServer>("Vllm").is_err());
}

#[test]
fn errors_say_what_went_wrong() {
    assert_eq!(PageError::TooLarge(5_000_000).to_string(), "metrics page of 5000000 bytes (at most 4194304)");
    assert_eq!(PageError::Missing("a").to_string(), "metrics page lacks a");
    assert_eq!(PageError::BadValue("a").to_string(), "metrics page has a bad value for a");
    assert_eq!(PageError::Garbage.to_string(), "not a metrics page");
}

/// One model's reading, and how its lines are dressed.
#[derive(Clone, Debug)]
struct Model {
    waiting: u32,
    running: u32,
    kv: f64,
    /// Rotates the label order.
    rotate: usize,
    /// Appended to every needed line: nothing, a timestamp or an exemplar.
    suffix: &'static str,
}

fn model() -> impl Strategy<Value = Model> {
    (
        0u32..100_000,
        0u32..100_000,
        0.0f64..=1.0,
        0usize..4,
        prop::sample::select(vec!["", " 1764581254123", " # {trace_id=\"x\"} 1"]),
    )
        .prop_map(|(waiting, running, kv, rotate, suffix)| Model {
            waiting,
            running,
            kv,
            rotate,
            suffix,
        })
}

/// Names near the wanted ones, and of other families.
const NOISE_NAMES: [&str; 12] = [
    "vllm:num_requests_waiting_total",
    "vllm:num_requests_waiting_by_reason",
    "vllm:num_requests_runnin",
    "vllm:kv_cache_usage_perc_bucket",
    "sglang:num_queue_reqs_total",
    "sglang:token_usage:x",
    "trtllm_num_requests_waiting_count",
    "trtllm_kv_cache_utilizationx",
    "nv_trt_llm_request_metrics_sum",
    "nv_trt_llm_kv_cache_block_metricz",
    "process_cpu_seconds_total",
    "python_gc_objects_collected_total",
];

fn noise_line() -> impl Strategy<Value = String> {
    (
        prop::sample::select(NOISE_NAMES.to_vec()),
        prop::sample::select(vec!["NaN", "+Inf", "-Inf", "-3", "12", "x"]),
        0usize..4,
    )
        .prop_map(|(name, value, shape)| match shape {
            0 => format!("{name} {value}"),
            1 => format!("{name}{{le=\"0.5\",model_name=\"m\"}} {value}"),
            2 => format!("# HELP {name} {value}"),
            _ => format!("# TYPE {name} histogram"),
        })
}

/// The lines `model` (number `i`) contributes for `server`, including series that must not count.
fn model_lines(server: ModelServer, i: usize, m: &Model) -> Vec<String> {
    let kv = m.kv.to_string();
    let (w, r) = (m.waiting.to_string(), m.running.to_string());
    let series: Vec<(&str, Option<(&str, &str)>, String)> = match server {
        ModelServer::Vllm => vec![
            ("vllm:num_requests_waiting", None, w),
            ("vllm:num_requests_running", None, r),
            ("vllm:kv_cache_usage_perc", None, kv),
        ],
        ModelServer::Sglang => vec![
            ("sglang:num_queue_reqs", None, w),
            ("sglang:num_running_reqs", None, r),
            ("sglang:token_usage", None, kv),
        ],
        ModelServer::TrtllmServe => vec![
            ("trtllm_num_requests_waiting", None, w),
            ("trtllm_num_requests_running", None, r),
            ("trtllm_kv_cache_utilization", None, kv),
        ],
        ModelServer::TritonTensorrtLlm => vec![
            ("nv_trt_llm_request_metrics", Some(("request_type", "waiting")), w),
            ("nv_trt_llm_request_metrics", Some(("request_type", "scheduled")), r),
            ("nv_trt_llm_request_metrics", Some(("request_type", "max")), "NaN".into()),
            ("nv_trt_llm_kv_cache_block_metrics", Some(("kv_cache_block_type", "fraction")), kv),
            ("nv_trt_llm_kv_cache_block_metrics", Some(("kv_cache_block_type", "max")), "6240".into()),
        ],
    };
    let model_name = format!("model-{i},\\\"{{}}\\\\");
    series
        .into_iter()
        .map(|(name, label, value)| {
            let mut labels = vec![format!("model_name=\"{model_name}\""), "tp_rank=\"0\"".to_owned()];
            labels.extend(label.map(|(k, v)| format!("{k}=\"{v}\"")));
            let rot = m.rotate % labels.len();
            labels.rotate_left(rot);
            format!("{name}{{{}}} {value}{}", labels.join(","), m.suffix)
        })
        .collect()
}

fn rendered_page() -> impl Strategy<Value = (ModelServer, Vec<Model>, String)> {
    (
        prop::sample::select(ModelServer::ALL.to_vec()),
        prop::collection::vec(model(), 1..5),
        prop::collection::vec(noise_line(), 0..30),
        any::<bool>(),
    )
        .prop_flat_map(|(server, models, noise, crlf)| {
            let mut lines = noise;
            for (i, m) in models.iter().enumerate() {
                lines.extend(model_lines(server, i, m));
            }
            (Just(server), Just(models), Just(lines).prop_shuffle(), Just(crlf))
        })
        .prop_map(|(server, models, lines, crlf)| {
            let eol = if crlf { "\r\n" } else { "\n" };
            let page = lines.iter().map(|l| format!("{l}{eol}")).collect();
            (server, models, page)
        })
}

proptest! {
    #[test]
    fn rendered_readings_read_back_exactly((server, models, page) in rendered_page()) {
        let want = PageReading {
            waiting: models.iter().map(|m| f64::from(m.waiting)).sum(),
            running: models.iter().map(|m| f64::from(m.running)).sum(),
            kv_cache_usage: models.iter().map(|m| m.kv).fold(0.0, f64::max),
        };
        prop_assert_eq!(read_page(server, page.as_bytes()), Ok(want));
    }
}
